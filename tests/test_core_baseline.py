"""MovingMean: β-DPO's M0 / KTO's z_ref as a moving average of global micro-batch means."""

from __future__ import annotations

import pytest
import torch

from nemo_gammapo.core.baseline import MovingMean


def test_first_batch_sets_the_value_then_it_moves() -> None:
    avg = MovingMean(momentum=0.9)
    ones = torch.ones(2, dtype=torch.bool)
    assert avg(torch.tensor([1.0, 3.0]), ones, update=True).item() == pytest.approx(2.0)
    assert avg(torch.tensor([12.0, 12.0]), ones, update=True).item() == pytest.approx(0.9 * 2.0 + 0.1 * 12.0)


def test_invalid_entries_and_empty_batches_do_not_count() -> None:
    avg = MovingMean(momentum=0.5)
    assert avg(torch.tensor([4.0, 100.0]), torch.tensor([True, False]), update=True).item() == pytest.approx(4.0)
    assert avg(torch.tensor([7.0]), torch.tensor([False]), update=True).item() == pytest.approx(4.0)


def test_reading_does_not_update() -> None:
    avg = MovingMean(momentum=0.5)
    ones = torch.ones(1, dtype=torch.bool)
    assert avg(torch.tensor([5.0]), ones, update=False).item() == 5.0  # nothing seen yet: the batch's mean
    avg(torch.tensor([2.0]), ones, update=True)
    assert avg(torch.tensor([10.0]), ones, update=False).item() == 2.0  # validation reads the training value
    assert avg(torch.tensor([4.0]), ones, update=True).item() == pytest.approx(3.0)


def test_state_round_trip_is_exact() -> None:
    a, b = MovingMean(momentum=0.9), MovingMean(momentum=0.9)
    ones = torch.ones(3, dtype=torch.bool)
    a(torch.tensor([0.1, 0.2, 0.7]), ones, update=True)
    b.load_state_dict(a.state_dict())
    x = torch.tensor([1.0, -2.0, 0.5])
    assert torch.equal(a(x, ones, update=True), b(x, ones, update=True))


def test_momentum_must_be_in_range() -> None:
    with pytest.raises(ValueError, match="momentum"):
        MovingMean(momentum=1.0)
