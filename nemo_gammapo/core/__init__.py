"""γ-PO core: pure torch, importable without NeMo or megatron-core.

* :func:`solve_gamma` — the appendix-C solver for per-pair target margins γ_i.
* :class:`MarginQueue` — the FIFO queue of recent margins, checkpointable.
* :class:`GammaMarginPolicy` — queue + solver behind one call.
* :func:`preference_loss` — every loss of the paper's Table 6 plus γ-PO compositions.
* :class:`PreferenceLossConfig`, :class:`GammaConfig` — validated configuration.
"""

from nemo_gammapo.core.config import GammaConfig, PreferenceLossConfig
from nemo_gammapo.core.policy import GammaMarginPolicy, gamma_statistics
from nemo_gammapo.core.queue import MarginQueue
from nemo_gammapo.core.registry import LOSSES, REFERENCE_FREE, LossOutput, preference_loss, reward_margins
from nemo_gammapo.core.rewards import PairLogProbs
from nemo_gammapo.core.solver import solve_gamma

__all__ = [
    "LOSSES",
    "REFERENCE_FREE",
    "GammaConfig",
    "GammaMarginPolicy",
    "LossOutput",
    "MarginQueue",
    "PairLogProbs",
    "PreferenceLossConfig",
    "gamma_statistics",
    "preference_loss",
    "reward_margins",
    "solve_gamma",
]
