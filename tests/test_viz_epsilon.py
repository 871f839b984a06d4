"""ε_i of the plots tool against paper eq. 14 evaluated independently with scalar Python math."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nemo_gammapo.viz.epsilon import approximation_holds, implied_label_smoothing


def eq14(m: float, gamma: float, gamma0: float) -> float:
    """Eq. 14 written literally: δ·[1 − σ(m − γ0)] / [log(1 + e^{m+γ0}) − log(1 + e^{γ0−m})]."""
    delta = gamma - gamma0
    sigma = 1.0 / (1.0 + math.exp(-(m - gamma0)))
    return delta * (1.0 - sigma) / (math.log(1.0 + math.exp(m + gamma0)) - math.log(1.0 + math.exp(gamma0 - m)))


@pytest.mark.parametrize("gamma0", [0.0, 0.5, 1.0, 3.0])
def test_matches_eq14_on_scalars(gamma0: float) -> None:
    rng = np.random.default_rng(0)
    margins = np.concatenate([rng.uniform(-8, 8, 200), [-0.01, 0.01, 0.5, -0.5, 5.0]])
    gammas = gamma0 + rng.uniform(-0.3, 0.3, margins.size)
    got = implied_label_smoothing(margins, gammas, gamma0)
    want = np.array([eq14(float(m), float(g), gamma0) for m, g in zip(margins, gammas, strict=True)])
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def test_singular_point_and_non_finite_inputs_are_masked() -> None:
    eps = implied_label_smoothing([0.0, 1e-4, -1e-4, np.nan, 1.0], [1.1, 1.1, 1.1, 1.1, np.inf], 1.0)
    assert np.isnan(eps).all()


def test_stable_for_large_margins() -> None:
    eps = implied_label_smoothing([-200.0, 200.0, 800.0], [0.9, 1.1, 1.2], 1.0)
    assert np.isfinite(eps).all()
    assert abs(eps[1]) < 1e-80 and eps[2] == pytest.approx(0.0, abs=1e-300)
    # m → −∞: σ(γ0 − m) → 1 and the denominator → m − γ0, so ε → δ / (m − γ0)
    assert eps[0] == pytest.approx(-0.1 / (-200.0 - 1.0), rel=1e-9)


def test_sign_and_monotone_shrink_with_margin() -> None:
    m = np.array([0.5, 1.0, 2.0, 4.0])
    eps = implied_label_smoothing(m, np.full(4, 1.2), 1.0)
    assert (eps > 0).all() and (np.diff(eps) < 0).all()  # larger margin → sharper label


def test_approximation_condition() -> None:
    np.testing.assert_array_equal(approximation_holds([10.0, 0.5], [1.5, 1.5], 1.0), [True, False])
