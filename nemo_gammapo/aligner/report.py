"""Turn a run's metric history (``metrics.jsonl``) into the short results table the demo prints."""

from __future__ import annotations

import itertools
import json
import re
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"
_MOVED_RUN = re.compile(r"run_(\d+)")


class HistoryError(ValueError):
    """A ``metrics.jsonl`` line that is not a metrics record; the message starts with ``file:line``."""


def _warn_stderr(message: str) -> None:
    print(f"WARNING: {message}", file=sys.stderr, flush=True)


def metrics_files(run_dir: str | Path) -> list[Path]:
    """Every ``metrics.jsonl`` of a run, oldest first.

    When a run resumes, NeMo's ``exp_manager`` (``check_resume``) moves the files at the top of the
    log directory — ``metrics.jsonl`` among them — into a new ``<run_dir>/run_<N>/`` folder, ``N``
    counting the ``run_*`` folders already there. So the history is ``run_0/metrics.jsonl``,
    ``run_1/metrics.jsonl``, … (numeric order), then the current ``<run_dir>/metrics.jsonl``.
    """
    run_dir = Path(run_dir)
    moved = []
    for folder in run_dir.glob("run_*"):
        match = _MOVED_RUN.fullmatch(folder.name)
        if match and (folder / METRICS_FILE).is_file():
            moved.append((int(match.group(1)), folder / METRICS_FILE))
    current = [run_dir / METRICS_FILE] if (run_dir / METRICS_FILE).is_file() else []
    return [path for _, path in sorted(moved)] + current


def read_metrics_file(path: str | Path, warn: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """The records of one ``metrics.jsonl``, in file order.

    A last line that does not parse (the writer was killed mid-line) is skipped with a one-line
    ``warn``-ing (default: stderr); any other line that is not a JSON object with an integer
    ``step`` raises :class:`HistoryError` naming ``file:line``.
    """
    path = Path(path)
    lines = [
        (n, raw)
        for n, raw in enumerate(path.read_bytes().split(b"\n"), start=1)
        if raw.strip(b" \t\r\x00")  # blank lines (and NUL padding left by a crash) carry nothing
    ]
    records = []
    for i, (lineno, raw) in enumerate(lines):
        try:
            record = json.loads(raw.decode("utf-8"))
            problem = None if isinstance(record, dict) else f"a JSON {type(record).__name__}, not an object"
        except UnicodeDecodeError as e:
            problem = f"not UTF-8 at byte {e.start}"
        except json.JSONDecodeError as e:
            problem = f"not JSON ({e.msg} at column {e.colno})"
        if problem is not None and i == len(lines) - 1:
            (warn or _warn_stderr)(f"{path}:{lineno}: skipped a truncated last line ({problem})")
            break
        if problem is None:
            step = record.get("step")
            if isinstance(step, bool) or not isinstance(step, int):
                problem = f"'step' must be an integer (got {step!r})"
        if problem is not None:
            raise HistoryError(f"{path}:{lineno}: {problem}")
        records.append(record)
    return records


def _kind(record: dict[str, Any]) -> str:
    return "train" if "train/loss" in record else "val" if "val/loss" in record else "other"


def read_history(run_dir: str | Path, warn: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """A run's whole metric history, ordered by step, across resumes (see :func:`metrics_files`).

    Files are read oldest first. When a later file has records for a step an earlier file also
    logged (a resume from an older checkpoint re-does those steps), the later file's records of
    that kind — training (``train/loss``), validation (``val/loss``) or other — replace the earlier
    ones. Records of one step keep their file order. Raises ``FileNotFoundError`` when the run has
    no ``metrics.jsonl`` and :class:`HistoryError` (a ``ValueError``) on a corrupt line; a
    truncated last line is skipped with a warning (:func:`read_metrics_file`).
    """
    files = metrics_files(run_dir)
    if not files:
        raise FileNotFoundError(f"{Path(run_dir) / METRICS_FILE} does not exist")
    history: list[dict[str, Any]] = []
    for path in files:
        records = read_metrics_file(path, warn)
        redone = {(_kind(r), r["step"]) for r in records}
        history = [r for r in history if (_kind(r), r["step"]) not in redone] + records
    return sorted(history, key=lambda r: r["step"])  # stable: file order within a step


def train_records(history: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in history if "train/loss" in r]


def val_records(history: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in history if "val/loss" in r]


def window_mean(records: Sequence[dict[str, Any]], key: str, first: bool, n: int = 4) -> float:
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
