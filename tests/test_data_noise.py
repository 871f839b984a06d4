"""Label-flip noise: rate, determinism, per-pair independence, recorded ids."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from nemo_gammapo.data.noise import flip_file, flip_records
from nemo_gammapo.data.validate import DataValidationError

N = 10_000


def records(n: int = N) -> list[dict]:
    return [
        {
            "id": f"train-{i:05d}",
            "prompt": f"Q{i}",
            "chosen_response": f"good{i}",
            "rejected_response": f"bad{i}",
            "chosen_reward": 1.0,
            "rejected_reward": -1.0,
        }
        for i in range(n)
    ]


@pytest.mark.parametrize("p", [0.05, 0.1, 0.2, 0.3, 0.5])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_flip_rate_within_one_percent_over_10k_pairs(p: float, seed: int) -> None:
    _, result = flip_records(records(), p, seed)
    assert result.total == N
    assert abs(result.rate - p) <= 0.01, result.rate


def test_same_seed_same_flips_other_seed_other_flips() -> None:
    a = flip_records(records(), 0.2, seed=7)[1].flipped_ids
    b = flip_records(records(), 0.2, seed=7)[1].flipped_ids
    c = flip_records(records(), 0.2, seed=8)[1].flipped_ids
    assert a == b and set(a) != set(c)
    # flips depend on (seed, id) only: the same pairs flip in any file order
    shuffled = list(reversed(records()))
    assert set(flip_records(shuffled, 0.2, seed=7)[1].flipped_ids) == set(a)


def test_flips_are_per_pair_not_in_blocks() -> None:
    flipped, _ = flip_records(records(), 0.3, seed=3)
    flags = [r["label_flipped"] for r in flipped]
    after_flip = [b for a, b in itertools.pairwise(flags) if a]
    after_keep = [b for a, b in itertools.pairwise(flags) if not a]
    # independent draws: the next pair's flip rate does not depend on this pair's
    assert abs(sum(after_flip) / len(after_flip) - 0.3) < 0.03
    assert abs(sum(after_keep) / len(after_keep) - 0.3) < 0.03
    # any micro-batch-sized block of 8 has mixed outcomes somewhere (batch-level flipping would not)
    blocks = [flags[i : i + 8] for i in range(0, N, 8)]
    assert sum(0 < sum(b) < 8 for b in blocks) > 0.9 * len(blocks)


def test_noise_levels_are_nested() -> None:
    low = set(flip_records(records(), 0.1, seed=0)[1].flipped_ids)
    high = set(flip_records(records(), 0.3, seed=0)[1].flipped_ids)
    assert low < high


def test_flip_swaps_responses_and_rewards_and_marks_rows() -> None:
    out, result = flip_records(records(200), 0.5, seed=0)
    flipped = set(result.flipped_ids)
    assert {r["id"] for r in out if r["label_flipped"]} == flipped
    for src, dst in zip(records(200), out, strict=True):
        if dst["id"] in flipped:
            assert (dst["chosen_response"], dst["rejected_response"]) == (
                src["rejected_response"],
                src["chosen_response"],
            )
            assert (dst["chosen_reward"], dst["rejected_reward"]) == (-1.0, 1.0)
        else:
            assert {k: v for k, v in dst.items() if k != "label_flipped"} == src
        assert dst["prompt"] == src["prompt"]


def test_p_zero_and_one_and_bad_p() -> None:
    assert flip_records(records(100), 0.0, 0)[1].flipped_ids == []
    assert len(flip_records(records(100), 1.0, 0)[1].flipped_ids) == 100
    with pytest.raises(ValueError):
        flip_records(records(10), 1.5, 0)


def write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_flip_file_writes_output_and_flipped_ids(tmp_path: Path) -> None:
    src, dst = tmp_path / "train.jsonl", tmp_path / "noisy" / "train.jsonl"
    write(src, records(1000))
    result = flip_file(src, dst, p=0.2, seed=5)
    out = [json.loads(line) for line in dst.read_text().splitlines()]
    meta = json.loads((tmp_path / "noisy" / "train.flips.json").read_text())
    assert meta["flipped_ids"] == result.flipped_ids == [r["id"] for r in out if r["label_flipped"]]
    assert (meta["p"], meta["seed"], meta["total"]) == (0.2, 5, 1000)
    assert meta["flipped"] == len(result.flipped_ids) > 0
    assert [r["id"] for r in out] == [r["id"] for r in records(1000)]  # order kept


def test_flip_file_refuses_invalid_or_id_less_files(tmp_path: Path) -> None:
    rows = records(3)
    rows[1]["chosen_response"] = rows[1]["rejected_response"]
    write(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataValidationError, match="identical_responses"):
        flip_file(tmp_path / "bad.jsonl", tmp_path / "o.jsonl", p=0.5, seed=0)
    rows = [{k: v for k, v in r.items() if k != "id"} for r in records(3)]
    write(tmp_path / "noid.jsonl", rows)
    with pytest.raises(DataValidationError, match="without 'id'"):
        flip_file(tmp_path / "noid.jsonl", tmp_path / "o.jsonl", p=0.5, seed=0)
    assert not (tmp_path / "o.jsonl").exists()
