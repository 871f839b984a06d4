"""What the γ path costs per micro-batch, counted on 2 gloo ranks (CPU).

Each rank runs ``GammaPOLoss.from_sequence_logprobs`` forward + backward for a few steps of
micro-batches, the way the NeMo model calls it (summed log-probs in, a data-parallel group given),
plus forward-only validation micro-batches, and counts inside each call:

* collectives: every ``torch.distributed`` collective, by name (wrapped in ``torch.distributed``,
  ``distributed_c10d`` and any ``nemo_gammapo`` module that bound one). Per micro-batch exactly
  one: the margin all-gather. The step's metric reduction (:func:`reduce_step_metrics`), outside
  the per-micro-batch path, is counted on its own: one all-reduce per step.
* host syncs: ``Tensor.item/tolist/cpu/numpy``, ``__bool__/__float__/__int__/__index__``,
  data-dependent shapes (``nonzero``, ``masked_select``, ``unique``, boolean-mask indexing) and
  ``torch.cuda.synchronize`` — each blocks the host on a GPU. Per micro-batch: none; per step: the
  one ``tolist`` of the metric reduction.
* host↔device transfers: on a CPU no copy is visible, so every tensor factory call
  (``arange``, ``randperm``, ``zeros``, …) must name its ``device=`` and name the margins' device,
  ``torch.tensor``/``as_tensor`` (host data) must not occur, and ``to/copy_`` must not change
  device. (On an accelerator the queue's ``randperm`` is the one exception by design: it runs on the
  queue's CPU generator into pinned memory, copied without a sync — tests/test_gpu_sync_free.py.)

A canary window checks that the counters see what they should (an ``.item()``, an all-reduce, a
device-less ``arange``, a boolean mask), so a silent patching failure cannot pass the test.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch.overrides import TorchFunctionMode

from nemo_gammapo.distributed.process_groups import run_on_ranks

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(300)]

WORLD = 2
COLLECTIVES = (
    "all_gather",
    "all_gather_into_tensor",
    "all_gather_single",
    "_all_gather_base",
    "all_gather_coalesced",
    "all_gather_object",
    "all_reduce",
    "all_reduce_coalesced",
    "reduce",
    "reduce_scatter",
    "reduce_scatter_tensor",
    "reduce_scatter_single",
    "_reduce_scatter_base",
    "broadcast",
    "broadcast_object_list",
    "_broadcast_coalesced",
    "all_to_all",
    "all_to_all_single",
    "gather",
    "gather_object",
    "scatter",
    "scatter_object_list",
    "send",
    "recv",
    "isend",
    "irecv",
    "batch_isend_irecv",
    "send_object_list",
    "recv_object_list",
    "barrier",
    "monitored_barrier",
)
GATHERS = {"all_gather", "all_gather_into_tensor", "all_gather_single", "_all_gather_base"}
HOST_SYNCS = {
    "item",
    "tolist",
    "cpu",
    "numpy",
    "__bool__",
    "__float__",
    "__int__",
    "__index__",
    "__complex__",
    "nonzero",
    "argwhere",
    "masked_select",
    "unique",
    "unique_consecutive",
}
FACTORIES = {
    "arange",
    "randperm",
    "zeros",
    "ones",
    "empty",
    "full",
    "rand",
    "randn",
    "randint",
    "linspace",
    "logspace",
    "eye",
    "scalar_tensor",
    "empty_strided",
}
HOST_DATA = {"tensor", "as_tensor", "from_numpy"}

# name, loss, γ settings, pairs per rank (rank 0, rank 1), pad_to
CASES = [
    {"name": "gamma_simpo/random", "loss": {"name": "gamma_simpo"}, "gamma": {"sampling": "random"}},
    {
        "name": "gamma_dpo/recent",
        "loss": {"name": "gamma_dpo", "beta": 0.5, "gamma_beta_ratio": 1.0},
        "gamma": {"sampling": "recent"},
    },
    {
        "name": "gamma_simpo/uneven",
        "loss": {"name": "gamma_simpo"},
        "gamma": {"sampling": "random"},
        "pairs": (3, 2),
        "pad_to": 3,
    },
]
STEPS, MICROBATCHES = 2, 3


# --------------------------------------------------------------------------------- the meter
class Meter:
    """Counts collectives, host syncs, factory devices and transfers inside :meth:`window`."""

    def __init__(self) -> None:
        self.current: dict[str, Any] | None = None
        self._depth = 0  # collectives that call collectives count once

    def fresh(self) -> dict[str, Any]:
        return {"collectives": Counter(), "syncs": Counter(), "factories": [], "host_data": Counter(), "moves": []}

    @contextmanager
    def window(self) -> Iterator[dict[str, Any]]:
        self.current = record = self.fresh()
        try:
            with _Recorder(self):
                yield record
        finally:
            self.current = None

    def collective(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            if self.current is not None and self._depth == 0:
                self.current["collectives"][name] += 1
            self._depth += 1
            try:
                return fn(*args, **kwargs)
            finally:
                self._depth -= 1

        counted.__wrapped__ = fn  # type: ignore[attr-defined]
        return counted

    def install(self) -> None:
        """Wrap every collective wherever it is bound (torch.distributed and nemo_gammapo modules)."""
        import torch.distributed.distributed_c10d as c10d

        modules = [dist, c10d, *(m for n, m in list(sys.modules.items()) if n.startswith("nemo_gammapo") and m)]
        for name in COLLECTIVES:
            original = getattr(c10d, name, None) or getattr(dist, name, None)
            if original is None:
                continue
            wrapped = self.collective(name, original)
            for module in modules:
                for attr, value in list(vars(module).items()):
                    if value is original:
                        setattr(module, attr, wrapped)
        sync = torch.cuda.synchronize

        def counted_sync(*args: Any, **kwargs: Any) -> Any:
            if self.current is not None:
                self.current["syncs"]["cuda.synchronize"] += 1
            return sync(*args, **kwargs)

        torch.cuda.synchronize = counted_sync


def _has_bool_mask(index: Any) -> bool:
    items = index if isinstance(index, tuple | list) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


class _Recorder(TorchFunctionMode):
    """Records every torch call of the window that can block the host or cross devices."""

    def __init__(self, meter: Meter) -> None:
        super().__init__()
        self.meter = meter

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        rec = self.meter.current
        name = getattr(func, "__name__", str(func))
        if rec is not None:
            if name in HOST_SYNCS:
                rec["syncs"][name] += 1
            elif name in ("__getitem__", "__setitem__", "index_put_", "index_put") and _has_bool_mask(args[1]):
                rec["syncs"][f"{name}[bool mask]"] += 1
            elif name in FACTORIES:
                device = kwargs.get("device")
                rec["factories"].append((name, None if device is None else str(torch.device(device))))
            elif name in HOST_DATA:
                rec["host_data"][name] += 1
            elif name in ("to", "cuda") and isinstance(args[0], torch.Tensor):
                target = torch._C._nn._parse_to(*args[1:], **kwargs)[0] if name == "to" else torch.device("cuda")
                if target is not None and torch.device(target) != args[0].device:
                    rec["moves"].append(f"{name}: {args[0].device} -> {target}")
            elif name == "copy_" and isinstance(args[1], torch.Tensor) and args[1].device != args[0].device:
                rec["moves"].append(f"copy_: {args[1].device} -> {args[0].device}")
        return func(*args, **kwargs)


# --------------------------------------------------------------------------------- the worker
def _microbatch(rank: int, n: int, step: int, k: int, mask: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``[2n]`` summed log-probs (chosen, then rejected), token counts and reference log-probs."""
    g = torch.Generator().manual_seed(1000 * rank + 10 * step + k)
    logps = -torch.rand(2 * n, generator=g) * 20
    tokens = torch.randint(1, 12, (2 * n,), generator=g).float()
    if mask:
        tokens[n] = 0.0  # the first pair's rejected response was truncated away
    ref = -torch.rand(2 * n, generator=g) * 20
    return logps, tokens, ref


