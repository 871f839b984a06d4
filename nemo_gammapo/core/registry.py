"""The preference-loss registry: one name per method of the paper's Table 6, plus γ-PO.

A loss is a *reward* (how a response is scored), a *form* (how a pair's margin becomes a loss)
and a *target-margin policy*. γ-PO is a policy, not a loss: ``gamma_simpo`` is SimPO whose base
margin γ0 is replaced by the per-pair γ_i from :mod:`nemo_gammapo.core.solver`; ``rsimpo`` and
``beta_simpo`` apply rDPO's and β-DPO's forms to SimPO rewards. Every loss returns per-pair values;
the caller takes the mean.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import NamedTuple

from torch import Tensor

from nemo_gammapo.core import losses, rewards
from nemo_gammapo.core.config import PreferenceLossConfig
from nemo_gammapo.core.rewards import PairLogProbs

RewardFn = Callable[[PairLogProbs, PreferenceLossConfig], "tuple[Tensor, Tensor]"]


class LossOutput(NamedTuple):
    """Per-pair results, each shape ``(B,)``.

    ``margins`` are the (β-scaled) reward margins that γ-PO solves on; ``targets`` the target
    margins actually used (γ0, γ_i, a length penalty, ...).
    """

    losses: Tensor
    margins: Tensor
    chosen_rewards: Tensor
    rejected_rewards: Tensor
    targets: Tensor | float


@dataclass(frozen=True)
class LossSpec:
    """How one registry name computes its loss.

    Attributes:
        reward: ``(pairs, cfg) -> (r_w, r_l)``.
        form: name of the per-pair formula (see :func:`_apply_form`).
        uses_gamma0: the static target includes the base margin γ0 (SimPO family).
        dynamic_margin: the γ-PO policy replaces the base margin with per-pair γ_i.
        needs_reference: the loss reads reference-policy log-probs.
        accepts_target: the form has a target margin (KTO has none).
        length_penalty: add R-DPO's ``length_alpha·(|y_w| − |y_l|)`` to the target.
        description: one line for the README table.
    """

    reward: RewardFn
    form: str
    uses_gamma0: bool = False
    dynamic_margin: bool = False
    needs_reference: bool = False
    accepts_target: bool = True
    length_penalty: bool = False
    description: str = ""


def _dpo(p: PairLogProbs, c: PreferenceLossConfig) -> tuple[Tensor, Tensor]:
    return rewards.dpo_rewards(p, c.beta, c.average_log_probs)


def _ipo(p: PairLogProbs, c: PreferenceLossConfig) -> tuple[Tensor, Tensor]:
    return rewards.dpo_rewards(p, 1.0, c.average_log_probs)


def _simpo(p: PairLogProbs, c: PreferenceLossConfig) -> tuple[Tensor, Tensor]:
    return rewards.simpo_rewards(p, c.beta)


def _cpo(p: PairLogProbs, c: PreferenceLossConfig) -> tuple[Tensor, Tensor]:
    return rewards.policy_rewards(p, c.beta)


def _orpo(p: PairLogProbs, c: PreferenceLossConfig) -> tuple[Tensor, Tensor]:
    return rewards.orpo_rewards(p)


def with_gamma(spec: LossSpec, description: str) -> LossSpec:
    """The γ-PO version of a margin-based loss: same reward and form, dynamic target margin."""
    if not spec.accepts_target:
        raise ValueError("γ-PO needs a loss with a target margin")
    return replace(spec, dynamic_margin=True, description=description)


_DPO = LossSpec(_dpo, "sigmoid", needs_reference=True, description="DPO: −log σ(β·Δlog-ratio)")
_SIMPO = LossSpec(_simpo, "sigmoid", uses_gamma0=True, description="SimPO: −log σ(β·Δmean log π − γ0)")

LOSSES: dict[str, LossSpec] = {
    "dpo": _DPO,
    "ipo": LossSpec(_ipo, "ipo", needs_reference=True, description="IPO: (Δlog-ratio − 1/(2·ipo_tau))²"),
    "cpo": LossSpec(_cpo, "cpo", description="CPO: −log σ(β·Δlog π) + cpo_alpha·NLL(y_w)"),
    "kto_pair": LossSpec(
        _dpo,
        "kto_pair",
        needs_reference=True,
        accepts_target=False,
        description="KTO, paired form, z_ref from the batch",
    ),
    "orpo": LossSpec(_orpo, "orpo", description="ORPO: NLL(y_w) − orpo_lambda·log σ(Δlog-odds)"),
    "r_dpo": LossSpec(
        _dpo,
        "sigmoid",
        needs_reference=True,
        length_penalty=True,
        description="R-DPO: DPO with target length_alpha·(|y_w| − |y_l|)",
    ),
    "rdpo": LossSpec(
        _dpo, "label_smoothed", needs_reference=True, description="rDPO: DPO label-smoothed by ε (eq. 13)"
    ),
    "simpo": _SIMPO,
    "beta_dpo": LossSpec(
        _dpo, "beta_scaled", needs_reference=True, description="β-DPO: per-pair β_i = β·(1 + α·(M_i − M0))"
    ),
    "gamma_dpo": with_gamma(_DPO, "γ-DPO: DPO with dynamic per-pair target γ_i (eq. 11)"),
    "gamma_simpo": with_gamma(_SIMPO, "γ-SimPO: SimPO with dynamic per-pair target γ_i (eq. 12)"),
    "rsimpo": replace(_SIMPO, form="label_smoothed", description="rSimPO: SimPO label-smoothed by ε (eq. 13)"),
    "beta_simpo": replace(_SIMPO, form="beta_scaled", description="β-SimPO: SimPO with β-DPO's per-pair β_i"),
}

# Names that mean "the model's reference policy is never needed" — used to skip reference work.
REFERENCE_FREE = frozenset(name for name, spec in LOSSES.items() if not spec.needs_reference)


def get_loss_spec(name: str) -> LossSpec:
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown preference loss {name!r}; choose one of {sorted(LOSSES)}") from None


def static_target(spec: LossSpec, pairs: PairLogProbs, cfg: PreferenceLossConfig) -> Tensor | float:
    """The target margin without γ-PO: IPO's 1/(2τ), R-DPO's length penalty, SimPO's γ0, or 0."""
    if spec.form == "ipo":
        return 1.0 / (2.0 * cfg.ipo_tau)
    target: Tensor | float = cfg.gamma0 if spec.uses_gamma0 else 0.0
    if spec.length_penalty:
        target = target + cfg.length_alpha * (pairs.chosen_tokens - pairs.rejected_tokens).to(pairs.chosen.dtype)
    return target


