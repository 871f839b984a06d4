"""Preemption on a real SLURM cluster loses no work: the project's own sbatch script, host mode.

Four jobs of ``examples/slurm/gammapo_single_node.sbatch`` (``CONTAINER_IMAGE=`` empty: the host's
Python; the tiny γ-SimPO preset, 1 task, 6 steps, a checkpoint every 2 steps) on the cluster of
``scripts/slurm_cluster.sh``, two at a time (one CPU each):

* **uninterrupted** — the reference;
* **(a) scancel -b --signal=USR1** once step 3 is logged: the batch shell writes the stop file, the
  task finishes its step, checkpoints, exits 0, the job requeues itself and the restart continues;
* **(b) a time-limit warning**: ``--time=2 --signal=B:USR1@120`` — SLURM itself sends the warning.
  slurmctld checks time limits only every 30 s, so it arrives up to 30 s after the window opens
  (here: at the start); the first incarnation's Python starts 35 s late (a wrapper around
  ``PYTHON``), so the warning always lands while the task is starting — the race a forwarded signal
  loses. The request is kept until the first step ends, which is then checkpointed. After the
  requeue the test gives the job time to finish (``scontrol update TimeLimit``), as a user would
  for the last stretch;
* **(c) a real priority preemption**, no signal: the job runs in the preemptible partition ``low``;
  once step 3 is logged a job in ``urgent`` needs its CPU, SLURM kills and requeues it, and the
  restart resumes from the newest complete checkpoint (steps after it are trained again).

Each ends COMPLETED with every step's training loss, every validation loss and the final margin
queue equal to the uninterrupted run's; (a) and (b) train no step twice and lose none.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from dist_workers import same_state

from nemo_gammapo.aligner.model import CHECKPOINT_KEY
from nemo_gammapo.artifacts.metrics import metrics_files, read_history, read_metrics_file
from nemo_gammapo.configs import demo_data_dir
from nemo_gammapo.testing.slurm import FINAL_STATES, SlurmCluster

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
SBATCH = ROOT / "examples" / "slurm" / "gammapo_single_node.sbatch"
STEPS = 6
EXTRA_ARGS = (
    f"trainer.dpo.max_steps={STEPS} trainer.dpo.val_check_interval=2 trainer.dpo.save_interval=2 "
    "model.global_batch_size=8"
)
TIME_LIMIT_CHECK_S = 30  # slurmctld's period for time limits and their warnings (PERIODIC_TIMEOUT)
INTERRUPT_AFTER = 3  # training records logged (steps 1..3 done; the step-2 checkpoint exists)
PHASE_TIMEOUT_S = 300


def train_records_logged(run_dir: Path) -> int:
    """Training steps the current incarnation has logged (its ``<run_dir>/metrics.jsonl``)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return 0
    return sum('"train/loss"' in line for line in path.read_text().splitlines())


class Jobs:
    """The scenario jobs of one test module, submitted through the project's sbatch script."""

    def __init__(self, cluster: SlurmCluster, root: Path) -> None:
        self.cluster = cluster
        self.root = root
        self.ids: dict[str, int] = {}

    def submit(self, name: str, *sbatch_args: str, python: str = sys.executable) -> None:
        env = {
            "GAMMAPO_REPO": str(ROOT),
            "CONTAINER_IMAGE": "",  # host mode
            "PYTHON": python,
            "CONFIG": "tiny_cpu",
            "MODEL_FILE": "",  # the preset's own (seeded) random start
            "DATA_DIR": str(demo_data_dir()),
            "VAL_FILE": "validation.jsonl",
            "RESULTS_DIR": str(self.root),
            "RUN_NAME": name,
            "EXTRA_ARGS": EXTRA_ARGS,
            "OMP_NUM_THREADS": "1",  # two jobs share the two cores
        }
        self.ids[name] = self.cluster.sbatch(
            "--ntasks-per-node=1",
            "--cpus-per-task=1",
            f"--job-name={name}",
            f"--output={self.root / name}.out",
            *sbatch_args,
            str(SBATCH),
            env=env,
            cwd=self.root,
        )

    def run_dir(self, name: str) -> Path:
        return self.root / name

    def finished(self, name: str) -> bool:
        return self.cluster.state(self.ids[name]) in FINAL_STATES


