"""Checkpoint conversion between Hugging Face ``transformers`` models and NeMo 1.x ``.nemo`` files.

:mod:`nemo_gammapo.convert.hf` holds the conversions (weights mapped by NeMo's own importers and
exporters in ``nemo.collections.llm``; a training run's checkpoint read back with megatron-core's distributed
checkpointing); :mod:`nemo_gammapo.convert.cli` is ``nemo-gammapo convert``.
"""

from __future__ import annotations

__all__ = ["FAMILIES", "check_layout", "hf_to_nemo", "nemo_to_hf", "run_to_hf", "run_to_nemo"]


def __getattr__(name: str):  # lazy: importing the package must not import NeMo
    if name in __all__:
        from nemo_gammapo.convert import hf

        return getattr(hf, name)
    raise AttributeError(name)
