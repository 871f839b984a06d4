"""A clean stop on request: finish the current step, write a checkpoint, exit 0.

Two ways to ask, both answered after the current training step:

* the **stop file** ``<run_dir>/.nemo_gammapo/stop_requested`` (:func:`request_stop` writes it). This
  is what the SLURM batch scripts use on a time-limit warning or ``scancel -b --signal=USR1``: a
  file cannot kill a task that has not started Python yet, whereas a forwarded signal can. Global
  rank 0 looks for it once per step (one ``stat``), and deletes it once the stop is agreed;
* ``SIGUSR1`` to any worker (``kill -USR1``). The training entry point catches it from its first
  line (:func:`catch_early`), so a signal during start-up is kept, not fatal.

The local answers are combined over all ranks once per step, in the all-reduce the non-finite guard
already makes (:mod:`nemo_gammapo.aligner.finite_guard`), so every rank stops after the same step;
NeMo-Aligner's loop then runs its time-limit path: validate, save, return. The process exits 0 and
re-running the same command resumes from that checkpoint.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGUSR1,)
STOP_FILE = Path(".nemo_gammapo") / "stop_requested"  # relative to the run_dir

_early_signal = False  # a stop signal that arrived before StopRequest.install()


def stop_file(run_dir: str | Path) -> Path:
    """The file whose existence asks the run in ``run_dir`` to stop cleanly after its current step."""
    return Path(run_dir) / STOP_FILE


def request_stop(run_dir: str | Path, reason: str = "") -> Path:
    """Ask the run in ``run_dir`` (running or about to start) to stop after its current step."""
    path = stop_file(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(reason + "\n" if reason else "")
    return path


def _remember_early(signum: int, frame: FrameType | None) -> None:
    global _early_signal
    _early_signal = True


def catch_early() -> None:
    """Keep a stop signal that arrives while the worker starts (the default action would kill it)."""
    if threading.current_thread() is threading.main_thread():
        for sig in STOP_SIGNALS:
            signal.signal(sig, _remember_early)


class StopRequest:
    """This rank's request (a signal, or the stop file) and the value all ranks agreed on (``agreed``).

    ``watch``: the stop file this rank looks for (global rank 0 only; ``None`` on the others).
    """

    def __init__(self, watch: Path | None = None) -> None:
        self.local = False  # set by a stop signal
        self.agreed = False
        self.watch = watch
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.local = True

    def requested_here(self) -> bool:
        """Has this rank been asked to stop (signal, or the stop file exists)? Called once per step."""
        return self.local or (self.watch is not None and self.watch.exists())

    def consume(self) -> None:
        """The stop was honoured: delete the stop file so the next run of the same command trains on."""
        if self.watch is not None:
            try:
                os.unlink(self.watch)
            except FileNotFoundError:
                pass

    def install(self) -> bool:
        """Catch the stop signals (only possible in the main thread); True if installed.

        A signal that :func:`catch_early` kept during start-up counts as this request's.
        """
        global _early_signal
        if threading.current_thread() is not threading.main_thread():
            return False
        self.local = self.local or _early_signal
        _early_signal = False
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return True

    def uninstall(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()