def run_scenarios(cluster: SlurmCluster, root: Path) -> dict[str, Any]:
    jobs = Jobs(cluster, root)
    events: dict[str, Any] = {}

    def drive(names: list[str], act: Any) -> None:
        deadline = time.monotonic() + PHASE_TIMEOUT_S
        while not all(jobs.finished(n) for n in names):
            if time.monotonic() > deadline:
                states = {n: cluster.job(jobs.ids[n]) for n in names}
                logs = {n: (root / f"{n}.out").read_text()[-2000:] for n in names if (root / f"{n}.out").exists()}
                raise TimeoutError(f"scenario jobs did not finish in {PHASE_TIMEOUT_S} s: {states}\n{logs}")
            act()
            time.sleep(0.5)

    # Phase 1: the reference and (a).
    jobs.submit("uninterrupted")
    jobs.submit("usr1")

    def phase1() -> None:
        if "usr1" not in events and train_records_logged(jobs.run_dir("usr1")) >= INTERRUPT_AFTER:
            cluster.run("scancel", "-b", "--signal=USR1", str(jobs.ids["usr1"]))
            events["usr1"] = train_records_logged(jobs.run_dir("usr1"))
        cluster.restart_now_if_requeued(jobs.ids["usr1"])

    drive(["uninterrupted", "usr1"], phase1)

    # Phase 2: (b) and (c), side by side (only `low` jobs can be preempted).
    late_python = root / "late_python.sh"  # the first incarnation starts Python after the warning
    late_python.write_text(
        "#!/usr/bin/env bash\n"
        f'[[ "${{SLURM_RESTART_COUNT:-0}}" == 0 ]] && sleep {TIME_LIMIT_CHECK_S + 5}\n'
        f'exec {sys.executable} "$@"\n'
    )
    late_python.chmod(0o755)
    jobs.submit("time_limit", "--time=2", "--signal=B:USR1@120", python=str(late_python))
    jobs.submit("preempted", "--partition=low")

    def phase2() -> None:
        if "preempted" not in events and train_records_logged(jobs.run_dir("preempted")) >= INTERRUPT_AFTER:
            cluster.sbatch("--partition=urgent", "--ntasks=1", "--cpus-per-task=1", "--wrap=sleep 2", cwd=root)
            events["preempted"] = train_records_logged(jobs.run_dir("preempted"))
        fields = cluster.job(jobs.ids["time_limit"])
        if fields.get("JobState") == "PENDING" and int(fields.get("Restarts", "0")) >= 1:
            if "time_limit" not in events:  # let the restart finish: no second warning
                cluster.run("scontrol", "update", f"JobId={jobs.ids['time_limit']}", "TimeLimit=10")
                events["time_limit"] = True
            cluster.restart_now_if_requeued(jobs.ids["time_limit"])

    drive(["time_limit", "preempted"], phase2)
    return {
        "root": root,
        "events": events,
        "ids": jobs.ids,
        "states": {n: cluster.state(i) for n, i in jobs.ids.items()},
        "sacct": {n: cluster.sacct_states(i) for n, i in jobs.ids.items()},
    }


@pytest.fixture(scope="module")
def scenarios(slurm_cluster: SlurmCluster, tmp_path_factory) -> dict[str, Any]:
    return run_scenarios(slurm_cluster, tmp_path_factory.mktemp("preemption"))


def incarnations(run_dir: Path) -> list[list[int]]:
    """The training steps (0-based) each incarnation of the job logged, oldest first."""
    return [[r["step"] for r in read_metrics_file(p) if "train/loss" in r] for p in metrics_files(run_dir)]


