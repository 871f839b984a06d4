"""Train the tiny GPT with ``GammaPOLoss`` under a TP/PP/DP layout, one step at a time.

Every layout sees the same global micro-batches in the same order — global micro-batch ``k`` of a
step holds ``pairs_per_microbatch`` pairs and data-parallel rank ``r`` takes the ``r``-th contiguous
slice — so any two layouts produce the same γ, losses and gradients up to float rounding. The
training-step benchmark (:mod:`nemo_gammapo.bench.train_step`) times it; the invariance tests
(``nemo_gammapo/testing/layouts.py``) compare layouts with it.

The training step is megatron-core's own ``get_forward_backward_func`` schedule followed by a
data-parallel gradient average and a plain SGD update (no optimizer state to keep in sync).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed
from torch import Tensor

from nemo_gammapo.core.config import GammaConfig, PreferenceLossConfig
from nemo_gammapo.distributed.gamma_loss import GammaPOLoss, reduce_step_metrics
from nemo_gammapo.models.tiny_gpt import TinyGPTConfig, build_tiny_gpt, full_gradients


@dataclass(frozen=True)
class Layout:
    """Tensor- and pipeline-parallel sizes (data parallelism is what the world size leaves over)."""

    tp: int = 1
    pp: int = 1
    pairs_per_rank: int = 1  # pairs per micro-batch on each data-parallel rank

    def name(self, world_size: int) -> str:
        """E.g. ``tp2-pp1-dp1-mb2`` at ``world_size`` 2."""
        return f"tp{self.tp}-pp{self.pp}-dp{world_size // (self.tp * self.pp)}-mb{self.pairs_per_rank}"


@dataclass(frozen=True)
class RunSpec:
    """Loss, γ settings, data and step counts of one run (all sizes global, i.e. over data parallelism)."""

    loss_name: str = "gamma_simpo"
    beta: float = 2.0
    gamma_beta_ratio: float = 0.5
    tau: float = 5.0
    queue_capacity: int = 8
    solve_size: int = 6
    steps: int = 3
    microbatches: int = 2  # per step
    pairs_per_microbatch: int = 2  # global (all data-parallel ranks together)
    lr: float = 0.5
    data_seed: int = 0
    model_seed: int = 0
    mask_pair: tuple[int, int] | None = (1, 1)  # (step, global pair index) truncated away, or None
    gamma_compile: bool = False


def synthetic_step(spec: RunSpec, cfg: TinyGPTConfig, step: int) -> dict[str, Tensor]:
    """All pairs of one step: ``tokens``/``labels``/``loss_mask`` ``[2, P, S]`` (chosen, rejected)."""
    n = spec.microbatches * spec.pairs_per_microbatch
    s = cfg.seq_length
    g = torch.Generator().manual_seed(spec.data_seed * 7919 + step)
    tokens = torch.zeros(2, n, s, dtype=torch.long)
    loss_mask = torch.zeros(2, n, s)
    for i in range(n):
        prompt_len = int(torch.randint(3, 6, (1,), generator=g))
        prompt = torch.randint(1, cfg.vocab_size, (prompt_len,), generator=g)
        for side in range(2):
            resp_len = int(torch.randint(3, s - prompt_len + 1, (1,), generator=g))
            resp = torch.randint(1, cfg.vocab_size, (resp_len,), generator=g)
            tokens[side, i, : prompt_len + resp_len] = torch.cat([prompt, resp])
            loss_mask[side, i, prompt_len - 1 : prompt_len + resp_len - 1] = 1.0
    if spec.mask_pair is not None and spec.mask_pair[0] == step:
        loss_mask[1, spec.mask_pair[1]] = 0.0  # the rejected response was truncated away
    labels = torch.zeros_like(tokens)
    labels[..., :-1] = tokens[..., 1:]
    ref_logps = -(loss_mask.sum(-1) * (3.5 + 0.3 * torch.randn(2, n, generator=g)))
    return {"tokens": tokens, "labels": labels, "loss_mask": loss_mask, "ref_logps": ref_logps}


def rank_microbatches(step_data: dict[str, Tensor], spec: RunSpec, dp: int, dp_rank: int) -> list[dict[str, Tensor]]:
    """This data-parallel rank's micro-batches: chosen rows first, then rejected rows."""
    per_rank = spec.pairs_per_microbatch // dp
    out = []
    for k in range(spec.microbatches):
        start = k * spec.pairs_per_microbatch + dp_rank * per_rank
        idx = slice(start, start + per_rank)
        mb = {key: torch.cat([v[0, idx], v[1, idx]]) for key, v in step_data.items()}
        seq = mb["tokens"].shape[1]
        mb["position_ids"] = torch.arange(seq).unsqueeze(0).expand(mb["tokens"].shape[0], -1)
        out.append(mb)
    return out


