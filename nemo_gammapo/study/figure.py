"""The study's figures, drawn from the written CSVs (so a figure shows exactly the committed numbers).

* ``robustness.png`` — accuracy and paired differences to the base loss against flip rate;
* ``robustness_spearman.png`` — the same for Spearman ρ(implicit reward, R);
* ``robustness_curves.png`` — held-out accuracy over training (the task's difficulty);
* ``robustness_mechanism.png`` — γ_i − γ0 and the implied ε_i, flipped vs clean, over training and by |ΔR|;
* ``robustness_detection.png`` — AUROC of the suspects ranking for the flips.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from nemo_gammapo.study.methods import PRIMARY_TAU, get_method
from nemo_gammapo.study.report import headline_methods, method_labels
from nemo_gammapo.viz import style
from nemo_gammapo.viz.style import plt

FAMILIES = ("simpo", "dpo")


def _color(key: str) -> str:
    m = get_method(key)
    if m.tau is not None and m.tau != PRIMARY_TAU:
        return style.step_colors(4)[[1.0, 3.0, 10.0, 30.0].index(m.tau)] if m.tau in (1.0, 3.0, 30.0) else "#999999"
    if m.tuned or (m.epsilon is not None and m.epsilon != "p"):
        return "#85c1e9"
    return style.method_color(m.loss.replace("dpo", "simpo"))


def _errorbars(ax, part: pd.DataFrame, prefix: str, scale: float, key: str, dx: float, label: str) -> None:
    x = 100 * part["flip_rate"].to_numpy() + dx
    mean, low, high = (scale * part[f"{prefix}_{s}"].to_numpy() for s in ("mean", "low", "high"))
    ax.errorbar(
        x,
        mean,
        yerr=[mean - low, high - mean],
        color=_color(key),
        marker="o",
        capsize=3,
        ms=4,
        label=label,
    )


def _by_family(
    summary: pd.DataFrame, metric: str, scale: float, ylabel: str, path: Path, results: pd.DataFrame
) -> Path:
    heads = headline_methods(results)
    labels = method_labels(results)
    fig, axes = plt.subplots(2, 2, figsize=(12.0, 8.5), sharex=True)
    for col, fam in enumerate(FAMILIES):
        keys = [k for k in heads if get_method(k).base == fam]
        offsets = np.linspace(-0.8, 0.8, len(keys))
        for key, dx in zip(keys, offsets, strict=True):
            part = summary[summary["method"] == key].sort_values("flip_rate")
            _errorbars(axes[0, col], part, metric, scale, key, dx, labels[key])
            if key != fam:
                _errorbars(axes[1, col], part, f"d_{metric}", scale, key, dx, labels[key])
        axes[0, col].set_title(f"{get_method(fam).label} family: mean [95 % bootstrap CI] over seeds")
        axes[1, col].set_title(f"paired difference to {get_method(fam).label} (same seed)")
        axes[1, col].axhline(0, color=style.GAMMA0, lw=0.8, ls=":")
        axes[0, col].set_ylabel(ylabel)
        axes[1, col].set_ylabel(f"Δ {ylabel}")
        axes[1, col].set_xlabel("label-flip rate of the training split (%)")
        for ax in axes[:, col]:
            ax.set_xticks(sorted(100 * summary["flip_rate"].unique()))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    return style.save(fig, path)


def curves_figure(curves: pd.DataFrame, path: Path) -> Path:
    """Held-out accuracy over training for the base losses, one line per flip rate (mean ± CI band)."""
    from nemo_gammapo.study.stats import bootstrap_ci

    fig, axes = plt.subplots(1, 2, figsize=(11.0, 4.2), sharey=True)
    rates = sorted(curves["flip_rate"].unique())
    colors = style.step_colors(len(rates))
    for ax, fam in zip(axes, FAMILIES, strict=True):
        for rate, color in zip(rates, colors, strict=True):
            part = curves[(curves["method"] == fam) & (curves["flip_rate"] == rate)]
            if part.empty:
                continue
            stats = [(s, *bootstrap_ci(g["heldout_accuracy"].to_numpy())) for s, g in part.groupby("step")]
            steps, mean, low, high = (np.array(v) for v in zip(*stats, strict=True))
            ax.plot(steps, 100 * mean, color=color, marker="o", ms=3, label=f"flip {rate:.0%}")
            ax.fill_between(steps, 100 * low, 100 * high, color=color, alpha=0.2)
        ax.axhline(50, color=style.GAMMA0, lw=0.8, ls=":")
        ax.set_title(f"{get_method(fam).label}: held-out true-preference accuracy")
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("accuracy (%)")
    return style.save(fig, path)


def mechanism_figure(mech: pd.DataFrame, path: Path) -> Path:
    """Rows: γ-SimPO, γ-DPO (primary τ). Columns: γ_i − γ0 and median ε_i over training (flipped
    dashed, clean solid, one colour per flip rate); γ_i − γ0 of clean pairs by |ΔR| (last phase)."""
    fig, axes = plt.subplots(2, 3, figsize=(16.0, 8.0))
    rates = sorted(mech["flip_rate"].unique())
    colors = style.step_colors(len(rates))
    for row, fam in enumerate(FAMILIES):
        key = f"gamma_{fam}@tau{PRIMARY_TAU:g}"
        part = mech[(mech["method"] == key)]
        for rate, color in zip(rates, colors, strict=True):
            flip = part[(part["flip_rate"] == rate) & (part["kind"] == "flip")]
            for group, ls in (("clean", "-"), ("flipped", "--")):
                g = flip[flip["group"] == group].sort_values("phase")
                if g.empty:
                    continue
                for col, prefix in ((0, "delta"), (1, "eps")):
                    axes[row, col].errorbar(
                        g["phase"] + 1,
                        g[f"{prefix}_mean"],
                        yerr=[g[f"{prefix}_mean"] - g[f"{prefix}_low"], g[f"{prefix}_high"] - g[f"{prefix}_mean"]],
                        color=color,
                        ls=ls,
                        marker="o",
                        ms=3,
                        capsize=2,
                        label=f"flip {rate:.0%}, {group}",
                    )
            gap = part[(part["flip_rate"] == rate) & (part["kind"] == "gap")]
            last = gap[gap["phase"] == gap["phase"].max()] if len(gap) else gap
            if len(last):
                order = sorted(last["group"].unique(), key=lambda s: float(s.replace("≥", "").split("–")[0]))
                last = last.set_index("group").loc[order]
                axes[row, 2].errorbar(
                    range(len(order)),
                    last["delta_mean"],
                    yerr=[last["delta_mean"] - last["delta_low"], last["delta_high"] - last["delta_mean"]],
                    color=color,
                    marker="o",
                    ms=3,
                    capsize=2,
                    label=f"flip {rate:.0%}",
                )
                axes[row, 2].set_xticks(range(len(order)), order)
        label = get_method(key).label
        axes[row, 0].set_title(f"{label}: γ_i − γ0, flipped (dashed) vs clean")
        axes[row, 1].set_title(f"{label}: implied ε_i (eq. 14), per-run median")
        axes[row, 2].set_title(f"{label}: clean pairs by |ΔR|, last quarter")
        axes[row, 2].set_ylabel("γ_i − γ0")
        axes[row, 0].set_ylabel("mean over seeds [95 % CI]")
        for col in range(3):
            axes[row, col].axhline(0, color=style.GAMMA0, lw=0.8, ls=":")
            axes[row, col].grid(alpha=0.3)
        axes[row, 0].legend(fontsize=6, ncol=2)
        axes[row, 2].legend(fontsize=7)
        for col in (0, 1):
            axes[row, col].set_xlabel("training quarter")
            axes[row, col].set_xticks(range(1, int(mech["phase"].max()) + 2))
        axes[row, 2].set_xlabel("|ΔR| (reward units)")
    return style.save(fig, path)


def detection_figure(det: pd.DataFrame, path: Path) -> Path:
    """AUROC for the flips against flip rate: each γ method's γ-score, the base and γ runs' margins."""
    fig, axes = plt.subplots(1, 2, figsize=(12.0, 4.5), sharey=True)
    for ax, fam in zip(axes, FAMILIES, strict=True):
        part = det[det["base"] == fam]
        for (key, score), g in part.groupby(["method", "score"], sort=False):
            m = get_method(key)
            if not (score == "gamma" or key == fam or m.tau == PRIMARY_TAU):
                continue
            g = g.sort_values("flip_rate")
            ls = "-" if score == "gamma" else "--"
            color = _color(key) if score == "gamma" or key != fam else style.method_color("simpo")
            mean = g["auroc_mean"].to_numpy()
            ax.errorbar(
                100 * g["flip_rate"],
                mean,
                yerr=[mean - g["auroc_low"], g["auroc_high"] - mean],
                color=color,
                ls=ls,
                marker="o",
                ms=4,
                capsize=3,
                label=f"{m.label}: {'γ_i' if score == 'gamma' else 'margin'}",
            )
        ax.axhline(0.5, color=style.GAMMA0, lw=0.8, ls=":")
        ax.set_title(f"{get_method(fam).label} family: finding the flipped pairs (suspects ranking)")
        ax.set_xlabel("label-flip rate of the training split (%)")
        ax.set_xticks(sorted(100 * det["flip_rate"].unique()))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("AUROC (flipped vs clean), mean [95 % CI]")
    return style.save(fig, path)


def write_figures(study_dir: Path, main: Path) -> list[Path]:
    """All figures from the CSVs in ``study_dir``; the others are written beside ``main``."""
    results = pd.read_csv(study_dir / "results.csv")
    summary = pd.read_csv(study_dir / "summary.csv")
    out = [
        _by_family(summary, "acc", 100.0, "held-out true-preference accuracy (%)", main, results),
        _by_family(
            summary, "rho", 1.0, "Spearman ρ(implicit reward, R)", main.with_name("robustness_spearman.png"), results
        ),
        curves_figure(pd.read_csv(study_dir / "curves.csv"), main.with_name("robustness_curves.png")),
    ]
    mech_path = study_dir / "mechanism_summary.csv"
    if mech_path.stat().st_size > 1:
        out.append(mechanism_figure(pd.read_csv(mech_path), main.with_name("robustness_mechanism.png")))
    det_path = study_dir / "detection.csv"
    if det_path.stat().st_size > 1:
        out.append(detection_figure(pd.read_csv(det_path), main.with_name("robustness_detection.png")))
    return out
