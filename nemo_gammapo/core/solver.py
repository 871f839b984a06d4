"""The γ solver of γ-PO (paper §3.1 eq. 9 and appendix C eqs. 22–24).

Given a solve set of ``n`` β-scaled reward margins ``r_i`` the solver finds the distribution ``p``
on the simplex that minimises

    F(p) = (1/n) · Σ_i −log σ(r_i − n·γ0·p_i)  +  τ · Σ_i p_i · log(n·p_i)

and returns the per-pair target margins ``γ_i = n·γ0·p_i`` (so ``mean(γ) = γ0``).

We work in the log-domain variable ``u_i = log(n·p_i)`` (``γ_i = γ0·e^{u_i}``); the uniform
start is ``u = 0`` and normalising ``p`` is ``u ← u − log mean(e^u)``. This is the same
multiplicative update as the paper's eq. 24, written so that it cannot underflow.

Everything here is detached, vectorised and free of device→host synchronisation: the number of
iterations is fixed and validity is handled with masks, never with boolean indexing.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

SOLVERS = ("mirror_descent", "exact")

# Fixed iteration counts of the exact solver's nested bisections. Each halves a bracket whose
# width is at most ~3·γ0 (outer) or γ0/τ (inner); 60 halvings take that below float64 resolution
# for any margin scale a user would configure.
_EXACT_OUTER_ITERS = 60
_EXACT_INNER_ITERS = 60


def check_gamma_args(gamma0: float, tau: float) -> None:
    """Raise ``ValueError`` naming the argument when ``gamma0`` or ``tau`` is out of range."""
    if not math.isfinite(gamma0) or gamma0 < 0:
        raise ValueError(f"gamma0 must be a finite number >= 0 (got {gamma0!r})")
    if not math.isfinite(tau) or tau <= 0:
        raise ValueError(f"tau must be a finite number > 0 (got {tau!r})")


def default_lr(tau: float) -> float:
    """The paper's step size ``η = min(0.5/τ, 1)`` (appendix C)."""
    return min(0.5 / tau, 1.0)


def solve_gamma(
    margins: Tensor,
    gamma0: float,
    tau: float,
    num_iters: int = 20,
    lr: float | None = None,
    *,
    valid: Tensor | None = None,
    method: str = "mirror_descent",
    compile: bool = False,
    pad_to: int | None = None,
) -> Tensor:
    """Per-pair dynamic target margins γ for a solve set of reward margins.

    Args:
        margins: β-scaled reward margins ``r_w − r_l``, any shape (flattened for the solve).
        gamma0: base target margin γ0 = ``gamma_beta_ratio · β`` (>= 0). ``0`` returns zeros.
        tau: KL weight τ (> 0); larger τ keeps γ closer to γ0.
        num_iters: mirror-descent updates T (the paper uses 20). Ignored by ``method="exact"``.
        lr: step size η; ``None`` selects the paper's ``min(0.5/τ, 1)``.
        valid: optional boolean mask, same shape as ``margins``; ``False`` entries (padding,
            fully masked pairs) are excluded from the solve. Non-finite margins are always
            excluded. Excluded entries are returned as γ0 and do not count towards ``n``.
        method: ``"mirror_descent"`` (the paper's algorithm) or ``"exact"`` (solves the
            fixed-point condition ``p_i ∝ exp(−(γ0/τ)·σ(γ_i − r_i))`` to float64 precision by
            nested bisection).
        compile: run the mirror-descent loop as one ``torch.compile``-d graph (one fused kernel
            instead of ~200 small ops; the first call compiles, tens of seconds on a CPU).
        pad_to: with ``compile``, pad the solve set to this many entries (masked) so that a
            growing queue does not trigger a recompilation per size.

    Returns:
        γ with the same shape, dtype and device as ``margins``, detached. Over the valid
        entries ``mean(γ) = γ0`` and ``γ0·e^(−γ0/τ) <= γ_i <= γ0·e^(γ0/τ)``.
    """
    check_gamma_args(gamma0, tau)
    if method not in SOLVERS:
        raise ValueError(f"method must be one of {SOLVERS} (got {method!r})")
    if num_iters < 1:
        raise ValueError(f"num_iters must be >= 1 (got {num_iters!r})")
    if lr is not None and not lr > 0:
        raise ValueError(f"lr must be > 0 or None (got {lr!r})")

    margins = margins.detach()
    if gamma0 == 0.0:
        return torch.zeros_like(margins)

    work_dtype = torch.float64 if margins.dtype == torch.float64 or method == "exact" else torch.float32
    r = margins.reshape(-1).to(work_dtype)
    ok = torch.isfinite(r)
    if valid is not None:
        ok = ok & valid.reshape(-1).to(device=r.device, dtype=torch.bool)
    r = torch.where(ok, r, torch.zeros_like(r))
    okf = ok.to(work_dtype)
    n = okf.sum().clamp_min(1.0)

    step = lr if lr is not None else default_lr(tau)
    if method == "exact":
        u = _solve_exact(r, okf, n, gamma0, tau)
    elif compile:
        size = r.numel()
        extra = max((pad_to or size) - size, 0)
        u = _compiled_mirror_descent()(
            torch.nn.functional.pad(r, (0, extra)),
            torch.nn.functional.pad(okf, (0, extra)),
            n,
            gamma0,
            tau,
            num_iters,
            step,
        )[:size]
    else:
        u = _solve_mirror_descent(r, okf, n, gamma0, tau, num_iters, step)

    gamma = torch.where(ok, gamma0 * torch.exp(u), torch.full_like(u, gamma0))
    return gamma.to(margins.dtype).reshape(margins.shape)


