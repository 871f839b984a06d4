"""Invariance-test workers: the layout runner plus validation passes and distributed checkpoints.

:class:`~nemo_gammapo.bench.layout_run.LayoutRun` trains the tiny GPT under one TP/PP/DP layout
(every layout sees the same global micro-batches); :class:`InvarianceRun` adds what only the tests
compare — a forward-only validation pass, a megatron distributed checkpoint round trip and the
margin-queue state. The ``*_worker`` functions run under
:func:`~nemo_gammapo.distributed.process_groups.run_on_ranks`.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing, parallel_state

from nemo_gammapo.bench.layout_run import Layout, LayoutRun, RunSpec, rank_microbatches, synthetic_step
from nemo_gammapo.distributed.checkpoint import broadcast_from_last_stage
from nemo_gammapo.distributed.gamma_loss import reduce_step_metrics


class InvarianceRun(LayoutRun):
    """A :class:`LayoutRun` that can also validate, save and load a checkpoint, and show its queue."""

    def validation_step(self) -> dict[str, float] | None:
        """A forward-only pass over the next step's data that must not touch the queue."""
        data = synthetic_step(self.spec, self.cfg, 1000 + self.step_index)
        mbs = rank_microbatches(data, self.spec, self.dp, parallel_state.get_data_parallel_rank())
        self.loss.eval()
        with torch.no_grad():
            per_mb = self._run_schedule(mbs, forward_only=True)
        self.loss.train()
        return reduce_step_metrics(per_mb) if self.is_last_stage else None

    # ------------------------------------------------------------------ checkpoints
    def _sharded_state(self) -> dict[str, Any]:
        return {"model": self.model.sharded_state_dict(prefix="model.")}

    def save(self, ckpt_dir: Path) -> None:
        """Real megatron distributed checkpoint; the γ-PO state goes into the common part."""
        state = self._sharded_state()
        state["gamma_po"] = broadcast_from_last_stage(self.loss.state_dict())
        state["step"] = self.step_index
        if dist.get_rank() == 0:
            ckpt_dir.mkdir(parents=True, exist_ok=True)
        dist.barrier()
        dist_checkpointing.save(state, str(ckpt_dir))

    def load(self, ckpt_dir: Path) -> None:
        """Restore the model, the γ-PO state and the step counter from :meth:`save`'s checkpoint."""
        state = self._sharded_state()
        loaded = dist_checkpointing.load(state, str(ckpt_dir))
        self.model.load_state_dict(
            {k[len("model.") :]: v for k, v in loaded["model"].items() if k.startswith("model.")}, strict=False
        )
        self.loss.load_state_dict(loaded["gamma_po"])
        self.step_index = int(loaded["step"])

    def queue_state(self) -> dict[str, Any] | None:
        """The margin policy's state (queue contents, sampling state), as checkpointed."""
        return self.loss.state_dict()["policy"]


def _rank_summary(run: InvarianceRun) -> dict[str, Any]:
    return {
        "tp_rank": parallel_state.get_tensor_model_parallel_rank(),
        "pp_rank": parallel_state.get_pipeline_model_parallel_rank(),
        "dp_rank": parallel_state.get_data_parallel_rank(),
        "last_stage": run.is_last_stage,
    }


def train_layouts_worker(
    rank: int, world_size: int, jobs: list[dict[str, Any]], validate_after: int | None = None
) -> dict[str, Any]:
    """Harness worker: run each job (``{"layout": {...}, "spec": {...}}``) in turn.

    Returns, keyed ``"<loss>/<layout name>"``, this rank's coordinates, per-step records and
    final queue state. With ``validate_after = k`` a validation pass runs after step ``k`` and
    the queue state just before and after it is recorded.
    """
    out: dict[str, Any] = {}
    for job in jobs:
        layout, run_spec = Layout(**job["layout"]), RunSpec(**job["spec"])
        run = InvarianceRun(layout, run_spec)
        steps = []
        extra: dict[str, Any] = {}
        for step in range(run_spec.steps):
            steps.append(run.train_step())
            if validate_after == step:
                extra["queue_before_validation"] = run.queue_state()
                extra["validation_metrics"] = run.validation_step()
                extra["queue_after_validation"] = run.queue_state()
        key = f"{run_spec.loss_name}/{layout.name(world_size)}"
        out[key] = {**_rank_summary(run), "steps": steps, "queue": run.queue_state(), **extra}
        run.close()
    return out


def checkpoint_worker(
    rank: int, world_size: int, layout: dict[str, int], spec: dict[str, Any], ckpt_dir: str, phase: str
) -> dict[str, Any]:
    """Harness worker for the resume test.

    ``phase="save"`` trains ``spec.steps`` steps and writes a checkpoint; ``phase="resume"``
    loads it into a freshly built model and trains one more step.
    """
    run = InvarianceRun(Layout(**layout), RunSpec(**spec))
    try:
        if phase == "save":
            records = [run.train_step() for _ in range(run.spec.steps)]
            run.save(Path(ckpt_dir))
        else:
            run.load(Path(ckpt_dir))
            records = [run.train_step()]
        return {**_rank_summary(run), "steps": records, "queue": run.queue_state()}
    finally:
        run.close()


def job(tp: int = 1, pp: int = 1, pairs_per_rank: int = 1, **spec: Any) -> dict[str, Any]:
    """A ``train_layouts_worker`` job from layout sizes and ``RunSpec`` overrides."""
    return {"layout": asdict(Layout(tp, pp, pairs_per_rank)), "spec": asdict(RunSpec(**spec))}
