"""The four run figures. Each function writes ``<name>.png`` and ``<name>.csv`` (the plotted numbers).

Inputs are the valid dumped pairs (:func:`nemo_gammapo.viz.run_data.load_dumps`: columns
``step, microbatch, dp_rank, pair, margin, gamma, loss``; margins and γ in β-scaled reward units)
and the ``metrics.jsonl`` history. Every function returns the paths it wrote.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nemo_gammapo.viz import style
from nemo_gammapo.viz.epsilon import approximation_holds, implied_label_smoothing
from nemo_gammapo.viz.style import plt

KEYS = ["step", "microbatch", "dp_rank", "pair"]


def pick_steps(steps: Sequence[int], count: int = 4) -> list[int]:
    """Up to ``count`` steps spread evenly over ``steps`` (always the first and the last)."""
    unique = sorted(set(int(s) for s in steps))
    if len(unique) <= count:
        return unique
    idx = np.linspace(0, len(unique) - 1, count).round().astype(int)
    return [unique[i] for i in sorted(set(idx.tolist()))]


def margin_distribution(dumps: pd.DataFrame, out_dir: Path, zoom: float) -> list[Path]:
    """Paper Figure 2 over training: per dumped step a violin of all margins and one of |m| ≤ ``zoom``."""
    data = dumps[[*KEYS, "margin"]].copy()
    data["in_zoom"] = data["margin"].abs() <= zoom
    steps = sorted(data["step"].unique())
    fig, (ax_full, ax_zoom) = plt.subplots(2, 1, figsize=(max(6.0, 0.45 * len(steps) + 3), 7.5), sharex=True)
    for ax, frame, color, title in (
        (ax_full, data, style.FULL, "all pairs"),
        (ax_zoom, data[data["in_zoom"]], style.ZOOM, f"zoom: |margin| ≤ {zoom:g}"),
    ):
        groups = [(s, frame.loc[frame["step"] == s, "margin"].to_numpy()) for s in steps]
        groups = [(s, v) for s, v in groups if len(v) > 1]
        if groups:
            parts = ax.violinplot([v for _, v in groups], positions=[s for s, _ in groups], widths=_width(steps))
            for body in parts["bodies"]:
                body.set_facecolor(color)
                body.set_edgecolor(color)
                body.set_alpha(0.55)
            for key in ("cmins", "cmaxes", "cbars"):
                parts[key].set_color(color)
        ax.axhline(0.0, color=style.GAMMA0, lw=0.8, ls=":")
        ax.set_ylabel("reward margin m = r_w − r_l (β-scaled)")
        ax.set_title(f"Reward-margin distribution over training — {title}")
        ax.grid(axis="y", alpha=0.3)
    ax_zoom.set_ylim(-zoom * 1.05, zoom * 1.05)
    ax_zoom.set_xlabel("training step")
    csv = out_dir / "margin_distribution.csv"
    data.to_csv(csv, index=False)
    return [style.save(fig, out_dir / "margin_distribution.png"), csv]


def _width(steps: Sequence[int]) -> float:
    gaps = np.diff(sorted(steps))
    return 0.8 * float(gaps.min()) if len(gaps) else 0.8


def gamma_vs_margin(
    dumps: pd.DataFrame, gamma0: float, out_dir: Path, steps: Sequence[int], tau: float | None = None
) -> list[Path]:
    """Paper Figure 5: γ_i against the reward margin for ``steps``, with the γ0 line (and τ bounds)."""
    data = dumps.loc[dumps["step"].isin(steps) & dumps["gamma"].notna(), [*KEYS, "margin", "gamma"]]
    fig, ax = plt.subplots(figsize=(7.0, 4.8))
    for step, color in zip(steps, style.step_colors(len(steps)), strict=True):
        part = data[data["step"] == step].sort_values("margin")
        ax.plot(part["margin"], part["gamma"], "o-", ms=3.5, lw=0.8, color=color, alpha=0.8, label=f"step {step}")
    ax.axhline(gamma0, color=style.GAMMA0, ls="--", lw=1.2, label=f"γ0 = {gamma0:g}")
    if tau is not None:
        for bound in (gamma0 * math.exp(-gamma0 / tau), gamma0 * math.exp(gamma0 / tau)):
            ax.axhline(bound, color=style.GAMMA0, ls=":", lw=0.8)
        ax.plot([], [], color=style.GAMMA0, ls=":", lw=0.8, label=f"γ0·e^(±γ0/τ), τ = {tau:g}")
    ax.set_xlabel("reward margin m = r_w − r_l (β-scaled)")
    ax.set_ylabel("target margin γ_i (β-scaled)")
    ax.set_title("Dynamic target margin γ_i against reward margin")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    csv = out_dir / "gamma_vs_margin.csv"
    data.to_csv(csv, index=False)
    return [style.save(fig, out_dir / "gamma_vs_margin.png"), csv]


def epsilon_vs_margin(dumps: pd.DataFrame, gamma0: float, out_dir: Path, steps: Sequence[int]) -> list[Path]:
    """Implied label smoothing ε_i (eq. 14) against margin; hollow markers where |δ| ≪ |m| fails."""
    data = dumps.loc[dumps["step"].isin(steps) & dumps["gamma"].notna(), [*KEYS, "margin", "gamma"]].copy()
    data["gamma0"] = gamma0
    data["delta"] = data["gamma"] - gamma0
    data["epsilon"] = implied_label_smoothing(data["margin"], data["gamma"], gamma0)
    data["approx_holds"] = approximation_holds(data["margin"], data["gamma"], gamma0)
    fig, ax = plt.subplots(figsize=(7.0, 4.8))
    for step, color in zip(steps, style.step_colors(len(steps)), strict=True):
        part = data[(data["step"] == step) & data["epsilon"].notna()]
        good = part[part["approx_holds"]]
        bad = part[~part["approx_holds"]]
        ax.scatter(good["margin"], good["epsilon"], s=14, color=color, label=f"step {step}")
        ax.scatter(bad["margin"], bad["epsilon"], s=14, facecolors="none", edgecolors=color, alpha=0.7)
    ax.scatter([], [], s=14, facecolors="none", edgecolors="grey", label="|γ_i − γ0| > 0.1·|m| (approx. weak)")
    ax.axhline(0.0, color=style.GAMMA0, lw=0.8)
    ax.axvline(0.0, color=style.GAMMA0, lw=0.8, ls=":", label="m = 0 (ε undefined)")
    finite = data["epsilon"].dropna()
    if len(finite) > 4:
        lo, hi = finite.quantile(0.02), finite.quantile(0.98)
        pad = 0.2 * max(hi - lo, 1e-6)
        ax.set_ylim(lo - pad, hi + pad)
    ax.set_xlabel("reward margin m = r_w − r_l (β-scaled)")
    ax.set_ylabel("implied label smoothing ε_i (eq. 14)")
    ax.set_title(f"γ-PO as per-pair label smoothing (γ0 = {gamma0:g}; y clipped to 2–98% quantiles)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    csv = out_dir / "epsilon_vs_margin.csv"
    data.to_csv(csv, index=False)
    return [style.save(fig, out_dir / "epsilon_vs_margin.png"), csv]


CURVE_KEYS = (
    "train/loss",
    "val/loss",
    "train/acc",
    "val/acc",
    "train/gamma_po/gamma_mean",
    "train/gamma_po/gamma_std",
    "train/gamma_po/gamma_min",
    "train/gamma_po/gamma_max",
    "train/gamma_po/margin_mean",
    "train/gamma_po/margin_std",
)


def curves_frame(history: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """One row per logged step; the columns of :data:`CURVE_KEYS` that the history has."""
    rows: dict[int, dict[str, float]] = {}
    for rec in history:
        row = rows.setdefault(int(rec["step"]), {"step": int(rec["step"])})
        row.update({k: float(rec[k]) for k in CURVE_KEYS if k in rec})
    return pd.DataFrame(sorted(rows.values(), key=lambda r: r["step"]))


def training_curves(history: Sequence[dict[str, Any]], gamma0: float | None, out_dir: Path) -> list[Path]:
    """Loss, preference accuracy, γ statistics and margin from ``metrics.jsonl`` (2×2 panels).

    The γ0 reference line is drawn when ``gamma0`` is known (not ``None``).
    """
    frame = curves_frame(history)
    fig, axes = plt.subplots(2, 2, figsize=(10.0, 7.0), sharex=True)
    for ax, key, ylabel in ((axes[0, 0], "loss", "preference loss"), (axes[0, 1], "acc", "preference accuracy")):
        for split, color, marker in (("train", style.TRAIN, ""), ("val", style.VAL, "o")):
            col = f"{split}/{key}"
            if col in frame:
                part = frame[["step", col]].dropna()
                ax.plot(part["step"], part[col], marker=marker, ms=4, color=color, label=split)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
    axes[0, 1].set_ylim(-0.02, 1.02)
    _band(axes[1, 0], frame, "train/gamma_po/gamma", "γ_i (train)", style.TRAIN)
    _band(axes[1, 1], frame, "train/gamma_po/margin", "margin (train)", style.FULL)
    if gamma0 is not None:
        for ax in axes[1]:
            ax.axhline(gamma0, color=style.GAMMA0, ls="--", lw=1.0, label=f"γ0 = {gamma0:g}")
    axes[1, 0].set_ylabel("target margin γ (β-scaled)")
    axes[1, 1].set_ylabel("reward margin m (β-scaled)")
    for ax in axes[1]:
        if ax.get_legend_handles_labels()[0]:  # nothing to label without γ statistics and γ0
            ax.legend(fontsize=8)
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("training step")
    fig.suptitle("Training curves")
    csv = out_dir / "training_curves.csv"
    frame.to_csv(csv, index=False)
    return [style.save(fig, out_dir / "training_curves.png"), csv]


def _band(ax: Any, frame: pd.DataFrame, prefix: str, label: str, color: str) -> None:
    mean, std = f"{prefix}_mean", f"{prefix}_std"
    if mean not in frame:
        ax.text(0.5, 0.5, "not logged by this loss", ha="center", va="center", transform=ax.transAxes)
        return
    part = frame.dropna(subset=[mean])
    ax.plot(part["step"], part[mean], color=color, label=f"{label}: mean")
    if std in part:
        ax.fill_between(
            part["step"], part[mean] - part[std], part[mean] + part[std], color=color, alpha=0.2, label="± std"
        )
    for extreme in ("min", "max"):
        col = f"{prefix}_{extreme}"
        if col in part:
            ax.plot(part["step"], part[col], color=color, ls=":", lw=0.8)