def make_loss(spec: RunSpec) -> GammaPOLoss:
    """The run's ``GammaPOLoss`` (γ solver seed 1)."""
    return GammaPOLoss(
        PreferenceLossConfig(name=spec.loss_name, beta=spec.beta, gamma_beta_ratio=spec.gamma_beta_ratio),
        GammaConfig(
            tau=spec.tau,
            queue_capacity=spec.queue_capacity,
            solve_size=spec.solve_size,
            seed=1,
            compile=spec.gamma_compile,
        ),
    )


class LayoutRun:
    """A model, its loss and the step loop for one layout on the current process group."""

    def __init__(self, layout: Layout, spec: RunSpec, cfg: TinyGPTConfig | None = None) -> None:
        world = dist.get_world_size()
        if world % (layout.tp * layout.pp):
            raise ValueError(f"world size {world} is not divisible by tp·pp = {layout.tp * layout.pp}")
        self.layout, self.spec, self.cfg = layout, spec, cfg or TinyGPTConfig()
        if not parallel_state.model_parallel_is_initialized():  # several runs may share one layout
            parallel_state.initialize_model_parallel(layout.tp, layout.pp)
        model_parallel_cuda_manual_seed(spec.model_seed + 1)
        self.dp = parallel_state.get_data_parallel_world_size()
        if spec.pairs_per_microbatch != self.dp * layout.pairs_per_rank:
            raise ValueError("pairs_per_microbatch must equal dp · pairs_per_rank")
        self.model = build_tiny_gpt(self.cfg, seed=spec.model_seed)
        self.loss = make_loss(spec)
        self.loss.pair_log = []
        self.step_index = 0

    @property
    def is_last_stage(self) -> bool:
        """Whether this rank holds the last pipeline stage (where the loss and its metrics are)."""
        return parallel_state.is_pipeline_last_stage()

    def _run_schedule(self, microbatches: list[dict[str, Tensor]], forward_only: bool) -> list[dict[str, Tensor]]:
        return get_forward_backward_func()(
            forward_step_func=self.loss.forward_step(),
            data_iterator=iter(microbatches),
            model=self.model,
            num_microbatches=len(microbatches),
            seq_length=self.cfg.seq_length,
            micro_batch_size=2 * self.layout.pairs_per_rank,
            forward_only=forward_only,
        )

    def train_step(self, collect: bool = True) -> dict[str, Any]:
        """One optimizer step; returns metrics, γ per micro-batch and (``collect``) full gradients."""
        data = synthetic_step(self.spec, self.cfg, self.step_index)
        mbs = rank_microbatches(data, self.spec, self.dp, parallel_state.get_data_parallel_rank())
        self.model.zero_grad(set_to_none=True)
        self.loss.train()
        if self.loss.pair_log is not None:
            self.loss.pair_log.clear()
        per_mb = self._run_schedule(mbs, forward_only=False)
        dp_group = parallel_state.get_data_parallel_group()
        for p in self.model.parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            if self.dp > 1:
                dist.all_reduce(p.grad, group=dp_group)
                p.grad /= self.dp
        grads = full_gradients(self.model) if collect else {}
        with torch.no_grad():
            for p in self.model.parameters():
                p -= self.spec.lr * p.grad
        self.step_index += 1
        if not collect:
            return {}
        return {
            "metrics": reduce_step_metrics(per_mb) if self.is_last_stage else None,
            "gamma": [r["gamma"].clone() for r in self.loss.pair_log if "gamma" in r],
            "margins": [r["margins"].clone() for r in self.loss.pair_log],
            "grads": grads,
        }

    def close(self) -> None:
        """Destroy the model-parallel state (the process group stays)."""
        parallel_state.destroy_model_parallel()
