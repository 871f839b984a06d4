"""``GammaPOLoss``: the γ-PO loss for megatron-core's ``forward_step`` / ``loss_func`` protocol.

A micro-batch holds B preference pairs as 2B sequences, chosen first then rejected (the layout
NeMo-Aligner uses). On the last pipeline stage the loss:

1. turns vocab-parallel logits into per-sequence log-probs (TP all-reduce, CP reduce);
2. computes the pairs' β-scaled reward margins; a pair whose chosen or rejected response has no
   unmasked token (truncated away) is *excluded* — it adds 0 to the loss and never enters the
   solve, the queue or the statistics;
3. for γ-PO losses, all-gathers the margins over the data-parallel group, runs the margin policy
   (queue + solver) on the global micro-batch and keeps this rank's γ; only training steps push
   to the queue; β-DPO / β-SimPO (M0) and KTO (z_ref) read a moving average of global
   micro-batch means (:class:`~nemo_gammapo.core.baseline.MovingMean`), so they too are the same
   at every layout;
4. returns ``(loss, metrics)``; metrics are 0-dim tensors made with no device→host sync and no
   further collective: all but ``loss`` come from the gathered margins and are identical on every
   rank of the last stage; ``loss`` is this rank's micro-batch loss until
   :func:`reduce_step_metrics` averages it over the data-parallel group, once per step.

Per micro-batch the γ path therefore costs exactly one collective (the margin all-gather; KTO's
running reference point adds a second) and no host sync; the step's metric reduction adds one
all-reduce and one device→host copy per step (``tests/test_gamma_path_cost.py`` counts both).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from torch import Tensor

from nemo_gammapo.core.baseline import MovingMean
from nemo_gammapo.core.config import GammaConfig, PreferenceLossConfig
from nemo_gammapo.core.policy import GammaMarginPolicy, gamma_statistics
from nemo_gammapo.core.registry import get_loss_spec, preference_loss
from nemo_gammapo.core.rewards import PairLogProbs
from nemo_gammapo.distributed.logprobs import sequence_logprobs
from nemo_gammapo.distributed.margin_sync import gather_margins, local_slice

# Every metric a loss call returns, in a fixed order (ranks that hold no loss — earlier pipeline
# stages — still need the names to take part in a broadcast).
METRIC_NAMES = (
    "loss",
    "preference_accuracy",
    "gamma_mean",
    "gamma_std",
    "gamma_min",
    "gamma_max",
    "margin_mean",
    "margin_std",
    "gamma_above_gamma0",
    "excluded_pairs",
    "nonfinite_pairs",
    "queue_fill",
)

# How per-micro-batch metrics combine into one value per step (default: mean).
_METRIC_REDUCTION = {"gamma_min": "min", "gamma_max": "max", "excluded_pairs": "sum", "nonfinite_pairs": "sum"}
# Metrics that a loss call leaves rank-local; the step reduction averages them over data parallelism.
_RANK_LOCAL = ("loss",)


class MicrobatchMetrics(dict):
    """One loss call's metrics (``{name: 0-dim tensor}``), plus the data-parallel group that
    :func:`reduce_step_metrics` averages the rank-local ones (``loss``) over.

    A plain ``dict`` for every reader; pickling or copying drops the group (it cannot leave the
    process), which makes the copy a plain ``dict``.
    """

    def __init__(self, values: dict[str, Tensor], group: dist.ProcessGroup | None = None) -> None:
        super().__init__(values)
        self.group = group

    def __reduce__(self) -> tuple[Any, ...]:
        return (dict, (dict(self),))


def _model_parallel_ready() -> bool:
    return parallel_state.model_parallel_is_initialized()


class GammaPOLoss:
    """Any registry loss, with γ-PO's synchronised margin policy when the loss uses it.

    Args:
        loss_config: which loss and its hyperparameters.
        gamma_config: solver and queue settings (used by ``gamma_*`` losses).
        data_parallel_group: group whose margins form one solve; defaults to megatron's
            data-parallel group (without context parallelism).
        pad_to: per-rank pair slots for the gather when ranks may hold different pair counts.
        device: device of the queue buffer (moved to the margins' device on first use).
    """

    def __init__(
        self,
        loss_config: PreferenceLossConfig,
        gamma_config: GammaConfig | None = None,
        *,
        data_parallel_group: dist.ProcessGroup | None = None,
        pad_to: int | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        self.loss_config = loss_config
        self.gamma_config = gamma_config or GammaConfig()
        self.spec = get_loss_spec(loss_config.name)
        self.policy = (
            GammaMarginPolicy(self.gamma_config, loss_config.gamma0, device=device) if self.spec.gamma else None
        )
        # β-DPO's M0 / KTO's z_ref: a running mean over global micro-batches (checkpointed).
        self.reference = MovingMean(loss_config.reference_momentum) if self.spec.running_reference is not None else None
        self._dp_group = data_parallel_group
        self.pad_to = pad_to
        self.training = True
        # When a list, every loss call appends its global micro-batch's detached margins,
        # validity and γ (device tensors; no sync). Used by tests and margin/γ dumps.
        self.pair_log: list[dict[str, Tensor]] | None = None

    # ------------------------------------------------------------------ mode
    def train(self, mode: bool = True) -> GammaPOLoss:
        self.training = mode
        return self

    def eval(self) -> GammaPOLoss:
        return self.train(False)

    @property
    def needs_reference(self) -> bool:
        return self.spec.needs_reference

    def data_parallel_group(self) -> dist.ProcessGroup | None:
        if self._dp_group is not None:
            return self._dp_group
        if _model_parallel_ready():
            return parallel_state.get_data_parallel_group()
        return None

    # ------------------------------------------------------------------ loss
    def loss_func(self, batch: dict[str, Tensor], output_tensor: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """megatron-core ``loss_func``: ``output_tensor`` are ``[2B, S, V/tp]`` logits.

        ``batch`` needs ``labels`` and ``loss_mask`` (``[2B, S]``) and, for losses with a
        reference model, ``ref_logps`` (``[2B]``, summed reference log-probs, same layout).
        """
        logps, tokens = sequence_logprobs(output_tensor, batch["labels"], batch["loss_mask"])
        loss, metrics = self.from_sequence_logprobs(logps, tokens, batch.get("ref_logps"))
        cp = parallel_state.get_context_parallel_world_size() if _model_parallel_ready() else 1
        # Megatron averages gradients over data×context-parallel ranks; each CP rank holds the
        # whole loss, so scale it back up (see logprobs._AllReduceSumIdentityGrad).
        return loss * cp, metrics

    def from_sequence_logprobs(
        self, logps: Tensor, tokens: Tensor, ref_logps: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss from per-sequence summed log-probs ``[2B]`` (chosen first, then rejected).

        Returns the mean per-pair loss of this rank's micro-batch (excluded pairs add 0) and the
        step metrics; no context-parallel scaling is applied here (callers own that).
        """
        b = logps.shape[0] // 2
        ref_w = ref_l = None
        if self.needs_reference:
            if ref_logps is None:
                raise ValueError(f"loss {self.loss_config.name!r} needs reference log-probs (batch['ref_logps'])")
            ref_w, ref_l = ref_logps[:b].to(logps.dtype), ref_logps[b:].to(logps.dtype)
        pairs = PairLogProbs(logps[:b], logps[b:], tokens[:b], tokens[b:], ref_w, ref_l)
        valid = (tokens[:b] > 0) & (tokens[b:] > 0)

        r_w, r_l = self.spec.reward(pairs, self.loss_config)
        margins = (r_w - r_l).detach()
        group = self.data_parallel_group()
        all_margins, all_valid = gather_margins(margins, valid, group, self.pad_to)

        gamma = all_gamma = None
        if self.policy is not None:
            all_gamma = self.policy(all_margins, all_valid, update=self.training)
            gamma = local_slice(all_gamma, group, b, self.pad_to)

        reference_margin = reference_point = None
        if self.reference is not None and self.spec.running_reference == "margin":
            reference_margin = self.reference(all_margins, all_valid, update=self.training)
        elif self.reference is not None:  # KTO: the mean reward of both responses (one more gather)
            all_rewards, _ = gather_margins(((r_w + r_l) / 2).detach(), valid, group, self.pad_to)
            reference_point = self.reference(all_rewards, all_valid, update=self.training)

        out = preference_loss(
            self.loss_config.name,
            pairs,
            self.loss_config,
            gamma=gamma,
            dpo_convention=self.gamma_config.dpo_convention,
            reference_margin=reference_margin,
            reference_point=reference_point,
            rewards=(r_w, r_l),
        )
        per_pair = torch.where(valid, out.losses, torch.zeros_like(out.losses))
        loss = per_pair.sum() / max(b, 1)

        if self.pair_log is not None:
            start = (0 if group is None else dist.get_rank(group)) * (self.pad_to or b)
            record = {
                "margins": all_margins,
                "valid": all_valid,
                "local_start": torch.tensor(start),
                "local_losses": per_pair.detach(),
            }
            if all_gamma is not None:
                record["gamma"] = all_gamma
            self.pair_log.append(record)
        return loss, self._metrics(loss, all_margins, all_valid, all_gamma, group)

    def _metrics(
        self, loss: Tensor, margins: Tensor, valid: Tensor, gamma: Tensor | None, group: dist.ProcessGroup | None
    ) -> MicrobatchMetrics:
        # No collective here: the loss stays rank-local until reduce_step_metrics averages every
        # micro-batch's loss over ``group`` in one all-reduce per step (same values, same order).
        ok = valid & torch.isfinite(margins)
        n_ok = ok.float().sum().clamp_min(1.0)
        metrics = {
            # A copy: megatron's schedule scales the returned loss in place afterwards.
            "loss": loss.detach().clone(),
            "preference_accuracy": ((margins > 0) & ok).float().sum() / n_ok,
        }
        g0 = self.loss_config.gamma0
        gamma_for_stats = gamma if gamma is not None else torch.full_like(margins, g0)
        stats = gamma_statistics(gamma_for_stats, margins, valid, g0, self.policy.queue if self.policy else None)
        metrics.update(stats)
        metrics.setdefault("queue_fill", torch.zeros((), device=loss.device))
        sync_group = group if group is not None and dist.get_world_size(group) > 1 else None
        return MicrobatchMetrics({k: metrics[k].detach().float() for k in METRIC_NAMES}, sync_group)

    # ------------------------------------------------------------------ megatron glue
    def forward_step(self) -> Callable[[Iterator[dict[str, Tensor]], torch.nn.Module], tuple[Tensor, Any]]:
        """A megatron-core ``forward_step_func`` for a ``GPTModel`` and preference micro-batches.

        Micro-batches are dicts with ``tokens`` and ``position_ids`` (``[2B, S]``) plus what
        :meth:`loss_func` reads; on non-last pipeline stages only ``tokens`` and
        ``position_ids`` are used.
        """

        def forward_step(data_iterator: Iterator[dict[str, Tensor]], model: torch.nn.Module) -> tuple[Tensor, Any]:
            batch = next(data_iterator)
            output = model(batch["tokens"], batch["position_ids"], batch.get("attention_mask"))
            return output, partial(self.loss_func, batch)

        return forward_step

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy.state_dict() if self.policy is not None else None,
            "reference": self.reference.state_dict() if self.reference is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.policy is not None and state.get("policy") is not None:
            self.policy.load_state_dict(state["policy"])
        if self.reference is not None and state.get("reference") is not None:
            self.reference.load_state_dict(state["reference"])


def reduce_step_metrics(per_microbatch: Sequence[dict[str, Tensor]]) -> dict[str, float]:
    """Combine the metrics of a step's micro-batches into host floats.

    Costs one all-reduce (when the metrics carry a data-parallel group of size > 1: the rank-local
    ``loss`` of every micro-batch, in one tensor) and one device→host copy, per step. Call it on
    every rank of that group. Each micro-batch's loss is averaged over the group first, then the
    micro-batches are combined, exactly as if every loss call had all-reduced its own loss.
    """
    if not per_microbatch:
        return {}
    group = getattr(per_microbatch[0], "group", None)
    keys = list(per_microbatch[0])
    columns = {k: torch.stack([m[k] for m in per_microbatch]) for k in keys}
    local = [k for k in _RANK_LOCAL if k in columns]
    if group is not None and local:
        # [rank-local keys, micro-batches]: element-wise the sums one all-reduce per micro-batch made.
        stacked = torch.stack([columns[k] for k in local])
        dist.all_reduce(stacked, group=group)
        stacked /= dist.get_world_size(group)
        columns.update(zip(local, stacked, strict=True))
    reducers = {"min": torch.amin, "max": torch.amax, "sum": torch.sum, "mean": torch.mean}
    reduced = [reducers[_METRIC_REDUCTION.get(k, "mean")](columns[k]) for k in keys]
    return dict(zip(keys, torch.stack(reduced).tolist(), strict=True))