def _log_mean_exp(u: Tensor, okf: Tensor, n: Tensor) -> Tensor:
    """``log(mean_valid(e^u))`` computed stably; invalid entries contribute nothing."""
    return torch.logsumexp(torch.where(okf > 0, u, torch.full_like(u, -torch.inf)), dim=0) - torch.log(n)


def _solve_mirror_descent(
    r: Tensor, okf: Tensor, n: Tensor, gamma0: float, tau: float, num_iters: int, lr: float
) -> Tensor:
    """Appendix-C multiplicative weights from uniform p; returns ``u = log(n·p)``.

    The gradient is ``g_i = γ0·σ(γ_i − r_i) + τ·(1 + u_i)``; its constant ``τ`` shifts every
    entry equally and is removed by the normalisation, so the step is
    ``u ← (1 − η·τ)·u − η·γ0·σ(γ0·e^u − r)`` followed by ``u ← u − log mean(e^u)``.
    Invalid entries keep ``u = 0`` and are ignored by the normalisation.
    """
    keep, push = 1.0 - lr * tau, lr * gamma0
    invalid = okf <= 0
    log_n = torch.log(n)
    u = torch.zeros_like(r)
    for _ in range(num_iters):
        u = keep * u - push * torch.sigmoid(gamma0 * torch.exp(u) - r)
        u = u - (torch.logsumexp(u.masked_fill(invalid, -torch.inf), dim=0) - log_n)
    return u.masked_fill(invalid, 0.0)


_COMPILED: dict[str, Callable[..., Tensor]] = {}


def _compiled_mirror_descent() -> Callable[..., Tensor]:
    """The mirror-descent loop compiled once per process (static shapes, fully fused)."""
    if "md" not in _COMPILED:
        _COMPILED["md"] = torch.compile(_solve_mirror_descent, dynamic=False, fullgraph=True)
    return _COMPILED["md"]


def _solve_exact(r: Tensor, okf: Tensor, n: Tensor, gamma0: float, tau: float) -> Tensor:
    """Solve the KKT conditions of F exactly; returns ``u = log(n·p)``.

    Stationarity on the simplex reads ``h(u_i) := γ0·σ(γ0·e^{u_i} − r_i) + τ·u_i = c`` for one
    constant ``c``. ``h`` is strictly increasing, so ``u_i(c)`` is unique and lies in
    ``[(c − γ0)/τ, c/τ]`` (inner bisection); ``mean(e^{u(c)})`` increases with ``c`` and equals 1
    for some ``c`` in ``[−γ0, 2·γ0]`` (outer bisection).
    """

    def u_of_c(c: Tensor) -> Tensor:
        lo = torch.full_like(r, 0.0) + (c - gamma0) / tau
        hi = torch.full_like(r, 0.0) + c / tau
        for _ in range(_EXACT_INNER_ITERS):
            mid = 0.5 * (lo + hi)
            above = gamma0 * torch.sigmoid(gamma0 * torch.exp(mid) - r) + tau * mid > c
            hi = torch.where(above, mid, hi)
            lo = torch.where(above, lo, mid)
        return 0.5 * (lo + hi)

    c_lo = torch.full((), -gamma0, dtype=r.dtype, device=r.device)  # no host→device copy
    c_hi = torch.full((), 2.0 * gamma0, dtype=r.dtype, device=r.device)
    for _ in range(_EXACT_OUTER_ITERS):
        c_mid = 0.5 * (c_lo + c_hi)
        too_big = (torch.exp(u_of_c(c_mid)) * okf).sum() / n > 1.0
        c_hi = torch.where(too_big, c_mid, c_hi)
        c_lo = torch.where(too_big, c_lo, c_mid)
    u = u_of_c(0.5 * (c_lo + c_hi))
    # Remove the residual bisection error so that mean(γ) = γ0 holds to rounding.
    return (u - _log_mean_exp(u, okf, n)) * okf
