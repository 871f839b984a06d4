"""Run-directory safety: one live run per ``run_dir``, and workers that never outlive their launcher.

**The lock.** Global rank 0 creates ``<run_dir>/.nemo_gammapo/lock.json`` atomically (``O_EXCL``)
with its host, PID, start time and SLURM job id, and refreshes its modification time every
``heartbeat_s`` seconds from a daemon thread. A second run finds the file and stops, naming the
holder. A lock is *stale* — and is taken over with a warning — when its holder is on this host and
its PID no longer exists, when its heartbeat is older than ``stale_after_s`` (a holder on another
node that died), or when it was taken by an earlier incarnation of this same SLURM job (same
``SLURM_JOB_ID``, another ``SLURM_RESTART_COUNT``: a requeued job may start on another node within
seconds). The lock lives in a subdirectory because NeMo's ``exp_manager`` moves every plain
file of the run directory into ``run_<N>/`` when a run resumes.

**Workers.** ``torchrun`` starts its workers in their own sessions, so killing only ``torchrun``
(``kill -9``) used to leave them training. :func:`exit_with_launcher` asks Linux to kill a worker
when the process that started it dies (``PR_SET_PDEATHSIG``). Stopping a job is then any of:
``kill <torchrun pid>`` (SIGTERM: torchrun stops its workers), ``kill -9 <torchrun pid>``, Ctrl-C, or
``scancel`` under SLURM. The worker's own helper processes (megatron's checkpoint writers and their
``multiprocessing`` manager, started with ``spawn``) die with the worker (:func:`die_with_parent`):
an orphaned helper would keep the task's output open and hold the SLURM step — and the allocation —
for a minute after the job was killed or preempted (the step waits for its I/O).
"""

from __future__ import annotations

import atexit
import ctypes
import json
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

from nemo_gammapo.aligner.errors import RunDirBusy

LOCK_DIR = ".nemo_gammapo"
LOCK_FILE = "lock.json"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunDirLock:
    """An exclusive, heartbeat-refreshed lock on a run directory (see the module docstring)."""

    def __init__(self, run_dir: str | Path, stale_after_s: float = 120.0, heartbeat_s: float = 20.0) -> None:
        self.path = Path(run_dir) / LOCK_DIR / LOCK_FILE
        self.stale_after_s, self.heartbeat_s = stale_after_s, heartbeat_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.held = False

    def holder(self) -> dict[str, Any] | None:
        """The current holder's record, or None when unlocked (an unreadable file counts as a holder)."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            record = json.loads(text)
        except json.JSONDecodeError:
            record = {}  # being written right now, or damaged: judged by its age alone
        return record if isinstance(record, dict) else {}

    def is_stale(self, record: dict[str, Any]) -> bool:
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return True
        if age > self.stale_after_s:
            return True
        job = os.environ.get("SLURM_JOB_ID")
        restart = os.environ.get("SLURM_RESTART_COUNT", "0")
        if job and record.get("slurm_job_id") == job and record.get("slurm_restart_count") != restart:
            return True  # a SLURM job runs once at a time: this lock is from before a requeue
        same_host = record.get("host") == socket.gethostname()
        return same_host and isinstance(record.get("pid"), int) and not _pid_alive(record["pid"])

    def _busy(self, record: dict[str, Any]) -> RunDirBusy:
        job = f", SLURM job {record['slurm_job_id']}" if record.get("slurm_job_id") else ""
        return RunDirBusy(
            f"run_dir {self.path.parent.parent} is in use by another run (host {record.get('host', '?')}, "
            f"PID {record.get('pid', '?')}{job}, since {record.get('started', '?')}); stop it first, or "
            f"choose another run_dir. Lock file: {self.path}"
        )

    def check_free(self) -> None:
        """Raise :class:`RunDirBusy` if a live run holds the lock (a launcher's early look; takes nothing)."""
        record = self.holder()
        if record is not None and not self.is_stale(record):
            raise self._busy(record)

    def acquire(self, warn: Any = print) -> None:
        """Take the lock or raise :class:`RunDirBusy` naming the live holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "slurm_restart_count": os.environ.get("SLURM_RESTART_COUNT", "0"),
        }
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                record = self.holder()
                if record is None:
                    continue  # released in between: try again
                if record.get("host") == me["host"] and record.get("pid") == me["pid"]:
                    break  # this process already holds it (a second run in the same process)
                if not self.is_stale(record):
                    raise self._busy(record) from None
                warn(f"WARNING: taking over the stale lock {self.path} of {record or 'an unreadable record'}")
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(me, f)
            break
        else:
            raise RunDirBusy(f"could not take the lock {self.path}: another run took it at the same time")
        self.held = True
        self._stop.clear()
        self._thread = threading.Thread(target=self._heartbeat, name="run-dir-lock", daemon=True)
        self._thread.start()
        atexit.register(self.release)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                os.utime(self.path)
            except FileNotFoundError:
                return

    def release(self) -> None:
        """Give the lock up (idempotent); only the holder removes the file."""
        if not self.held:
            return
        self.held = False
        self._stop.set()
        record = self.holder()
        if record and record.get("pid") == os.getpid() and record.get("host") == socket.gethostname():
            self.path.unlink(missing_ok=True)


PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_gone: Any) -> bool:
    """Ask Linux for SIGKILL when the parent dies (``PR_SET_PDEATHSIG``); True if armed. If
    ``parent_gone()`` already, the parent died before the request took effect: die now.
    A no-op where ``prctl`` is unavailable (not Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if parent_gone():
        os.kill(os.getpid(), signal.SIGKILL)
    return True


def exit_with_launcher() -> bool:
    """Have Linux kill this process (SIGKILL) when its parent — ``torchrun`` — dies; True if armed.

    Only under ``torchrun`` (``TORCHELASTIC_RUN_ID`` set): under SLURM, ``slurmstepd`` already
    owns the task's processes.
    """
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return False
    return _die_with_parent(lambda: os.getppid() == 1)


def die_with_parent() -> bool:
    """In a ``multiprocessing`` child of a training worker: die (SIGKILL) when the worker dies; True if armed.

    Linux delivers the signal when the *thread* that started the child exits; the helpers here are
    started from the worker's main thread (megatron's checkpoint save runs in the training loop).
    """
    import multiprocessing

    parent = multiprocessing.parent_process()
    if parent is None:
        return False
    return _die_with_parent(lambda: not parent.is_alive())
