"""Checkpoint conversion between Hugging Face ``transformers`` models and NeMo 1.x ``.nemo`` files.

:mod:`nemo_gammapo.convert.hf` holds the conversions (weights mapped by NeMo's own importers and
exporters in ``nemo.collections.llm``); :mod:`nemo_gammapo.convert.cli` is ``nemo-gammapo convert``.
"""

from __future__ import annotations

__all__ = ["FAMILIES", "hf_to_nemo", "nemo_to_hf"]


def __getattr__(name: str):  # lazy: importing the package must not import NeMo
    if name in __all__:
        from nemo_gammapo.convert import hf

        return getattr(hf, name)
    raise AttributeError(name)
