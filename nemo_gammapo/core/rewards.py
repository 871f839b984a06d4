"""Implicit rewards of preference pairs (paper Table 1 and Table 6).

All functions take per-pair sequence log-probabilities and return per-pair rewards of shape
``(B,)``. Log-probabilities are *summed* over response tokens; ``tokens`` is the number of
response tokens (the length-averaged log-prob is ``logps / tokens``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class PairLogProbs:
    """Sequence log-probabilities of a batch of preference pairs; every field has shape ``(B,)``.

    Attributes:
        chosen, rejected: ``Σ_t log πθ(y_t | x, y_<t)`` over the response tokens of y_w / y_l.
        chosen_tokens, rejected_tokens: response token counts |y_w|, |y_l| (>= 1 for real pairs).
        ref_chosen, ref_rejected: the same sums under the reference policy (DPO family only).
    """

    chosen: Tensor
    rejected: Tensor
    chosen_tokens: Tensor
    rejected_tokens: Tensor
    ref_chosen: Tensor | None = None
    ref_rejected: Tensor | None = None

    def require_reference(self, loss_name: str) -> tuple[Tensor, Tensor]:
        if self.ref_chosen is None or self.ref_rejected is None:
            raise ValueError(f"loss {loss_name!r} needs reference log-probs (ref_chosen, ref_rejected)")
        return self.ref_chosen, self.ref_rejected


def _per_token(logps: Tensor, tokens: Tensor) -> Tensor:
    return logps / tokens.to(logps.dtype).clamp_min(1)


def dpo_rewards(pairs: PairLogProbs, beta: float, average_log_probs: bool = False) -> tuple[Tensor, Tensor]:
    """DPO reward ``r = β·(log πθ(y|x) − log πref(y|x))`` (summed or, optionally, per token)."""
    ref_w, ref_l = pairs.require_reference("dpo")
    r_w, r_l = pairs.chosen - ref_w, pairs.rejected - ref_l
    if average_log_probs:
        r_w, r_l = _per_token(r_w, pairs.chosen_tokens), _per_token(r_l, pairs.rejected_tokens)
    return beta * r_w, beta * r_l


def simpo_rewards(pairs: PairLogProbs, beta: float) -> tuple[Tensor, Tensor]:
    """SimPO reward ``r = (β/|y|)·log πθ(y|x)``: length-averaged, reference-free."""
    return beta * _per_token(pairs.chosen, pairs.chosen_tokens), beta * _per_token(
        pairs.rejected, pairs.rejected_tokens
    )


def policy_rewards(pairs: PairLogProbs, beta: float) -> tuple[Tensor, Tensor]:
    """CPO reward ``r = β·log πθ(y|x)`` (summed, reference-free)."""
    return beta * pairs.chosen, beta * pairs.rejected


def log_odds(avg_logps: Tensor) -> Tensor:
    """``log(p / (1 − p))`` for ``p = exp(avg_logps)`` (ORPO), stable for ``avg_logps < 0``."""
    avg_logps = avg_logps.clamp_max(-1e-6)
    return avg_logps - torch.log(-torch.expm1(avg_logps))


def orpo_rewards(pairs: PairLogProbs) -> tuple[Tensor, Tensor]:
    """ORPO's log-odds of the length-averaged likelihood of each response (β-free)."""
    return (
        log_odds(_per_token(pairs.chosen, pairs.chosen_tokens)),
        log_odds(_per_token(pairs.rejected, pairs.rejected_tokens)),
    )


def chosen_nll_per_token(pairs: PairLogProbs) -> Tensor:
    """Per-token negative log-likelihood of the chosen response (CPO's and ORPO's SFT term)."""
    return -_per_token(pairs.chosen, pairs.chosen_tokens)
