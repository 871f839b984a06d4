"""Closed-form checks of every registry loss on hand-computed scalar values."""

import math

import pytest
import torch

from nemo_gammapo.core import LOSSES, REFERENCE_FREE, PairLogProbs, PreferenceLossConfig, preference_loss
from nemo_gammapo.core.registry import reward_margins

# One pair, chosen better than rejected, and a second one mislabeled-looking.
LW, LL = [-6.0, -9.0], [-12.0, -4.0]  # Σ log π
TW, TL = [3.0, 6.0], [4.0, 2.0]  # response tokens
RW, RL = [-7.0, -8.0], [-10.0, -5.0]  # Σ log πref


def pairs() -> PairLogProbs:
    t = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    return PairLogProbs(t(LW), t(LL), t(TW), t(TL), t(RW), t(RL))


def logsig(x: float) -> float:
    return -math.log1p(math.exp(-x))


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def check(name: str, expected: list[float], **cfg) -> None:
    out = preference_loss(name, pairs(), PreferenceLossConfig(name=name, **cfg))
    assert out.losses.tolist() == pytest.approx(expected, rel=1e-10, abs=1e-12)


def dpo_margin(i: int, beta: float) -> float:
    return beta * ((LW[i] - RW[i]) - (LL[i] - RL[i]))


def simpo_margin(i: int, beta: float) -> float:
    return beta * (LW[i] / TW[i] - LL[i] / TL[i])


def test_dpo() -> None:
    check("dpo", [-logsig(dpo_margin(i, 0.1)) for i in range(2)], beta=0.1)


def test_dpo_length_averaged() -> None:
    m = [0.1 * ((LW[i] - RW[i]) / TW[i] - (LL[i] - RL[i]) / TL[i]) for i in range(2)]
    check("dpo", [-logsig(x) for x in m], beta=0.1, average_log_probs=True)


def test_ipo() -> None:
    h = [dpo_margin(i, 1.0) for i in range(2)]
    check("ipo", [(x - 1 / (2 * 0.25)) ** 2 for x in h], ipo_tau=0.25)


def test_cpo() -> None:
    exp = [-logsig(0.05 * (LW[i] - LL[i])) + 0.7 * (-LW[i] / TW[i]) for i in range(2)]
    check("cpo", exp, beta=0.05, cpo_alpha=0.7)


def test_kto_pair() -> None:
    rw = [0.1 * (LW[i] - RW[i]) for i in range(2)]
    rl = [0.1 * (LL[i] - RL[i]) for i in range(2)]
    z = max(0.0, sum(rw + rl) / 4)
    exp = [1.5 * (1 - sig(rw[i] - z)) + 0.5 * (1 - sig(z - rl[i])) for i in range(2)]
    check("kto_pair", exp, beta=0.1, kto_lambda_chosen=1.5, kto_lambda_rejected=0.5)


def test_orpo() -> None:
    def lo(avg: float) -> float:
        p = math.exp(avg)
        return math.log(p / (1 - p))

    exp = [-LW[i] / TW[i] - 0.5 * logsig(lo(LW[i] / TW[i]) - lo(LL[i] / TL[i])) for i in range(2)]
    check("orpo", exp, orpo_lambda=0.5)


def test_r_dpo_length_penalty() -> None:
    exp = [-logsig(dpo_margin(i, 0.1) - 0.05 * (TW[i] - TL[i])) for i in range(2)]
    check("r_dpo", exp, beta=0.1, length_alpha=0.05)


def test_rdpo_label_smoothing_eq13() -> None:
    eps = 0.1
    exp = [-(1 - eps) * logsig(dpo_margin(i, 0.1)) - eps * logsig(-dpo_margin(i, 0.1)) for i in range(2)]
    check("rdpo", exp, beta=0.1, label_smoothing=eps)


def test_simpo() -> None:
    beta, ratio = 2.5, 0.4
    check("simpo", [-logsig(simpo_margin(i, beta) - ratio * beta) for i in range(2)], beta=beta, gamma_beta_ratio=ratio)


def test_beta_dpo() -> None:
    m = [dpo_margin(i, 0.1) for i in range(2)]
    m0 = sum(m) / 2
    exp = [-logsig(max(0.0, 1 + 0.2 * (m[i] - m0)) * m[i]) for i in range(2)]
    check("beta_dpo", exp, beta=0.1, beta_dpo_alpha=0.2)


