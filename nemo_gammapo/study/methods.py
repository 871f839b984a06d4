"""The study's methods: a registry loss plus the few settings the study varies (τ, rSimPO/rDPO's ε).

A method's ``key`` names it in every output (``gamma_simpo@tau10``, ``rdpo@eps=p``); ``base`` is
the loss it is compared against in the paired differences (``simpo`` or ``dpo``).
"""

from __future__ import annotations

from dataclasses import dataclass

from nemo_gammapo.viz.style import method_label

TAUS = (1.0, 3.0, 10.0, 30.0)
PRIMARY_TAU = 10.0  # the paper's Table 7 value for Llama3 / Mistral; the headline γ rows use it
FIXED_EPSILON = 0.1  # rSimPO / rDPO's single fixed ε: the top of the paper's Table 6 search range


@dataclass(frozen=True)
class Method:
    """One row of the comparison.

    Attributes:
        loss: registry loss name.
        base: the base loss of the family (``simpo`` / ``dpo``).
        tau: γ-PO's τ (γ losses only).
        epsilon: label smoothing ε of rSimPO / rDPO: ``"p"`` = the true flip rate, else a number.
    """

    loss: str
    base: str
    tau: float | None = None
    epsilon: float | str | None = None

    @property
    def key(self) -> str:
        if self.tau is not None:
            return f"{self.loss}@tau{self.tau:g}"
        if self.epsilon is not None:
            return f"{self.loss}@eps={self.epsilon if isinstance(self.epsilon, str) else format(self.epsilon, 'g')}"
        return self.loss

    @property
    def label(self) -> str:
        name = method_label(self.loss)
        if self.tau is not None:
            return f"{name} (τ={self.tau:g})"
        if self.epsilon is not None:
            return f"{name} (ε={self.epsilon if isinstance(self.epsilon, str) else format(self.epsilon, 'g')})"
        return name

    def label_smoothing(self, flip_rate: float) -> float:
        if self.epsilon is None:
            return 0.0
        return min(flip_rate if self.epsilon == "p" else float(self.epsilon), 0.499)


def family(base: str, taus: tuple[float, ...]) -> tuple[Method, ...]:
    """Base, γ-variants over ``taus``, r-variant (ε = p and ε fixed), β-variant of ``base`` (simpo/dpo)."""
    robust = "rsimpo" if base == "simpo" else "rdpo"
    return (
        Method(base, base),
        *(Method(f"gamma_{base}", base, tau=t) for t in taus),
        Method(robust, base, epsilon="p"),
        Method(robust, base, epsilon=FIXED_EPSILON),
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
