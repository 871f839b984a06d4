"""Many nodes, for real: the project's multi-node paths on a 3-node SLURM cluster, against one node.

The cluster (``slurm_nodes``, ``scripts/slurm_cluster.sh start DIR --nodes 3``) has node1..node3,
each a network namespace with its own address, hostname and hosts file; a task on node2 reaches
node1 only over their veth links. Every training run starts from one ``.nemo`` (a 2-step run of
``tiny_cpu`` in this module) and validates and checkpoints every 4 steps; the interrupted runs and
their reference (2-node γ-SimPO DP2) train 48 steps, the other equality runs 16.

**Multi-node equals one node** — each through the project's own scripts in host mode, compared
with the same layout trained on one node (the product's ``train()`` in a local process pool):

| path | nodes × tasks | layout | loss |
|---|---|---|---|
| ``gammapo_multi_node.sbatch`` | 2 × 1 | DP2 across nodes | γ-SimPO, γ-DPO |
| ``gammapo_multi_node.sbatch`` | 2 × 2 | TP2 inside a node × DP2 across | γ-SimPO |
| ``gammapo_multi_node.sbatch``, node names unresolvable | 2 × 1 | PP2 across nodes | γ-DPO |
| ``nemo-gammapo launch slurm --nodes 2 --ntasks-per-node 1`` | 2 × 1 | DP2 across nodes | γ-DPO |

Per-step training and validation losses and the final margin queue agree to 1e-5 relative, and
node2's link carries at least the gradient all-reduce of every step (so the traffic crossed it).

**Faults**, each equal bit for bit to the uninterrupted 2-node γ-SimPO run:

* one job, interrupted four times: a time-limit warning, ``scancel -b --signal=USR1``, a priority
  preemption (a 3-node ``urgent`` job), and a hang — one task SIGSTOPped, ``hang_timeout_s=60``: the
  live rank writes its stacks, names the frozen rank and its host, the job exits 75 within 2 × 60 s
  and the batch script requeues it. The fifth incarnation finishes.
* node loss: node2's link is cut mid-run; the surviving rank's collective fails after
  ``collective_timeout_s=20`` (not gloo's 30 minutes), SLURM requeues the job (node failure); the
  test keeps the dead node out of the restart (``ExcNodeList``: the batch script may requeue before
  slurmctld has marked the node DOWN), which resumes from the newest complete checkpoint.

**Bad input** stops before any training task: a layout the tasks cannot hold, a missing ``PYTHON``,
more nodes than the partition has (sbatch and launch).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from dist_workers import aligner_runs_worker, same_state

from nemo_gammapo.aligner.hang_watchdog import FAULT_EXIT_CODE, FAULT_MARKER, HANGS_DIR
from nemo_gammapo.configs import demo_data_dir
from nemo_gammapo.distributed.process_groups import run_on_ranks
from nemo_gammapo.testing.slurm import FINAL_STATES, SlurmCluster, final_queue, incarnations, losses

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
SBATCH = ROOT / "examples" / "slurm" / "gammapo_multi_node.sbatch"
STEPS = 48  # long enough (~0.15 s a step) for each interruption to land while the job trains
EQUALITY_STEPS = 16  # the equality runs that are no fault run's reference: 4 validations and checkpoints
EVERY = 4  # validation and checkpoint interval (steps)
BASE = [
    f"trainer.dpo.val_check_interval={EVERY}",
    f"trainer.dpo.save_interval={EVERY}",
    "trainer.dpo.limit_val_batches=2",
    "model.global_batch_size=8",
    "model.dpo.gamma_dump.every=0",
]
LOSSES = {
    "gamma_simpo": [],
    "gamma_dpo": [
        "model.dpo.preference_loss=gamma_dpo",
        "model.dpo.ref_policy_kl_penalty=0.5",
        "model.dpo.gamma_beta_ratio=2.0",
    ],
}
# name: (nodes, tasks per node, overrides)
LAYOUTS = {
    "dp2": (2, 1, []),
    "tp2_dp2": (2, 2, ["model.tensor_model_parallel_size=2"]),
    "pp2": (2, 1, ["model.pipeline_model_parallel_size=2"]),
}
SBATCH_RUNS = [("gamma_simpo", "dp2"), ("gamma_dpo", "dp2"), ("gamma_simpo", "tp2_dp2"), ("gamma_dpo", "pp2")]
FAULT_REFERENCE = ("gamma_simpo", "dp2")  # the interrupted and node-loss jobs must end bit-identical to it
FAULT_REFERENCE_RUN = "multi_{}_{}".format(*FAULT_REFERENCE)
LAUNCH_RUN = ("gamma_dpo", "dp2")  # its one-node reference is the sbatch run's (one pool run fewer)
UNRESOLVED = ("gamma_dpo", "pp2")  # run while node names resolve only through SLURM (NodeAddr)
REL_TOL, ABS_TOL = 1e-5, 1e-7
JOB_TIMEOUT_S = 420
HANG_TIMEOUT_S = 60
COLLECTIVE_TIMEOUT_S = 20  # the node-loss run's trainer.dpo.collective_timeout_s


def run_steps(loss: str, layout: str) -> int:
    return STEPS if (loss, layout) == FAULT_REFERENCE else EQUALITY_STEPS


def overrides(loss: str, layout: str) -> list[str]:
    return [f"trainer.dpo.max_steps={run_steps(loss, layout)}", *BASE, *LOSSES[loss], *LAYOUTS[layout][2]]


# ---------------------------------------------------------------- results of a run directory
def close(a: float, b: float, exact: bool = False) -> bool:
    return a == b if exact else math.isclose(a, b, rel_tol=REL_TOL, abs_tol=ABS_TOL)


def close_state(a: Any, b: Any) -> bool:
    """Nested state (the margin queue) equal to 1e-5 relative in its tensors, exactly elsewhere."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(close_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return (
            isinstance(b, (list, tuple))
            and len(a) == len(b)
            and all(close_state(x, y) for x, y in zip(a, b, strict=True))
        )
    if isinstance(a, torch.Tensor):
        if not (isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype):
            return False
        if not a.is_floating_point():
            return torch.equal(a, b)
        return torch.allclose(a, b, rtol=REL_TOL, atol=ABS_TOL, equal_nan=True)
    if isinstance(a, float):
        return close(a, b)
    return a == b


