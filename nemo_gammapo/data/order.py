"""The training order: one global sequence of pairs, independent of how many ranks read it.

Each epoch is one permutation of the whole dataset (``torch.randperm`` seeded with
``seed + epoch``), or file order without shuffling. Global batch ``b`` of an epoch is its ``b``-th
slice of ``global_batch_size`` pairs (a short tail is dropped); global micro-batch ``k`` of that
batch is its ``k``-th contiguous slice of ``G = data_parallel_size × micro_batch_size`` pairs, and
data-parallel rank ``r`` reads the ``r``-th ``micro_batch_size`` pairs of it::

    epoch order:   | batch 0                       | batch 1 ...
    batch 0:       | micro-batch 0 | micro-batch 1 |        (G pairs each)
    micro-batch 0: | rank 0 | rank 1 |                      (micro_batch_size pairs each)

So the pairs of every step and of every γ solve (a solve sees one global micro-batch) depend only
on the seed, the global batch size and G, never on the number of ranks: a run resumed at
another data-parallel size with ``micro_batch_size`` scaled to keep G trains on exactly the pairs
the uninterrupted run would have, in the same solves. Knows nothing of NeMo.
"""

from __future__ import annotations

import torch


def epoch_order(num_pairs: int, epoch: int, seed: int, shuffle: bool) -> torch.Tensor:
    """Dataset indices in the order epoch ``epoch`` (0-based) reads them: ``int64 [num_pairs]``."""
    if not shuffle:
        return torch.arange(num_pairs, dtype=torch.int64)
    generator = torch.Generator()
    generator.manual_seed(seed + epoch)
    return torch.randperm(num_pairs, generator=generator)


def rank_slice(
    order: torch.Tensor,
    batch: int,
    global_batch_size: int,
    micro_batch_size: int,
    data_parallel_rank: int,
    data_parallel_size: int,
) -> list[int]:
    """The indices rank ``data_parallel_rank`` loads for global batch ``batch`` of ``order``.

    ``global_batch_size / (micro_batch_size × data_parallel_size)`` micro-batches of
    ``micro_batch_size`` indices each, concatenated in micro-batch order (NeMo-Aligner splits a
    loaded batch into contiguous micro-batches along dim 0).
    """
    group = micro_batch_size * data_parallel_size  # G: the pairs of one global micro-batch
    if global_batch_size % group:
        raise ValueError(
            f"global batch {global_batch_size} is not a multiple of G = {micro_batch_size} × {data_parallel_size}"
        )
    start = batch * global_batch_size
    if start + global_batch_size > len(order):
        raise IndexError(f"global batch {batch} of {global_batch_size} pairs is past the {len(order)} pairs")
    out: list[int] = []
    for micro in range(global_batch_size // group):
        first = start + micro * group + data_parallel_rank * micro_batch_size
        out += order[first : first + micro_batch_size].tolist()
    return out
