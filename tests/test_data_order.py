"""The layout-independent training order (``nemo_gammapo.data.order``, ``aligner.sampler``).

Checked against an independent statement of the order: an epoch's permutation cut into
``[batches, micro-batches, ranks, micro_batch_size]`` by ``reshape`` — rank ``r`` of batch ``b`` reads
``order[b, :, r, :]``.
"""

from __future__ import annotations

import pytest
import torch

from nemo_gammapo.data.order import epoch_order, rank_slice

pytest.importorskip("nemo")

from nemo_gammapo.aligner.sampler import GlobalOrderBatchSampler

PAIRS, GBS, SEED = 70, 8, 1234  # 8 whole batches per epoch, 6 pairs of tail dropped


def sampler(dp: int, rank: int, mbs: int, consumed: int = 0, **kw) -> GlobalOrderBatchSampler:
    return GlobalOrderBatchSampler(
        total_samples=PAIRS,
        consumed_samples=consumed,
        micro_batch_size=mbs,
        global_batch_size=GBS,
        data_parallel_rank=rank,
        data_parallel_size=dp,
        shuffle=kw.pop("shuffle", True),
        seed=SEED,
        **kw,
    )


def expected(epoch: int, dp: int, mbs: int, shuffle: bool = True, batches: int = PAIRS // GBS) -> torch.Tensor:
    """``[batches, ranks, gbs / dp]``: what each rank loads, from a reshape of the epoch's permutation."""
    order = (
        torch.randperm(PAIRS, generator=torch.Generator().manual_seed(SEED + epoch)) if shuffle else torch.arange(PAIRS)
    )
    cut = order[: batches * GBS].reshape(batches, GBS // (dp * mbs), dp, mbs)
    return cut.permute(0, 2, 1, 3).reshape(batches, dp, GBS // dp)


@pytest.mark.parametrize(("dp", "mbs"), [(1, 2), (2, 1), (2, 2), (4, 1), (4, 2)])
@pytest.mark.parametrize("shuffle", [True, False])
def test_each_rank_reads_its_part_of_each_global_micro_batch(dp: int, mbs: int, shuffle: bool) -> None:
    want = expected(0, dp, mbs, shuffle)
    for rank in range(dp):
        got = list(sampler(dp, rank, mbs, shuffle=shuffle))
        assert torch.tensor(got).tolist() == want[:, rank].tolist()
        assert all(len(b) == GBS // dp for b in got)  # equal slices


@pytest.mark.parametrize("dp", [1, 2, 4])
def test_every_pair_exactly_once_per_epoch(dp: int) -> None:
    seen = [i for rank in range(dp) for batch in sampler(dp, rank, 1) for i in batch]
    assert len(seen) == len(set(seen)) == (PAIRS // GBS) * GBS
    assert set(seen) <= set(range(PAIRS))
    # the dropped tail differs by epoch: over two epochs more than one epoch's pairs are read
    second = [i for rank in range(dp) for batch in sampler(dp, rank, 1, consumed=PAIRS // GBS * GBS) for i in batch]
    assert sorted(second) != sorted(seen) and len(second) == len(set(second))


def test_the_pairs_of_a_step_and_of_a_solve_do_not_depend_on_the_layout() -> None:
    """G = DP × micro-batch kept: global micro-batch k of every batch is one contiguous slice."""

    def solves(dp: int, mbs: int) -> list[list[int]]:
        per_rank = [list(sampler(dp, r, mbs)) for r in range(dp)]
        out = []
        for b in range(PAIRS // GBS):
            for k in range(GBS // (dp * mbs)):
                out.append([i for r in range(dp) for i in per_rank[r][b][k * mbs : (k + 1) * mbs]])
        return out

    reference = solves(1, 4)
    assert solves(2, 2) == reference and solves(4, 1) == reference
    assert reference[0] == epoch_order(PAIRS, 0, SEED, True)[:4].tolist()  # in global order, rank by rank

    def steps(dp: int, mbs: int) -> list[list[int]]:
        per_rank = [list(sampler(dp, r, mbs)) for r in range(dp)]
        return [sorted(i for r in range(dp) for i in per_rank[r][b]) for b in range(PAIRS // GBS)]

    assert steps(2, 1) == steps(1, 4) == steps(4, 2)  # another G: each step's pairs are kept all the same


def test_resumed_at_another_layout_reads_on_where_the_run_stopped() -> None:
    """Position = consumed_samples only: stopped after 11 batches (inside epoch 1), resumed at DP4."""
    per_epoch = PAIRS // GBS
    uninterrupted = torch.cat([expected(epoch, 1, 4)[:, 0] for epoch in range(2)])  # [2 epochs × 8, 8]
    resumed = [sampler(4, r, 1, consumed=11 * GBS) for r in range(4)]
    batches = [sorted(i for b in parts for i in b) for parts in zip(*[list(s) for s in resumed], strict=True)]
    assert len(batches) == 2 * per_epoch - 11  # the rest of epoch 1, then DPOTrainer's next epoch loop
    assert batches == [sorted(row.tolist()) for row in uninterrupted[11:]]


def test_the_trainer_s_epoch_loop_reads_each_epoch_in_turn() -> None:
    s = sampler(2, 1, 2)
    first, second = list(s), list(s)  # one iter() per epoch, as DPOTrainer.fit does
    assert first == expected(0, 2, 2)[:, 1].tolist() and second == expected(1, 2, 2)[:, 1].tolist()
    assert s.consumed_samples == 2 * (PAIRS // GBS) * GBS


def test_limit_train_batches_shortens_each_epoch_to_its_first_batches() -> None:
    s = sampler(1, 0, 2, batches_per_epoch=3)
    assert list(s) == expected(0, 1, 2, batches=3)[:, 0].tolist()
    assert list(s) == expected(1, 1, 2, batches=3)[:, 0].tolist()


def test_validation_restarts_in_file_order_every_time() -> None:
    s = sampler(2, 0, 1, shuffle=False, restart=True)
    assert list(s) == list(s) == expected(0, 2, 1, shuffle=False)[:, 0].tolist()
    assert len(s) == PAIRS // GBS and s.consumed_samples == 0


def test_bad_positions_and_batches_are_refused() -> None:
    with pytest.raises(ValueError, match="multiple of the global batch"):
        sampler(1, 0, 1, consumed=3)
    with pytest.raises(IndexError):
        rank_slice(torch.arange(8), 1, 8, 1, 0, 1)
    with pytest.raises(ValueError, match="multiple of G"):
        rank_slice(torch.arange(16), 0, 8, 3, 0, 1)


def test_the_dpo_trainer_accepts_it_for_several_epochs() -> None:
    from nemo.collections.nlp.data.language_modeling.megatron.megatron_batch_samplers import (
        MegatronPretrainingRandomBatchSampler,
    )

    assert isinstance(sampler(1, 0, 1), MegatronPretrainingRandomBatchSampler)  # DPOTrainer.fit's check
