"""Stable preference-pair ids, derived from a pair's content.

A pair's id is the first 63 bits of the SHA-256 of its prompt, chosen and rejected response (as
one canonical JSON array), so it is the same however the data is ordered, sharded, batched or
resumed, and it fits a non-negative ``int64`` that travels with the batch as a tensor. Two rows
with identical content share an id (they are the same pair). Used to key precomputed reference
log-probs and to name pairs in the γ dumps.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

PAIR_FIELDS = ("prompt", "chosen_response", "rejected_response")


def pair_id(row: Mapping[str, Any]) -> int:
    """The id of one JSONL row (``prompt`` may be a string or a list of chat messages)."""
    content = json.dumps([row.get(k) for k in PAIR_FIELDS], ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    return int.from_bytes(hashlib.sha256(content.encode("utf-8")).digest()[:8], "big") >> 1


def file_pair_ids(path: str | Path, digest: Any = None) -> Iterator[tuple[int, int]]:
    """``(line number, pair id)`` for every non-blank line of a JSONL file, in file order.

    ``digest``: a ``hashlib`` object fed every byte of the file on the way (one read for both).
    """
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, start=1):
            if digest is not None:
                digest.update(line)
            if line.strip():
                yield lineno, pair_id(json.loads(line))