def test_rsimpo_is_label_smoothed_simpo() -> None:
    beta, ratio, eps = 2.0, 0.5, 0.2
    g0 = beta * ratio
    exp = [
        -(1 - eps) * logsig(simpo_margin(i, beta) - g0) - eps * logsig(-simpo_margin(i, beta) - g0) for i in range(2)
    ]
    check("rsimpo", exp, beta=beta, gamma_beta_ratio=ratio, label_smoothing=eps)


def test_beta_simpo() -> None:
    beta, ratio, alpha = 2.0, 0.5, 0.3
    m = [simpo_margin(i, beta) for i in range(2)]
    m0 = sum(m) / 2
    exp = [-logsig(max(0.0, 1 + alpha * (m[i] - m0)) * m[i] - beta * ratio) for i in range(2)]
    check("beta_simpo", exp, beta=beta, gamma_beta_ratio=ratio, beta_dpo_alpha=alpha)


def test_gamma_simpo_uses_gamma_as_target() -> None:
    gamma = torch.tensor([0.8, 1.3], dtype=torch.float64)
    exp = [-logsig(simpo_margin(i, 2.0) - gamma[i].item()) for i in range(2)]
    out = preference_loss("gamma_simpo", pairs(), PreferenceLossConfig(name="gamma_simpo", beta=2.0), gamma=gamma)
    assert out.losses.tolist() == pytest.approx(exp, rel=1e-12)


@pytest.mark.parametrize("convention,offset", [("offset", True), ("margin", False)])
def test_gamma_dpo_conventions(convention: str, offset: bool) -> None:
    cfg = PreferenceLossConfig(name="gamma_dpo", beta=0.1, gamma_beta_ratio=5.0)  # γ0 = 0.5
    gamma = torch.tensor([0.4, 0.6], dtype=torch.float64)
    target = [g - 0.5 if offset else g for g in gamma.tolist()]
    exp = [-logsig(dpo_margin(i, 0.1) - target[i]) for i in range(2)]
    out = preference_loss("gamma_dpo", pairs(), cfg, gamma=gamma, dpo_convention=convention)
    assert out.losses.tolist() == pytest.approx(exp, rel=1e-12)


def test_gamma_equal_to_gamma0_reduces_to_base_loss() -> None:
    cfg = PreferenceLossConfig(name="gamma_simpo", beta=2.0, gamma_beta_ratio=0.5)
    g = torch.full((2,), cfg.gamma0, dtype=torch.float64)
    base = preference_loss("simpo", pairs(), PreferenceLossConfig(name="simpo", beta=2.0, gamma_beta_ratio=0.5))
    assert torch.equal(preference_loss("gamma_simpo", pairs(), cfg, gamma=g).losses, base.losses)
    dcfg = PreferenceLossConfig(name="gamma_dpo", beta=0.1, gamma_beta_ratio=5.0)
    gd = torch.full((2,), dcfg.gamma0, dtype=torch.float64)
    base = preference_loss("dpo", pairs(), PreferenceLossConfig(name="dpo", beta=0.1))
    torch.testing.assert_close(preference_loss("gamma_dpo", pairs(), dcfg, gamma=gd).losses, base.losses)


def test_target_margin_argument_scalar_and_tensor() -> None:
    cfg = PreferenceLossConfig(name="simpo", beta=2.0)
    per_pair = torch.tensor([0.1, 2.0], dtype=torch.float64)
    out = preference_loss("simpo", pairs(), cfg, target_margin=per_pair)
    assert out.losses.tolist() == pytest.approx([-logsig(simpo_margin(i, 2.0) - per_pair[i].item()) for i in range(2)])
    out = preference_loss("simpo", pairs(), cfg, target_margin=0.0)
    assert out.losses.tolist() == pytest.approx([-logsig(simpo_margin(i, 2.0)) for i in range(2)])


def test_gamma_loss_without_gamma_is_an_error() -> None:
    with pytest.raises(ValueError, match="gamma"):
        preference_loss("gamma_simpo", pairs())


def test_reference_losses_need_reference() -> None:
    p = pairs()
    p.ref_chosen = None
    with pytest.raises(ValueError, match="reference"):
        preference_loss("dpo", p)
    preference_loss("simpo", p)  # reference-free: fine


def test_unknown_name() -> None:
    with pytest.raises(ValueError, match="unknown preference loss"):
        preference_loss("dpoo", pairs())


