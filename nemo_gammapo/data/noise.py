"""Label-flip noise (paper Table 4): swap chosen/rejected of each pair independently with probability p.

The decision for a pair depends only on ``(seed, id)``: a uniform number from SHA-256 of
``"{seed}:{id}"`` compared with ``p``. So the same seed flips the same pairs whatever the file
order, and for one seed the pairs flipped at a lower ``p`` are a subset of those flipped at a
higher one (noise levels are nested, which makes sweeps comparable). Flipped rows get
``label_flipped: true`` (others ``false``); their rewards are swapped with the responses; the
flipped ids are also written to a sidecar file so clean and noisy accuracy can be reported.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nemo_gammapo.data.validate import DataValidationError, validate_file


def flip_draw(seed: int, pair_id: str) -> float:
    """The pair's uniform number in [0, 1) for this seed."""
    digest = hashlib.sha256(f"{seed}:{pair_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def flip_pair(record: dict[str, Any]) -> dict[str, Any]:
    """A copy with chosen/rejected (and their rewards) swapped."""
    out = dict(record)
    out["chosen_response"], out["rejected_response"] = record["rejected_response"], record["chosen_response"]
    if "chosen_reward" in record or "rejected_reward" in record:
        out.pop("chosen_reward", None)
        out.pop("rejected_reward", None)
        if "rejected_reward" in record:
            out["chosen_reward"] = record["rejected_reward"]
        if "chosen_reward" in record:
            out["rejected_reward"] = record["chosen_reward"]
    return out


@dataclass
class FlipResult:
    """Which pairs were flipped."""

    p: float
    seed: int
    total: int = 0
    flipped_ids: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return len(self.flipped_ids) / self.total if self.total else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "p": self.p,
            "seed": self.seed,
            "total": self.total,
            "flipped": len(self.flipped_ids),
            "rate": self.rate,
            "flipped_ids": self.flipped_ids,
        }


def flip_records(records: list[dict[str, Any]], p: float, seed: int) -> tuple[list[dict[str, Any]], FlipResult]:
    """Flip each record independently with probability ``p``; records need unique ``id``s."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1] (got {p})")
    result = FlipResult(p=p, seed=seed, total=len(records))
    out = []
    for record in records:
        pair_id = str(record["id"])
        flipped = flip_draw(seed, pair_id) < p
        new = flip_pair(record) if flipped else dict(record)
        new["label_flipped"] = flipped
        if flipped:
            result.flipped_ids.append(pair_id)
        out.append(new)
    return out, result


def flip_file(
    src: str | Path, dst: str | Path, p: float, seed: int, ids_path: str | Path | None = None, progress: bool = False
) -> FlipResult:
    """Flip ``src`` into ``dst``; write the result (with flipped ids) as JSON to ``ids_path``.

    ``src`` must pass :func:`validate_file` and every row must have an ``id`` (flips are keyed
    by id); otherwise :class:`DataValidationError` is raised and nothing is written.
    """
    report = validate_file(src, progress=progress)
    if not report.ok:
        raise DataValidationError(report.format(stats=False))
    records = [json.loads(line) for line in Path(src).read_text(encoding="utf-8").split("\n") if line.strip()]
    missing = [i + 1 for i, r in enumerate(records) if "id" not in r]
    if missing:
        raise DataValidationError(f"{src}: rows without 'id' on lines {missing[:10]}: flips are keyed by id")
    flipped, result = flip_records(records, p, seed)
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    with Path(dst).open("w", encoding="utf-8") as f:
        for r in flipped:
            f.write(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n")
    ids_path = Path(ids_path) if ids_path is not None else Path(dst).with_suffix(".flips.json")
    ids_path.write_text(json.dumps({"source": str(src), "output": str(dst), **result.to_dict()}, indent=1) + "\n")
    return result
