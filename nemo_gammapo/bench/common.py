"""Timing helpers shared by the benchmarks."""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch


def median_seconds(fn: Callable[[], Any], repeats: int, warmup: int = 2) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def alternating_times(
    steps: dict[str, Callable[[], Any]], rounds: int, warmup_rounds: int = 1
) -> dict[str, list[float]]:
    """Wall seconds of each of ``steps``, called in turn, round after round, so all see the same machine state.

    Runs ``rounds`` rounds; the first ``warmup_rounds`` (allocations, compilation) are not recorded,
    so each list holds ``rounds - warmup_rounds`` times, in round order.
    """
    times: dict[str, list[float]] = {name: [] for name in steps}
    for round_index in range(rounds):
        for name, fn in steps.items():
            start = time.perf_counter()
            fn()
            if round_index >= warmup_rounds:
                times[name].append(time.perf_counter() - start)
    return times


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine_info() -> dict[str, Any]:
    """Python, torch, CPU, thread and CUDA facts stored with every result file."""
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def format_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A fixed-width text table of ``rows`` (dicts) showing ``columns``."""

    def cell(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    widths = [max(len(c), *(len(cell(r.get(c, ""))) for r in rows)) for c in columns]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(cell(r.get(c, "")).rjust(w) for c, w in zip(columns, widths, strict=True)) for r in rows]
    return "\n".join(lines)
