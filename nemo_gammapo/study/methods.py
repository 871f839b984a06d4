"""The study's methods: a registry loss plus the few settings the study varies (τ, rSimPO/rDPO's ε).

A method's ``key`` names it in every output (``gamma_simpo@tau10``, ``rdpo@eps=p``,
``rsimpo@eps=tuned``); ``base`` is the loss it is compared against in the paired differences
(``simpo`` or ``dpo``). A *tuned* method (``tuned=True``) gets its ε from the grid's tuning stage
(:mod:`nemo_gammapo.study.tuning`); its key does not depend on the value chosen, its label does.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from nemo_gammapo.viz.style import method_label

TAUS = (1.0, 3.0, 10.0, 30.0)
PRIMARY_TAU = 10.0  # the paper's Table 7 value for Llama3 / Mistral; the headline γ rows use it
EPSILON_CANDIDATES = (0.05, 0.1, 0.2, 0.3)  # the tuning stage's ε candidates for rSimPO / rDPO


@dataclass(frozen=True)
class Method:
    """One row of the comparison.

    Attributes:
        loss: registry loss name.
        base: the base loss of the family (``simpo`` / ``dpo``).
        tau: γ-PO's τ (γ losses only).
        epsilon: label smoothing ε of rSimPO / rDPO: ``"p"`` = the true flip rate, else a number
            (``None`` for a tuned method until :meth:`with_epsilon` sets the chosen value).
        tuned: ε is chosen by the tuning stage, on data disjoint from the evaluation seeds.
    """

    loss: str
    base: str
    tau: float | None = None
    epsilon: float | str | None = None
    tuned: bool = False

    @property
    def key(self) -> str:
        if self.tuned:
            return f"{self.loss}@eps=tuned"
        if self.tau is not None:
            return f"{self.loss}@tau{self.tau:g}"
        if self.epsilon is not None:
            return f"{self.loss}@eps={self.epsilon if isinstance(self.epsilon, str) else format(self.epsilon, 'g')}"
        return self.loss

    @property
    def label(self) -> str:
        name = method_label(self.loss)
        if self.tuned:
            return f"{name} (ε=tuned" + ("" if self.epsilon is None else f": {float(self.epsilon):g}") + ")"
        if self.tau is not None:
            return f"{name} (τ={self.tau:g})"
        if self.epsilon is not None:
            return f"{name} (ε={self.epsilon if isinstance(self.epsilon, str) else format(self.epsilon, 'g')})"
        return name

    def with_epsilon(self, epsilon: float) -> Method:
        """This tuned method with its chosen ε."""
        if not self.tuned:
            raise ValueError(f"{self.key} has no tuned ε")
        return replace(self, epsilon=float(epsilon))

    def label_smoothing(self, flip_rate: float) -> float:
        if self.tuned and self.epsilon is None:
            raise ValueError(f"{self.key}: ε is not chosen yet (run the tuning stage first)")
        if self.epsilon is None:
            return 0.0
        return min(flip_rate if self.epsilon == "p" else float(self.epsilon), 0.499)


def family(base: str, taus: tuple[float, ...]) -> tuple[Method, ...]:
    """Base, γ-variants over ``taus``, r-variant (ε = p and ε tuned), β-variant of ``base`` (simpo/dpo)."""
    robust = "rsimpo" if base == "simpo" else "rdpo"
    return (
        Method(base, base),
        *(Method(f"gamma_{base}", base, tau=t) for t in taus),
        Method(robust, base, epsilon="p"),
        Method(robust, base, tuned=True),
        Method(f"beta_{base}", base),
    )


# 14 methods: the τ sweep runs on γ-SimPO; γ-DPO runs at the primary τ (the grid's time budget).
ALL_METHODS: tuple[Method, ...] = (*family("simpo", TAUS), *family("dpo", (PRIMARY_TAU,)))
BY_KEY: dict[str, Method] = {m.key: m for m in ALL_METHODS}


def get_method(key: str) -> Method:
    """The method named ``key`` (one of :data:`BY_KEY`)."""
    try:
        return BY_KEY[key]
    except KeyError:
        raise ValueError(f"unknown study method {key!r}; choose from {sorted(BY_KEY)}") from None
