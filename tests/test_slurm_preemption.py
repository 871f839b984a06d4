"""Preemption on a real single-node SLURM cluster loses no work: the project's own sbatch script, host mode.

Two jobs of ``examples/slurm/gammapo_single_node.sbatch`` side by side (``CONTAINER_IMAGE=`` empty:
the host's Python; the tiny γ-SimPO preset, 1 task, 6 steps, a checkpoint every 2 steps) on the
cluster of ``scripts/slurm_cluster.sh``, one CPU each:

* **uninterrupted** — the reference;
* **scancel -b --signal=USR1** once step 3 is logged: the batch shell writes the stop file, the
  task finishes its step, checkpoints, exits 0, the job requeues itself and the restart continues.

It ends COMPLETED with every step's training loss, every validation loss and the final margin
queue equal to the uninterrupted run's, no step trained twice and none lost. The time-limit warning
and a real priority preemption go through the same batch-shell code (``examples/slurm/common.sh``);
they are proven on a 2-node job, with a hang besides, in ``tests/test_slurm_multi_node.py`` (one
job interrupted four ways: fewer runs than repeating them here).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import pytest
from dist_workers import same_state

from nemo_gammapo.configs import demo_data_dir
from nemo_gammapo.testing.slurm import FINAL_STATES, SlurmCluster, final_queue, incarnations, losses

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
SBATCH = ROOT / "examples" / "slurm" / "gammapo_single_node.sbatch"
STEPS = 6
EXTRA_ARGS = (
    f"trainer.dpo.max_steps={STEPS} trainer.dpo.val_check_interval=2 trainer.dpo.save_interval=2 "
    "model.global_batch_size=8"
)
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

    # The reference and the stopped job, side by side.
    jobs.submit("uninterrupted")
    jobs.submit("usr1")

    def phase1() -> None:
        if "usr1" not in events and train_records_logged(jobs.run_dir("usr1")) >= INTERRUPT_AFTER:
            cluster.run("scancel", "-b", "--signal=USR1", str(jobs.ids["usr1"]))
            events["usr1"] = train_records_logged(jobs.run_dir("usr1"))

    drive(["uninterrupted", "usr1"], phase1)

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


def batch_log(root: Path, name: str) -> str:
    return (root / f"{name}.out").read_text()


def test_every_job_completes_and_accounting_records_the_interruption(scenarios) -> None:
    assert scenarios["states"] == dict.fromkeys(scenarios["ids"], "COMPLETED"), scenarios
    sacct = scenarios["sacct"]
    jobs = {name: [line.split("|")[1] for line in sacct[name] if "." not in line.split("|")[0]] for name in sacct}
    assert jobs["uninterrupted"] == ["COMPLETED"], sacct
    assert jobs["usr1"] == ["REQUEUED", "COMPLETED"], sacct  # requeued by the batch script, after the stop
    assert "stop requested (USR1)" in batch_log(scenarios["root"], "usr1")
    assert "requeueing job" in batch_log(scenarios["root"], "usr1")


def test_interrupted_run_equals_the_uninterrupted_run(scenarios) -> None:
    name = "usr1"
    root = scenarios["root"]
    reference_train, reference_val = losses(root / "uninterrupted")
    assert sorted(reference_train) == list(range(STEPS)), reference_train
    train, val = losses(root / name)
    assert train == reference_train  # bit-identical: same layout, resumed state is exact
    assert {step: val[step] for step in reference_val} == reference_val
    # a clean stop also validates the step it checkpoints; nothing else is extra
    stops = [steps[-1] + 1 for steps in incarnations(root / name)[:-1]]
    assert sorted(set(val) - set(reference_val)) == sorted(set(stops) - set(reference_val))
    assert same_state(final_queue(root / name, STEPS), final_queue(root / "uninterrupted", STEPS))


def test_a_stop_request_loses_no_completed_step(scenarios) -> None:
    name = "usr1"
    """The stop checkpoints the step in progress: the restart starts right after it, nothing repeated."""
    runs = incarnations(scenarios["root"] / name)
    assert len(runs) == 2 and runs[0] and runs[1], runs
    assert runs[0] + runs[1] == list(range(STEPS)), runs
    assert runs[0][-1] + 1 >= scenarios["events"]["usr1"]  # stopped after the step in progress
