"""Shared look of every figure: colours, resolution and a non-interactive matplotlib backend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

DPI = 150
FULL = "#3b6fb6"  # full margin distribution (paper Figure 2: blue)
ZOOM = "#a0522d"  # zoom near 0 (paper Figure 2: brown)
GAMMA0 = "#222222"  # the γ0 reference line
TRAIN = "#3b6fb6"
VAL = "#d9822b"
STEP_CMAP = "viridis"  # one colour per training step, early = dark
METHOD_COLORS = {"simpo": "#7f7f7f", "gamma_simpo": "#c0392b", "rsimpo": "#2e86c1", "beta_simpo": "#27ae60"}
OTHER_COLORS = ("#8e44ad", "#d35400", "#16a085", "#2c3e50", "#b7950b", "#7b241c")


def method_label(name: str) -> str:
    """A loss's display label, from the registry (the name itself for anything else)."""
    from nemo_gammapo.core.registry import LOSSES

    return LOSSES[name].label if name in LOSSES else name


def method_color(name: str) -> str:
    """A fixed colour for the study's four methods; any other loss gets one from a palette by its name."""
    if name in METHOD_COLORS:
        return METHOD_COLORS[name]
    return OTHER_COLORS[sum(map(ord, name)) % len(OTHER_COLORS)]


def step_colors(n: int) -> list[Any]:
    """``n`` colours along the step colour map (dark = early, light = late)."""
    cmap = plt.get_cmap(STEP_CMAP)
    return [cmap(0.15 + 0.7 * i / max(n - 1, 1)) for i in range(n)]


def save(fig: Any, path: Path) -> Path:
    """Write ``fig`` as a tight 150-dpi PNG and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path
