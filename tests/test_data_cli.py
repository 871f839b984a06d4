"""``nemo-gammapo data ...`` end to end, in-process (local fixtures only)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import datasets
import pytest

from nemo_gammapo.data.cli import main

REPO = Path(__file__).resolve().parent.parent


def test_convert_validate_flip_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    scores = [[1.0, 1.0, 1.0] if i % 5 == 0 else [0.0, 1.0, 0.5] for i in range(20)]  # 4 ties
    rows = [
        {"prompt": f"Q{i}?", "all_generated_responses": [f"a{i}", f"b{i}", f"c{i}"], "all_rm_scores": scores[i]}
        for i in range(20)
    ]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "gen"))
    out = tmp_path / "out"
    argv = ["convert", str(tmp_path / "gen"), "--out", str(out), "--template", "mistral", "--holdout", "0.2"]
    assert main([*argv, "--seed", "3", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "score_tie" in text and "total" in text
    summary = json.loads((out / "conversion_summary.json").read_text())
    assert (summary["read"], summary["written"], summary["dropped"]) == (20, 16, {"score_tie": 4})
    assert summary["splits"]["validation"]["written"] == 3  # round(0.2 * 16)
    train = [json.loads(x) for x in (out / "train.jsonl").read_text().splitlines()]
    assert len(train) == 13 and train[0]["prompt"].startswith("<s>[INST] Q") and train[0]["prompt"].endswith(" [/INST]")
    assert all(r["chosen_response"] == f"b{r['source_row']}</s>" for r in train)
    assert all(r["rejected_response"] == f"a{r['source_row']}</s>" for r in train)

    assert main(["validate", str(out / "train.jsonl"), str(out / "validation.jsonl"), "--no-progress"]) == 0
    assert main(["stats", str(out / "train.jsonl"), "--max-length", "8", "--no-progress"]) == 0
    assert "over-length pairs (> 8 bytes)" in capsys.readouterr().out

    assert main(["flip", str(out / "train.jsonl"), str(tmp_path / "noisy.jsonl"), "--p", "0.5", "--seed", "1"]) == 0
    assert "flipped" in capsys.readouterr().out
    assert json.loads((tmp_path / "noisy.flips.json").read_text())["total"] == len(train)


def test_validate_exit_code_and_line_numbers(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a", "chosen_response": "b", "rejected_response": "c"}\n{oops\n')
    assert main(["validate", str(path), "--no-progress"]) == 1
    assert f"{path}:2: invalid_json" in capsys.readouterr().out
    assert main(["validate", str(path), "--json", "--no-progress"]) == 1
    (report,) = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and report["errors"][0]["line"] == 2


def test_convert_reports_bad_source(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["convert", str(tmp_path / "missing.parquet"), "--out", str(tmp_path / "o")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_console_dispatch_runs_the_data_cli() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "nemo_gammapo.cli", "data", "template", "gemma2", "hi"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert '"<bos><start_of_turn>user\\nhi<end_of_turn>\\n<start_of_turn>model\\n"' in done.stdout
