"""Hangs end the job instead of holding the allocation: a per-rank watchdog on training progress.

``trainer.dpo.hang_timeout_s`` (seconds; ``null`` disables): when this rank sees no progress — a
completed training step, validation or checkpoint save — for that long, it

1. writes the Python stacks of all its threads (``faulthandler``) to
   ``<run_dir>/hangs/<job>-<restart>/rank<R>.txt``;
2. looks at every rank's progress file (``<run_dir>/.nemo_gammapo/progress/rank<R>.json``, refreshed
   by each rank's watchdog thread every few seconds with its last step and host): a rank whose file
   stopped being refreshed has *stopped reporting* (frozen, killed, or its node is gone);
3. the lowest-numbered rank still reporting prints one line naming the step, the ranks that stopped
   reporting and their hosts, and every live rank exits with :data:`FAULT_EXIT_CODE`, which the
   SLURM batch scripts answer with a requeue (``examples/slurm/common.sh``, bounded by
   ``MAX_RESTARTS``); the restart resumes from the newest complete checkpoint.

The clock starts at this incarnation's first completed step, so start-up, checkpoint loading and the
first step (compilation, autotuning, allocator warm-up) are never timed: a run whose first step is
longer than the timeout is not killed. After that the timeout must exceed the longest gap between
two progress marks: a step, a validation pass, a checkpoint save.

Nothing here runs in the training loop's path beyond setting two Python attributes per mark; the
file writes happen on the watchdog's own daemon thread, which also keeps running while the main
thread is blocked in a collective — that is what tells a live-but-waiting rank from a frozen one.
"""

from __future__ import annotations

import faulthandler
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

FAULT_EXIT_CODE = 75  # EX_TEMPFAIL: a hang or a lost peer; the batch scripts requeue (user errors are 2/3/4)
PROGRESS_DIR = Path(".nemo_gammapo") / "progress"  # relative to the run_dir
HANGS_DIR = "hangs"
FAULT_MARKER = "FAULT"  # in hang_dir(): the one-line reason; the batch scripts requeue when they find it


def end_helpers() -> None:
    """SIGKILL this worker's other processes (its process group: checkpoint writers, their manager,
    multiprocessing's resource tracker) before it ends itself: a helper left behind keeps the task's
    output open and SLURM's step waits for it (60 s) before the job can be requeued."""
    import signal

    me, group = os.getpid(), os.getpgrp()
    if group != me:
        return  # not a process-group leader (a launcher's group): leave the other processes alone
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            pid = int(proc.name)
            if pid != me and os.getpgid(pid) == group:
                os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError):
            continue


def incarnation() -> str:
    """``<job>-<restart>``: the SLURM job id and restart count (``local-0`` outside SLURM)."""
    job = os.environ.get("SLURM_JOB_ID") or os.environ.get("TORCHELASTIC_RUN_ID") or "local"
    restart = os.environ.get("SLURM_RESTART_COUNT") or os.environ.get("TORCHELASTIC_RESTART_COUNT") or "0"
    return f"{job}-{restart}"


def hang_dir(run_dir: str | Path) -> Path:
    """Where this incarnation's ranks write their stacks on a hang."""
    return Path(run_dir) / HANGS_DIR / incarnation()


