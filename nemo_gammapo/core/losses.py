"""Per-pair preference loss formulas (paper eqs. 4, 10, 13 and Table 6).

One function per formula, each returning a per-pair loss of shape ``(B,)``; the caller reduces.
``margin`` is always the β-scaled reward margin ``r_w − r_l`` and ``target`` the target margin
(a float or a per-pair tensor: a constant γ0, a length penalty, or γ-PO's dynamic γ_i).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def sigmoid_margin_loss(margin: Tensor, target: Tensor | float = 0.0) -> Tensor:
    """``−log σ(m − γ)``: DPO (γ = 0), SimPO (γ = γ0), γ-PO (γ = γ_i) — eqs. 4 and 10."""
    return -F.logsigmoid(margin - target)


def label_smoothed_margin_loss(margin: Tensor, target: Tensor | float, epsilon: float) -> Tensor:
    """rDPO / rSimPO, paper eq. 13: ``−(1−ε)·log σ(m − γ) − ε·log σ(−m − γ)``."""
    return -(1.0 - epsilon) * F.logsigmoid(margin - target) - epsilon * F.logsigmoid(-margin - target)


def ipo_loss(logratio_margin: Tensor, target: Tensor | float) -> Tensor:
    """IPO: ``(h − target)²`` with ``h`` the (unscaled) log-ratio margin; IPO's target is 1/(2τ)."""
    return (logratio_margin - target) ** 2


def kto_pair_loss(
    chosen_rewards: Tensor, rejected_rewards: Tensor, z_ref: Tensor, lambda_chosen: float, lambda_rejected: float
) -> Tensor:
    """Paired KTO: ``λ_w·(1 − σ(r_w − z_ref)) + λ_l·(1 − σ(z_ref − r_l))`` (Table 6).

    ``z_ref`` is KTO's reference point (a detached estimate of β·KL(πθ‖πref)).
    """
    return lambda_chosen * (1 - torch.sigmoid(chosen_rewards - z_ref)) + lambda_rejected * (
        1 - torch.sigmoid(z_ref - rejected_rewards)
    )


def kto_reference_point(
    chosen_rewards: Tensor, rejected_rewards: Tensor, mean_reward: Tensor | float | None = None
) -> Tensor:
    """KTO's ``z_ref``: the mean DPO reward of both responses, clamped at 0, detached.

    The mean β-scaled log-ratio over policy samples estimates β·KL(πθ‖πref); KL is non-negative.
    ``mean_reward`` replaces the batch's own mean (e.g. a running mean over global micro-batches).
    """
    if mean_reward is None:
        mean_reward = torch.cat([chosen_rewards, rejected_rewards]).detach().mean()
    return torch.as_tensor(mean_reward, device=chosen_rewards.device).detach().clamp_min(0.0)


def sft_regularised_margin_loss(
    margin: Tensor, target: Tensor | float, chosen_nll: Tensor, sft_weight: float, pref_weight: float = 1.0
) -> Tensor:
    """``pref_weight·(−log σ(m − γ)) + sft_weight·NLL(y_w)``.

    CPO is ``pref_weight = 1, sft_weight = α`` on policy rewards; ORPO is ``pref_weight = λ,
    sft_weight = 1`` on log-odds margins. The NLL is per token (the usual SFT loss scale).
    """
    return pref_weight * sigmoid_margin_loss(margin, target) + sft_weight * chosen_nll


def beta_dpo_scale(margin: Tensor, alpha: float, reference_margin: Tensor | float | None = None) -> Tensor:
    """β-DPO's per-pair β_i/β0 = ``1 + α·(M_i − M0)``, detached and clamped at 0.

    ``M_i`` is the β0-scaled margin; ``M0`` defaults to the mean margin of the pairs given.
    """
    m = margin.detach()
    m0 = m.mean() if reference_margin is None else reference_margin
    return (1.0 + alpha * (m - m0)).clamp_min(0.0)