def _counts(record: dict[str, Any]) -> dict[str, Any]:
    return {
        "collectives": dict(record["collectives"]),
        "syncs": dict(record["syncs"]),
        "factories": sorted(set(record["factories"]), key=str),
        "host_data": dict(record["host_data"]),
        "moves": record["moves"],
    }


def cost_worker(rank: int, world_size: int, cases: list[dict[str, Any]]) -> dict[str, Any]:
    from nemo_gammapo.core.config import GammaConfig, PreferenceLossConfig
    from nemo_gammapo.distributed.gamma_loss import GammaPOLoss, reduce_step_metrics

    group = dist.new_group(list(range(world_size)))
    meter = Meter()
    meter.install()
    out: dict[str, Any] = {"cases": {}}

    # Canary: the counters must see what the real path must not do.
    x = torch.ones(3)
    with meter.window() as canary:
        x.sum().item()
        dist.all_reduce(x, group=group)
        torch.arange(3)
        _ = x[x > 0]
    out["canary"] = _counts(canary)

    for case in cases:
        n = case.get("pairs", (3, 3))[rank]
        loss_fn = GammaPOLoss(
            PreferenceLossConfig(**case["loss"]),
            GammaConfig(queue_capacity=16, solve_size=12, seed=3, **case["gamma"]),
            data_parallel_group=group,
            pad_to=case.get("pad_to"),
        )
        device = None
        train, validation, steps, wall = [], [], [], []
        for step in range(STEPS):
            per_mb = []
            local_losses = []
            for k in range(MICROBATCHES):
                logps, tokens, ref = _microbatch(rank, n, step, k, mask=k == 1)
                logps.requires_grad_(True)
                device = str(logps.device)
                start = time.perf_counter()
                with meter.window() as record:
                    loss, metrics = loss_fn.from_sequence_logprobs(logps, tokens, ref)
                    loss.backward()
                wall.append(time.perf_counter() - start)
                assert logps.grad is not None
                train.append(_counts(record))
                per_mb.append(metrics)
                local_losses.append(float(loss.detach()))
            # Validation: forward only, never touches the queue.
            logps, tokens, ref = _microbatch(rank, n, step, 99, mask=False)
            loss_fn.eval()
            with torch.no_grad(), meter.window() as record:
                loss_fn.from_sequence_logprobs(logps, tokens, ref)
            loss_fn.train()
            validation.append(_counts(record))
            with meter.window() as record:
                reduced = reduce_step_metrics(per_mb)
            steps.append({"counts": _counts(record), "metrics": reduced, "local_losses": local_losses})
        out["cases"][case["name"]] = {
            "device": device,
            "train": train,
            "validation": validation,
            "steps": steps,
            "wall_s": sum(wall) / len(wall),
        }
    return out