def record_fault(run_dir: str | Path, line: str) -> Path:
    """Write the fault marker the batch scripts look for (``srun``'s own exit code mixes the ranks').

    The first rank to record wins (a rank killed while the marker is written never leaves it empty:
    it is written aside and moved into place).
    """
    out = hang_dir(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    marker = out / FAULT_MARKER
    if not marker.exists():
        tmp = out / f".{FAULT_MARKER}.{os.getpid()}"
        tmp.write_text(line + "\n")
        try:
            os.link(tmp, marker)  # fails if another rank recorded first
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    return marker


class HangWatchdog:
    """One per rank. ``mark(step)`` after each completed step / validation / save; ``start()`` once.

    ``exit``: how the process ends on a hang (``os._exit``; a test may pass its own).
    """

    def __init__(
        self,
        run_dir: str | Path,
        timeout_s: float | None,
        rank: int,
        world_size: int,
        exit: Any = os._exit,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.timeout_s = None if timeout_s is None else float(timeout_s)
        self.rank, self.world_size = rank, world_size
        self.heartbeat_s = 10.0 if self.timeout_s is None else max(0.5, min(10.0, self.timeout_s / 12))
        self.exit = exit
        self.step: int | None = None  # the last completed step this incarnation (None: not armed yet)
        self.last_mark = time.monotonic()
        self.host = socket.gethostname()
        self._stop = threading.Event()
        self._armed = threading.Event()  # set by the first mark: the thread then reports at once
        self._thread: threading.Thread | None = None
        self.fired = False

    @property
    def enabled(self) -> bool:
        return self.timeout_s is not None

    def progress_file(self, rank: int) -> Path:
        return self.run_dir / PROGRESS_DIR / f"rank{rank}.json"

    def mark(self, step: int) -> None:
        """Progress: ``step`` training steps are complete (also after a validation or a save)."""
        self.step, self.last_mark = step, time.monotonic()
        if not self._armed.is_set():
            self._armed.set()

    def start(self) -> None:
        if not self.enabled or self._thread is not None:
            return
        self.progress_file(self.rank).parent.mkdir(parents=True, exist_ok=True)
        self._write_progress()
        self._thread = threading.Thread(target=self._watch, name="hang-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._armed.set()
        if self._thread is not None:
            self._thread.join(timeout=self.heartbeat_s + 5)
            self._thread = None

    def _write_progress(self) -> None:
        path = self.progress_file(self.rank)
        record = {"rank": self.rank, "host": self.host, "pid": os.getpid(), "step": self.step, "time": time.time()}
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        try:
            tmp.write_text(json.dumps(record))
            os.replace(tmp, path)
        except OSError:
            pass  # a full or flaky filesystem must not kill training; the next beat tries again

    def _watch(self) -> None:
        self._armed.wait()  # the first step: report it now (its peers may freeze before the next beat)
        while not self._stop.is_set():
            self._write_progress()
            if self._stop.wait(self.heartbeat_s):
                return
            if self.step is not None and time.monotonic() - self.last_mark > self.timeout_s:
                self._fire()
                return

    def peers(self) -> dict[int, dict[str, Any]]:
        """Every rank's last progress record, with ``age_s`` (seconds since its file was refreshed)."""
        out: dict[int, dict[str, Any]] = {}
        now = time.time()
        for rank in range(self.world_size):
            path = self.progress_file(rank)
            try:
                record = json.loads(path.read_text())
                record["age_s"] = now - path.stat().st_mtime
            except (OSError, ValueError):
                record = {"rank": rank, "host": "?", "step": None, "age_s": float("inf")}
            out[rank] = record
        return out

    def stopped_reporting(self, peers: dict[int, dict[str, Any]]) -> list[int]:
        """Ranks whose progress file has not been refreshed for three heartbeats."""
        return sorted(r for r, rec in peers.items() if rec["age_s"] > 3 * self.heartbeat_s)

    def _fire(self) -> None:
        self.fired = True
        out = hang_dir(self.run_dir)
        out.mkdir(parents=True, exist_ok=True)
        stacks = out / f"rank{self.rank}.txt"
        with open(stacks, "w") as f:
            f.write(
                f"rank {self.rank} on {self.host} (pid {os.getpid()}): no training progress for "
                f"{time.monotonic() - self.last_mark:.0f} s after step {self.step} "
                f"(trainer.dpo.hang_timeout_s={self.timeout_s:g}); Python stacks of all threads:\n"
            )
            f.flush()
            faulthandler.dump_traceback(file=f, all_threads=True)
        # Give the other live ranks (whose clocks started within a step of ours) time to write theirs.
        deadline = time.monotonic() + 3 * self.heartbeat_s
        while time.monotonic() < deadline:
            self._write_progress()
            peers = self.peers()
            stopped = self.stopped_reporting(peers)
            live = [r for r in peers if r not in stopped]
            if all((out / f"rank{r}.txt").exists() for r in live):
                break
            time.sleep(min(1.0, self.heartbeat_s))
        peers = self.peers()
        stopped = self.stopped_reporting(peers)
        live = [r for r in peers if r not in stopped] or [self.rank]
        if self.rank == min(live):
            if stopped:
                who = ", ".join(
                    f"rank {r} ({peers[r].get('host', '?')}, last step {peers[r].get('step')})" for r in stopped
                )
                what = f"ranks that stopped reporting progress: {who}"
            else:
                what = "every rank is still reporting: all are blocked (a stuck collective, filesystem or device)"
            line = (
                f"nemo-gammapo train: hang: no training step completed within trainer.dpo.hang_timeout_s="
                f"{self.timeout_s:g} s after step {self.step}; {what}; Python stacks in {out}; "
                f"exiting with code {FAULT_EXIT_CODE} (the SLURM scripts requeue and resume from the newest checkpoint)"
            )
            record_fault(self.run_dir, line)
            print(line, file=sys.stderr, flush=True)
        if self.exit is os._exit:
            end_helpers()
        self.exit(FAULT_EXIT_CODE)


_PEER_FAILURE_TEXT = ("Timed out waiting", "Connection closed by peer", "Connection reset by peer", "Broken pipe")


def is_peer_failure(error: BaseException) -> bool:
    """A collective that failed because a peer is gone or silent (timeout, closed connection)."""
    import torch.distributed as dist

    if isinstance(error, getattr(dist, "DistError", ())):
        return True
    return isinstance(error, RuntimeError) and any(text in str(error) for text in _PEER_FAILURE_TEXT)


def exit_on_peer_failure(run_dir: str | Path, error: BaseException, rank: int) -> None:
    """Report a lost peer (traceback, then one line), record the fault and end the process at once.

    ``os._exit``: a normal exit would tear down process groups whose peers are gone, and can hang.
    """
    import traceback

    traceback.print_exception(error, file=sys.stderr)
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    line = (
        f"nemo-gammapo train: lost a peer: a collective failed on rank {rank} ({socket.gethostname()}): "
        f"{first}; exiting with code {FAULT_EXIT_CODE} "
        "(the SLURM scripts requeue and resume from the newest checkpoint)"
    )
    try:
        record_fault(run_dir, line)
    except OSError:
        pass
    print(line, file=sys.stderr, flush=True)
    sys.stdout.flush()
    end_helpers()
    os._exit(FAULT_EXIT_CODE)
