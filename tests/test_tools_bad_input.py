"""The command-line tools on bad input: one line naming the file and the problem, a non-zero exit
code, no traceback — and the plots made from whatever a run has. Everything is synthetic (no
training run): small parquet dumps and ``metrics.jsonl`` files built in ``tmp_path``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nemo_gammapo.aligner.report import results_table
from nemo_gammapo.artifacts.metrics import HistoryError, metrics_files, read_history
from nemo_gammapo.data import cli as data_cli
from nemo_gammapo.launch import planner
from nemo_gammapo.viz import cli as plots_cli

REPO = Path(__file__).resolve().parents[1]
DUMP_FIGURES = ("margin_distribution", "gamma_vs_margin", "epsilon_vs_margin")


# ---------------------------------------------------------------- synthetic runs


def write_dump(run_dir: Path, step: int, pairs: int = 6, gamma: bool = True) -> Path:
    """One ``gamma_dumps/step_<step>_dp0.parquet`` with the PairDumper schema."""
    margins = [0.3 * (i - pairs / 2) + 0.05 * step for i in range(pairs)]
    table = pa.table(
        {
            "step": [step] * pairs,
            "microbatch": [0] * pairs,
            "dp_rank": [0] * pairs,
            "pair": list(range(pairs)),
            "margin": margins,
            "gamma": [1.0 + 0.1 * m if gamma else float("nan") for m in margins],
            "loss": [0.7 - 0.01 * i for i in range(pairs)],
            "valid": [True] * pairs,
        }
    )
    path = run_dir / "gamma_dumps" / f"step_{step:07d}_dp0.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def train_record(step: int, src: str = "", gamma: bool = True) -> dict[str, Any]:
    rec = {"step": step, "wall_time": 1000.0 + step, "train/loss": 0.7 - 0.01 * step, "train/acc": 0.5, "src": src}
    if gamma:
        rec.update({f"train/gamma_po/{k}": 1.0 for k in ("gamma_mean", "gamma_min", "gamma_max")})
        rec.update({"train/gamma_po/gamma_std": 0.1, "train/gamma_po/margin_mean": 0.2, "train/gamma_po/margin_std": 1})
        rec.update({"train/gamma_po/gamma_above_gamma0": 0.5, "train/gamma_po/queue_fill": 1.0})
        rec["train/gamma_po/excluded_pairs"] = 0.0
    return rec


def val_record(step: int, src: str = "") -> dict[str, Any]:
    return {"step": step, "wall_time": 1000.5 + step, "val/loss": 0.69, "val/acc": 0.5, "src": src}


def write_metrics(path: Path, records: list[dict[str, Any]], tail: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail, encoding="utf-8")
    return path


def plots(capsys: pytest.CaptureFixture, run_dir: Path, *extra: str) -> tuple[int, str, list[str]]:
    """Run ``nemo-gammapo plots`` in-process: (exit code, stdout, the tool's stderr lines)."""
    rc = plots_cli.main([str(run_dir), *extra])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    ours = [x for x in captured.err.splitlines() if x.startswith(("WARNING:", "nemo-gammapo plots:", "note:"))]
    return rc, captured.out, ours


def data(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, list[str]]:
    """Run ``nemo-gammapo data`` in-process: (exit code, stderr lines)."""
    rc = data_cli.main([*argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err.strip().splitlines()


def figures_in(out: Path) -> set[str]:
    return {p.stem for p in out.glob("*.png")} & {p.stem for p in out.glob("*.csv")}


# ---------------------------------------------------------------- 1. missing run directory


def test_plots_missing_run_dir_names_it(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "no_such_run"
    rc, _, err = plots(capsys, missing)
    assert rc == 1
    assert err == [f"nemo-gammapo plots: run directory {missing} does not exist"]
    assert not missing.exists()  # and no plots/ folder made for it


def test_plots_missing_run_dir_via_console(tmp_path: Path) -> None:
    missing = tmp_path / "gone"
    done = subprocess.run(
        [sys.executable, "-m", "nemo_gammapo.cli", "plots", str(missing)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [f"nemo-gammapo plots: run directory {missing} does not exist"]
    assert "gamma_dump.every" not in done.stderr + done.stdout


def test_plots_run_dir_that_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "run.txt"
    path.write_text("x")
    rc, _, err = plots(capsys, path, "--out", str(tmp_path / "o"))
    assert rc == 1 and err == [f"nemo-gammapo plots: run directory {path} is not a directory"]


# ---------------------------------------------------------------- 2. corrupt dump files


def test_corrupt_parquet_is_skipped_by_name(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    for step in (0, 4, 8):
        write_dump(run, step)
    bad = run / "gamma_dumps" / "step_0000012_dp0.parquet"
    bad.write_bytes(b"PAR1 this is not a parquet file")
    empty = run / "gamma_dumps" / "step_0000016_dp0.parquet"
    empty.write_bytes(b"")
    write_metrics(run / "metrics.jsonl", [train_record(s) for s in range(10)])
    out = tmp_path / "plots"
    rc, _, err = plots(capsys, run, "--out", str(out), "--gamma0", "1.0")
    assert rc == 0
    warnings = [x for x in err if x.startswith("WARNING:")]
    assert len(warnings) == 2
    assert str(bad) in warnings[0] and "skipped" in warnings[0]
    assert str(empty) in warnings[1]
    assert figures_in(out) == {*DUMP_FIGURES, "training_curves"}
    assert sorted(pd.read_csv(out / "margin_distribution.csv")["step"].unique()) == [0, 4, 8]


def test_dump_missing_a_column_is_skipped_by_name(tmp_path: Path) -> None:
    from nemo_gammapo.artifacts.dumps import read_dumps

    run = tmp_path / "run"
    write_dump(run, 0)
    odd = run / "gamma_dumps" / "step_0000001_dp0.parquet"
    pq.write_table(pa.table({"step": [1], "margin": [0.5]}), odd)
    warned: list[str] = []
    frame = read_dumps(run, warn=warned.append)
    assert sorted(frame["step"].unique()) == [0]
    assert len(warned) == 1 and str(odd) in warned[0] and "missing column" in warned[0]


def test_only_corrupt_dumps_and_no_metrics(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    (run / "gamma_dumps").mkdir(parents=True)
    bad = run / "gamma_dumps" / "step_0000000_dp0.parquet"
    bad.write_bytes(b"garbage")
    rc, _, err = plots(capsys, run)
    assert rc == 1
    assert str(bad) in err[0] and err[0].startswith("WARNING:")
    assert err[-1].startswith("nemo-gammapo plots:") and "nothing to plot" in err[-1] and str(run) in err[-1]
    assert not (run / "plots").exists() or not any((run / "plots").iterdir())


# ---------------------------------------------------------------- 3. corrupt metrics.jsonl


def test_corrupt_metrics_line_names_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    write_dump(run, 0)
    path = write_metrics(run / "metrics.jsonl", [train_record(0)], tail='{"step": 1, "train/lo\n')
    path.write_text(path.read_text() + json.dumps(train_record(2)) + "\n")
    rc, _, err = plots(capsys, run)
    assert rc == 1
    assert len(err) == 1 and err[0].startswith(f"nemo-gammapo plots: {path}:2: not JSON")
    with pytest.raises(HistoryError, match=rf"^{path}:2: "):
        read_history(run)


@pytest.mark.parametrize(
    "line,problem",
    [("[1, 2]", "a JSON list, not an object"), ('{"wall_time": 3}', "'step' must be an integer"), (b"\xff\xfe", "UTF")],
)
def test_metrics_line_that_is_not_a_record(tmp_path: Path, line: str | bytes, problem: str) -> None:
    path = tmp_path / "metrics.jsonl"
    raw = line.encode() if isinstance(line, str) else line
    path.write_bytes(raw + b"\n" + json.dumps(train_record(1)).encode() + b"\n")
    with pytest.raises(HistoryError) as info:
        read_history(tmp_path)
    assert str(info.value).startswith(f"{path}:1: ") and problem in str(info.value)


def test_truncated_last_metrics_line_is_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    path = write_metrics(run / "metrics.jsonl", [train_record(s) for s in range(5)], tail='{"step": 5, "train/lo')
    out = tmp_path / "plots"
    rc, _, err = plots(capsys, run, "--out", str(out))
    assert rc == 0
    warnings = [x for x in err if x.startswith("WARNING:")]
    assert len(warnings) == 1 and warnings[0].startswith(f"WARNING: {path}:6: skipped a truncated last line (not JSON")
    assert list(pd.read_csv(out / "training_curves.csv")["step"]) == [0, 1, 2, 3, 4]


# ---------------------------------------------------------------- 4. figures from whatever the run has


def test_metrics_without_dumps_still_get_training_curves(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    write_metrics(run / "metrics.jsonl", [train_record(s) for s in range(6)] + [val_record(5)])
    rc, out_text, err = plots(capsys, run)
    assert rc == 0
    assert figures_in(run / "plots") == {"training_curves"}
    assert "γ0 = 1 (from mean logged γ" in out_text
    assert any(x.startswith("note:") and "gamma_dumps" in x for x in err)
    assert not any(x.startswith(("WARNING:", "nemo-gammapo plots:")) for x in err)


def test_metrics_without_gamma_or_dumps_still_get_training_curves(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "run"
    write_metrics(run / "metrics.jsonl", [train_record(s, gamma=False) for s in range(6)])
    rc, out_text, _ = plots(capsys, run)
    assert rc == 0 and "γ0 unknown" in out_text
    assert figures_in(run / "plots") == {"training_curves"}


def test_dumps_without_metrics_get_the_dump_figures(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    for step in (0, 2):
        write_dump(run, step)
    rc, _, err = plots(capsys, run)
    assert rc == 0
    assert figures_in(run / "plots") == set(DUMP_FIGURES)
    assert any(x.startswith("note:") and "metrics.jsonl" in x for x in err)


def test_run_with_neither_dumps_nor_metrics(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    run.mkdir()
    rc, _, err = plots(capsys, run)
    assert rc == 1
    assert err == [f"nemo-gammapo plots: {run} has no gamma_dumps/step_*.parquet and no metrics.jsonl: nothing to plot"]


def test_corrupt_run_config_is_skipped_by_name(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    write_dump(run, 0)
    config = run / "config.yaml"
    config.write_text("model: {dpo: [unclosed\n")
    rc, out_text, err = plots(capsys, run)
    assert rc == 0 and "from mean dumped γ" in out_text
    warnings = [x for x in err if x.startswith("WARNING:")]
    assert len(warnings) == 1 and warnings[0].startswith(f"WARNING: {config}: skipped")
    assert figures_in(run / "plots") == set(DUMP_FIGURES)


# ---------------------------------------------------------------- 5. history across resumes


def resumed_run(root: Path) -> Path:
    """run_0: steps 0-5 (+ val at 4); run_1 resumed from step 4: steps 4-9; current: steps 10-12 (+ val 12)."""
    run = root / "run"
    write_metrics(run / "run_0" / "metrics.jsonl", [*(train_record(s, "r0") for s in range(6)), val_record(4, "r0")])
    write_metrics(run / "run_1" / "metrics.jsonl", [train_record(s, "r1") for s in range(4, 10)])
    write_metrics(run / "metrics.jsonl", [*(train_record(s, "cur") for s in range(10, 13)), val_record(12, "cur")])
    return run


def test_metrics_files_are_in_resume_order(tmp_path: Path) -> None:
    run = tmp_path / "run"
    for n in (10, 2, 0):
        write_metrics(run / f"run_{n}" / "metrics.jsonl", [train_record(n)])
    (run / "run_x").mkdir()  # not one of NeMo's numbered folders
    write_metrics(run / "run_x" / "metrics.jsonl", [train_record(99)])
    write_metrics(run / "metrics.jsonl", [train_record(11)])
    moved = [run / f"run_{n}" / "metrics.jsonl" for n in (0, 2, 10)]  # numeric order, not run_10 < run_2
    assert metrics_files(run) == [*moved, run / "metrics.jsonl"]


def test_history_concatenates_resumes_and_later_run_wins(tmp_path: Path) -> None:
    history = read_history(resumed_run(tmp_path))
    train = [(r["step"], r["src"]) for r in history if "train/loss" in r]
    want = [(s, "r0") for s in range(4)] + [(s, "r1") for s in range(4, 10)] + [(s, "cur") for s in (10, 11, 12)]
    assert train == want
    val = [(r["step"], r["src"]) for r in history if "val/loss" in r]
    assert val == [(4, "r0"), (12, "cur")]  # run_1 re-did step 4's training, not its validation
    steps = [r["step"] for r in history]
    assert steps == sorted(steps)
    assert "steps: 13," in results_table(history)


def test_plots_and_table_cover_the_whole_resumed_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = resumed_run(tmp_path)
    rc, _, _ = plots(capsys, run)
    assert rc == 0
    curves = pd.read_csv(run / "plots" / "training_curves.csv")
    assert list(curves["step"]) == list(range(13))
    assert curves.set_index("step").at[5, "train/loss"] == pytest.approx(train_record(5)["train/loss"])


def test_truncated_line_in_a_moved_metrics_file(tmp_path: Path) -> None:
    run = resumed_run(tmp_path)
    moved = run / "run_1" / "metrics.jsonl"
    moved.write_text(moved.read_text() + '{"step": 10, "tra')  # killed mid-write, then resumed
    warned: list[str] = []
    history = read_history(run, warn=warned.append)
    assert len(warned) == 1 and warned[0].startswith(f"{moved}:7: skipped a truncated last line")
    assert [r["step"] for r in history if "train/loss" in r] == list(range(13))


def test_read_history_without_metrics(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"metrics\.jsonl does not exist"):
        read_history(tmp_path)


# ---------------------------------------------------------------- 6./8. data tools


def pair(i: int) -> dict[str, str]:
    return {"id": f"p{i}", "prompt": f"Q{i}?", "chosen_response": f"yes {i}", "rejected_response": f"no {i}"}


@pytest.fixture
def pairs_file(tmp_path: Path) -> Path:
    path = tmp_path / "a.jsonl"
    path.write_text("".join(json.dumps(pair(i)) + "\n" for i in range(8)))
    return path


def test_flip_refuses_to_overwrite_its_input(pairs_file: Path, capsys: pytest.CaptureFixture) -> None:
    before = pairs_file.read_bytes()
    rc, err = data(capsys, "flip", str(pairs_file), str(pairs_file), "--p", "0.5", "--no-progress")
    assert rc == 2
    assert len(err) == 1 and str(pairs_file) in err[0] and "is the input file" in err[0]
    assert pairs_file.read_bytes() == before
    assert not pairs_file.with_suffix(".flips.json").exists()


def test_flip_refuses_the_input_by_another_name(pairs_file: Path, capsys: pytest.CaptureFixture) -> None:
    before = pairs_file.read_bytes()
    link = pairs_file.parent / "link.jsonl"
    link.symlink_to(pairs_file)
    hard = pairs_file.parent / "hard.jsonl"
    hard.hardlink_to(pairs_file)
    dotted = pairs_file.parent / "sub" / ".." / pairs_file.name
    (pairs_file.parent / "sub").mkdir()
    for dst in (link, hard, dotted):
        rc, err = data(capsys, "flip", str(pairs_file), str(dst), "--p", "0.5", "--no-progress")
        assert rc == 2 and len(err) == 1 and str(dst) in err[0], (dst, err)
    rc, err = data(
        capsys, "flip", str(pairs_file), str(pairs_file.parent / "o.jsonl"), "--p", "0.5", "--ids", str(pairs_file)
    )
    assert rc == 2 and len(err) == 1 and "flipped-ids file" in err[0] and str(pairs_file) in err[0]
    assert pairs_file.read_bytes() == before


def test_flip_still_works(pairs_file: Path, capsys: pytest.CaptureFixture) -> None:
    out = pairs_file.parent / "noisy.jsonl"
    assert data_cli.main(["flip", str(pairs_file), str(out), "--p", "0.5", "--no-progress"]) == 0
    assert len(out.read_text().splitlines()) == 8


def test_convert_refuses_to_overwrite_its_input(pairs_file: Path, capsys: pytest.CaptureFixture) -> None:
    folder = pairs_file.parent / "data"
    folder.mkdir()
    src = folder / "train.jsonl"
    src.write_bytes(pairs_file.read_bytes())
    rc, err = data(capsys, "convert", str(src), "--out", str(folder), "--no-progress")
    assert rc == 2
    assert len(err) == 1 and "would overwrite the input file" in err[0] and str(src) in err[0]
    assert src.read_bytes() == pairs_file.read_bytes()
    assert not (folder / "conversion_summary.json").exists()


def test_convert_out_is_a_file(pairs_file: Path, capsys: pytest.CaptureFixture) -> None:
    rc, err = data(capsys, "convert", str(pairs_file), "--out", str(pairs_file), "--no-progress")
    assert rc == 2 and err == [f"nemo-gammapo data convert: --out {pairs_file} is not a directory"]


def test_convert_missing_source(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "missing.parquet"
    rc, err = data(capsys, "convert", str(missing), "--out", str(tmp_path / "o"))
    assert rc == 2 and len(err) == 1 and f"{missing} does not exist" in err[0]


@pytest.mark.parametrize("command", ["validate", "stats"])
def test_validate_missing_file_and_directory(tmp_path: Path, command: str, capsys: pytest.CaptureFixture) -> None:
    missing, folder = tmp_path / "nope.jsonl", tmp_path / "folder"
    folder.mkdir()
    rc, err = data(capsys, command, str(missing), "--no-progress")
    assert rc == 2 and err == [f"nemo-gammapo data {command}: {missing} does not exist"]
    rc, err = data(capsys, command, str(folder), "--no-progress")
    assert rc == 2 and err == [f"nemo-gammapo data {command}: {folder} is a directory"]


def test_flip_missing_or_directory_input_and_output(
    pairs_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    missing, folder = tmp_path / "nope.jsonl", tmp_path / "folder"
    folder.mkdir()
    rc, err = data(capsys, "flip", str(missing), str(tmp_path / "o.jsonl"), "--p", "0.1")
    assert rc == 2 and err == [f"nemo-gammapo data flip: {missing} does not exist"]
    rc, err = data(capsys, "flip", str(folder), str(tmp_path / "o.jsonl"), "--p", "0.1")
    assert rc == 2 and err == [f"nemo-gammapo data flip: {folder} is a directory"]
    rc, err = data(capsys, "flip", str(pairs_file), str(folder), "--p", "0.1")
    assert rc == 2 and err == [f"nemo-gammapo data flip: output {folder} is a directory"]


# ---------------------------------------------------------------- 7. planner arguments


@pytest.mark.parametrize(
    "flag,value",
    [
        ("--nodes", "0"),
        ("--nodes", "-2"),
        ("--gpus-per-node", "0"),
        ("--gpu-mem-gib", "-1"),
        ("--gpu-mem-gib", "0"),
        ("--gpu-mem-gib", "nan"),
        ("--tp", "0"),
        ("--pp", "-4"),
        ("--cp", "0"),
        ("--overhead-gib", "-1"),
        ("--nodes", "two"),
    ],
)
def test_planner_rejects_non_positive_sizes(flag: str, value: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        planner.main(["--model", "llama3-8b", flag, value])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"error: argument {flag}: " in err and value in err and "Traceback" not in err


def test_planner_accepts_zero_overhead(capsys: pytest.CaptureFixture) -> None:
    assert planner.main(["--model", "llama3-8b", "--nodes", "1", "--overhead-gib", "0", "--json"]) == 0
    data_out = json.loads(capsys.readouterr().out)
    assert data_out["cluster"]["nodes"] == 1
    assert all(c["gib"]["overhead"] == 0 for c in data_out["candidates"])
