"""The bundled demo data: regenerated bit-exactly by its script; objectively correct labels; disjoint splits."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "data" / "demo"


def test_generator_reproduces_committed_files_bit_exactly(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "make_demo_data.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    for split in ("train", "validation"):
        assert (tmp_path / f"{split}.jsonl").read_bytes() == (DEMO / f"{split}.jsonl").read_bytes()


def test_labels_are_correct_and_splits_use_disjoint_numbers() -> None:
    numbers = {}
    for split in ("train", "validation"):
        rows = [json.loads(line) for line in (DEMO / f"{split}.jsonl").read_text().splitlines()]
        numbers[split] = set()
        for r in rows:
            n = int(re.fullmatch(r"Q: is (\d{3}) even or odd\?\nA: ", r["prompt"]).group(1))
            assert r["chosen_response"] == ("even\n" if n % 2 == 0 else "odd\n")
            assert r["rejected_response"] == ("odd\n" if n % 2 == 0 else "even\n")
            numbers[split].add(n)
        assert len(numbers[split]) == len(rows)
    assert (len(numbers["train"]), len(numbers["validation"])) == (512, 64)
    assert not numbers["train"] & numbers["validation"]
