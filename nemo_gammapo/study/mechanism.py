"""The mechanism, measured on one run's γ dumps: γ_i − γ0 and the implied ε_i (paper eq. 14) for
flipped vs clean pairs and by true gap |ΔR|, over training; and how well the dumps find the flips.

Flip detection uses exactly the scoring of ``nemo-gammapo data suspects``
(:func:`nemo_gammapo.data.suspects.score_pairs`), so the study evaluates the shipped tool.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pandas as pd

from nemo_gammapo.data.suspects import score_pairs
from nemo_gammapo.study.stats import auroc, precision_at_k
from nemo_gammapo.viz.epsilon import implied_label_smoothing

PHASES = 4  # training is split into this many equal step ranges
GAP_BINS = (0.0, 0.5, 1.0, 2.0, np.inf)  # |ΔR| bins (reward units; the BT temperature is 0.5)


def gap_bin_labels() -> list[str]:
    return [f"{lo:g}–{hi:g}" if np.isfinite(hi) else f"≥{lo:g}" for lo, hi in itertools.pairwise(GAP_BINS)]


def pair_table(train: list[dict[str, Any]]) -> pd.DataFrame:
    """Per training pair: ``pair_id``, ``flipped``, signed true gap of its (noisy) label, ``wrong`` vs the truth."""
    gap = np.array([r["chosen_reward"] - r["rejected_reward"] for r in train])
    return pd.DataFrame(
        {
            "pair_id": [r["pair_id"] for r in train],
            "flipped": [bool(r["label_flipped"]) for r in train],
            "label_gap": gap,
            "abs_gap": np.abs(gap),
            "wrong": gap < 0,
        }
    )


def implied_epsilon(margin: np.ndarray, gamma: np.ndarray, gamma0: float, base: str) -> np.ndarray:
    """ε_i of eq. 14. SimPO family: base target γ0, γ-PO's γ_i. DPO family (offset convention): base
    target 0, γ-PO's target γ_i − γ0."""
    if base == "simpo":
        return implied_label_smoothing(margin, gamma, gamma0)
    return implied_label_smoothing(margin, gamma - gamma0, 0.0)


def detection(dumps: pd.DataFrame, pairs: pd.DataFrame, score: str) -> dict[str, float]:
    """AUROC and precision@K (K = number of flipped pairs seen) of the suspects ranking for the flips."""
    ranked = score_pairs(dumps, score).merge(pairs, on="pair_id", how="inner")
    k = int(ranked["flipped"].sum())
    return {
        "auroc": auroc(ranked["score"], ranked["flipped"]),
        "precision_at_k": precision_at_k(ranked["score"], ranked["flipped"], k),
        "auroc_wrong": auroc(ranked["score"], ranked["wrong"]),
    }


def mechanism_rows(dumps: pd.DataFrame, pairs: pd.DataFrame, gamma0: float, base: str, steps: int) -> pd.DataFrame:
    """Long table: per training phase and group (``flip``: flipped/clean; ``gap``: |ΔR| bin of clean
    pairs), the mean of γ_i − γ0, the median implied ε_i and the number of observations."""
    d = dumps[dumps["valid"].astype(bool)].merge(pairs, on="pair_id", how="inner")
    d = d.assign(
        delta=d["gamma"] - gamma0,
        eps=implied_epsilon(d["margin"].to_numpy(), d["gamma"].to_numpy(), gamma0, base),
        phase=np.minimum(d["step"] * PHASES // max(steps, 1), PHASES - 1),
        gap_bin=pd.cut(d["abs_gap"], GAP_BINS, right=False, labels=gap_bin_labels()).astype(str),
    )
    out = []
    groupings = (
        ("flip", d.assign(group=np.where(d["flipped"], "flipped", "clean"))),
        ("gap", d[~d["flipped"]].assign(group=d.loc[~d["flipped"], "gap_bin"])),
    )
    for kind, frame in groupings:
        agg = frame.groupby(["phase", "group"]).agg(
            delta_mean=("delta", "mean"),
            eps_median=("eps", "median"),
            margin_mean=("margin", "mean"),
            n=("delta", "size"),
        )
        out.append(agg.reset_index().assign(kind=kind))
    return pd.concat(out, ignore_index=True)


def analyse_run(
    dumps: pd.DataFrame, train: list[dict[str, Any]], gamma0: float, base: str, steps: int, is_gamma: bool
) -> tuple[dict[str, float], pd.DataFrame]:
    """Detection metrics for the run (``margin`` always, ``gamma`` for γ-PO runs) and the mechanism
    rows (γ columns are NaN for runs without γ-PO)."""
    pairs = pair_table(train)
    metrics: dict[str, float] = {}
    if pairs["flipped"].any():
        for score in ("margin", "gamma") if is_gamma else ("margin",):
            for name, value in detection(dumps, pairs, score).items():
                metrics[f"{score}_{name}"] = value
    return metrics, mechanism_rows(dumps, pairs, gamma0, base, steps)
