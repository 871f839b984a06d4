"""Implied per-pair label smoothing of γ-PO (paper Theorem 3.1, eq. 14).

Equating rDPO's label-smoothed loss at target γ0 with γ-PO's loss at target γ_i = γ0 + δ and
expanding to first order in δ gives::

    ε ≈ δ · [1 − σ(m − γ0)] / [log(1 + e^{m+γ0}) − log(1 + e^{γ0−m})]

with ``m`` the β-scaled reward margin. Here ``1 − σ(x) = σ(−x)`` and ``log(1 + e^x)`` is the
softplus, so the expression stays finite for any margin. The denominator vanishes at ``m = 0``
(ε is undefined there); margins with ``|m| < min_abs_margin`` give NaN. The approximation assumes
``|δ| ≪ |m|``; :func:`approximation_holds` flags the pairs where that is true.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray


def _softplus(x: NDArray[np.float64]) -> NDArray[np.float64]:
    return np.logaddexp(0.0, x)


def _sigmoid(x: NDArray[np.float64]) -> NDArray[np.float64]:
    return np.exp(-_softplus(-x))


def implied_label_smoothing(
    margin: ArrayLike, gamma: ArrayLike, gamma0: float, min_abs_margin: float = 1e-3
) -> NDArray[np.float64]:
    """ε_i of eq. 14 for β-scaled margins ``margin`` and target margins ``gamma`` (same shape, any).

    Args:
        margin: β-scaled reward margins m_i = r_w − r_l (reward units, as dumped).
        gamma: per-pair target margins γ_i (same units).
        gamma0: base target margin γ0 = (γ/β)·β.
        min_abs_margin: margins closer to 0 than this return NaN (the singular point).

    Returns:
        float64 array of ε_i, NaN where ``|m| < min_abs_margin`` or an input is not finite.
    """
    m = np.asarray(margin, dtype=np.float64)
    delta = np.asarray(gamma, dtype=np.float64) - gamma0
    numerator = delta * _sigmoid(gamma0 - m)
    denominator = _softplus(m + gamma0) - _softplus(gamma0 - m)
    ok = np.isfinite(m) & np.isfinite(delta) & (np.abs(m) >= min_abs_margin)
    safe = np.where(ok, denominator, 1.0)
    return np.where(ok, numerator / safe, np.nan)


def approximation_holds(margin: ArrayLike, gamma: ArrayLike, gamma0: float, ratio: float = 0.1) -> NDArray[np.bool_]:
    """True where Theorem 3.1's condition ``|δ| ≪ |m|`` holds, read as ``|γ_i − γ0| ≤ ratio·|m|``."""
    m = np.asarray(margin, dtype=np.float64)
    delta = np.asarray(gamma, dtype=np.float64) - gamma0
    return np.abs(delta) <= ratio * np.abs(m)
