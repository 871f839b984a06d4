"""Check a training JSONL file line by line; report every problem with its line number.

Pure standard library (fast enough to run at training start-up). Data problems are *reported*,
never raised; only :func:`assert_valid_files` raises, for callers that must refuse bad files.

Problem kinds (``Problem.kind``): ``file_not_found``, ``not_a_file``, ``invalid_utf8``, ``blank_line``,
``invalid_json``, ``not_an_object``, ``duplicate_key``, ``missing_field``, ``wrong_type``,
``empty_field``, ``identical_responses``, ``bad_reward``, ``bad_id``, ``duplicate_id``,
``empty_file`` (and ``over_length`` when ``overlength_is_error``).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REQUIRED = ("prompt", "chosen_response", "rejected_response")
REWARDS = ("chosen_reward", "rejected_reward")


class DataValidationError(ValueError):
    """A training data file failed validation; the message lists the first problems."""


@dataclass(frozen=True)
class Problem:
    """One problem: where (path, 1-based line; 0 = the whole file), what kind, and a message."""

    path: str
    line: int
    kind: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.kind}: {self.message}"


@dataclass
class Summary:
    """min / mean / median / p95 / max of a list of lengths."""

    count: int = 0
    min: int = 0
    mean: float = 0.0
    p50: int = 0
    p95: int = 0
    max: int = 0

    @classmethod
    def of(cls, values: list[int]) -> Summary:
        if not values:
            return cls()
        v = sorted(values)
        return cls(len(v), v[0], sum(v) / len(v), v[(len(v) - 1) // 2], v[min(len(v) - 1, int(0.95 * len(v)))], v[-1])


@dataclass
class ValidationReport:
    """Result of :func:`validate_file`. ``errors`` keeps the first ``max_errors``; ``counts`` all."""

    path: str
    records: int = 0  # lines that passed every check
    lines: int = 0
    errors: list[Problem] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)  # problem kind → number of occurrences
    char_lengths: dict[str, Summary] = field(default_factory=dict)  # prompt / chosen / rejected
    pair_lengths: Summary | None = None  # max(len(prompt+chosen), len(prompt+rejected)) in length units
    length_unit: str = ""
    max_length: int | None = None
    over_length: int = 0
    over_length_lines: list[int] = field(default_factory=list)  # the first ones

    @property
    def ok(self) -> bool:
        return not self.counts

    @property
    def error_count(self) -> int:
        return sum(self.counts.values())

    def format(self, max_shown: int = 20, stats: bool = True) -> str:
        """Problems (first ``max_shown``), counts by kind, and length statistics."""
        status = "OK" if self.ok else f"{self.error_count} problem(s)"
        lines = [f"{self.path}: {self.lines} line(s), {self.records} valid pair(s): {status}"]
        lines += [f"  {p}" for p in self.errors[:max_shown]]
        if self.error_count > min(len(self.errors), max_shown):
            lines.append(f"  ... and {self.error_count - min(len(self.errors), max_shown)} more")
        if self.counts:
            lines.append("  by kind: " + ", ".join(f"{k}={n}" for k, n in sorted(self.counts.items())))
        if stats and self.char_lengths:
            lines.append(f"  {'length (chars)':<22}{'min':>8}{'mean':>10}{'p50':>8}{'p95':>8}{'max':>8}")
            rows = list(self.char_lengths.items())
            if self.pair_lengths is not None:
                rows.append((f"pair ({self.length_unit})", self.pair_lengths))
            for name, s in rows:
                lines.append(f"  {name:<22}{s.min:>8}{s.mean:>10.1f}{s.p50:>8}{s.p95:>8}{s.max:>8}")
        if self.max_length is not None:
            where = f" (lines {', '.join(map(str, self.over_length_lines))}...)" if self.over_length_lines else ""
            lines.append(
                f"  over-length pairs (> {self.max_length} {self.length_unit}): {self.over_length}{where}; "
                "NeMo-Aligner masks them out of the loss"
            )
        return "\n".join(lines)


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise _DuplicateKey(dup)
    return dict(pairs)


class _DuplicateKey(Exception):
    def __init__(self, keys: list[str]) -> None:
        super().__init__(keys)
        self.keys = keys


def _check_record(obj: Any, seen_ids: dict[str, int], lineno: int) -> list[tuple[str, str]]:
    """(kind, message) for every problem of one parsed line."""
    if not isinstance(obj, dict):
        return [("not_an_object", f"expected a JSON object, got {type(obj).__name__}")]
    found = []
    for key in REQUIRED:
        if key not in obj:
            found.append(("missing_field", f"no {key!r}"))
        elif not isinstance(obj[key], str):
            hint = " (message lists: convert with a chat template)" if isinstance(obj[key], list) else ""
            found.append(("wrong_type", f"{key!r} must be a string, got {type(obj[key]).__name__}{hint}"))
        elif not obj[key].strip():
            found.append(("empty_field", f"{key!r} is empty or whitespace"))
    chosen, rejected = obj.get("chosen_response"), obj.get("rejected_response")
    if isinstance(chosen, str) and chosen.strip() and chosen == rejected:
        found.append(("identical_responses", "chosen_response and rejected_response are identical"))
    for key in REWARDS:
        value = obj.get(key)
        if key in obj and (isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)):
            found.append(("bad_reward", f"{key!r} must be a finite number, got {value!r}"))
    if "id" in obj:
        ident = obj["id"]
        if isinstance(ident, bool) or not isinstance(ident, str | int) or (isinstance(ident, str) and not ident):
            found.append(("bad_id", f"'id' must be a non-empty string or an integer, got {ident!r}"))
        else:
            key = str(ident)
            if key in seen_ids:
                found.append(("duplicate_id", f"id {ident!r} already used on line {seen_ids[key]}"))
            else:
                seen_ids[key] = lineno
    return found


def _iter_lines(path: Path) -> Iterable[tuple[int, bytes]]:
    with path.open("rb") as f:
        yield from enumerate(f, start=1)


def validate_file(
    path: str | Path,
    max_errors: int = 20,
    max_length: int | None = None,
    length_fn: Callable[[str], int] | None = None,
    length_unit: str = "bytes",
    overlength_is_error: bool = False,
    progress: bool = False,
) -> ValidationReport:
    """Validate one NeMo-Aligner DPO JSONL file; never raises for data problems.

    ``length_fn`` maps text to a length in tokens (default: UTF-8 bytes, which is exact for NeMo's
    byte-level tokenizer). A pair's length is ``max(length_fn(prompt + chosen), length_fn(prompt +
    rejected))``; it is over-length when ``length - 1 > max_length``, NeMo-Aligner's own rule (the
    model sees all tokens but the last), and such pairs are counted, not errors, unless
    ``overlength_is_error``.
    """
    path = Path(path)
    report = ValidationReport(path=str(path), max_length=max_length, length_unit=length_unit)
    fn = length_fn or (lambda s: len(s.encode("utf-8")))

    def problem(line: int, kind: str, message: str) -> None:
        report.counts[kind] += 1
        if len(report.errors) < max_errors:
            report.errors.append(Problem(str(path), line, kind, message))

    if path.is_dir():
        problem(0, "not_a_file", "is a directory, not a JSONL file")
        return report
    if not path.is_file():
        problem(0, "file_not_found", "no such file")
        return report
    seen_ids: dict[str, int] = {}
    lengths: dict[str, list[int]] = {"prompt": [], "chosen_response": [], "rejected_response": []}
    pair_lengths: list[int] = []
    lines: Iterable[tuple[int, bytes]] = _iter_lines(path)
    if progress:
        from tqdm.auto import tqdm

        lines = tqdm(lines, desc=f"validate {path.name}", unit=" lines")
    for lineno, raw in lines:
        report.lines = lineno
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            problem(lineno, "invalid_utf8", f"not UTF-8 at byte {e.start}")
            continue
        if lineno == 1 and text.startswith("\ufeff"):
            problem(lineno, "invalid_json", "starts with a UTF-8 byte-order mark (json.loads rejects it)")
            continue
        if not text.strip():
            problem(lineno, "blank_line", "empty line (json.loads fails on it)")
            continue
        try:
            obj = json.loads(text, object_pairs_hook=_reject_duplicate_keys)
        except _DuplicateKey as e:
            problem(lineno, "duplicate_key", f"key(s) {e.keys} appear more than once (only the last would count)")
            continue
        except json.JSONDecodeError as e:
            problem(lineno, "invalid_json", f"{e.msg} at column {e.colno}")
            continue
        found = _check_record(obj, seen_ids, lineno)
        for kind, message in found:
            problem(lineno, kind, message)
        if found:
            continue
        report.records += 1
        for key in lengths:
            lengths[key].append(len(obj[key]))
        pair = max(fn(obj["prompt"] + obj["chosen_response"]), fn(obj["prompt"] + obj["rejected_response"]))
        pair_lengths.append(pair)
        if max_length is not None and pair - 1 > max_length:
            report.over_length += 1
            if len(report.over_length_lines) < 10:
                report.over_length_lines.append(lineno)
            if overlength_is_error:
                problem(lineno, "over_length", f"{pair} {length_unit} > max_length {max_length} + 1")
    if report.lines == 0:
        problem(0, "empty_file", "the file has no lines")
    report.char_lengths = {
        "prompt": Summary.of(lengths["prompt"]),
        "chosen_response": Summary.of(lengths["chosen_response"]),
        "rejected_response": Summary.of(lengths["rejected_response"]),
    }
    report.pair_lengths = Summary.of(pair_lengths)
    return report


def assert_valid_files(
    paths: Iterable[str | Path] | str | Path,
    key: str = "data",
    max_errors: int = 10,
    max_length: int | None = None,
    length_fn: Callable[[str], int] | None = None,
    length_unit: str = "bytes",
) -> list[ValidationReport]:
    """Validate each file; raise :class:`DataValidationError` showing the first problems if any fails.

    ``key`` names the config entry in the message (e.g. ``model.data.data_prefix.train``).
    Over-length pairs do not fail; read them from the returned reports.
    """
    if isinstance(paths, str | Path):
        paths = [paths]
    reports = [
        validate_file(p, max_errors=max_errors, max_length=max_length, length_fn=length_fn, length_unit=length_unit)
        for p in paths
    ]
    bad = [r for r in reports if not r.ok]
    if bad:
        shown = "\n".join(r.format(max_shown=max_errors, stats=False) for r in bad)
        raise DataValidationError(
            f"{key}: {len(bad)} data file(s) failed validation (check with `nemo-gammapo data validate FILE`):\n{shown}"
        )
    return reports