def assert_equal_runs(got: Path, expected: Path, steps: int, exact: bool = False) -> None:
    """Per-step train and validation losses and the final queue of ``got`` equal ``expected``'s
    over ``steps`` steps (to 1e-5 relative; ``exact``: bit for bit — the same layout, interrupted or not)."""
    want_train, want_val = losses(expected)
    train, val = losses(got)
    assert sorted(want_train) == list(range(steps)), want_train
    assert sorted(train) == sorted(want_train), (sorted(train), sorted(want_train))
    bad = {s: (train[s], want_train[s]) for s in want_train if not close(train[s], want_train[s], exact)}
    assert not bad, f"training losses differ at steps {bad}"
    missing = sorted(set(want_val) - set(val))
    assert not missing, f"validation missing at steps {missing}"
    bad = {s: (val[s], want_val[s]) for s in want_val if not close(val[s], want_val[s], exact)}
    assert not bad, f"validation losses differ at steps {bad}"
    same = same_state if exact else close_state
    assert same(final_queue(got, steps), final_queue(expected, steps))


# ---------------------------------------------------------------- jobs
class MultiNodeJobs:
    """Jobs of ``gammapo_multi_node.sbatch`` in host mode on the 3-node cluster, from one ``.nemo``."""

    def __init__(self, cluster: SlurmCluster, root: Path, nemo: Path) -> None:
        self.cluster, self.root, self.nemo = cluster, root, nemo
        self.ids: dict[str, int] = {}

    def submit(
        self, name: str, args: list[str], nodes: int, tasks: int, *sbatch: str, python: str = sys.executable, **env: str
    ) -> int:
        job_env = {
            "GAMMAPO_REPO": str(ROOT),
            "CONTAINER_IMAGE": "",  # host mode
            "PYTHON": python,
            "CONFIG": "tiny_cpu",
            "CKPT_DIR": str(self.nemo.parent),
            "MODEL_FILE": self.nemo.name,
            "DATA_DIR": str(demo_data_dir()),
            "VAL_FILE": "validation.jsonl",
            "RESULTS_DIR": str(self.root),
            "RUN_NAME": name,
            "EXTRA_ARGS": " ".join(args),
            "OMP_NUM_THREADS": "1",
            "FAULT_GRACE_S": "5",  # after a fault, the rest of the step is killed 5 s later
            **env,
        }
        self.ids[name] = self.cluster.sbatch(
            f"--nodes={nodes}",
            f"--ntasks-per-node={tasks}",
            "--cpus-per-task=1",
            f"--job-name={name}",
            f"--output={self.root / name}.out",
            *sbatch,
            str(SBATCH),
            env=job_env,
            cwd=self.root,
        )
        return self.ids[name]

    def log(self, name: str) -> str:
        path = self.root / f"{name}.out"
        return path.read_text() if path.exists() else ""

    def wait(self, name: str, timeout_s: float = JOB_TIMEOUT_S) -> dict[str, str]:
        try:
            return self.cluster.wait_done(self.ids[name], timeout_s)
        except TimeoutError as e:
            raise TimeoutError(f"{e}\n{self.log(name)[-3000:]}") from None


