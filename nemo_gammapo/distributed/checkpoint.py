"""Bringing the γ-PO state (the margin queue) to the ranks that write checkpoints.

The queue is fed and sampled on the last pipeline stage only, but NeMo's distributed checkpoint
writes non-sharded ("common") state from global rank 0, which sits on the first stage when
PP > 1. Before saving, every pipeline stage receives the last stage's state; on load, every rank
restores it (first-stage ranks keep an unused but consistent copy).
"""

from __future__ import annotations

from typing import Any

import torch.distributed as dist
from megatron.core import parallel_state


def broadcast_from_last_stage(state: Any) -> Any:
    """Return the last pipeline stage's ``state`` on every rank of this rank's pipeline group.

    A no-op without pipeline parallelism. Uses ``broadcast_object_list`` (runs at checkpoint
    time only; state is a few KB).
    """
    if not parallel_state.model_parallel_is_initialized():
        return state
    if parallel_state.get_pipeline_model_parallel_world_size() == 1:
        return state
    box = [state if parallel_state.is_pipeline_last_stage(ignore_virtual=True) else None]
    dist.broadcast_object_list(
        box,
        src=parallel_state.get_pipeline_model_parallel_last_rank(),
        group=parallel_state.get_pipeline_model_parallel_group(),
    )
    return box[0]
