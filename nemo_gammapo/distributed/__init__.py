"""γ-PO on megatron-core: torch.distributed and ``megatron.core.parallel_state`` only, no NeMo.

* :func:`sequence_logprobs` — per-sequence log-probs from vocab-parallel logits (TP/CP aware).
* :func:`gather_margins` — fixed-size, masked all-gather of margins over data parallelism.
* :class:`GammaPOLoss` — a megatron-core ``loss_func`` / ``forward_step`` for any registry loss.
* :func:`broadcast_from_last_stage` — queue state onto the checkpoint-writing ranks.
"""

from nemo_gammapo.distributed.checkpoint import broadcast_from_last_stage
from nemo_gammapo.distributed.gamma_loss import GammaPOLoss, reduce_step_metrics
from nemo_gammapo.distributed.logprobs import all_reduce_sum_identity_grad, sequence_logprobs
from nemo_gammapo.distributed.margin_sync import gather_margins, local_slice

__all__ = [
    "GammaPOLoss",
    "all_reduce_sum_identity_grad",
    "broadcast_from_last_stage",
    "gather_margins",
    "local_slice",
    "reduce_step_metrics",
    "sequence_logprobs",
]
