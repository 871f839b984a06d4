"""Typed, validated configuration of the preference loss and the γ margin policy.

One dataclass per concern, validated in ``__post_init__`` (the megatron-core
``TransformerConfig`` pattern). Error messages name the field and the allowed range, so a bad
Hydra override fails at start-up with a message the user can act on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from nemo_gammapo.core.queue import SAMPLING_MODES
from nemo_gammapo.core.solver import SOLVERS

GAMMA_DPO_CONVENTIONS = ("offset", "margin")


class ConfigFieldError(ValueError):
    """A configuration field with a value outside its allowed range; the field travels as data.

    Attributes:
        config: the dataclass name (e.g. ``"GammaConfig"``).
        field: the field name (e.g. ``"tau"``), or ``None`` for an error about unknown keys.
        keys: for unknown keys, the offending names.
    """

    def __init__(self, message: str, config: str, field: str | None = None, keys: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.config, self.field, self.keys = config, field, keys


def _check(ok: bool, cls: str, name: str, allowed: str, value: object) -> None:
    if not ok:
        raise ConfigFieldError(f"{cls}.{name} must be {allowed} (got {value!r})", cls, name)


def _finite(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@dataclass
class PreferenceLossConfig:
    """Which preference loss to train with, and its hyperparameters.

    Attributes:
        name: a loss registry name (see ``nemo_gammapo.core.registry.LOSSES`` and the README).
        beta: reward scale β (> 0). SimPO-family values are ~2–10, DPO-family ~0.01–0.1.
        gamma_beta_ratio: target margin in the paper's units (Table 7 "γ" column), >= 0; the
            absolute base margin is ``gamma0 = gamma_beta_ratio · beta``. Used by SimPO and every
            γ-PO loss; DPO-family losses use it only through γ-PO.
        average_log_probs: DPO family only — length-average the log-ratios instead of summing.
        label_smoothing: ε of rDPO / rSimPO (paper eq. 13), in [0, 0.5).
        ipo_tau: IPO's τ (> 0), or ``None`` for β (NeMo-Aligner's convention: its IPO uses
            ``ref_policy_kl_penalty`` as τ); the target is ``1/(2·τ)``.
        cpo_alpha: weight of CPO's chosen-NLL term (>= 0).
        orpo_lambda: weight λ of ORPO's odds-ratio term (>= 0).
        length_alpha: R-DPO's length penalty α (>= 0), in reward units per token.
        kto_lambda_chosen, kto_lambda_rejected: KTO's λ_w, λ_l (>= 0).
        beta_dpo_alpha: β-DPO's α (>= 0): ``β_i = β·(1 + α·(M_i − M0))``.
        reference_momentum: momentum in [0, 1) of the moving average that gives β-DPO / β-SimPO
            their M0 (mean margin) and KTO its z_ref (mean reward), over global micro-batches
            (see :mod:`nemo_gammapo.core.baseline`); 0 uses each global micro-batch's own mean.
    """

    name: str = "gamma_simpo"
    beta: float = 2.0
    gamma_beta_ratio: float = 0.5
    average_log_probs: bool = False
    label_smoothing: float = 0.0
    ipo_tau: float | None = None
    cpo_alpha: float = 1.0
    orpo_lambda: float = 0.1
    length_alpha: float = 0.0
    kto_lambda_chosen: float = 1.0
    kto_lambda_rejected: float = 1.0
    beta_dpo_alpha: float = 0.1
    reference_momentum: float = 0.9

    def __post_init__(self) -> None:
        from nemo_gammapo.core.registry import LOSSES  # registry imports this module

        c = type(self).__name__
        _check(self.name in LOSSES, c, "name", f"one of {sorted(LOSSES)}", self.name)
        _check(_finite(self.beta) and self.beta > 0, c, "beta", "a finite number > 0", self.beta)
        _check(
            _finite(self.gamma_beta_ratio) and self.gamma_beta_ratio >= 0,
            c,
            "gamma_beta_ratio",
            "a finite number >= 0",
            self.gamma_beta_ratio,
        )
        _check(isinstance(self.average_log_probs, bool), c, "average_log_probs", "a bool", self.average_log_probs)
        _check(
            _finite(self.label_smoothing) and 0 <= self.label_smoothing < 0.5,
            c,
            "label_smoothing",
            "in [0, 0.5)",
            self.label_smoothing,
        )
        _check(
            self.ipo_tau is None or (_finite(self.ipo_tau) and self.ipo_tau > 0),
            c,
            "ipo_tau",
            "null (= beta) or a finite number > 0",
            self.ipo_tau,
        )
        for name in (
            "cpo_alpha",
            "orpo_lambda",
            "length_alpha",
            "kto_lambda_chosen",
            "kto_lambda_rejected",
            "beta_dpo_alpha",
        ):
            value = getattr(self, name)
            _check(_finite(value) and value >= 0, c, name, "a finite number >= 0", value)
        _check(
            _finite(self.reference_momentum) and 0 <= self.reference_momentum < 1,
            c,
            "reference_momentum",
            "in [0, 1)",
            self.reference_momentum,
        )

    @property
    def resolved_ipo_tau(self) -> float:
        """IPO's τ: ``ipo_tau``, or β when it is ``None``."""
        return self.beta if self.ipo_tau is None else self.ipo_tau

    @property
    def gamma0(self) -> float:
        """Absolute base target margin γ0 = ``gamma_beta_ratio · beta``."""
        return self.gamma_beta_ratio * self.beta


