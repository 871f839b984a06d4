"""Turn a run's metric history (``metrics.jsonl``) into the short results table the demo prints.

The history itself is read by :mod:`nemo_gammapo.artifacts.metrics` (:func:`read_history` is
re-exported here for ``examples/run_demo.py``, which reads a run and tabulates it).
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Sequence
from typing import Any

from nemo_gammapo.artifacts.metrics import read_history

__all__ = [
    "read_history",
    "results_table",
    "step_compute_seconds",
    "step_seconds",
    "train_records",
    "val_records",
    "window_mean",
]


def train_records(history: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The training-step records (those with ``train/loss``), in history order."""
    return [r for r in history if "train/loss" in r]


def val_records(history: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The validation records (those with ``val/loss``), in history order."""
    return [r for r in history if "val/loss" in r]


def window_mean(records: Sequence[dict[str, Any]], key: str, first: bool, n: int = 4) -> float:
    """Mean of ``key`` over the first (``first``) or last ``n`` records."""
    part = records[:n] if first else records[-n:]
    return statistics.fmean(r[key] for r in part)


def step_seconds(history: Sequence[dict[str, Any]]) -> float:
    """Median wall seconds between consecutive training steps (includes data and reference work)."""
    times = [r["wall_time"] for r in train_records(history)]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    return statistics.median(gaps) if gaps else float("nan")


def step_compute_seconds(history: Sequence[dict[str, Any]]) -> float:
    """Median of DPOTrainer's ``step_time`` (forward, backward and optimizer; no data work)."""
    values = [r["train/step_time"] for r in train_records(history)]
    return statistics.median(values) if values else float("nan")


def results_table(history: Sequence[dict[str, Any]]) -> str:
    """A plain-text table: loss and accuracy at the start and end, validation, γ statistics."""
    train, val = train_records(history), val_records(history)
    if not train:
        return "(no training steps recorded)"
    rows = [
        (
            "train loss (first 4 / last 4 steps)",
            window_mean(train, "train/loss", True),
            window_mean(train, "train/loss", False),
        ),
        ("train preference accuracy", window_mean(train, "train/acc", True), window_mean(train, "train/acc", False)),
    ]
    if val:
        rows.append(("validation loss (first / last check)", val[0]["val/loss"], val[-1]["val/loss"]))
        rows.append(("validation preference accuracy", val[0]["val/acc"], val[-1]["val/acc"]))
    lines = [f"{'metric':<40}{'start':>10}{'end':>10}", "-" * 60]
    lines += [f"{name:<40}{a:>10.4f}{b:>10.4f}" for name, a, b in rows]
    last = train[-1]
    if "train/gamma_po/gamma_mean" in last:
        g = {k.rsplit("/", 1)[-1]: v for k, v in last.items() if k.startswith("train/gamma_po/")}
        lines += [
            "-" * 60,
            f"γ at the last step: mean {g['gamma_mean']:.4f}  std {g['gamma_std']:.4f}  "
            f"min {g['gamma_min']:.4f}  max {g['gamma_max']:.4f}",
            f"margin mean {g['margin_mean']:.4f} (std {g['margin_std']:.4f}); pairs with γ > γ0: "
            f"{g['gamma_above_gamma0']:.0%}; queue fill {g['queue_fill']:.0%}; "
            f"excluded pairs {g['excluded_pairs']:.0f}",
        ]
    lines.append(f"steps: {int(train[-1]['step']) + 1}, median wall time per step: {step_seconds(history):.2f} s")
    return "\n".join(lines)