def losses(run_dir: Path) -> tuple[dict[int, float], dict[int, float]]:
    history = read_history(run_dir)
    train = {r["step"]: r["train/loss"] for r in history if "train/loss" in r}
    val = {r["step"]: r["val/loss"] for r in history if "val/loss" in r}
    return train, val


def final_queue(run_dir: Path) -> dict[str, Any]:
    (last,) = [
        p for p in (run_dir / "checkpoints").iterdir() if f"step={STEPS}-" in p.name and p.name.endswith("-last")
    ]
    return torch.load(last / "common.pt", weights_only=False)[CHECKPOINT_KEY]


def batch_log(root: Path, name: str) -> str:
    return (root / f"{name}.out").read_text()


def test_every_job_completes_and_accounting_records_the_interruption(scenarios) -> None:
    assert scenarios["states"] == dict.fromkeys(scenarios["ids"], "COMPLETED"), scenarios
    sacct = scenarios["sacct"]
    jobs = {name: [line.split("|")[1] for line in sacct[name] if "." not in line.split("|")[0]] for name in sacct}
    assert jobs["uninterrupted"] == ["COMPLETED"], sacct
    assert jobs["usr1"] == ["REQUEUED", "COMPLETED"], sacct  # requeued by the batch script, after the stop
    assert jobs["time_limit"] == ["REQUEUED", "COMPLETED"], sacct
    assert jobs["preempted"] == ["PREEMPTED", "COMPLETED"], sacct  # SLURM's own preemption
    for name in ("usr1", "time_limit"):
        assert "stop requested (USR1)" in batch_log(scenarios["root"], name)
        assert "requeueing job" in batch_log(scenarios["root"], name)
    assert "stop requested" not in batch_log(scenarios["root"], "preempted")  # no warning at all


@pytest.mark.parametrize("name", ["usr1", "time_limit", "preempted"])
def test_interrupted_run_equals_the_uninterrupted_run(scenarios, name: str) -> None:
    root = scenarios["root"]
    reference_train, reference_val = losses(root / "uninterrupted")
    assert sorted(reference_train) == list(range(STEPS)), reference_train
    train, val = losses(root / name)
    assert train == reference_train  # bit-identical: same layout, resumed state is exact
    assert {step: val[step] for step in reference_val} == reference_val
    # a clean stop also validates the step it checkpoints; nothing else is extra
    stops = [steps[-1] + 1 for steps in incarnations(root / name)[:-1]] if name != "preempted" else []
    assert sorted(set(val) - set(reference_val)) == sorted(set(stops) - set(reference_val))
    assert same_state(final_queue(root / name), final_queue(root / "uninterrupted"))


@pytest.mark.parametrize("name", ["usr1", "time_limit"])
def test_a_stop_request_loses_no_completed_step(scenarios, name: str) -> None:
    """The stop checkpoints the step in progress: the restart starts right after it, nothing repeated."""
    runs = incarnations(scenarios["root"] / name)
    assert len(runs) == 2 and runs[0] and runs[1], runs
    assert runs[0] + runs[1] == list(range(STEPS)), runs
    if name == "usr1":
        assert runs[0][-1] + 1 >= scenarios["events"]["usr1"]  # stopped after the step in progress


def test_preemption_resumes_from_the_newest_complete_checkpoint(scenarios) -> None:
    runs = incarnations(scenarios["root"] / "preempted")
    assert len(runs) == 2, runs
    first, second = runs
    assert len(first) >= INTERRUPT_AFTER
    assert second == list(range(second[0], STEPS))
    # the restart began after the newest checkpoint the killed job had completed (every 2 steps)
    # (a save cut off by the kill is set aside, so it may be the one before that)
    assert second[0] % 2 == 0 and 2 * (len(first) // 2) - 2 <= second[0] <= 2 * (len(first) // 2), runs
    lock = (
        json.loads((scenarios["root"] / "preempted" / ".nemo_gammapo" / "lock.json").read_text())
        if (scenarios["root"] / "preempted" / ".nemo_gammapo" / "lock.json").exists()
        else None
    )
    assert lock is None  # the restart took over the killed job's lock and released it at the end
