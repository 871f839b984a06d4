"""Faults during real training runs (2 processes, the tiny γ-SimPO preset, NeMo-Aligner's loop).

* A kill -9 in the middle of a checkpoint save (the ``-last`` of step 4, NeMo's unfinished marker
  still in place): the re-run sets it aside and resumes from the complete step-4 checkpoint — not
  from the older ``-last`` of step 2 that NeMo's own search would pick — and then matches an
  uninterrupted run exactly.
* Non-finite weights before step 4 (a fault injected into the model): every rank stops at step 4
  with one message naming the last good checkpoint (step 2), nothing of the bad state is saved,
  and re-running resumes from step 2 to the uninterrupted run's losses.
* ``SIGUSR1`` to one rank before step 3: every rank finishes step 3, checkpoints it and exits
  cleanly; re-running continues at step 3 to the uninterrupted run's losses.
* Two runs in one run_dir, and a ``kill -9`` of the launcher: the second run is refused in seconds,
  naming the holder; no worker survives its launcher, and the dead run's lock counts as stale.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from dist_workers import aligner_fault_runs_worker, aligner_killed_in_save_worker, same_state

from nemo_gammapo.aligner.checkpoints import SET_ASIDE_DIR, UNFINISHED_SUFFIX
from nemo_gammapo.aligner.run_dir import RunDirLock
from nemo_gammapo.distributed.process_groups import run_on_ranks
from nemo_gammapo.testing.leftovers import end_leftovers

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
STEPS = 6
BASE = [f"trainer.dpo.max_steps={STEPS}", "trainer.dpo.val_check_interval=2", "trainer.dpo.save_interval=2"]
KILL_AT_SAVE = 4  # saves: step 2 top-k, step 2 -last, step 4 top-k, step 4 -last ← killed in this one


@pytest.fixture(scope="module")
def fault_runs(tmp_path_factory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("faults")
    out: dict[str, Any] = {"root": root}
    killed = {"run_dir": str(root / "killed"), "overrides": BASE}
    try:
        run_on_ranks(aligner_killed_in_save_worker, 2, 600, {"run": killed, "kill_at_save": KILL_AT_SAVE}, False)
        out["killed"] = "exited normally"
    except RuntimeError as e:
        out["killed"] = str(e)
    out["after_kill"] = sorted(p.name for p in (root / "killed" / "checkpoints").iterdir())
    plan = [
        {"run_dir": str(root / "clean"), "overrides": BASE},
        killed,  # the same command again
        {"run_dir": str(root / "nan"), "overrides": BASE, "poison_before_step": 3},
        {"run_dir": str(root / "nan"), "overrides": BASE},  # the same command again, no fault
        {"run_dir": str(root / "signal"), "overrides": BASE, "signal_before_step": (1, 2)},  # rank 1 only
        {"run_dir": str(root / "signal"), "overrides": BASE},  # the same command again
    ]
    per_rank = run_on_ranks(aligner_fault_runs_worker, 2, 900, {"runs": plan}, init_process_group=False)
    names = ["clean", "rerun_killed", "nan", "rerun_nan", "signal", "rerun_signal"]
    for name, ranks in zip(names, zip(*per_rank, strict=True), strict=True):
        out[name] = list(ranks)
    return out


def train_losses(result: dict[str, Any]) -> dict[int, float]:
    return {int(r["step"]): r["train/loss"] for r in result["history"] if "train/loss" in r}


def test_kill_during_a_save_resumes_from_the_newest_complete_checkpoint(fault_runs) -> None:
    assert "(0, 137)" in fault_runs["killed"], fault_runs["killed"]
    names = fault_runs["after_kill"]
    unfinished_last = [n for n in names if "step=4" in n and n.endswith("-last")]
    assert len(unfinished_last) == 1 and unfinished_last[0] + UNFINISHED_SUFFIX in names, names
    assert any("step=2" in n and n.endswith("-last") for n in names), names  # what NeMo would resume from

    root = fault_runs["root"] / "killed"
    assert (root / SET_ASIDE_DIR / unfinished_last[0]).is_dir()  # kept for inspection, not deleted
    clean = train_losses(fault_runs["clean"][0])
    for rank in fault_runs["rerun_killed"]:
        rerun = train_losses(rank)
        assert sorted(rerun) == [4, 5]  # resumed after step 4, not after step 2
        assert rerun == {step: clean[step] for step in (4, 5)}
        assert same_state(rank["gamma_state"], fault_runs["clean"][0]["gamma_state"])  # the margin queue too


def test_non_finite_step_stops_every_rank_unsaved_and_resume_picks_the_last_good_checkpoint(fault_runs) -> None:
    messages = [r.get("error") for r in fault_runs["nan"]]
    assert [r.get("error_type") for r in fault_runs["nan"]] == ["NonFiniteTraining"] * 2
    assert messages[0] == messages[1]
    assert messages[0].startswith("non-finite training at step 4: train loss=nan")
    assert "the last good checkpoint is" in messages[0] and "-step=2-" in messages[0] and "(step 2)" in messages[0]
    left = fault_runs["nan"][0]["checkpoints_after"]
    assert left and all("-step=2-" in name and "val_loss=nan" not in name for name in left), left

    clean = train_losses(fault_runs["clean"][0])
    for rank in fault_runs["rerun_nan"]:
        rerun = train_losses(rank)
        assert sorted(rerun) == [2, 3, 4, 5]
        assert rerun == {step: clean[step] for step in (2, 3, 4, 5)}
        assert same_state(rank["gamma_state"], fault_runs["clean"][0]["gamma_state"])
        assert all(r["train/gamma_po/nonfinite_pairs"] == 0 for r in rank["history"] if "train/loss" in r)


def test_sigusr1_to_one_rank_stops_every_rank_after_a_checkpoint_and_loses_no_step(fault_runs) -> None:
    """A stop request (as a scheduler's warning signal) finishes the step, checkpoints it, exits cleanly."""
    stopped = fault_runs["signal"]
    assert [r["stopped_on_request"] for r in stopped] == [True, True]
    assert all(sorted(train_losses(r)) == [0, 1, 2] for r in stopped)  # rank 1 got it before step 3: 3 steps done
    assert any("-step=3-" in name for name in stopped[0]["checkpoints_after"]), stopped[0]["checkpoints_after"]
    clean = train_losses(fault_runs["clean"][0])
    for rank in fault_runs["rerun_signal"]:
        rerun = train_losses(rank)
        assert sorted(rerun) == [3, 4, 5] and not rank["stopped_on_request"]  # no completed step lost or redone
        assert rerun == {step: clean[step] for step in (3, 4, 5)}
    assert same_state(fault_runs["rerun_signal"][0]["gamma_state"], fault_runs["clean"][0]["gamma_state"])


LAUNCH_MARK = "GAMMAPO_TEST_LAUNCH"  # in the environment of everything a launch starts


def _launch(run_dir: Path, log: Path) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "nemo_gammapo.cli",
        "train",
        "--config-name",
        "tiny_cpu",
        f"run_dir={run_dir}",
        "trainer.dpo.max_steps=64",
    ]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", LAUNCH_MARK: str(run_dir)}  # finds its helpers later
    with log.open("w") as out:  # a file, not a pipe nobody reads: the run must never block on its output
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)


