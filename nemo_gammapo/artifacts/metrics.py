"""A run's metric history file ``metrics.jsonl``: its record format, writer and readers.

One JSON object a line: ``step`` (the training step, an integer), ``wall_time`` (seconds since
the epoch when the record was logged) and every logged metric as a float under its logger name
(``train/loss``, ``val/acc``, ``train/gamma_po/gamma_mean``, …). Training writes it through
:func:`metrics_record` and :func:`append_record` (``nemo_gammapo.aligner.train.MetricsHistory``);
reports and plots read it with :func:`read_history`, which follows a run across resumes.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"
_MOVED_RUN = re.compile(r"run_(\d+)")


class HistoryError(ValueError):
    """A ``metrics.jsonl`` line that is not a metrics record; the message starts with ``file:line``."""


def metrics_record(metrics: Mapping[str, Any], step: int | None, wall_time: float | None = None) -> dict[str, Any]:
    """One record: ``step``, ``wall_time`` (default: now) and every metric converted with ``float``."""
    now = time.time() if wall_time is None else wall_time
    return {"step": step, "wall_time": now, **{k: float(v) for k, v in metrics.items()}}


def append_record(path: str | Path, record: Mapping[str, Any]) -> None:
    """Append ``record`` to the file at ``path`` as one JSON line (opened and closed per record)."""
    with Path(path).open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def warn_stderr(message: str) -> None:
    """The readers' default ``warn``: one ``WARNING:`` line on stderr."""
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
            (warn or warn_stderr)(f"{path}:{lineno}: skipped a truncated last line ({problem})")
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
