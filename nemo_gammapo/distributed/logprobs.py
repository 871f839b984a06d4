"""Sequence log-probabilities from vocab-parallel logits (tensor- and context-parallel aware).

The logits of a tensor-parallel model are split over the vocabulary; megatron-core's
``vocab_parallel_cross_entropy`` turns them into per-token log-probs with one all-reduce per
statistic and a correct backward, so the full logits are never gathered. Per-sequence sums are
then reduced over the context-parallel group when the sequence itself is split.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.tensor_parallel import vocab_parallel_cross_entropy
from torch import Tensor


class _AllReduceSumIdentityGrad(torch.autograd.Function):
    """Forward: all-reduce (sum) over ``group``. Backward: identity.

    Each context-parallel rank holds a partial sum over its sequence chunk and then computes the
    same loss from the total, so the gradient reaching its partial is exactly the upstream one.
    (Megatron's gradient averaging over data×context-parallel ranks divides by the CP size; the
    loss is therefore scaled by the CP size — see ``GammaPOLoss``.)
    """

    @staticmethod
    def forward(ctx, tensor: Tensor, group: dist.ProcessGroup) -> Tensor:
        out = tensor.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return grad, None


def all_reduce_sum_identity_grad(tensor: Tensor, group: dist.ProcessGroup | None) -> Tensor:
    """Sum ``tensor`` over ``group`` (no-op for ``None`` or a group of one), identity backward."""
    if group is None or dist.get_world_size(group) == 1:
        return tensor
    return _AllReduceSumIdentityGrad.apply(tensor, group)


def token_logprobs(vocab_parallel_logits: Tensor, labels: Tensor) -> Tensor:
    """Per-token ``log π(label)`` of shape ``labels.shape`` from ``[..., V/tp]`` logits.

    Computed in float32. Note: megatron's cross-entropy normalises its input in place, so the
    logits tensor passed in must not be used afterwards (as in megatron's own loss).
    """
    return -vocab_parallel_cross_entropy(vocab_parallel_logits.float(), labels)


def sequence_logprobs(
    vocab_parallel_logits: Tensor,
    labels: Tensor,
    loss_mask: Tensor,
    *,
    context_parallel_group: dist.ProcessGroup | None = None,
) -> tuple[Tensor, Tensor]:
    """Summed response log-probs and response token counts per sequence.

    Args:
        vocab_parallel_logits: ``[B, S, V/tp]`` logits of this tensor-parallel rank (megatron's
            ``GPTModel`` returns this layout when called without labels).
        labels: ``[B, S]`` next-token ids (``labels[:, t]`` is predicted at position ``t``).
        loss_mask: ``[B, S]``, 1 on response tokens, 0 on prompt and padding.
        context_parallel_group: group over which the sequence is split; defaults to
            megatron's context-parallel group when model parallelism is initialised.

    Returns:
        ``(logps, tokens)``, both ``[B]`` float32: ``Σ_t mask·log π`` and ``Σ_t mask``; the
        length-averaged log-prob is ``logps / tokens``. Fully masked sequences give ``(0, 0)``.
    """
    mask = loss_mask.to(torch.float32)
    per_token = token_logprobs(vocab_parallel_logits, labels) * mask
    logps, tokens = per_token.sum(dim=-1), mask.sum(dim=-1)
    if context_parallel_group is None and parallel_state.model_parallel_is_initialized():
        context_parallel_group = parallel_state.get_context_parallel_group()
    logps = all_reduce_sum_identity_grad(logps, context_parallel_group)
    tokens = all_reduce_sum_identity_grad(tokens, context_parallel_group)
    return logps, tokens
