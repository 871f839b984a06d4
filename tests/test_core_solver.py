"""Properties of the paper's appendix-C γ solver, as stated in the README section "How γ is computed"."""

import math

import pytest
import torch

from nemo_gammapo.core.solver import solve_gamma

# The paper's Table 7 settings as (γ0 = ratio·β, τ).
PAPER_SETTINGS = [(4.0, 10.0), (0.375, 10.0), (5.0, 20.0), (3.0, 3.0)]


def margins(n: int = 256, seed: int = 0, scale: float = 2.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=g) * scale + 1.0


@pytest.mark.parametrize("gamma0,tau", PAPER_SETTINGS)
def test_mean_gamma_is_gamma0(gamma0: float, tau: float) -> None:
    gamma = solve_gamma(margins(), gamma0, tau)
    assert gamma.mean().item() == pytest.approx(gamma0, rel=1e-5)


@pytest.mark.parametrize("gamma0,tau", PAPER_SETTINGS)
def test_gamma_increases_with_margin(gamma0: float, tau: float) -> None:
    r = margins()
    gamma = solve_gamma(r, gamma0, tau)
    order = torch.argsort(r)
    assert torch.all(torch.diff(gamma[order]) >= -1e-6)
    assert gamma[order][-1] > gamma[order][0]


@pytest.mark.parametrize("gamma0,tau", [*PAPER_SETTINGS, (2.0, 0.3)])
@pytest.mark.parametrize("method", ["mirror_descent", "exact"])
def test_bounds(gamma0: float, tau: float, method: str) -> None:
    gamma = solve_gamma(margins(scale=20.0), gamma0, tau, method=method)
    lo, hi = gamma0 * math.exp(-gamma0 / tau), gamma0 * math.exp(gamma0 / tau)
    assert gamma.min().item() >= lo * (1 - 1e-5)
    assert gamma.max().item() <= hi * (1 + 1e-5)


@pytest.mark.parametrize("gamma0,tau", PAPER_SETTINGS)
def test_mirror_descent_matches_exact_fixed_point(gamma0: float, tau: float) -> None:
    r = margins()
    md = solve_gamma(r, gamma0, tau, num_iters=20)
    exact = solve_gamma(r, gamma0, tau, method="exact")
    torch.testing.assert_close(md, exact, atol=1e-5, rtol=0)


@pytest.mark.parametrize("gamma0,tau", PAPER_SETTINGS)
def test_gradient_of_F_is_constant_at_the_solution(gamma0: float, tau: float) -> None:
    """KKT on the simplex: ∂F/∂p_i = γ0·σ(γ_i − r_i) + τ·(1 + log(n·p_i)) is the same for all i."""
    r = margins().double()
    n = r.numel()
    gamma = solve_gamma(r, gamma0, tau, method="exact")
    p = gamma / (n * gamma0)
    # Evaluate the gradient with autograd on F itself, independently of the solver's formula.
    p_var = p.clone().requires_grad_(True)
    F = (-torch.nn.functional.logsigmoid(r - n * gamma0 * p_var)).mean() + tau * (p_var * torch.log(n * p_var)).sum()
    (grad,) = torch.autograd.grad(F, p_var)
    assert (grad.max() - grad.min()).item() < 1e-8
    md = solve_gamma(r, gamma0, tau).double() / (n * gamma0)
    p_var = md.clone().requires_grad_(True)
    F = (-torch.nn.functional.logsigmoid(r - n * gamma0 * p_var)).mean() + tau * (p_var * torch.log(n * p_var)).sum()
    (grad,) = torch.autograd.grad(F, p_var)
    assert (grad.max() - grad.min()).item() < 1e-4 * max(gamma0, 1.0)


