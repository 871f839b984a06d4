"""Margin synchronisation over the data-parallel group.

γ is solved on the margins of the *global* micro-batch: every data-parallel rank gathers all
ranks' margins (rank order = data order), solves the same problem, and keeps its own slice.
The gather is fixed-size with a validity mask, so ranks with fewer real pairs (or masked,
over-length pairs) work on every backend, gloo included. Everything is detached: γ carries no
gradient.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def gather_margins(
    margins: Tensor, valid: Tensor, group: dist.ProcessGroup | None, pad_to: int | None = None
) -> tuple[Tensor, Tensor]:
    """All-gather detached margins and their validity mask over ``group``.

    Args:
        margins: ``[n]`` this rank's pair margins.
        valid: ``[n]`` bool, False for pairs that must not enter the solve.
        group: the data-parallel group (``None`` or size 1: returned as is).
        pad_to: per-rank slot count; defaults to ``n``. Set it when ranks may hold different
            numbers of pairs (the slots beyond ``n`` are padded and marked invalid).

    Returns:
        ``(margins, valid)`` of shape ``[world · pad_to]``; rank ``r``'s pairs occupy slots
        ``[r·pad_to, r·pad_to + n)``.
    """
    margins = margins.detach().reshape(-1)
    valid = valid.reshape(-1).to(torch.bool)
    n = margins.numel()
    size = n if pad_to is None else pad_to
    if size < n:
        raise ValueError(f"pad_to={size} is smaller than the local pair count {n}")
    if group is None or dist.get_world_size(group) == 1:
        if size == n:
            return margins, valid
    # One collective for both: margins and validity travel as two rows of a float tensor.
    dtype = torch.promote_types(margins.dtype, torch.float32)
    packed = torch.zeros(2, size, dtype=dtype, device=margins.device)
    packed[0, :n] = margins
    packed[1, :n] = valid.to(dtype)
    world = 1 if group is None else dist.get_world_size(group)
    if world == 1:
        gathered = packed.unsqueeze(0)
    else:
        flat = torch.empty(world * 2 * size, dtype=dtype, device=margins.device)
        dist.all_gather_into_tensor(flat, packed.reshape(-1), group=group)
        gathered = flat.view(world, 2, size)
    return gathered[:, 0, :].reshape(-1).to(margins.dtype), gathered[:, 1, :].reshape(-1) > 0.5


def local_slice(values: Tensor, group: dist.ProcessGroup | None, n: int, pad_to: int | None = None) -> Tensor:
    """This rank's ``n`` entries of a tensor laid out like :func:`gather_margins`' output."""
    rank = 0 if group is None else dist.get_rank(group)
    start = rank * (n if pad_to is None else pad_to)
    return values[start : start + n]
