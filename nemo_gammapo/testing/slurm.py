"""A real single-node SLURM cluster for tests (``scripts/slurm_cluster.sh``), and small job helpers.

Tests reach it through the ``slurm_cluster`` fixture (``tests/conftest.py``). Where the cluster
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
DAEMONS = ("munged", "slurmctld", "slurmd", "slurmdbd", "mariadbd", "sbatch", "sacct")


def why_unavailable() -> str | None:
    """Why this machine cannot run the test cluster, or None if it can."""
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
    return None


class SlurmCluster:
    """A running cluster in ``directory``; every command here talks to it (``SLURM_CONF``)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.env = {**os.environ, "SLURM_CONF": str(self.directory / "slurm.conf")}

    @classmethod
    def start(cls, directory: Path) -> SlurmCluster:
        proc = subprocess.run(
            ["bash", str(CLUSTER_SCRIPT), "start", str(directory)], capture_output=True, text=True, timeout=180
        )
        if proc.returncode != 0:
            raise RuntimeError(f"the test SLURM cluster did not start:\n{proc.stdout}{proc.stderr}")
        return cls(directory)

    def stop(self) -> None:
        subprocess.run(["bash", str(CLUSTER_SCRIPT), "stop", str(self.directory)], capture_output=True, timeout=120)

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

    def restart_now_if_requeued(self, job_id: int) -> None:
        """A requeued job waits for its BeginTime; let it start at once (tests only)."""
        fields = self.job(job_id)
        if fields.get("JobState") == "PENDING" and fields.get("Reason") == "BeginTime":
            try:
                self.run("scontrol", "update", f"JobId={job_id}", "StartTime=now")
            except RuntimeError:
                pass  # it may have started meanwhile

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
        """Until the job has ended for good (COMPLETED, FAILED, ...), starting any requeue at once."""

        def done(fields: dict[str, str]) -> bool:
            self.restart_now_if_requeued(job_id)
            return fields.get("JobState") in FINAL_STATES

        return self.wait(job_id, done, timeout_s, "the end of the job")

    def sacct_states(self, job_id: int) -> list[str]:
        """Accounting's record of the job (one state per incarnation's batch step and the job)."""
        out = self.run("sacct", "-n", "-P", "-D", "-j", str(job_id), "--format=JobID,State")
        return [line for line in out.splitlines() if line.strip()]
