"""NeMo-Aligner's ``DPOTrainer`` with a non-finite guard: a NaN/inf step stops the run, unsaved.

After every training step the loss and the gradient norm (host floats NeMo-Aligner already has;
the norm only when gradient clipping computes one) are checked, and after every validation the
validation loss. The verdict is all-reduced once per step — one tiny collective, no extra host sync
per micro-batch — so every rank stops at the same step. The check runs before
NeMo-Aligner's save of that step, so no checkpoint of a non-finite model is written and resume
(:mod:`nemo_gammapo.aligner.checkpoints`) picks the last good one. The same all-reduce agrees on a
stop request (:mod:`nemo_gammapo.aligner.stop_request`). Each completed step, validation and save
is a progress mark for the hang watchdog (:mod:`nemo_gammapo.aligner.hang_watchdog`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from nemo_aligner.algorithms.dpo import DPOTrainer

from nemo_gammapo.aligner.checkpoints import newest_complete
from nemo_gammapo.aligner.errors import NonFiniteTraining
from nemo_gammapo.aligner.hang_watchdog import HangWatchdog
from nemo_gammapo.aligner.stop_request import StopRequest


def _finite(value: Any) -> bool:
    return value is None or math.isfinite(float(value))


class GuardedDPOTrainer(DPOTrainer):
    """``DPOTrainer`` that raises :class:`NonFiniteTraining` on every rank at the first bad step."""

    def __init__(
        self,
        *args: Any,
        checkpoint_dir: Path,
        stop_request: StopRequest | None = None,
        watchdog: HangWatchdog | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.checkpoint_dir = Path(checkpoint_dir)
        self.stop_request = stop_request or StopRequest()
        self.watchdog = watchdog

    def _agree(self, *values: Any) -> bool:
        """All values finite on every rank? Also agrees on a stop request (one all-reduce)."""
        flags = [float(not all(_finite(v) for v in values)), float(self.stop_request.requested_here())]
        agreed = torch.tensor(flags, device=torch.cuda.current_device())
        torch.distributed.all_reduce(agreed, op=torch.distributed.ReduceOp.MAX)
        bad, stop = agreed.tolist()
        self.stop_request.agreed = self.stop_request.agreed or bool(stop)
        return not bad

    def _stop(self, step: int, what: str) -> None:
        """Raise naming the step (counted like checkpoint names: ``step=N`` is after N steps)."""
        last = newest_complete(self.checkpoint_dir)
        where = (
            f"the last good checkpoint is {last.path} (step {last.step}); re-running the same command resumes from it"
            if last is not None
            else "no checkpoint had been written yet"
        )
        raise NonFiniteTraining(
            f"non-finite training at step {step}: {what}; stopped before saving it — {where}. "
            "Lower model.optim.lr or check the data"
        )

    def train_single_step(self, global_batch: Any) -> tuple[float, dict[str, Any]]:
        loss, metrics = super().train_single_step(global_batch)
        grad_norm = metrics.get("grad_norm")
        if not self._agree(loss, grad_norm):
            self._stop(self.step + 1, f"train loss={loss}, grad_norm={grad_norm}")
        self._progress(self.step + 1)
        return loss, metrics

    def run_validation(self) -> tuple[float, dict[str, Any]]:
        loss, metrics = super().run_validation()
        if not self._agree(loss):
            self._stop(self.step, f"validation loss={loss}")  # fit() has already counted the step
        self._progress(self.step)
        return loss, metrics

    def save(self, *args: Any, **kwargs: Any) -> None:
        super().save(*args, **kwargs)
        self._progress(self.step)

    def _progress(self, step: int) -> None:
        if self.watchdog is not None:
            self.watchdog.mark(step)
