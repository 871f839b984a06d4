"""Where the training configs (``conf/*.yaml``) are, for every tool that composes one.

The top-level ``conf/`` folder of the repository is their only source. ``setup.py`` maps it into
the built package as ``nemo_gammapo.conf`` (package data ``*.yaml``), so an installed wheel finds
them through :mod:`importlib.resources`. A source checkout — run in place or installed editable
(setuptools' editable finder cannot import a mapped folder without ``__init__.py``) — has no such
package and uses ``conf/`` beside the ``nemo_gammapo`` package folder.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import Any

# Every config directory holds this one (the documented full config), which identifies it.
DEFAULT_CONFIG = "gpt_gammapo"
_CHECKOUT = Path(__file__).resolve().parent.parent  # the repository root, when run from a checkout


def _packaged_or_checkout(package: str, marker: str, checkout: Path) -> Path:
    """The folder of ``package``'s data in an installed wheel, else ``checkout``; must hold ``marker``."""
    try:
        # A folder without __init__.py is a namespace package: a MultiplexedPath, whose files are Paths.
        installed = Path(str(importlib.resources.files(package).joinpath(marker))).parent
    except ModuleNotFoundError:
        installed = None
    for folder in (installed, checkout):
        if folder is not None and (folder / marker).is_file():
            return folder
    looked = ", ".join(str(f) for f in (installed, checkout) if f is not None)
    raise FileNotFoundError(f"no {marker} in {looked}; reinstall nemo_gammapo")


def demo_data_dir() -> Path:
    """The bundled demo data (``train.jsonl``, ``validation.jsonl``): the checkout's ``data/demo/``
    or the copy an installed wheel carries as ``nemo_gammapo.demo_data``."""
    return _packaged_or_checkout("nemo_gammapo.demo_data", "train.jsonl", _CHECKOUT / "data" / "demo")


def config_dir() -> Path:
    """The directory of the training configs (``<name>.yaml``), as a real filesystem path.

    Raises ``FileNotFoundError`` naming the places looked at when neither the installed
    ``nemo_gammapo.conf`` package data nor a checkout's ``conf/`` holds ``gpt_gammapo.yaml``.
    """
    return _packaged_or_checkout("nemo_gammapo.conf", f"{DEFAULT_CONFIG}.yaml", _CHECKOUT / "conf")


def compose(config_name: str, overrides: list[str] | None = None, conf_dir: Path | None = None) -> Any:
    """Compose ``<conf_dir>/<config_name>.yaml`` with Hydra, as the training entry point does.

    ``conf_dir`` defaults to :func:`config_dir`. NeMo's ``multiply`` resolver (used by the
    ``exp_manager`` settings) is registered first when NeMo has not done so; nothing is resolved.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("multiply"):
        OmegaConf.register_new_resolver("multiply", lambda x, y: x * y)
    with initialize_config_dir(config_dir=str(Path(conf_dir or config_dir()).resolve()), version_base=None):
        return hydra_compose(config_name, overrides=list(overrides or []))