@dataclass
class GammaConfig:
    """The γ-PO margin policy: solver, queue and the γ-DPO convention.

    Attributes:
        tau: KL weight τ of eq. 9 (> 0). Paper values: 3–20.
        num_iters: mirror-descent updates per solve (>= 1; paper: 20).
        lr: solver step size η (> 0), or ``None`` for the paper's ``min(0.5/τ, 1)``.
        solver: ``"mirror_descent"`` (paper) or ``"exact"`` (fixed point to float64 precision).
        queue_capacity: margins kept in the FIFO queue (>= 0; 0 disables it; paper: 2048).
        solve_size: target solve-set size m_n (>= 1; paper: 256).
        sampling: how queued margins join a solve set: ``"random"`` or ``"recent"``.
        seed: seed of the queue's sampling generator (same on every rank).
        compile: solve with a ``torch.compile``-d, fixed-shape mirror-descent loop (one fused
            kernel per solve instead of ~200 small ops; compiles once, at the first step).
        dpo_convention: target used by γ-DPO. ``"offset"`` (default) uses ``γ_i − γ0``, the
            authors' implementation: the mean target stays 0 as in plain DPO, so γ only
            redistributes margin between pairs. ``"margin"`` uses ``γ_i`` as in paper eq. 11.
            γ-SimPO always uses ``γ_i`` (SimPO already has the base margin γ0).
    """

    tau: float = 10.0
    num_iters: int = 20
    lr: float | None = None
    solver: str = "mirror_descent"
    queue_capacity: int = 2048
    solve_size: int = 256
    sampling: str = "random"
    seed: int = 1234
    dpo_convention: str = "offset"
    compile: bool = False

    def __post_init__(self) -> None:
        c = type(self).__name__
        _check(_finite(self.tau) and self.tau > 0, c, "tau", "a finite number > 0", self.tau)
        _check(_is_int(self.num_iters) and self.num_iters >= 1, c, "num_iters", "an integer >= 1", self.num_iters)
        _check(self.lr is None or (_finite(self.lr) and self.lr > 0), c, "lr", "null or a number > 0", self.lr)
        _check(self.solver in SOLVERS, c, "solver", f"one of {SOLVERS}", self.solver)
        _check(
            _is_int(self.queue_capacity) and self.queue_capacity >= 0,
            c,
            "queue_capacity",
            "an integer >= 0",
            self.queue_capacity,
        )
        _check(_is_int(self.solve_size) and self.solve_size >= 1, c, "solve_size", "an integer >= 1", self.solve_size)
        _check(self.sampling in SAMPLING_MODES, c, "sampling", f"one of {SAMPLING_MODES}", self.sampling)
        _check(_is_int(self.seed), c, "seed", "an integer", self.seed)
        _check(isinstance(self.compile, bool), c, "compile", "a bool", self.compile)
        _check(not (self.compile and self.solver == "exact"), c, "compile", "false with solver=exact", self.compile)
        _check(
            self.dpo_convention in GAMMA_DPO_CONVENTIONS,
            c,
            "dpo_convention",
            f"one of {GAMMA_DPO_CONVENTIONS}",
            self.dpo_convention,
        )


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass
class GammaDumpConfig:
    """Per-pair dumps of margin / γ / loss for plots (``<run_dir>/gamma_dumps/*.parquet``).

    Attributes:
        every: write every ``every``-th training step (>= 0; 0 = off).
        max_pairs: pairs written per rank and dumped step (>= 1).
        run_dir: the run directory the dumps go under (``None``: the current directory).
    """

    every: int = 0
    max_pairs: int = 256
    run_dir: str | None = None

    def __post_init__(self) -> None:
        c = type(self).__name__
        _check(_is_int(self.every) and self.every >= 0, c, "every", "an integer >= 0", self.every)
        _check(_is_int(self.max_pairs) and self.max_pairs >= 1, c, "max_pairs", "an integer >= 1", self.max_pairs)
        _check(self.run_dir is None or isinstance(self.run_dir, str), c, "run_dir", "null or a path", self.run_dir)


def config_from_mapping(cls: type, values: dict, prefix: str = "") -> object:
    """Build ``cls`` from a mapping, rejecting unknown keys by name (e.g. a Hydra node).

    ``None`` values mean "the dataclass default" (the YAML writes ``null`` for keys it leaves to
    the dataclass, so defaults live in one place).
    """
    known = {f.name for f in fields(cls)}
    unknown = tuple(sorted(set(values) - known))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigFieldError(
            f"unknown key(s) {[where + k for k in unknown]} for {cls.__name__}; allowed: {sorted(known)}",
            cls.__name__,
            keys=unknown,
        )
    return cls(**{k: v for k, v in values.items() if v is not None})
