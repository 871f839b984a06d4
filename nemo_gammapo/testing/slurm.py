"""A real SLURM cluster for tests (``scripts/slurm_cluster.sh``), and small job helpers.

Tests reach it through the ``slurm_cluster`` (one node) and ``slurm_nodes`` (three nodes, each a
network namespace) fixtures of ``tests/conftest.py``. Where the cluster
cannot start (not root, packages missing) the fixture skips with the reason — unless
``GAMMAPO_REQUIRE_SLURM=1`` (set by ``.ci/run``), where it fails: CI never passes without them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_SCRIPT = ROOT / "scripts" / "slurm_cluster.sh"
REQUIRE_ENV = "GAMMAPO_REQUIRE_SLURM"
FINAL_STATES = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")
DAEMONS = ("munged", "slurmctld", "slurmd", "slurmdbd", "mariadbd", "sbatch", "sacct")  # and their clients


def why_unavailable(nodes: int = 1) -> str | None:
    """Why this machine cannot run a test cluster of ``nodes`` nodes, or None if it can."""
    if not CLUSTER_SCRIPT.is_file():
        return f"{CLUSTER_SCRIPT} is missing (not a source checkout)"
    if os.geteuid() != 0:
        return "the test SLURM cluster needs root"
    missing = [d for d in DAEMONS if shutil.which(d) is None and not Path("/usr/sbin", d).exists()]
    if missing:
        return (
            f"SLURM packages missing ({', '.join(missing)}): "
            "apt-get install munge slurmctld slurmd slurm-client slurmdbd mariadb-server"
        )
    if nodes > 1:
        missing = [tool for tool in ("ip", "nsenter", "unshare") if shutil.which(tool) is None]
        if missing:
            return (
                f"{', '.join(missing)} missing (apt-get install iproute2 util-linux): the nodes are network namespaces"
            )
    return None


class SlurmCluster:
    """A running cluster in ``directory``; every command here talks to it (``SLURM_CONF``)."""

    def __init__(self, directory: Path, nodes: int = 1) -> None:
        self.directory = Path(directory)
        self.nodes = nodes
        self.env = {**os.environ, "SLURM_CONF": str(self.directory / "slurm.conf")}

    @classmethod
    def start(cls, directory: Path, nodes: int = 1, env: dict[str, str] | None = None) -> SlurmCluster:
        """Start it (``nodes`` > 1: node1..nodeN in network namespaces); ``env``: e.g. ``REQUEUE_DELAY``."""
        argv = ["bash", str(CLUSTER_SCRIPT), "start", str(directory)] + (["--nodes", str(nodes)] if nodes > 1 else [])
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=180, env={**os.environ, **(env or {})})
        if proc.returncode != 0:
            raise RuntimeError(f"the test SLURM cluster did not start:\n{proc.stdout}{proc.stderr}")
        return cls(directory, nodes)

    def stop(self) -> None:
        subprocess.run(["bash", str(CLUSTER_SCRIPT), "stop", str(self.directory)], capture_output=True, timeout=120)

    def node_action(self, action: str, *args: str) -> None:
        """``kill-node`` / ``start-node`` / ``cut-link`` / ``restore-link`` NODE, or ``hosts`` on|off."""
        proc = subprocess.run(
            ["bash", str(CLUSTER_SCRIPT), action, str(self.directory), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"slurm_cluster.sh {action} {' '.join(args)}: {proc.stderr.strip()}")

    def node_state(self, node: str) -> str:
        """SLURM's state of ``node`` (``idle``, ``allocated``, ``down*``, ...)."""
        return self.run("sinfo", "-h", "-N", "-n", node, "-o", "%T").split("\n")[0].strip()

    def where(self, node: str) -> tuple[str, str]:
        """``node``'s network namespace and the root-namespace side of its veth pair."""
        proc = subprocess.run(
            ["bash", str(CLUSTER_SCRIPT), "where", str(self.directory), node],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr.strip())
        namespace, link = proc.stdout.split()
        return namespace, link

    def node_pids(self, node: str, pattern: str) -> list[int]:
        """PIDs of the processes on ``node`` (its network namespace) whose command line contains ``pattern``."""
        namespace, _ = self.where(node)
        pids = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True).stdout.split()
        out = []
        for pid in pids:
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if pattern in cmdline:
                out.append(int(pid))
        return out

    def link_bytes(self, node: str) -> int:
        """Bytes ``node``'s link has carried so far, both ways."""
        stats = Path("/sys/class/net") / self.where(node)[1] / "statistics"
        return int((stats / "rx_bytes").read_text()) + int((stats / "tx_bytes").read_text())

    def run(self, *argv: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
        """A SLURM client command (``sbatch``, ``scontrol``, ...); its stdout, or RuntimeError."""
        proc = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=60, env={**self.env, **(env or {})}, cwd=cwd
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()}")
        return proc.stdout

    def sbatch(self, *argv: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> int:
        """Submit; the job id."""
        return int(self.run("sbatch", "--parsable", *argv, env=env, cwd=cwd).strip().split(";")[0])

    def job(self, job_id: int) -> dict[str, str]:
        """``scontrol show job`` as a dict (``JobState``, ``Restarts``, ...); {} once forgotten."""
        try:
            text = self.run("scontrol", "-o", "show", "job", str(job_id))
        except RuntimeError:
            return {}
        fields: dict[str, str] = {}
        for token in text.split():
            key, sep, value = token.partition("=")
            if sep:
                fields[key] = value
        return fields

    def state(self, job_id: int) -> str:
        return self.job(job_id).get("JobState", "UNKNOWN")

    def wait(
        self,
        job_id: int,
        until: Callable[[dict[str, str]], bool],
        timeout_s: float,
        what: str,
        poll_s: float = 0.5,
    ) -> dict[str, str]:
        """Poll the job until ``until(fields)``; the fields then. TimeoutError names ``what``."""
        deadline = time.monotonic() + timeout_s
        while True:
            fields = self.job(job_id)
            if until(fields):
                return fields
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id}: {what} not reached in {timeout_s:.0f} s (last: {fields})")
            time.sleep(poll_s)

    def wait_done(self, job_id: int, timeout_s: float) -> dict[str, str]:
        """Until the job has ended for good (COMPLETED, FAILED, ...).

        A requeued job waits ``REQUEUE_DELAY`` (cred_expire) before it may start again; it is not
        hurried: ``scontrol update StartTime=now`` inside that window revokes its credential and the
        job ends FAILED ("Job credential revoked", docs/cluster.md §9).
        """

        def done(fields: dict[str, str]) -> bool:
            return fields.get("JobState") in FINAL_STATES

        return self.wait(job_id, done, timeout_s, "the end of the job")

    def sacct_states(self, job_id: int) -> list[str]:
        """Accounting's record of the job (one state per incarnation's batch step and the job)."""
        out = self.run("sacct", "-n", "-P", "-D", "-j", str(job_id), "--format=JobID,State")
        return [line for line in out.splitlines() if line.strip()]


