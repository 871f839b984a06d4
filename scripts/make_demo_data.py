"""Generate the bundled demo preference data (data/demo/*.jsonl), bit-exactly.

Task: parity. The prompt asks whether a three-digit number is even or odd; the chosen response is
the correct word and the rejected one the other word. The answer is objectively right or wrong
and depends only on the last digit, a rule a tiny model can learn in a few dozen steps, and the
held-out split uses numbers that never appear in training — so preference accuracy on it
measures whether the rule was learned. Each row has NeMo-Aligner's keys (prompt,
chosen_response, rejected_response) plus an ``id``.

    python scripts/make_demo_data.py            # rewrites data/demo/{train,validation}.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

SPLITS = {"train": 512, "validation": 64}


def make_pair(number: int, split: str, index: int) -> dict[str, str]:
    right, wrong = ("even", "odd") if number % 2 == 0 else ("odd", "even")
    return {
        "id": f"{split}-{index:05d}",
        "prompt": f"Q: is {number} even or odd?\nA: ",
        "chosen_response": f"{right}\n",
        "rejected_response": f"{wrong}\n",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "data" / "demo")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    numbers = list(range(100, 1000))  # three digits: the deciding digit sits at a fixed offset
    random.Random(args.seed).shuffle(numbers)  # disjoint numbers per split
    start = 0
    for split, n in SPLITS.items():
        rows = [make_pair(num, split, i) for i, num in enumerate(numbers[start : start + n])]
        start += n
        path = args.out / f"{split}.jsonl"
        path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows), encoding="utf-8")
        print(f"wrote {n} pairs to {path}")


if __name__ == "__main__":
    main()
