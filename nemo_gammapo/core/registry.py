"""The preference-loss registry: one name per method of the paper's Table 6, plus γ-PO.

A loss is a *reward* (how a response is scored), a *form* (how a pair's margin becomes a loss)
and a *target-margin policy*. γ-PO is a policy, not a loss: ``gamma_simpo`` is SimPO whose base
margin γ0 is replaced by the per-pair γ_i from :mod:`nemo_gammapo.core.solver`; ``rsimpo`` and
``beta_simpo`` apply rDPO's and β-DPO's forms to SimPO rewards. Every loss returns per-pair values;
the caller takes the mean.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Set
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


class FormulaInputs(NamedTuple):
    """What a per-pair formula may read; every tensor has shape ``(B,)``.

    ``margin`` is the reward margin ``r_w − r_l``; ``target`` the target margin (static or γ-PO's);
    ``reference_margin`` / ``reference_point`` are β-DPO's M0 and KTO's mean reward when the loss
    keeps a running reference (``None``: the batch's own).
    """

    margin: Tensor
    target: Tensor | float
    chosen_rewards: Tensor
    rejected_rewards: Tensor
    pairs: PairLogProbs
    cfg: PreferenceLossConfig
    reference_margin: Tensor | float | None = None
    reference_point: Tensor | float | None = None


FormulaFn = Callable[[FormulaInputs], Tensor]
TargetFn = Callable[[PairLogProbs, PreferenceLossConfig], "Tensor | float"]


@dataclass(frozen=True)
class LossSpec:
    """One preference loss, declared once; everything else (config checks, the README table, the
    reference-free set, the study's methods, plot labels) reads it.

    Attributes:
        name: the registry name (``model.dpo.preference_loss``).
        label: display name for tables and plots (e.g. ``"γ-SimPO"``).
        reward: ``(pairs, cfg) -> (r_w, r_l)``.
        formula: the per-pair loss, ``FormulaInputs -> (B,)``.
        target: the static target margin ``(pairs, cfg) -> float | (B,)``; ``None`` when the formula
            has no target margin (then γ-PO cannot drive it).
        needs_reference: the reward reads reference-policy log-probs.
        uses_gamma0: the static target contains the base margin γ0 (SimPO family); γ-PO then
            replaces γ0 by γ_i, otherwise it adds the offset ``γ_i − γ0`` (or ``γ_i``).
        gamma: γ-PO drives the target (a ``gamma_*`` loss).
        params: the :class:`PreferenceLossConfig` fields the loss reads besides β, γ/β and
            ``average_log_probs``; setting any other ``loss_params`` key is a configuration error.
        running_reference: ``"margin"`` (β-DPO's M0) or ``"reward"`` (KTO's z_ref): a running mean
            over global micro-batches the loss reads; ``None`` for none.
        description: the per-pair formula, one line, for the README table.
    """

    name: str
    label: str
    reward: RewardFn
    formula: FormulaFn
    target: TargetFn | None
    needs_reference: bool = False
    uses_gamma0: bool = False
    gamma: bool = False
    params: tuple[str, ...] = ()
    running_reference: str | None = None
    description: str = ""

    @property
    def dynamic_margin(self) -> bool:
        return self.gamma

    @property
    def accepts_target(self) -> bool:
        return self.target is not None


# ------------------------------------------------------------------ rewards
def _dpo(p: PairLogProbs, c: PreferenceLossConfig) -> tuple[Tensor, Tensor]:
    """β·log(π/π_ref), summed (per token with `preference_average_log_probs`)"""
    return rewards.dpo_rewards(p, c.beta, c.average_log_probs)


def _ipo(p: PairLogProbs, c: PreferenceLossConfig) -> tuple[Tensor, Tensor]:
    """log(π/π_ref), summed (no β)"""
    return rewards.dpo_rewards(p, 1.0, c.average_log_probs)


def _simpo(p: PairLogProbs, c: PreferenceLossConfig) -> tuple[Tensor, Tensor]:
    """(β/\\|y\\|)·log π"""
    return rewards.simpo_rewards(p, c.beta)


def _cpo(p: PairLogProbs, c: PreferenceLossConfig) -> tuple[Tensor, Tensor]:
    """β·log π, summed"""
    return rewards.policy_rewards(p, c.beta)


def _orpo(p: PairLogProbs, c: PreferenceLossConfig) -> tuple[Tensor, Tensor]:
    """log-odds of exp(mean log π)"""
    return rewards.orpo_rewards(p)


# ------------------------------------------------------------------ static targets
def no_margin(p: PairLogProbs, c: PreferenceLossConfig) -> float:
    return 0.0


def base_margin(p: PairLogProbs, c: PreferenceLossConfig) -> float:
    return c.gamma0


def ipo_target(p: PairLogProbs, c: PreferenceLossConfig) -> float:
    return 1.0 / (2.0 * c.resolved_ipo_tau)


def length_penalty(p: PairLogProbs, c: PreferenceLossConfig) -> Tensor:
    return c.length_alpha * (p.chosen_tokens - p.rejected_tokens).to(p.chosen.dtype)


# ------------------------------------------------------------------ per-pair formulas
def sigmoid(x: FormulaInputs) -> Tensor:
    return losses.sigmoid_margin_loss(x.margin, x.target)


def label_smoothed(x: FormulaInputs) -> Tensor:
    return losses.label_smoothed_margin_loss(x.margin, x.target, x.cfg.label_smoothing)


def ipo(x: FormulaInputs) -> Tensor:
    return losses.ipo_loss(x.margin, x.target)


def beta_scaled(x: FormulaInputs) -> Tensor:
    scale = losses.beta_dpo_scale(x.margin, x.cfg.beta_dpo_alpha, x.reference_margin)
    return losses.sigmoid_margin_loss(scale * x.margin, x.target)


def cpo(x: FormulaInputs) -> Tensor:
    nll = rewards.chosen_nll_per_token(x.pairs)
    return losses.sft_regularised_margin_loss(x.margin, x.target, nll, sft_weight=x.cfg.cpo_alpha)


def orpo(x: FormulaInputs) -> Tensor:
    nll = rewards.chosen_nll_per_token(x.pairs)
    return losses.sft_regularised_margin_loss(x.margin, x.target, nll, sft_weight=1.0, pref_weight=x.cfg.orpo_lambda)


def kto_pair(x: FormulaInputs) -> Tensor:
    z_ref = losses.kto_reference_point(x.chosen_rewards, x.rejected_rewards, x.reference_point)
    return losses.kto_pair_loss(
        x.chosen_rewards, x.rejected_rewards, z_ref, x.cfg.kto_lambda_chosen, x.cfg.kto_lambda_rejected
    )


# ------------------------------------------------------------------ the registry
LOSSES: dict[str, LossSpec] = {}


def gamma_variant(spec: LossSpec) -> LossSpec:
    """The γ-PO version of a loss with a target margin: same reward and formula, target driven by γ_i."""
    if spec.target is None or spec.gamma:
        raise ValueError(f"γ-PO needs a loss with a static target margin ({spec.name!r} has none)")
    if spec.uses_gamma0:
        how = "γ0 in the target replaced by the per-pair γ_i"
    else:
        how = "the target shifted by γ_i − γ0 (`dpo_convention: offset`) or γ_i (`margin`)"
    return replace(
        spec, name=f"gamma_{spec.name}", label=f"γ-{spec.label}", gamma=True, description=f"{spec.label}, {how}"
    )


def register_loss(spec: LossSpec, *, with_gamma: bool = True) -> LossSpec:
    """Add ``spec`` (and, when it has a target margin, its γ-PO variant ``gamma_<name>``) to the registry."""
    for new in [spec, *([gamma_variant(spec)] if with_gamma and spec.target is not None and not spec.gamma else [])]:
        if new.name in LOSSES and LOSSES[new.name] != new:
            raise ValueError(f"a different loss named {new.name!r} is already registered")
        LOSSES[new.name] = new
    return spec


_DPO = dict(reward=_dpo, needs_reference=True)
_SIMPO = dict(reward=_simpo, uses_gamma0=True)
_M0 = ("beta_dpo_alpha", "reference_momentum")
register_loss(LossSpec("dpo", "DPO", formula=sigmoid, target=no_margin, **_DPO, description="−log σ(m)"))
register_loss(
    LossSpec(
        "ipo",
        "IPO",
        _ipo,
        ipo,
        ipo_target,
        needs_reference=True,
        params=("ipo_tau",),
        description="(m − 1/(2·`ipo_tau`))² on log-ratios (`ipo_tau` defaults to β, as in NeMo-Aligner)",
    )
)
register_loss(
    LossSpec(
        "cpo",
        "CPO",
        _cpo,
        cpo,
        no_margin,
        params=("cpo_alpha",),
        description="−log σ(m) + `cpo_alpha`·NLL(y_w) per token",
    )
)
register_loss(
    LossSpec(
        "kto_pair",
        "KTO",
        formula=kto_pair,
        target=None,
        params=("kto_lambda_chosen", "kto_lambda_rejected", "reference_momentum"),
        running_reference="reward",
        **_DPO,
        description="λ_w(1−σ(r_w−z)) + λ_l(1−σ(z−r_l)), z = running mean reward clamped at 0",
    )
)
register_loss(
    LossSpec(
        "orpo",
        "ORPO",
        _orpo,
        orpo,
        no_margin,
        params=("orpo_lambda",),
        description="NLL(y_w) − `orpo_lambda`·log σ(m) on log-odds",
    )
)
register_loss(
    LossSpec(
        "r_dpo",
        "R-DPO",
        formula=sigmoid,
        target=length_penalty,
        params=("length_alpha",),
        **_DPO,
        description="−log σ(m − `length_alpha`·(\\|y_w\\|−\\|y_l\\|))",
    )
)
register_loss(
    LossSpec(
        "rdpo",
        "rDPO",
        formula=label_smoothed,
        target=no_margin,
        params=("label_smoothing",),
        **_DPO,
        description="paper eq. 13: −(1−ε)log σ(m) − ε log σ(−m), ε = `label_smoothing`",
    )
)
register_loss(LossSpec("simpo", "SimPO", formula=sigmoid, target=base_margin, **_SIMPO, description="−log σ(m − γ0)"))
register_loss(
    LossSpec(
        "beta_dpo",
        "β-DPO",
        formula=beta_scaled,
        target=no_margin,
        params=_M0,
        running_reference="margin",
        **_DPO,
        description="−log σ(β_i/β·m), β_i = β(1 + `beta_dpo_alpha`(M_i − M0)), M0 a running mean margin",
    )
)
register_loss(
    LossSpec(
        "rsimpo",
        "rSimPO",
        formula=label_smoothed,
        target=base_margin,
        params=("label_smoothing",),
        **_SIMPO,
        description="eq. 13 with target γ0",
    )
)
register_loss(
    LossSpec(
        "beta_simpo",
        "β-SimPO",
        formula=beta_scaled,
        target=base_margin,
        params=_M0,
        running_reference="margin",
        **_SIMPO,
        description="β-DPO's per-pair scale with target γ0",
    )
)


class _ReferenceFree(Set):
    """The registry names whose loss never reads reference-policy log-probs (a live view)."""

    def __contains__(self, name: object) -> bool:
        return name in LOSSES and not LOSSES[name].needs_reference  # type: ignore[index]

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(name for name, spec in LOSSES.items() if not spec.needs_reference))

    def __len__(self) -> int:
        return sum(not spec.needs_reference for spec in LOSSES.values())

    def __repr__(self) -> str:
        return f"REFERENCE_FREE({sorted(self)})"


# Names that mean "the model's reference policy is never needed" — used to skip reference work.
REFERENCE_FREE: Set[str] = _ReferenceFree()


def get_loss_spec(name: str) -> LossSpec:
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown preference loss {name!r}; choose one of {sorted(LOSSES)}") from None


def static_target(spec: LossSpec, pairs: PairLogProbs, cfg: PreferenceLossConfig) -> Tensor | float:
    """The target margin without γ-PO (IPO's 1/(2τ), R-DPO's length penalty, SimPO's γ0, or 0)."""
    if spec.target is None:
        raise ValueError(f"loss {spec.name!r} has no target margin")
    return spec.target(pairs, cfg)


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
    elif spec.target is None:
        target = 0.0  # unused by the formula
    else:
        target = static_target(spec, pairs, cfg)
        if spec.dynamic_margin:
            if gamma is None:
                raise ValueError(f"loss {name!r} needs per-pair gamma (see GammaMarginPolicy)")
            target = dynamic_target(spec, target, gamma, cfg.gamma0, dpo_convention)

    out = spec.formula(FormulaInputs(margin, target, r_w, r_l, pairs, cfg, reference_margin, reference_point))
    return LossOutput(out, margin, r_w, r_l, target)


def reward_margins(name: str, pairs: PairLogProbs, cfg: PreferenceLossConfig) -> Tensor:
    """The reward margins ``r_w − r_l`` loss ``name`` would use, shape ``(B,)`` (for the γ solve)."""
    r_w, r_l = get_loss_spec(name).reward(pairs, cfg)
    return r_w - r_l


def markdown_table() -> str:
    """The README's loss table, generated from the registry (a test compares the README with it).

    The reward column is the first line of the reward function's docstring.
    """
    rows = [
        "| name | label | reward | per-pair loss (m = r_w − r_l) | `loss_params` | reference model |",
        "|---|---|---|---|---|---|",
    ]
    for name, spec in LOSSES.items():
        reward = (spec.reward.__doc__ or spec.reward.__name__).strip().splitlines()[0]
        params = ", ".join(f"`{p}`" for p in spec.params) or "—"
        reference = "yes" if spec.needs_reference else "no"
        rows.append(f"| `{name}` | {spec.label} | {reward} | {spec.description} | {params} | {reference} |")
    return "\n".join(rows)