# ---------------------------------------------------------------- what a job's run directory holds
def incarnations(run_dir: Path) -> list[list[int]]:
    """The training steps (0-based) each incarnation of a job logged, oldest first."""
    from nemo_gammapo.artifacts.metrics import metrics_files, read_metrics_file

    return [[r["step"] for r in read_metrics_file(p) if "train/loss" in r] for p in metrics_files(run_dir)]


def losses(run_dir: Path) -> tuple[dict[int, float], dict[int, float]]:
    """Per-step training and validation losses over every incarnation of a run."""
    from nemo_gammapo.artifacts.metrics import read_history

    history = read_history(run_dir)
    train = {r["step"]: r["train/loss"] for r in history if "train/loss" in r}
    val = {r["step"]: r["val/loss"] for r in history if "val/loss" in r}
    return train, val


def final_queue(run_dir: Path, steps: int) -> dict:
    """The margin-queue state in the run's ``-last`` checkpoint after ``steps`` steps."""
    import torch

    from nemo_gammapo.aligner.model import CHECKPOINT_KEY

    (last,) = [
        p for p in (run_dir / "checkpoints").iterdir() if f"step={steps}-" in p.name and p.name.endswith("-last")
    ]
    return torch.load(last / "common.pt", weights_only=False)[CHECKPOINT_KEY]
