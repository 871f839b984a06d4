"""NeMo-Aligner's data loaders with the layout-independent order of :mod:`nemo_gammapo.data.order`.

Megatron's batch samplers make the order depend on the data-parallel size: the sequential one
strides a global batch over the ranks, the random one shards the dataset into one bucket per rank
and shuffles inside it. Either way a run resumed at another data-parallel size sees other pairs
together (in a step and in a γ solve), and the random one repeats or skips pairs for the rest of
the epoch. :class:`GlobalOrderBatchSampler` reads one global order instead; the position is the
trainer's ``consumed_samples`` alone, so a checkpoint resumes at any layout.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from nemo.collections.nlp.data.language_modeling.megatron.megatron_batch_samplers import (
    MegatronPretrainingRandomBatchSampler,
)

from nemo_gammapo.data.order import epoch_order, rank_slice


class GlobalOrderBatchSampler(MegatronPretrainingRandomBatchSampler):
    """Yields this data-parallel rank's indices of each global batch (a list of ``gbs / DP`` ints).

    A subclass of Megatron's random batch sampler only so that NeMo-Aligner's ``DPOTrainer`` accepts
    it for more than one epoch (it checks the type); the order is entirely this class's.

    Args:
        total_samples: pairs in the dataset.
        consumed_samples: pairs of earlier steps (a multiple of ``global_batch_size``); the
            position in the order, the same at every layout.
        batches_per_epoch: global batches read per epoch (``total_samples // global_batch_size``
            unless ``limit_train_batches`` shortens the epoch); the rest of each epoch's order is
            not read.
        shuffle: a permutation of all pairs per epoch (seeded ``seed + epoch``), else file order.
        restart: every iteration starts at the first batch of epoch 0 and leaves the position
            alone (validation); otherwise an iteration runs to the end of the current epoch and
            advances ``consumed_samples`` as it yields.
    """

    def __init__(
        self,
        *,
        total_samples: int,
        consumed_samples: int,
        micro_batch_size: int,
        global_batch_size: int,
        data_parallel_rank: int,
        data_parallel_size: int,
        shuffle: bool,
        seed: int,
        batches_per_epoch: int | None = None,
        restart: bool = False,
    ) -> None:
        super().__init__(
            total_samples=total_samples,
            consumed_samples=consumed_samples,
            micro_batch_size=micro_batch_size,
            global_batch_size=global_batch_size,
            data_parallel_rank=data_parallel_rank,
            data_parallel_size=data_parallel_size,
            drop_last=True,
            seed=seed,
        )
        if consumed_samples % global_batch_size:
            raise ValueError(
                f"consumed_samples={consumed_samples} is not a multiple of the global batch {global_batch_size}"
            )
        whole = total_samples // global_batch_size
        self.batches_per_epoch = whole if batches_per_epoch is None else min(batches_per_epoch, whole)
        if self.batches_per_epoch < 1:
            raise ValueError(f"{total_samples} pairs hold no global batch of {global_batch_size}")
        self.shuffle, self.restart = shuffle, restart
        self._order: tuple[int, torch.Tensor] | None = None  # (epoch, its order): O(dataset) ints

    def position(self) -> tuple[int, int]:
        """(epoch, batch within the epoch) the next iteration starts at."""
        if self.restart:
            return 0, 0
        return divmod(self.consumed_samples // self.global_batch_size, self.batches_per_epoch)

    def order(self, epoch: int) -> torch.Tensor:
        """Epoch ``epoch``'s order of the whole dataset (cached for the current epoch)."""
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, epoch_order(self.total_samples, epoch, self.seed, self.shuffle))
        return self._order[1]

    def __len__(self) -> int:
        return self.batches_per_epoch - self.position()[1]

    def __iter__(self) -> Iterator[list[int]]:
        epoch, first = self.position()
        order = self.order(epoch)
        for batch in range(first, self.batches_per_epoch):
            indices = rank_slice(
                order,
                batch,
                self.global_batch_size,
                self.micro_batch_size,
                self.data_parallel_rank,
                self.data_parallel_size,
            )
            if not self.restart:
                self.consumed_samples += self.global_batch_size
            yield indices


def build_pair_dataloader(
    cfg: Any,
    dataset: Any,
    consumed_samples: int,
    *,
    shuffle: bool,
    restart: bool,
    batches_per_epoch: int | None = None,
) -> torch.utils.data.DataLoader:
    """A loader of whole per-rank global batches (``load_gbs``, as NeMo-Aligner's DPO trainer expects)."""
    from megatron.core import parallel_state
    from nemo_aligner.data.nlp.builders import identity_collate

    sampler = GlobalOrderBatchSampler(
        total_samples=len(dataset),
        consumed_samples=consumed_samples,
        micro_batch_size=cfg.model.micro_batch_size,
        global_batch_size=cfg.model.global_batch_size,
        data_parallel_rank=parallel_state.get_data_parallel_rank(),
        data_parallel_size=parallel_state.get_data_parallel_world_size(),
        shuffle=shuffle,
        seed=cfg.model.seed,
        batches_per_epoch=batches_per_epoch,
        restart=restart,
    )
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=cfg.model.data.num_workers,
        pin_memory=torch.cuda.is_available(),
        collate_fn=identity_collate,
    )
