"""The study's statistics: rank correlation, AUROC, precision@K and paired bootstrap intervals.

All of them are small, exact and deterministic (the bootstrap takes a fixed seed).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import rankdata

BOOTSTRAP_SEED = 20240917
BOOTSTRAP_RESAMPLES = 10_000


def spearman(x: ArrayLike, y: ArrayLike) -> float:
    """Spearman's ρ (Pearson correlation of average ranks); NaN when either side is constant."""
    rx, ry = rankdata(np.asarray(x, dtype=np.float64)), rankdata(np.asarray(y, dtype=np.float64))
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def auroc(scores: ArrayLike, positives: ArrayLike) -> float:
    """Area under the ROC curve of ``scores`` (higher = more positive), ties counted ½ (Mann–Whitney U).

    NaN when there are no positives or no negatives.
    """
    s = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(positives, dtype=bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def precision_at_k(scores: ArrayLike, positives: ArrayLike, k: int) -> float:
    """Share of positives among the ``k`` highest scores (stable order on ties); NaN for ``k < 1``."""
    if k < 1:
        return float("nan")
    s = np.asarray(scores, dtype=np.float64)
    top = np.argsort(-s, kind="stable")[:k]
    return float(np.asarray(positives, dtype=bool)[top].mean())


def bootstrap_ci(
    values: ArrayLike, level: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED
) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean of ``values`` (one per seed) and its percentile bootstrap interval.

    Resamples seeds with replacement; for paired differences pass the per-seed differences.
    A single value gives ``(v, v, v)``; NaNs are dropped first.
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    if v.size == 1:
        return float(v[0]), float(v[0]), float(v[0])
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(resamples, v.size))].mean(axis=1)
    alpha = (1 - level) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return float(v.mean()), float(low), float(high)