@pytest.mark.parametrize("name", list(LOSSES))
def test_reference_free_losses_never_read_the_reference(name: str) -> None:
    """The reference-free set (what the NeMo model skips the reference pass for) is behaviour, not a list."""
    p = pairs()
    no_reference = PairLogProbs(p.chosen, p.rejected, p.chosen_tokens, p.rejected_tokens)
    cfg = PreferenceLossConfig(name=name)
    gamma = torch.tensor([0.7, 1.4], dtype=torch.float64) if LOSSES[name].gamma else None
    if name in REFERENCE_FREE:
        with_ref = preference_loss(name, p, cfg, gamma=gamma).losses
        assert torch.equal(preference_loss(name, no_reference, cfg, gamma=gamma).losses, with_ref)
    else:
        with pytest.raises(ValueError, match="needs reference log-probs"):
            preference_loss(name, no_reference, cfg, gamma=gamma)


BASES_WITH_TARGET = [name for name, spec in LOSSES.items() if not spec.gamma and spec.target is not None]


def test_every_loss_with_a_target_margin_has_a_gamma_variant() -> None:
    assert {f"gamma_{n}" for n in BASES_WITH_TARGET} == {n for n, s in LOSSES.items() if s.gamma}
    assert "gamma_kto_pair" not in LOSSES  # KTO's formula has no target margin


@pytest.mark.parametrize("base", BASES_WITH_TARGET)
def test_gamma_variant_with_gamma_equal_to_gamma0_is_its_base_loss(base: str) -> None:
    """γ_i = γ0 for every pair: γ-SimPO-style targets give back γ0, DPO-style offsets give back 0."""
    cfg = PreferenceLossConfig(name=f"gamma_{base}", beta=0.5, gamma_beta_ratio=2.0)
    gamma = torch.full((2,), cfg.gamma0, dtype=torch.float64)
    got = preference_loss(f"gamma_{base}", pairs(), cfg, gamma=gamma).losses
    want = preference_loss(base, pairs(), PreferenceLossConfig(name=base, beta=0.5, gamma_beta_ratio=2.0)).losses
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    shifted = preference_loss(f"gamma_{base}", pairs(), cfg, gamma=gamma + 0.3).losses
    assert not torch.equal(shifted, want)  # γ really drives the target


def test_gamma_ipo_shifts_ipos_target_by_the_offset() -> None:
    cfg = PreferenceLossConfig(name="gamma_ipo", beta=0.5, gamma_beta_ratio=2.0, ipo_tau=0.25)  # γ0 = 1
    gamma = torch.tensor([0.6, 1.5], dtype=torch.float64)
    exp = [(dpo_margin(i, 1.0) - (2.0 + gamma[i].item() - 1.0)) ** 2 for i in range(2)]
    out = preference_loss("gamma_ipo", pairs(), cfg, gamma=gamma)
    assert out.losses.tolist() == pytest.approx(exp, rel=1e-12)


def test_ipo_tau_defaults_to_beta() -> None:
    h = [dpo_margin(i, 1.0) for i in range(2)]
    check("ipo", [(x - 1 / (2 * 0.4)) ** 2 for x in h], beta=0.4)


def test_margins_helper_and_gradients_flow() -> None:
    p = pairs()
    p.chosen.requires_grad_(True)
    for name in LOSSES:
        cfg = PreferenceLossConfig(name=name)
        kw = {"gamma": torch.ones(2, dtype=torch.float64)} if name.startswith("gamma_") else {}
        out = preference_loss(name, p, cfg, **kw)
        torch.testing.assert_close(out.margins, reward_margins(name, p, cfg))
        (grad,) = torch.autograd.grad(out.losses.sum(), p.chosen)
        assert torch.all(torch.isfinite(grad)) and grad.abs().sum() > 0, name


def test_precomputed_rewards_give_the_same_loss() -> None:
    from nemo_gammapo.core.registry import get_loss_spec

    cfg = PreferenceLossConfig(name="gamma_simpo", beta=2.0)
    gamma = torch.tensor([0.9, 1.1], dtype=torch.float64)
    rewards = get_loss_spec("gamma_simpo").reward(pairs(), cfg)
    a = preference_loss("gamma_simpo", pairs(), cfg, gamma=gamma)
    b = preference_loss("gamma_simpo", pairs(), cfg, gamma=gamma, rewards=rewards)
    assert torch.equal(a.losses, b.losses) and torch.equal(a.margins, b.margins)
