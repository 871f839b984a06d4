"""γ-PO's margin policy: the queue and the solver behind one call.

:class:`GammaMarginPolicy` is the single-process logic of appendix C, Algorithm 2: build the
solve set (current margins + queued margins), solve for γ, read back the current pairs' γ, push
the current margins. The distributed layer calls it with margins already gathered over the
data-parallel group, so every rank holds the same queue and computes the same γ.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from nemo_gammapo.core.config import GammaConfig
from nemo_gammapo.core.queue import MarginQueue
from nemo_gammapo.core.solver import check_gamma_args, solve_gamma


class GammaMarginPolicy:
    """Dynamic per-pair target margins from a margin queue and the γ solver.

    Args:
        config: solver and queue settings.
        gamma0: base target margin γ0 = ``gamma_beta_ratio · β``.
        device: device of the queue buffer (that of the margins).
    """

    def __init__(self, config: GammaConfig, gamma0: float, device: torch.device | str | None = None) -> None:
        check_gamma_args(gamma0, config.tau)
        self.config = config
        self.gamma0 = gamma0
        self.queue = MarginQueue(
            capacity=config.queue_capacity,
            solve_size=config.solve_size,
            sampling=config.sampling,
            seed=config.seed,
            device=device,
        )

    def __call__(self, margins: Tensor, valid: Tensor | None = None, *, update: bool = True) -> Tensor:
        """γ for ``margins`` (shape ``(n,)``, β-scaled), detached, same dtype/device.

        ``update=False`` (validation) reads the queue but never changes it: neither the buffer
        nor the sampling generator advances.
        """
        margins = margins.detach()
        if self.queue.device != margins.device:
            self.queue.to(margins.device)
        n = margins.numel()
        if update:
            solve_margins, solve_valid = self.queue.solve_set(margins, valid)
        else:
            generator_state = self.queue.generator.get_state()
            solve_margins, solve_valid = self.queue.solve_set(margins, valid)
            self.queue.generator.set_state(generator_state)
        c = self.config
        gamma = solve_gamma(
            solve_margins,
            self.gamma0,
            c.tau,
            c.num_iters,
            c.lr,
            valid=solve_valid,
            method=c.solver,
            compile=c.compile,
            pad_to=max(c.solve_size, n),
        )[:n]
        if update:
            self.queue.push(margins, valid)
        return gamma.reshape(margins.shape)

    def state_dict(self) -> dict[str, Any]:
        return {"queue": self.queue.state_dict(), "gamma0": self.gamma0}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.queue.load_state_dict(state["queue"])


def gamma_statistics(
    gamma: Tensor, margins: Tensor, valid: Tensor | None, gamma0: float, queue: MarginQueue | None = None
) -> dict[str, Tensor]:
    """Step metrics over the valid pairs, as 0-dim device tensors (no host sync).

    Keys: ``gamma_mean/min/max/std``, ``margin_mean/std``, ``gamma_above_gamma0`` (fraction of
    pairs with γ_i > γ0), ``excluded_pairs`` (masked: truncated to nothing or padding),
    ``nonfinite_pairs`` (unmasked pairs whose margin is NaN/inf — a sign of divergence, never a
    data property; they are left out of γ and of these statistics), ``queue_fill`` (fraction of
    the queue holding valid margins). With no valid pair every statistic is 0.
    """
    gamma, margins = gamma.detach().reshape(-1).float(), margins.detach().reshape(-1).float()
    finite = torch.isfinite(margins)
    masked = torch.zeros_like(finite) if valid is None else ~valid.reshape(-1).to(finite.device, torch.bool)
    ok = finite & ~masked
    w = ok.float()
    n = w.sum()
    denom = n.clamp_min(1.0)

    def mean_std(x: Tensor) -> tuple[Tensor, Tensor]:
        x = torch.where(ok, x, torch.zeros_like(x))
        mean = x.sum() / denom
        var = (((x - mean) ** 2) * w).sum() / (n - 1).clamp_min(1.0)
        return mean, var.sqrt()

    g_mean, g_std = mean_std(gamma)
    m_mean, m_std = mean_std(margins)
    zero = torch.zeros((), device=gamma.device)
    g_min = torch.where(n > 0, torch.where(ok, gamma, torch.full_like(gamma, torch.inf)).amin(), zero)
    g_max = torch.where(n > 0, torch.where(ok, gamma, torch.full_like(gamma, -torch.inf)).amax(), zero)
    stats = {
        "gamma_mean": g_mean,
        "gamma_std": g_std,
        "gamma_min": g_min,
        "gamma_max": g_max,
        "margin_mean": m_mean,
        "margin_std": m_std,
        "gamma_above_gamma0": ((gamma > gamma0) & ok).float().sum() / denom,
        "excluded_pairs": masked.float().sum(),
        "nonfinite_pairs": (~finite & ~masked).float().sum(),
    }
    if queue is not None and queue.capacity > 0:
        stats["queue_fill"] = queue.num_valid().float().to(gamma.device) / queue.capacity
    return stats
