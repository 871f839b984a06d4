"""The robustness figure (cf. paper Figure 4): held-out accuracy against label-flip rate per method."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from nemo_gammapo.viz import style
from nemo_gammapo.viz.style import plt


def robustness_figure(results: pd.DataFrame, path: Path, title: str) -> Path:
    """Left: accuracy mean ± std (seeds as dots); right: held-out mean margin. x = flip rate (%)."""
    fig, (ax_acc, ax_margin) = plt.subplots(1, 2, figsize=(11.0, 4.5))
    methods = list(dict.fromkeys(results["method"]))
    offsets = np.linspace(-0.6, 0.6, len(methods)) if len(methods) > 1 else [0.0]
    for method, dx in zip(methods, offsets, strict=True):
        part = results[results["method"] == method]
        color = style.method_color(method)
        label = style.method_label(method)
        for ax, col in ((ax_acc, "heldout_accuracy"), (ax_margin, "heldout_margin_mean")):
            scale = 100.0 if col == "heldout_accuracy" else 1.0
            stats = part.groupby("flip_rate")[col].agg(["mean", "std"]).fillna(0.0)
            x = 100 * stats.index.to_numpy() + dx
            ax.errorbar(
                x, scale * stats["mean"], yerr=scale * stats["std"], color=color, marker="o", capsize=3, label=label
            )
            ax.scatter(100 * part["flip_rate"] + dx, scale * part[col], color=color, s=10, alpha=0.35)
    ax_acc.set_ylabel("clean held-out preference accuracy (%)")
    ax_acc.set_ylim(40, 102)
    ax_acc.axhline(50, color=style.GAMMA0, lw=0.8, ls=":")
    ax_margin.set_ylabel("mean held-out reward margin (β-scaled)")
    for ax in (ax_acc, ax_margin):
        ax.set_xlabel("label-flip rate of the training split (%)")
        ax.set_xticks(sorted(100 * results["flip_rate"].unique()))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return style.save(fig, path)