def test_solution_minimises_F_on_the_simplex() -> None:
    r, gamma0, tau = margins(64).double(), 4.0, 10.0
    n = r.numel()

    def F(p: torch.Tensor) -> float:
        return (
            (-torch.nn.functional.logsigmoid(r - n * gamma0 * p)).mean() + tau * (p * torch.log(n * p)).sum()
        ).item()

    best = solve_gamma(r, gamma0, tau, method="exact") / (n * gamma0)
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        q = best * torch.exp(0.05 * torch.randn(n, generator=g, dtype=torch.float64))
        assert F(q / q.sum()) >= F(best) - 1e-12


def test_matches_a_literal_multiplicative_update() -> None:
    """Our log-domain loop equals the appendix-C update written out literally (eqs. 23–24)."""
    r, gamma0, tau = margins(128).double(), 4.0, 10.0
    n = r.numel()
    eta = min(0.5 / tau, 1.0)
    p = torch.full_like(r, 1.0 / n)
    for _ in range(20):
        grad = gamma0 / (1 + torch.exp(r - n * p * gamma0)) + tau * (1 + torch.log(n * p))
        p = p * torch.exp(-eta * grad)
        p = p / p.sum()
    torch.testing.assert_close(solve_gamma(r, gamma0, tau), n * gamma0 * p, atol=1e-10, rtol=1e-10)


def test_shape_dtype_device_and_detached() -> None:
    r = margins(12).reshape(3, 4).requires_grad_(True)
    gamma = solve_gamma(r, 1.0, 5.0)
    assert gamma.shape == r.shape and gamma.dtype == r.dtype and gamma.device == r.device
    assert not gamma.requires_grad
    bf = solve_gamma(margins(8).bfloat16(), 1.0, 5.0)
    assert bf.dtype == torch.bfloat16


def test_gamma0_zero_returns_zeros() -> None:
    assert torch.equal(solve_gamma(margins(), 0.0, 10.0), torch.zeros(256))


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"gamma0": -1.0, "tau": 1.0}, "gamma0"),
        ({"gamma0": 1.0, "tau": 0.0}, "tau"),
        ({"gamma0": 1.0, "tau": -2.0}, "tau"),
    ],
)
def test_invalid_arguments_raise_naming_the_argument(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        solve_gamma(margins(), **kwargs)


def test_non_finite_margins_are_excluded_and_get_gamma0() -> None:
    r = margins(10)
    dirty = r.clone()
    dirty[[2, 7]] = torch.tensor([float("nan"), float("inf")])
    gamma = solve_gamma(dirty, 2.0, 5.0)
    keep = torch.tensor([i not in (2, 7) for i in range(10)])
    assert torch.all(torch.isfinite(gamma))
    assert gamma[2].item() == 2.0 and gamma[7].item() == 2.0
    torch.testing.assert_close(gamma[keep], solve_gamma(r[keep], 2.0, 5.0))


def test_valid_mask_equals_solving_the_subset() -> None:
    r = margins(10)
    valid = torch.tensor([True, False] * 5)
    gamma = solve_gamma(r, 2.0, 5.0, valid=valid)
    torch.testing.assert_close(gamma[valid], solve_gamma(r[valid], 2.0, 5.0))
    assert torch.all(gamma[~valid] == 2.0)


def test_all_invalid_gives_gamma0() -> None:
    gamma = solve_gamma(torch.full((4,), float("nan")), 2.0, 5.0)
    assert torch.equal(gamma, torch.full((4,), 2.0))


def test_equal_margins_give_gamma0() -> None:
    torch.testing.assert_close(solve_gamma(torch.full((16,), 0.7), 3.0, 10.0), torch.full((16,), 3.0))


@pytest.mark.slow
def test_compiled_solver_matches_eager_with_padding() -> None:
    """torch.compile path: same γ, padded to a fixed size, across different set sizes."""
    for n in (37, 64):
        r = margins(n)
        eager = solve_gamma(r, 4.0, 10.0)
        compiled = solve_gamma(r, 4.0, 10.0, compile=True, pad_to=96)
        torch.testing.assert_close(compiled, eager, atol=1e-6, rtol=0)
