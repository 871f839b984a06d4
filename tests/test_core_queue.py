"""MarginQueue: FIFO order, wrap-around, sampling determinism, state round-trip."""

import pytest
import torch

from nemo_gammapo.core.config import GammaConfig
from nemo_gammapo.core.policy import GammaMarginPolicy
from nemo_gammapo.core.queue import MarginQueue
from nemo_gammapo.core.solver import solve_gamma


def test_fifo_order_and_len() -> None:
    q = MarginQueue(capacity=5, solve_size=8)
    assert len(q) == 0
    q.push(torch.tensor([1.0, 2.0]))
    q.push(torch.tensor([3.0]))
    assert len(q) == 3
    assert q.ordered()[0].tolist() == [1.0, 2.0, 3.0]


def test_wrap_around_keeps_newest() -> None:
    q = MarginQueue(capacity=4, solve_size=8)
    for start in range(0, 10, 3):
        q.push(torch.arange(start, start + 3, dtype=torch.float32))
    # pushed 0..11; the newest four survive, oldest first
    assert len(q) == 4
    assert q.ordered()[0].tolist() == [8.0, 9.0, 10.0, 11.0]


def test_push_larger_than_capacity() -> None:
    q = MarginQueue(capacity=3, solve_size=8)
    q.push(torch.tensor([0.0]))
    q.push(torch.arange(1, 8, dtype=torch.float32))
    assert q.ordered()[0].tolist() == [5.0, 6.0, 7.0]
    q.push(torch.tensor([8.0]))
    assert q.ordered()[0].tolist() == [6.0, 7.0, 8.0]


def test_solve_set_is_current_then_queued() -> None:
    q = MarginQueue(capacity=10, solve_size=6, seed=3)
    q.push(torch.arange(10, 20, dtype=torch.float32))
    cur = torch.tensor([-1.0, -2.0])
    m, v = q.solve_set(cur)
    assert m.shape == (6,) and v.all()
    assert m[:2].tolist() == [-1.0, -2.0]
    assert set(m[2:].tolist()) <= set(range(10, 20)) and len(set(m[2:].tolist())) == 4  # no replacement


def test_solve_set_caps_at_queue_length_and_solve_size() -> None:
    q = MarginQueue(capacity=10, solve_size=4)
    cur = torch.zeros(2)
    assert q.solve_set(cur)[0].numel() == 2  # empty queue: current only
    q.push(torch.ones(1))
    assert q.solve_set(cur)[0].numel() == 3
    q.push(torch.ones(5))
    assert q.solve_set(cur)[0].numel() == 4
    assert q.solve_set(torch.zeros(7))[0].numel() == 7  # current alone exceeds solve_size


def test_recent_mode_takes_newest() -> None:
    q = MarginQueue(capacity=4, solve_size=3, sampling="recent")
    q.push(torch.arange(6, dtype=torch.float32))  # holds 2,3,4,5
    m, _ = q.solve_set(torch.tensor([-1.0]))
    assert m.tolist() == [-1.0, 5.0, 4.0]


def test_sampling_is_deterministic_per_seed() -> None:
    def draws(seed: int) -> list[list[float]]:
        q = MarginQueue(capacity=64, solve_size=16, seed=seed)
        q.push(torch.arange(64, dtype=torch.float32))
        return [q.solve_set(torch.zeros(1))[0].tolist() for _ in range(3)]

    assert draws(7) == draws(7)
    assert draws(7) != draws(8)


def test_state_round_trip_is_bit_exact() -> None:
    q = MarginQueue(capacity=8, solve_size=5, seed=11)
    q.push(torch.randn(11))
    q.solve_set(torch.zeros(1))  # advance the generator
    state = q.state_dict()
    restored = MarginQueue(capacity=8, solve_size=5, seed=999)
    restored.load_state_dict(state)
    for name in ("margins", "valid"):
        assert torch.equal(getattr(q, name), getattr(restored, name))
    assert (q.pointer, q.count) == (restored.pointer, restored.count)
    for _ in range(3):  # identical future behaviour
        cur = torch.randn(2)
        assert torch.equal(q.solve_set(cur)[0], restored.solve_set(cur)[0])
        q.push(cur)
        restored.push(cur)
    assert torch.equal(q.margins, restored.margins)


def test_state_survives_torch_save(tmp_path) -> None:
    q = MarginQueue(capacity=8, solve_size=5, seed=11)
    q.push(torch.randn(5))
    torch.save(q.state_dict(), tmp_path / "q.pt")
    r = MarginQueue(capacity=8, solve_size=5)
    r.load_state_dict(torch.load(tmp_path / "q.pt"))
    assert torch.equal(q.solve_set(torch.zeros(1))[0], r.solve_set(torch.zeros(1))[0])


def test_capacity_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="capacity"):
        MarginQueue(capacity=4).load_state_dict(MarginQueue(capacity=8).state_dict())


def test_invalid_and_non_finite_pushes_never_enter_a_solve() -> None:
    q = MarginQueue(capacity=6, solve_size=7)
    q.push(torch.tensor([1.0, float("nan"), 3.0]), valid=torch.tensor([True, True, False]))
    m, v = q.solve_set(torch.tensor([0.0]))
    assert m.numel() == 4 and v.tolist()[0] and sorted(m[v].tolist()) == [0.0, 1.0]
    assert q.num_valid().item() == 1


def test_zero_capacity_disables_queue() -> None:
    q = MarginQueue(capacity=0, solve_size=4)
    q.push(torch.ones(3))
    assert len(q) == 0 and q.solve_set(torch.zeros(2))[0].numel() == 2


@pytest.mark.parametrize(
    "kwargs,name",
    [({"capacity": -1}, "capacity"), ({"solve_size": 0}, "solve_size"), ({"sampling": "lifo"}, "sampling")],
)
def test_bad_arguments(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        MarginQueue(**kwargs)


def test_policy_uses_queue_and_validation_leaves_it_untouched() -> None:
    cfg = GammaConfig(tau=5.0, queue_capacity=32, solve_size=16, seed=5)
    policy = GammaMarginPolicy(cfg, gamma0=2.0)
    first = torch.tensor([0.5, 1.5])
    # Empty queue: the solve set is the current margins only.
    torch.testing.assert_close(policy(first), solve_gamma(first, 2.0, 5.0))
    for _ in range(5):
        policy(torch.randn(4))
    before = policy.state_dict()
    policy(torch.randn(4), update=False)
    after = policy.state_dict()
    assert torch.equal(before["queue"]["margins"], after["queue"]["margins"])
    assert torch.equal(before["queue"]["generator"], after["queue"]["generator"])
    assert before["queue"]["pointer"] == after["queue"]["pointer"]
    # With a queue the current pairs' γ differs from solving them alone.
    cur = torch.tensor([0.5, 1.5])
    assert not torch.allclose(policy(cur, update=False), solve_gamma(cur, 2.0, 5.0))