# --------------------------------------------------------------------------------- the tests
@pytest.fixture(scope="module")
def counted() -> list[dict[str, Any]]:
    start = time.perf_counter()
    results = run_on_ranks(cost_worker, WORLD, 150, {"cases": CASES})
    print(f"\nγ path cost worker: {time.perf_counter() - start:.1f} s on {WORLD} ranks")
    return results


def _windows(results: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any], str]]:
    """Every per-micro-batch window: (label, counts, margins' device)."""
    for rank, r in enumerate(results):
        for name, case in r["cases"].items():
            for kind in ("train", "validation"):
                for i, counts in enumerate(case[kind]):
                    yield f"rank {rank} {name} {kind} micro-batch {i}", counts, case["device"]


def test_counters_see_syncs_collectives_and_devices(counted) -> None:
    for r in counted:
        c = r["canary"]
        assert c["collectives"] == {"all_reduce": 1}, c
        assert c["syncs"] == {"item": 1, "__getitem__[bool mask]": 1}, c
        assert ("arange", None) in c["factories"], c


def test_one_gather_and_no_other_collective_per_microbatch(counted) -> None:
    for label, counts, _ in _windows(counted):
        got = counts["collectives"]
        gathers = sum(v for k, v in got.items() if k in GATHERS)
        assert gathers == 1 and sum(got.values()) == 1, f"{label}: collectives {got}; expected one margin all-gather"


def test_no_host_sync_per_microbatch(counted) -> None:
    for label, counts, _ in _windows(counted):
        assert counts["syncs"] == {}, f"{label}: host syncs {counts['syncs']}; expected none"


def test_tensors_are_made_on_the_margins_device(counted) -> None:
    for label, counts, device in _windows(counted):
        wrong = [(name, dev) for name, dev in counts["factories"] if dev != device]
        assert not wrong, f"{label}: factory calls without device={device!r}: {wrong} (all: {counts['factories']})"
        assert counts["host_data"] == {}, f"{label}: tensors from host data {counts['host_data']}; expected none"
        assert counts["moves"] == [], f"{label}: device moves {counts['moves']}; expected none"


def test_step_metric_reduction_is_one_all_reduce_and_one_host_copy(counted) -> None:
    for rank, r in enumerate(counted):
        for name, case in r["cases"].items():
            for step, s in enumerate(case["steps"]):
                got = s["counts"]
                label = f"rank {rank} {name} step {step}"
                assert got["collectives"] == {"all_reduce": 1}, f"{label}: collectives {got['collectives']}"
                assert got["syncs"] == {"tolist": 1}, f"{label}: host syncs {got['syncs']}"


def test_deferred_loss_is_the_data_parallel_mean(counted) -> None:
    """The step's loss: each micro-batch's loss averaged over the ranks, then over micro-batches."""
    for name in counted[0]["cases"]:
        for step in range(STEPS):
            per_rank = [r["cases"][name]["steps"][step] for r in counted]
            local = torch.tensor([s["local_losses"] for s in per_rank], dtype=torch.float32)  # [rank, mb]
            expected = (local.sum(0) / WORLD).mean().item()
            assert per_rank[0]["metrics"]["loss"] == expected, (name, step, per_rank[0]["metrics"], expected)
            assert per_rank[0]["metrics"] == per_rank[1]["metrics"], f"{name} step {step}: ranks disagree"


def test_report(counted) -> None:
    """Print the counts (visible with -s) for the docs."""
    r = counted[0]["cases"]
    for name, case in r.items():
        print(
            f"{name}: per micro-batch collectives {case['train'][0]['collectives']}, host syncs "
            f"{case['train'][0]['syncs'] or 0}, factories {case['train'][-1]['factories']}; per step "
            f"{case['steps'][0]['counts']['collectives']} + {case['steps'][0]['counts']['syncs']}; "
            f"{1e3 * case['wall_s']:.2f} ms per micro-batch"
        )