def test_second_run_is_refused_and_no_worker_outlives_a_killed_launcher(tmp_path) -> None:
    run_dir = tmp_path / "run"
    first = _launch(run_dir, tmp_path / "first.log")
    lock = RunDirLock(run_dir)
    spawned: list[psutil.Process] = []  # what this test started (not the session's fork server)
    try:
        deadline = time.monotonic() + 240
        while lock.holder() is None:
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the first run never took its lock"
            time.sleep(0.5)
        workers = psutil.Process(first.pid).children()  # the training processes torchrun started
        spawned += psutil.Process(first.pid).children(recursive=True)
        assert len(workers) >= 2

        second = _launch(run_dir, tmp_path / "second.log")
        spawned.append(psutil.Process(second.pid))
        assert second.wait(120) == 3
        err = (tmp_path / "second.log").read_text()
        lines = [line for line in err.splitlines() if line.strip() and not line.startswith("WARNING")]
        assert len(lines) == 1, err
        holder = lock.holder()
        assert lines[0].startswith(f"nemo-gammapo train: error: run_dir {run_dir} is in use by another run (host ")
        assert f"PID {holder['pid']}" in lines[0]

        first.send_signal(signal.SIGKILL)  # only the launcher (torchrun's agent) is killed
        first.wait(30)
        _, alive = psutil.wait_procs(workers, timeout=30)
        assert not alive, f"workers outlived their launcher: {alive}"
        assert lock.is_stale(lock.holder())  # the dead run's lock blocks nobody
    finally:
        try:
            spawned += psutil.Process(first.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            pass
        for proc in [first, *spawned]:
            try:
                proc.kill()
            except (psutil.NoSuchProcess, ProcessLookupError):
                pass
        # helpers a worker spawned after the snapshots above (checkpoint writers) re-parent to init
        end_leftovers(str(run_dir), grace_s=5, mark=LAUNCH_MARK)
