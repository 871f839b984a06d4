"""``nemo-gammapo data suspects``: the ranking, the CLI on a study run's dumps and on a real NeMo run's
dumps (DP2), and its fail-fast checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nemo_gammapo.artifacts.dumps import COLUMNS, read_dumps
from nemo_gammapo.data.cli import main as data_main
from nemo_gammapo.data.suspects import score_pairs


def frame(rows: list[tuple]) -> pd.DataFrame:
    """Dump rows ``(step, pair_id, margin, gamma)``; the other columns filled in."""
    out = pd.DataFrame(rows, columns=["step", "pair_id", "margin", "gamma"])
    out = out.assign(microbatch=0, dp_rank=0, pair=range(len(out)), loss=0.0, valid=True)
    return out[list(COLUMNS)]


def test_score_is_the_step_centred_evidence_averaged_over_steps() -> None:
    dumps = frame(
        [
            (0, 11, 1.0, np.nan),
            (0, 12, 3.0, np.nan),
            (0, 13, 5.0, np.nan),
            (4, 11, 10.0, np.nan),  # margins drift upwards; centring per step removes the drift
            (4, 12, 12.0, np.nan),
            (4, -1, 0.0, np.nan),  # no pair id: ignored
        ]
    )
    ranked = score_pairs(dumps)
    assert ranked.attrs["score"] == "margin"  # no γ in the dumps
    assert ranked["pair_id"].tolist() == [11, 12, 13]
    # pair 11: step 0 evidence −(1 − 3) = 2, step 4 −(10 − 11) = 1 → 1.5
    assert ranked.set_index("pair_id").loc[11, "score"] == pytest.approx(1.5)
    assert ranked.set_index("pair_id").loc[11, "seen"] == 2
    assert score_pairs(dumps, min_step=4)["pair_id"].tolist() == [11, 12]


def test_auto_uses_gamma_when_dumped() -> None:
    dumps = frame([(0, 1, 0.5, 0.9), (0, 2, 2.0, 1.1), (0, 3, 1.0, 1.0)])
    ranked = score_pairs(dumps)
    assert ranked.attrs["score"] == "gamma"
    assert ranked["pair_id"].tolist() == [1, 3, 2]
    with pytest.raises(ValueError, match="no γ values"):
        score_pairs(dumps.assign(gamma=np.nan), "gamma")


@pytest.fixture(scope="module")
def study_run(tmp_path_factory) -> tuple[Path, object]:
    """A short γ-SimPO study run at 20 % flips, written as a run directory (PairDumper + train.jsonl)."""
    from nemo_gammapo.study.methods import get_method
    from nemo_gammapo.study.trainer import StudyConfig, train_one, write_run_dir

    cfg = StudyConfig(n_train=96, n_heldout=32, steps=8, batch_pairs=16, sft_steps=4, curve_every=8)
    out = train_one(get_method("gamma_simpo@tau10"), 0.2, 0, cfg)
    return write_run_dir(out, tmp_path_factory.mktemp("study_run")), out


def test_study_dumps_are_the_dump_schema(study_run) -> None:
    run_dir, out = study_run
    dumps = read_dumps(run_dir)
    assert list(dumps.columns) == list(COLUMNS)
    pd.testing.assert_frame_equal(
        dumps.reset_index(drop=True), out.dumps[list(COLUMNS)].reset_index(drop=True), check_dtype=False
    )


def test_cli_on_study_dumps_matches_the_study_detection(study_run, tmp_path, capsys) -> None:
    from nemo_gammapo.study.mechanism import detection, pair_table

    run_dir, out = study_run
    dest = tmp_path / "suspects.jsonl"
    assert (
        data_main(["suspects", str(run_dir), "--data", str(run_dir / "train.jsonl"), "--top", "5", "--out", str(dest)])
        == 0
    )
    assert "AUROC" in capsys.readouterr().out
    rows = [json.loads(line) for line in dest.read_text().splitlines()]
    assert [r["suspect"]["rank"] for r in rows] == [1, 2, 3, 4, 5]
    scores = [r["suspect"]["score"] for r in rows]
    assert scores == sorted(scores, reverse=True)
    assert all({"prompt", "chosen_response", "rejected_response", "label_flipped"} <= set(r) for r in rows)
    summary = json.loads(dest.with_suffix(".summary.json").read_text())
    assert summary["score"] == "gamma" and summary["matched_pairs"] == summary["dumped_pairs"]
    expected = detection(out.dumps, pair_table(out.train), "gamma")
    assert summary["label_flipped"]["auroc"] == pytest.approx(expected["auroc"], abs=1e-12)


def test_cli_on_a_real_nemo_run_pools_every_rank(aligner_runs, tmp_path) -> None:
    """The DP2 γ-SimPO run of the shared fixture (dumps every 4 steps from both data-parallel ranks)."""
    from nemo_gammapo.configs import demo_data_dir

    run_dir = aligner_runs.dir("plots")
    dest = tmp_path / "s.jsonl"
    args = ["suspects", str(run_dir), "--data", str(demo_data_dir() / "train.jsonl"), "--top", "8", "--out", str(dest)]
    assert data_main(args) == 0
    summary = json.loads(dest.with_suffix(".summary.json").read_text())
    dumps = read_dumps(run_dir)
    assert sorted(dumps["dp_rank"].unique()) == [0, 1]
    assert summary["score"] == "gamma" and summary["unmatched_pair_ids"] == 0
    assert summary["dumped_pairs"] == dumps.loc[(dumps["pair_id"] >= 0) & dumps["valid"], "pair_id"].nunique()
    assert len(dest.read_text().splitlines()) == 8


@pytest.mark.parametrize(
    "case, message",
    [
        ("no_run_dir", "does not exist"),
        ("no_data", "--data"),
        ("top_zero", "--top must be >= 1"),
        ("out_is_data", "would be overwritten"),
        ("no_dumps", "no gamma_dumps"),
        ("no_ids", "no valid dumped pair with a pair id"),
        ("foreign_data", "none of the"),
    ],
)
def test_bad_input_fails_fast_with_one_line(case: str, message: str, tmp_path, capsys) -> None:
    run = tmp_path / "run"
    (run / "gamma_dumps").mkdir(parents=True)
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"prompt": "p", "chosen_response": "a", "rejected_response": "b"}) + "\n")
    if case not in ("no_dumps",):
        ids = -1 if case == "no_ids" else 7
        frame([(0, ids, 1.0, np.nan), (0, ids, 2.0, np.nan)]).to_parquet(
            run / "gamma_dumps" / "step_0000000_dp0.parquet"
        )
    args = {"run": str(run), "data": str(data), "top": "3", "out": str(tmp_path / "o.jsonl")}
    if case == "no_run_dir":
        args["run"] = str(tmp_path / "missing")
    elif case == "no_data":
        args["data"] = str(tmp_path / "missing.jsonl")
    elif case == "top_zero":
        args["top"] = "0"
    elif case == "out_is_data":
        args["out"] = str(data)
    code = data_main(["suspects", args["run"], "--data", args["data"], "--top", args["top"], "--out", args["out"]])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("nemo-gammapo data suspects: ") and message in err[0], err