def records_logged(run_dir: Path, since: float = 0.0) -> int:
    """Training steps logged in ``<run_dir>/metrics.jsonl`` at or after ``since`` (epoch seconds).

    Each incarnation writes its own file (NeMo's exp_manager moves the last one into ``run_<N>/``
    when it starts), so before the new one's first step the old file is still there: ``since`` (the
    incarnation's start) keeps its records from counting.
    """
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return 0
    count = 0
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # being written
        count += "train/loss" in record and record.get("wall_time", 0.0) >= since
    return count


def started_at(fields: dict[str, str]) -> float:
    """The job's (current incarnation's) StartTime from ``scontrol show job``, in epoch seconds."""
    return time.mktime(time.strptime(fields["StartTime"], "%Y-%m-%dT%H:%M:%S"))


def job_nodes(cluster: SlurmCluster, job_id: int) -> list[str]:
    nodelist = cluster.job(job_id).get("NodeList", "")
    return cluster.run("scontrol", "show", "hostnames", nodelist).split() if nodelist and nodelist != "(null)" else []


@pytest.fixture(scope="module")
def multi(slurm_nodes: SlurmCluster, tmp_path_factory) -> dict[str, Any]:
    """The seed ``.nemo``, the one-node references, and every multi-node equality job."""
    root = tmp_path_factory.mktemp("multi_node")
    seed = {
        "run_dir": str(root / "seed"),
        "overrides": [
            "model.dpo.preference_loss=simpo",
            "trainer.dpo.max_steps=2",
            "trainer.dpo.val_check_interval=2",
            "trainer.dpo.save_interval=2",
            "exp_manager.checkpoint_callback_params.save_nemo_on_train_end=true",
        ],
    }

    def ref(loss: str, layout: str) -> dict[str, Any]:
        return {
            "run_dir": str(root / f"one_node_{loss}_{layout}"),
            "restore_from_run": seed["run_dir"],
            "overrides": overrides(loss, layout),
        }

    # One node: the seed, then each layout in a local pool of its size (imports paid once per pool).
    two = [seed, *(ref(loss, layout) for loss, layout in SBATCH_RUNS if layout != "tp2_dp2")]
    run_on_ranks(aligner_runs_worker, 2, 1200, {"runs": two}, init_process_group=False)
    four = [
        ref(loss, "tp2_dp2")
        for loss in sorted({loss for loss, layout in [*SBATCH_RUNS, LAUNCH_RUN] if layout == "tp2_dp2"})
    ]
    run_on_ranks(aligner_runs_worker, 4, 1200, {"runs": four}, init_process_group=False)
    (nemo,) = (root / "seed" / "checkpoints").glob("*.nemo")

    jobs = MultiNodeJobs(slurm_nodes, root, nemo)
    out: dict[str, Any] = {"root": root, "jobs": jobs, "link_bytes": {}, "unresolved": None}
    for loss, layout in SBATCH_RUNS:
        name = f"multi_{loss}_{layout}"
        nodes, tasks, _ = LAYOUTS[layout]
        if (loss, layout) == UNRESOLVED:
            slurm_nodes.node_action("hosts", "off")
        try:
            before = {n: slurm_nodes.link_bytes(n) for n in ("node1", "node2", "node3")}
            jobs.submit(name, overrides(loss, layout), nodes, tasks)
            if (loss, layout) == UNRESOLVED:  # while it runs: no node name resolves on a node
                out["unresolved"] = subprocess.run(
                    ["srun", "-N1", "-w", "node3", "getent", "hosts", "node1"],
                    env=slurm_nodes.env,
                    capture_output=True,
                    timeout=60,
                ).returncode
            jobs.wait(name)
            used = job_nodes(slurm_nodes, jobs.ids[name])
            out["link_bytes"][loss, layout] = {n: slurm_nodes.link_bytes(n) - before[n] for n in used}
        finally:
            if (loss, layout) == UNRESOLVED:
                slurm_nodes.node_action("hosts", "on")

    # The same through NeMo-Run: nemo-gammapo launch slurm --nodes 2.
    loss, layout = LAUNCH_RUN
    nodes, tasks, _ = LAYOUTS[layout]
    launch_dir = root / f"launch_{loss}_{layout}"
    proc = subprocess.run(
        [
            sys.executable, "-m", "nemo_gammapo.cli", "launch", "slurm", "--wait", "--nodes", str(nodes),
            "--ntasks-per-node", str(tasks), "--config-name", "tiny_cpu", f"run_dir={launch_dir}",
            f"pretrained_checkpoint.restore_from_path={nemo}", *overrides(loss, layout),
        ],
        capture_output=True, text=True, timeout=JOB_TIMEOUT_S, cwd=ROOT,
        env={**slurm_nodes.env, "NEMORUN_HOME": str(root / "nemo_run"), "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    out["launch"] = proc
    return out


@pytest.mark.parametrize(("loss", "layout"), SBATCH_RUNS)
def test_multi_node_sbatch_equals_one_node(multi, loss: str, layout: str) -> None:
    name = f"multi_{loss}_{layout}"
    jobs: MultiNodeJobs = multi["jobs"]
    fields = jobs.cluster.job(jobs.ids[name])
    assert fields.get("JobState") == "COMPLETED", (fields, jobs.log(name)[-3000:])
    log = jobs.log(name)
    nodes, tasks, _ = LAYOUTS[layout]
    assert f"{nodes} node(s) × {tasks} tasks" in log
    assert "GLOO_SOCKET_IFNAME=gpnet0" in log and "NCCL_SOCKET_IFNAME=gpnet0" in log  # the node link, not lo
    used = job_nodes(jobs.cluster, jobs.ids[name])
    assert len(used) == 2, used
    assert_equal_runs(multi["root"] / name, multi["root"] / f"one_node_{loss}_{layout}", run_steps(loss, layout))


def test_the_traffic_crosses_the_node_links(multi) -> None:
    """Each step all-reduces every gradient across the nodes (DP) or sends activations (PP)."""
    for (loss, layout), per_node in multi["link_bytes"].items():
        for node, sent in per_node.items():
            assert sent > run_steps(loss, layout) * 50_000, (loss, layout, node, sent)  # tiny_cpu: ~0.2 M parameters


def test_rendezvous_works_when_node_names_resolve_only_through_slurm(multi) -> None:
    assert multi["unresolved"] not in (0, None)  # `getent hosts node1` failed on a node during the job
    log = multi["jobs"].log(f"multi_{UNRESOLVED[0]}_{UNRESOLVED[1]}")
    assert "export MASTER_ADDR=10.217." in log  # node1's NodeAddr, not a name


def test_launch_slurm_on_two_nodes_equals_one_node(multi) -> None:
    proc = multi["launch"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "SUCCEEDED" in proc.stdout
    loss, layout = LAUNCH_RUN
    assert_equal_runs(
        multi["root"] / f"launch_{loss}_{layout}", multi["root"] / f"one_node_{loss}_{layout}", run_steps(loss, layout)
    )


# ---------------------------------------------------------------- faults
CHAIN = "chain"
CHAIN_ARGS = [
    *overrides(*FAULT_REFERENCE),
    f"trainer.dpo.hang_timeout_s={HANG_TIMEOUT_S}",
    "trainer.dpo.collective_timeout_s=300",
]
TIME_LIMIT_CHECK_S = 30  # slurmctld's period for time limits and their warnings


@pytest.fixture(scope="module")
def chain(multi) -> dict[str, Any]:
    """One 2-node job, interrupted four ways in turn (see the module docstring); then node loss."""
    jobs: MultiNodeJobs = multi["jobs"]
    cluster, root = jobs.cluster, multi["root"]
    late_python = root / "late_python.sh"  # the first incarnation's tasks start Python after the warning
    late_python.write_text(
        "#!/usr/bin/env bash\n"
        f'[[ "${{SLURM_RESTART_COUNT:-0}}" == 0 && "$1" == -u ]] && sleep {TIME_LIMIT_CHECK_S + 5}\n'
        f'exec {sys.executable} "$@"\n'
    )
    late_python.chmod(0o755)
    job = jobs.submit(
        CHAIN, CHAIN_ARGS, 2, 1, "--partition=low", "--time=2", "--signal=B:USR1@120", python=str(late_python)
    )
    run_dir = root / CHAIN
    events: dict[str, Any] = {}
    deadline = time.monotonic() + 900
    while cluster.state(job) not in FINAL_STATES:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{CHAIN} did not finish: {cluster.job(job)}\n{jobs.log(CHAIN)[-3000:]}")
        fields = cluster.job(job)
        restarts, state = int(fields.get("Restarts", "0")), fields.get("JobState")
        if state == "PENDING" and restarts >= 1:
            if "time_limit" not in events:  # the warning did its work: no second one
                cluster.run("scontrol", "update", f"JobId={job}", "TimeLimit=30")
                events["time_limit"] = True
            # (no `StartTime=now`: within cred_expire of a requeue that makes the job non-startable)
        elif state == "RUNNING" and (logged := records_logged(run_dir, started_at(fields))) >= 2:
            if restarts == 1 and "usr1" not in events:
                cluster.run("scancel", "-b", "--signal=USR1", str(job))
                events["usr1"] = logged
            elif restarts == 2 and "preempted" not in events:
                cluster.sbatch("--partition=urgent", "--nodes=3", "--exclusive", "--wrap=sleep 2", cwd=root)
                events["preempted"] = logged
            elif restarts == 3 and "hang" not in events:
                frozen_node = job_nodes(cluster, job)[1]  # rank 1's node
                pids = cluster.node_pids(frozen_node, "train_gpt_gammapo.py")
                assert len(pids) == 1, pids
                os.kill(pids[0], signal.SIGSTOP)
                events["hang"] = {"node": frozen_node, "at": time.monotonic(), "logged": logged}
        if "hang" in events and "hang_ended" not in events and state != "RUNNING":
            events["hang_ended"] = time.monotonic() - events["hang"]["at"]
        time.sleep(0.5)
    events["state"] = cluster.state(job)
    events["sacct"] = cluster.sacct_states(job)
    return events


def test_interrupted_multi_node_job_equals_the_uninterrupted_run(multi, chain) -> None:
    jobs: MultiNodeJobs = multi["jobs"]
    assert chain["state"] == "COMPLETED", (chain, jobs.log(CHAIN)[-4000:])
    states = [line.split("|")[1] for line in chain["sacct"] if "." not in line.split("|")[0]]
    # time limit, USR1, hang: the batch script requeued; the preemption: SLURM did
    assert states == ["REQUEUED", "REQUEUED", "PREEMPTED", "REQUEUED", "COMPLETED"], chain["sacct"]
    assert_equal_runs(multi["root"] / CHAIN, multi["root"] / FAULT_REFERENCE_RUN, STEPS, exact=True)


def test_stop_requests_lose_no_step_and_faults_only_steps_since_the_checkpoint(multi, chain) -> None:
    runs = incarnations(multi["root"] / CHAIN)
    assert len(runs) == 5 and all(runs), runs
    log = multi["jobs"].log(CHAIN)
    assert log.count("stop requested (USR1)") == 2  # the time-limit warning and scancel -b
    for before, after in itertools.pairwise(runs[:3]):  # clean stops: the next run starts right after
        assert after[0] == before[-1] + 1, runs
    # checkpoints: every EVERY steps, and at each clean stop
    saved = sorted({*range(EVERY, STEPS + 1, EVERY), runs[0][-1] + 1, runs[1][-1] + 1})
    for before, after in itertools.pairwise(runs[2:]):  # preempted, hung: back to the newest checkpoint
        newest = [s for s in saved if s <= before[-1] + 1]  # (one cut off while being saved is set aside)
        assert after[0] in newest[-2:], (runs, saved)
    assert runs[-1][-1] == STEPS - 1


def test_a_hang_writes_stacks_names_the_frozen_rank_and_requeues(multi, chain) -> None:
    job = multi["jobs"].ids[CHAIN]
    assert chain["hang_ended"] <= 2 * HANG_TIMEOUT_S, chain
    hangs = multi["root"] / CHAIN / HANGS_DIR / f"{job}-3"
    stacks = (hangs / "rank0.txt").read_text()
    assert "Python stacks of all threads" in stacks
    assert "distributed_c10d.py" in stacks  # blocked in a collective, waiting for the frozen rank
    # (the frozen rank wrote nothing then; SLURM's teardown may wake it, with SIGCONT, to die)
    log = multi["jobs"].log(CHAIN)
    (line,) = [ln for ln in log.splitlines() if "hang: no training step completed" in ln]
    assert f"trainer.dpo.hang_timeout_s={HANG_TIMEOUT_S} s" in line
    assert f"rank 1 ({chain['hang']['node']}, last step " in line and "last step None" not in line
    assert (hangs / FAULT_MARKER).is_file()
    assert f"ended on a fault (exit {FAULT_EXIT_CODE})" in log or "ended on a fault" in log
    assert "requeueing job" in log


NODE_LOSS = "node_loss"


@pytest.fixture(scope="module")
def node_loss(multi, chain) -> dict[str, Any]:
    """A 2-node job whose second node's link is cut after its step-8 checkpoint; runs last (the node
    stays cut until the job has finished elsewhere, DESIGN §8)."""
    jobs: MultiNodeJobs = multi["jobs"]
    cluster, root = jobs.cluster, multi["root"]
    args = [*overrides(*FAULT_REFERENCE), f"trainer.dpo.collective_timeout_s={COLLECTIVE_TIMEOUT_S}"]
    job = jobs.submit(NODE_LOSS, args, 2, 1)
    run_dir = root / NODE_LOSS
    events: dict[str, Any] = {}
    deadline = time.monotonic() + 900
    try:
        while cluster.state(job) not in FINAL_STATES:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{NODE_LOSS} did not finish: {cluster.job(job)}\n{jobs.log(NODE_LOSS)[-3000:]}")
            fields = cluster.job(job)
            running = fields.get("JobState") == "RUNNING"
            if "cut" not in events and running and records_logged(run_dir, started_at(fields)) >= 2 * EVERY + 1:
                events["nodes"] = job_nodes(cluster, job)
                events["cut"] = time.time()
                cluster.node_action("cut-link", events["nodes"][1])
            if "cut" in events and "down" not in events and "down" in cluster.node_state(events["nodes"][1]):
                events["down"] = time.time() - events["cut"]
            if "cut" in events and fields.get("JobState") == "PENDING" and "excluded" not in events:
                # requeued (by SLURM, or by the batch script before slurmctld noticed the node): never
                # back onto the dead node, whichever came first (a real cluster's longer delays do that)
                cluster.run("scontrol", "update", f"JobId={job}", f"ExcNodeList={events['nodes'][1]}")
                events["excluded"] = True
            time.sleep(0.5)
        events["state"] = cluster.state(job)
        events["final_nodes"] = job_nodes(cluster, job)
        events["sacct"] = cluster.sacct_states(job)
        marker = run_dir / HANGS_DIR / f"{job}-0" / FAULT_MARKER
        events["fault_after_s"] = marker.stat().st_mtime - events["cut"] if marker.exists() else None
        events["fault"] = marker.read_text() if marker.exists() else ""
    finally:
        if "nodes" in events:  # back only > 60 s after it was lost (the conftest fixture says why)
            time.sleep(max(0.0, events["cut"] + 75 - time.time()))
            cluster.node_action("restore-link", events["nodes"][1])
    return events


def test_node_loss_requeues_onto_healthy_nodes_and_equals_the_uninterrupted_run(multi, node_loss) -> None:
    assert node_loss["state"] == "COMPLETED", (node_loss, multi["jobs"].log(NODE_LOSS)[-4000:])
    lost = node_loss["nodes"][1]
    assert lost not in node_loss["final_nodes"], node_loss
    states = [line.split("|")[1] for line in node_loss["sacct"] if "." not in line.split("|")[0]]
    assert len(states) == 2 and states[0] in ("NODE_FAIL", "REQUEUED") and states[1] == "COMPLETED", node_loss["sacct"]
    assert_equal_runs(multi["root"] / NODE_LOSS, multi["root"] / FAULT_REFERENCE_RUN, STEPS, exact=True)
    first, second = incarnations(multi["root"] / NODE_LOSS)
    saved = [s for s in range(EVERY, STEPS + 1, EVERY) if s <= first[-1] + 1]
    assert second[0] in saved[-2:], (first, second)  # the newest complete checkpoint: at most the steps since


def test_after_node_loss_the_survivors_wait_only_the_collective_timeout(node_loss) -> None:
    assert "lost a peer: a collective failed" in node_loss["fault"], node_loss
    assert node_loss["fault_after_s"] is not None and node_loss["fault_after_s"] <= COLLECTIVE_TIMEOUT_S + 15, node_loss


# ---------------------------------------------------------------- bad input
def test_bad_multi_node_input_stops_before_any_task(multi) -> None:
    jobs: MultiNodeJobs = multi["jobs"]
    cluster = jobs.cluster
    # a layout the tasks cannot hold: TP4 on 2 nodes × 1 task
    jobs.submit("bad_layout", [*BASE, "model.tensor_model_parallel_size=4"], 2, 1)
    # PYTHON missing on the nodes (host mode)
    jobs.submit("bad_python", BASE, 2, 1, python="/nonexistent/bin/python")
    for name in ("bad_layout", "bad_python"):
        fields = jobs.wait(name, 180)
        assert fields["JobState"] == "FAILED" and fields["ExitCode"] == "2:0", (fields, jobs.log(name))
        assert not list((multi["root"] / name / "slurm_logs").glob("*_restart0.log"))  # no training srun ran
    errors = [ln for ln in jobs.log("bad_layout").splitlines() if "error" in ln.lower()]
    assert len(errors) == 1 and errors[0].startswith("nemo-gammapo train: error: "), errors
    assert "trainer.num_nodes=2" in errors[0]
    (line,) = [ln for ln in jobs.log("bad_python").splitlines() if ln.startswith("gammapo: ")]
    assert re.search(r"PYTHON=/nonexistent/bin/python does not run on node\(s\) node\d node\d \(", line), line
    # more nodes than the partition has: sbatch refuses it, and so does launch, before submitting
    with pytest.raises(RuntimeError, match=r"Node count specification invalid|node configuration is not available"):
        jobs.submit("too_many", BASE, 4, 1)
    before = cluster.run("squeue", "-h", "-o", "%i")
    proc = subprocess.run(
        [sys.executable, "-m", "nemo_gammapo.cli", "launch", "slurm", "--nodes", "4", "--config-name", "tiny_cpu",
         f"run_dir={multi['root'] / 'too_many_launch'}", *BASE],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
        env={**cluster.env, "NEMORUN_HOME": str(multi["root"] / "nemo_run")},
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    (line,) = [ln for ln in proc.stderr.splitlines() if "error" in ln]
    assert line == "nemo-gammapo launch: error: --nodes 4: partition batch has 3 nodes", proc.stderr
    assert cluster.run("squeue", "-h", "-o", "%i") == before  # nothing submitted


# ---------------------------------------------------------------- the cluster script itself
def leftovers(directory: Path, prefix: str, munge_dir: str) -> list[str]:
    """What a stopped cluster left behind: namespaces, links, processes, mounts, the munge folder."""
    out = [
        f"namespace {ns}"
        for ns in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
        if ns.startswith(prefix)
    ]
    out += [
        f"link {line.split(':')[1].strip()}"
        for line in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout.splitlines()
        if prefix in line
    ]
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(directory) in cmdline or munge_dir in cmdline:
            out.append(f"process {proc.name}: {cmdline[:120]}")
    out += [f"mount {line}" for line in Path("/proc/mounts").read_text().splitlines() if str(directory) in line]
    if Path(munge_dir).exists():
        out.append(f"folder {munge_dir}")
    return out


def test_stop_leaves_nothing_behind_even_after_a_failed_start(tmp_path) -> None:
    from nemo_gammapo.testing import slurm

    if (reason := slurm.why_unavailable(2)) is not None:
        if os.environ.get(slurm.REQUIRE_ENV) == "1":
            pytest.fail(f"{slurm.REQUIRE_ENV}=1 but {reason}")
        pytest.skip(reason)
    script = str(slurm.CLUSTER_SCRIPT)
    broken = tmp_path / "bin"  # a slurmd that cannot start: everything before it is up by then
    broken.mkdir()
    (broken / "slurmd").write_text("#!/bin/sh\necho 'slurmd: fatal: broken on purpose' >&2\nexit 1\n")
    (broken / "slurmd").chmod(0o755)
    for case, env in (("a failed start", {"PATH": f"{broken}:{os.environ['PATH']}"}), ("a stop", {})):
        directory = tmp_path / case.replace(" ", "_")
        proc = subprocess.run(
            ["bash", script, "start", str(directory), "--nodes", "2"],
            capture_output=True, text=True, timeout=180, env={**os.environ, **env},
        )  # fmt: skip
        assert (proc.returncode != 0) == bool(env), proc.stderr[-2000:]
        conf = (directory / "slurm.conf").read_text()
        munge_dir = str(Path(conf.split("socket=")[1].split()[0]).parent)
        prefix = subprocess.run(["bash", script, "where", str(directory), "node1"], capture_output=True, text=True)
        if not env:
            assert prefix.returncode == 0 and SlurmCluster(directory, 2).node_state("node2") == "idle"
            subprocess.run(["bash", script, "stop", str(directory)], capture_output=True, timeout=120, check=True)
        # the namespaces are named from the folder: gpXXXX<n|v><i>
        name = "gp" + hashlib.md5(str(directory).encode()).hexdigest()[:4]
        assert leftovers(directory, name, munge_dir) == [], case
