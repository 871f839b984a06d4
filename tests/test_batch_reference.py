"""β-DPO's M0 and KTO's z_ref through GammaPOLoss: a running mean, meaningful at micro-batch 1.

Before, both came from the micro-batch itself, so at micro-batch 1 (every preset) β-DPO was DPO
exactly. The layout invariance (DP2 × micro-batch 1 = DP1 × micro-batch 2) is shown through the
product path in ``test_product_invariance.py``.
"""

from __future__ import annotations

import math

import pytest
import torch

from nemo_gammapo.core.config import PreferenceLossConfig
from nemo_gammapo.distributed.gamma_loss import GammaPOLoss

BETA, ALPHA, MOMENTUM = 0.5, 0.5, 0.9
# One pair per micro-batch: (chosen, rejected, ref_chosen, ref_rejected) summed log-probs.
PAIRS = [(-10.0, -14.0, -12.0, -12.0), (-11.0, -10.0, -12.0, -12.0), (-9.0, -13.0, -11.0, -10.0)]


def _loss(pair: tuple[float, ...], loss_fn: GammaPOLoss) -> float:
    chosen, rejected, ref_chosen, ref_rejected = pair
    logps, tokens = torch.tensor([chosen, rejected]), torch.tensor([5.0, 5.0])
    loss, _ = loss_fn.from_sequence_logprobs(logps, tokens, torch.tensor([ref_chosen, ref_rejected]))
    return loss.item()


def _config(name: str) -> PreferenceLossConfig:
    return PreferenceLossConfig(
        name=name, beta=BETA, gamma_beta_ratio=0.0, beta_dpo_alpha=ALPHA, reference_momentum=MOMENTUM
    )


def test_beta_dpo_at_micro_batch_1_uses_the_running_mean_margin() -> None:
    beta_dpo, dpo = GammaPOLoss(_config("beta_dpo")), GammaPOLoss(_config("dpo"))
    m0 = None
    for i, pair in enumerate(PAIRS):
        c, r, rc, rr = pair
        margin = BETA * ((c - rc) - (r - rr))
        m0 = margin if m0 is None else MOMENTUM * m0 + (1 - MOMENTUM) * margin
        scale = max(0.0, 1 + ALPHA * (margin - m0))
        expected = -math.log(1 / (1 + math.exp(-scale * margin)))
        got = _loss(pair, beta_dpo)
        assert got == pytest.approx(expected, rel=1e-6)
        if i > 0:  # the first pair sets M0 to its own margin; after that β_i ≠ β
            assert got != pytest.approx(_loss(pair, dpo), rel=1e-3)


def test_kto_reference_point_is_the_running_mean_reward_clamped_at_zero() -> None:
    kto = GammaPOLoss(_config("kto_pair"))
    mean = None
    for pair in PAIRS:
        c, r, rc, rr = pair
        r_w, r_l = BETA * (c - rc), BETA * (r - rr)
        mean = (r_w + r_l) / 2 if mean is None else MOMENTUM * mean + (1 - MOMENTUM) * (r_w + r_l) / 2
        z = max(0.0, mean)
        expected = (1 - 1 / (1 + math.exp(-(r_w - z)))) + (1 - 1 / (1 + math.exp(-(z - r_l))))
        assert _loss(pair, kto) == pytest.approx(expected, rel=1e-6)


def test_validation_reads_the_running_mean_and_it_is_checkpointed() -> None:
    trained = GammaPOLoss(_config("beta_dpo"))
    for pair in PAIRS[:2]:
        _loss(pair, trained)
    state = trained.state_dict()
    trained.eval()
    before = _loss(PAIRS[2], trained)
    assert _loss(PAIRS[2], trained) == before  # validation does not move M0
    restored = GammaPOLoss(_config("beta_dpo"))
    restored.load_state_dict(state)
    restored.eval()
    assert _loss(PAIRS[2], restored) == before
