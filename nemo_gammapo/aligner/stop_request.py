"""A clean stop on request: finish the current step, write a checkpoint, exit 0.

``SIGUSR1`` to any worker (``kill -USR1``, ``scancel -b --signal=USR1`` forwarded by a batch script,
a scheduler's time-limit warning) sets a local flag. The flag is combined over all ranks once per
step, in the all-reduce the non-finite guard already makes (:mod:`nemo_gammapo.aligner.finite_guard`),
so every rank stops after the same step; NeMo-Aligner's loop then runs its time-limit path: validate,
save, return. The job exits 0 and re-running the same command resumes from that checkpoint.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGUSR1,)


class StopRequest:
    """The flag a signal sets (``local``) and the value all ranks agreed on after a step (``agreed``)."""

    def __init__(self) -> None:
        self.local = False
        self.agreed = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.local = True

    def install(self) -> bool:
        """Catch the stop signals (only possible in the main thread); True if installed."""
        if threading.current_thread() is not threading.main_thread():
            return False
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return True

    def uninstall(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()