def dynamic_target(spec: LossSpec, static: Tensor | float, gamma: Tensor, gamma0: float, dpo_convention: str) -> Tensor:
    """Replace the base margin inside ``static`` by γ_i.

    Losses whose static target contains γ0 (SimPO family) get ``static − γ0 + γ_i``. Losses with
    no base margin (DPO family) get ``static + (γ_i − γ0)`` under the authors' ``"offset"``
    convention, or ``static + γ_i`` under the paper's ``"margin"`` convention (eq. 11).
    """
    if spec.uses_gamma0:
        return static - gamma0 + gamma
    if dpo_convention == "offset":
        return static + (gamma - gamma0)
    return static + gamma


def preference_loss(
    name: str,
    pairs: PairLogProbs,
    cfg: PreferenceLossConfig | None = None,
    *,
    gamma: Tensor | None = None,
    target_margin: Tensor | float | None = None,
    dpo_convention: str = "offset",
    reference_margin: Tensor | float | None = None,
    reference_point: Tensor | float | None = None,
    rewards: tuple[Tensor, Tensor] | None = None,
) -> LossOutput:
    """Per-pair preference loss ``name`` on a batch of pairs.

    Args:
        name: a key of :data:`LOSSES` (README lists them all).
        pairs: the batch's sequence log-probs.
        cfg: hyperparameters; defaults to ``PreferenceLossConfig(name=name)``.
        gamma: per-pair γ_i, required by the ``gamma_*`` losses (compute it with
            :class:`nemo_gammapo.core.policy.GammaMarginPolicy` on the margins from
            :func:`reward_margins`).
        target_margin: overrides the target margin entirely (scalar or per-pair tensor).
        dpo_convention: ``"offset"`` or ``"margin"`` (see :class:`GammaConfig`).
        reference_margin: β-DPO's M0 (default: the mean margin of ``pairs``).
        reference_point: KTO's mean reward before clamping at 0 (default: that of ``pairs``).
        rewards: ``(r_w, r_l)`` already computed with this loss's reward (skips recomputing them).

    Returns:
        :class:`LossOutput` with per-pair losses (shape ``(B,)``).
    """
    spec = get_loss_spec(name)
    cfg = cfg if cfg is not None else PreferenceLossConfig(name=name)
    r_w, r_l = rewards if rewards is not None else spec.reward(pairs, cfg)
    margin = r_w - r_l

    if target_margin is not None:
        if not spec.accepts_target:
            raise ValueError(f"loss {name!r} has no target margin")
        target = target_margin
    else:
        target = static_target(spec, pairs, cfg)
        if spec.dynamic_margin:
            if gamma is None:
                raise ValueError(f"loss {name!r} needs per-pair gamma (see GammaMarginPolicy)")
            target = dynamic_target(spec, target, gamma, cfg.gamma0, dpo_convention)

    out = _apply_form(spec.form, margin, target, r_w, r_l, pairs, cfg, reference_margin, reference_point)
    return LossOutput(out, margin, r_w, r_l, target)


def reward_margins(name: str, pairs: PairLogProbs, cfg: PreferenceLossConfig) -> Tensor:
    """The reward margins ``r_w − r_l`` loss ``name`` would use, shape ``(B,)`` (for the γ solve)."""
    r_w, r_l = get_loss_spec(name).reward(pairs, cfg)
    return r_w - r_l


def _apply_form(
    form: str,
    margin: Tensor,
    target: Tensor | float,
    r_w: Tensor,
    r_l: Tensor,
    pairs: PairLogProbs,
    cfg: PreferenceLossConfig,
    reference_margin: Tensor | float | None,
    reference_point: Tensor | float | None,
) -> Tensor:
    if form == "sigmoid":
        return losses.sigmoid_margin_loss(margin, target)
    if form == "label_smoothed":
        return losses.label_smoothed_margin_loss(margin, target, cfg.label_smoothing)
    if form == "ipo":
        return losses.ipo_loss(margin, target)
    if form == "beta_scaled":
        scale = losses.beta_dpo_scale(margin, cfg.beta_dpo_alpha, reference_margin)
        return losses.sigmoid_margin_loss(scale * margin, target)
    if form == "cpo":
        return losses.sft_regularised_margin_loss(
            margin, target, rewards.chosen_nll_per_token(pairs), sft_weight=cfg.cpo_alpha
        )
    if form == "orpo":
        return losses.sft_regularised_margin_loss(
            margin, target, rewards.chosen_nll_per_token(pairs), sft_weight=1.0, pref_weight=cfg.orpo_lambda
        )
    if form == "kto_pair":
        z_ref = losses.kto_reference_point(r_w, r_l, reference_point)
        return losses.kto_pair_loss(r_w, r_l, z_ref, cfg.kto_lambda_chosen, cfg.kto_lambda_rejected)
    raise AssertionError(f"unhandled loss form {form!r}")
