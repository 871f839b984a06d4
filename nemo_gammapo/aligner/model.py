"""``MegatronGPTGammaPOModel``: NeMo-Aligner's DPO model with every nemo_gammapo loss and γ-PO.

Thin on purpose. NeMo-Aligner keeps doing what it does (batching, pipeline schedule, per-token
log-probs, DP averaging, reward logging); this class only

* replaces ``loss_func`` with :class:`nemo_gammapo.distributed.GammaPOLoss` (for NeMo-Aligner's own
  ``rpo_*`` losses the parent's code runs unchanged);
* switches the margin queue to read-only for validation (``forward_only``);
* skips the reference policy entirely for reference-free losses (SimPO family, CPO, ORPO), and
  reads it from a precomputed file with ``model.dpo.reference: precomputed``
  (:mod:`nemo_gammapo.aligner.reference`): no reference forward pass, no CPU weight swap, no host
  copy of the weights;
* adds the γ / margin metrics to what the trainer logs (one broadcast per step);
* optionally dumps per-pair margins / γ / losses every K steps, with each pair's id
  (:mod:`nemo_gammapo.artifacts.dumps`, :mod:`nemo_gammapo.aligner.pairs`);
* saves and restores the margin queue with the checkpoint;
* masks the padded vocabulary out of the logits (:func:`mask_padded_vocabulary`).
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.trainer.trainer import Trainer
from megatron.core import parallel_state
from nemo.collections.nlp.parts.utils_funcs import get_last_rank
from nemo_aligner.models.nlp.gpt.megatron_gpt_dpo_model import MegatronGPTDPOModel
from omegaconf import DictConfig

from nemo_gammapo.aligner.config import ALIGNER_NATIVE_LOSSES, dump_config, loss_configs
from nemo_gammapo.aligner.pairs import PAIR_IDS
from nemo_gammapo.aligner.reference import ReferenceLogprobs, place_sums, reference_mode
from nemo_gammapo.artifacts.dumps import PairDumper
from nemo_gammapo.distributed.checkpoint import broadcast_from_last_stage
from nemo_gammapo.distributed.gamma_loss import METRIC_NAMES, GammaPOLoss, reduce_step_metrics

CHECKPOINT_KEY = "nemo_gammapo"


def mask_padded_vocabulary(model: torch.nn.Module, vocab_size: int) -> int:
    """Give the padding rows of the vocabulary no probability; returns the hooks installed.

    Megatron pads the vocabulary to a multiple of ``make_vocab_size_divisible_by × TP``, so its size
    changes with the tensor-parallel size, and padding rows are not tokens: left in, their logits
    join the softmax and every log-prob depends on the TP layout (and on whatever the padding rows
    hold — zeros after resharding, random values after random init). Masking them makes log-probs
    those of the real ``vocab_size`` tokens at any layout, as in the unpadded (e.g. Hugging Face)
    model; the masked logits get zero gradient. Hooks the output layer of the last pipeline
    stage (logits ``[S, B, V_padded / TP]``, vocab-parallel).
    """
    from megatron.core.tensor_parallel import ColumnParallelLinear

    hooks = 0
    for name, module in model.named_modules():
        if name.split(".")[-1] != "output_layer" or not isinstance(module, ColumnParallelLinear):
            continue
        local = module.output_size_per_partition
        first = parallel_state.get_tensor_model_parallel_rank() * local
        if first + local <= vocab_size:
            continue  # this rank holds no padding

        def hook(mod: torch.nn.Module, args: Any, output: Any, first: int = first, local: int = local) -> Any:
            logits, bias = output
            padding = torch.arange(first, first + local, device=logits.device) >= vocab_size
            return logits.masked_fill(padding, torch.finfo(logits.dtype).min), bias

        module.register_forward_hook(hook)
        hooks += 1
    return hooks


def reference_placeholder(batch: dict[str, torch.Tensor], context_parallel_size: int) -> torch.Tensor:
    """Zeros shaped like the reference log-probs NeMo-Aligner would compute for ``batch``, for free.

    Unpacked batches: ``[2B, S / CP]`` (chosen rows, then rejected; this context-parallel rank's
    share of the sequence, as the parent's log-prob pass returns it). Packed: ``[N, S]``.
    """
    if "input_ids" in batch:
        return torch.zeros(batch["input_ids"].shape, dtype=torch.float32)
    rows, seq = batch["chosen"].shape
    return torch.zeros(2 * rows, seq // context_parallel_size, dtype=torch.float32)


def writes_pair_dumps() -> bool:
    """One rank per data-parallel slice writes γ dumps: the TP- and CP-rank-0 one of the last stage.

    Margins are complete and identical on every TP and CP rank of the last stage (the sequence
    sums are reduced over both groups), so any other writer would write the same file again.
    """
    return (
        parallel_state.is_pipeline_last_stage(ignore_virtual=True)
        and parallel_state.get_tensor_model_parallel_rank() == 0
        and parallel_state.get_context_parallel_rank() == 0
    )


class MegatronGPTGammaPOModel(MegatronGPTDPOModel):
    """A NeMo-Aligner DPO model whose loss is chosen from the nemo_gammapo registry."""

    def __init__(self, cfg: DictConfig, trainer: Trainer) -> None:
        super().__init__(cfg, trainer=trainer)
        # a converted checkpoint records its true vocabulary, which may exceed the tokenizer's (Qwen2)
        vocab_size = int(cfg.get("hf_vocab_size") or self.tokenizer.vocab_size)
        for chunk in self.model if isinstance(self.model, list) else [self.model]:
            mask_padded_vocabulary(chunk, vocab_size)
        self.gamma_po: GammaPOLoss | None = None
        if self.preference_loss not in ALIGNER_NATIVE_LOSSES:
            loss_cfg, gamma_cfg = loss_configs(cfg.dpo)
            self.gamma_po = GammaPOLoss(loss_cfg, gamma_cfg)
        self._microbatch_metrics: list[dict[str, torch.Tensor]] = []
        self.train_steps = 0  # training steps taken (checkpointed); numbers the γ dumps
        dump = dump_config(cfg.dpo)
        self._dumper = None
        if self.gamma_po is not None and dump.every > 0:
            self._dumper = PairDumper(dump.run_dir or ".", dump.every, dump.max_pairs)
        self.reference_sums: ReferenceLogprobs | None = None
        if reference_mode(cfg.dpo) == "precomputed" and not self.reference_free:
            self.reference_sums = ReferenceLogprobs.load(cfg.dpo.reference_logprobs)
        # the first step of every start checks the file against one online forward (reference_check)
        self.reference_check_due = (
            self.reference_sums is not None and cfg.dpo.get("reference_check_tolerance") is not None
        )

    @property
    def reference_free(self) -> bool:
        """True when the loss never reads reference-policy log-probs."""
        return self.gamma_po is not None and not self.gamma_po.needs_reference

    # ------------------------------------------------------------------ loss
    def loss_func(
        self,
        pi_logprobs: torch.Tensor,
        ref_logprobs: torch.Tensor,
        labels: torch.Tensor,
        gt_rewards: torch.Tensor,
        cu_seqlens: torch.Tensor | None = None,
        average_log_probs: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token log-probs ``[2B, S]`` → (preference loss, accuracy), as the parent expects."""
        if self.gamma_po is None:
            return super().loss_func(pi_logprobs, ref_logprobs, labels, gt_rewards, cu_seqlens, average_log_probs)
        # The parent's reduction handles packed sequences and the context-parallel sum.
        logps = self.get_reduced_masked_logps(pi_logprobs, labels, cu_seqlens)
        tokens = self.get_reduced_masked_logps(torch.ones_like(pi_logprobs), labels, cu_seqlens)
        ref = None
        if self.gamma_po.needs_reference:
            ref = self.get_reduced_masked_logps(ref_logprobs.to(pi_logprobs.dtype), labels, cu_seqlens)
        loss, metrics = self.gamma_po.from_sequence_logprobs(logps.float(), tokens.float(), ref)
        self._microbatch_metrics.append(metrics)
        return loss, metrics["preference_accuracy"]

    def get_loss_and_metrics(self, batch: dict[str, torch.Tensor], forward_only: bool) -> tuple[float, dict]:
        if self.gamma_po is None:
            return super().get_loss_and_metrics(batch, forward_only)
        self.gamma_po.train(not forward_only)  # validation reads the queue, never pushes
        self._microbatch_metrics = []
        dump = not forward_only and self._dumper is not None and self._dumper.due(self.train_steps)
        self.gamma_po.pair_log = [] if dump else None
        loss_mean, metrics = super().get_loss_and_metrics(batch, forward_only)
        metrics.update(self._step_metrics())
        if dump and self.gamma_po.pair_log and PAIR_IDS in batch:
            # micro-batches are the batch split along dim 0, in order (as the parent splits it)
            ids = torch.tensor_split(batch[PAIR_IDS], len(self.gamma_po.pair_log))
            for record, mb_ids in zip(self.gamma_po.pair_log, ids, strict=True):
                record["pair_ids"] = mb_ids
        if dump and self.gamma_po.pair_log and writes_pair_dumps():
            self._dumper.write(self.train_steps, self.gamma_po.pair_log, parallel_state.get_data_parallel_rank())
        self.gamma_po.pair_log = None
        if not forward_only:
            self.train_steps += 1
        return loss_mean, metrics

    def _step_metrics(self) -> dict[str, float]:
        """This step's γ / margin metrics from the last stage, on every rank (one broadcast)."""
        names = [n for n in METRIC_NAMES if n != "loss"]  # the parent already reports the loss
        values = torch.zeros(len(names), dtype=torch.float32, device=torch.cuda.current_device())
        if self._microbatch_metrics:
            # without "loss" (the parent reports it) the reduction needs no collective at all
            reduced = reduce_step_metrics([{n: m[n] for n in names} for m in self._microbatch_metrics])
            values = torch.tensor([reduced[n] for n in names], dtype=torch.float32, device=values.device)
        torch.distributed.broadcast(values, get_last_rank())
        self._microbatch_metrics = []
        return {f"gamma_po/{n}": v for n, v in zip(names, values.tolist(), strict=True)}

    # ------------------------------------------------------------------ reference policy
    def get_ref_policy_logprobs(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Reference log-probs ``[2B, S]``: computed online (the parent's weight swap), read from
        the precomputed file, or — for reference-free losses — zeros of the right shape at no cost.

        The zeros keep the batch layout the trainer and pipeline stages expect (the keys must
        exist for PP > 1); the loss never reads them. Precomputed sums are laid out so that the
        loss's masked reduction gives them back exactly (:func:`place_sums`); every rank looks
        its pairs up itself, so nothing is broadcast.
        """
        if self.reference_free:
            return reference_placeholder(batch, parallel_state.get_context_parallel_world_size())
        if self.reference_sums is None:
            return super().get_ref_policy_logprobs(batch)
        if self.reference_check_due:
            self.check_reference_file(batch)
        chosen, rejected = self.reference_sums.lookup(batch[PAIR_IDS])
        labels = torch.cat((batch["chosen_labels"], batch["rejected_labels"]), dim=0)
        return place_sums(torch.cat((chosen, rejected)), labels)

    def check_reference_file(self, batch: dict[str, torch.Tensor]) -> None:
        """Recompute the reference log-prob sums of this batch's first micro-batch online and compare
        them with the precomputed file (:mod:`nemo_gammapo.aligner.reference_check`); once per start.

        The reference weights: the current ones on a fresh start (the model was just restored from
        the starting checkpoint), the host copy ``train()`` took before the checkpoint was
        restored on a resume (dropped here), or — with PEFT — the base with its adapters switched
        off. Every rank joins the forward (pipeline stages) and one gather of the verdicts, so all
        stop together; global rank 0 logs the cost.
        """
        import time

        from nemo.utils import logging

        from nemo_gammapo.aligner.reference_check import ReferenceMismatch, verdict, worst_sequence

        self.reference_check_due = False
        start = time.monotonic()
        rows = batch["chosen"].shape[0]
        n = min(rows, int(self.cfg.dpo.log_prob_forward_micro_batch_size))
        first = {k: v[:n] if torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == rows else v for k, v in batch.items()}
        if self.ref_policy_state_dict is None and not self.use_peft:
            logprobs = self.get_logprob_batch(first)  # fresh start: the weights are the reference
        else:
            logprobs = super().get_ref_policy_logprobs(first)
        self.ref_policy_state_dict = None
        labels = torch.cat((first["chosen_labels"], first["rejected_labels"]), dim=0).to(logprobs.device)
        online = self.get_reduced_masked_logps(logprobs.float(), labels)
        tokens = self.get_reduced_masked_logps(torch.ones_like(logprobs, dtype=torch.float32), labels)
        chosen, rejected = self.reference_sums.lookup(first[PAIR_IDS])
        worst = worst_sequence(online.cpu(), torch.cat((chosen, rejected)).cpu(), tokens.cpu(), first[PAIR_IDS].cpu())
        everyone: list[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(everyone, worst)  # once per start
        worst = max(everyone, key=lambda w: w.per_token)
        tolerance = float(self.cfg.dpo.reference_check_tolerance)
        if torch.distributed.get_rank() == 0:
            logging.info(
                f"Reference check: {n} pairs per data-parallel rank recomputed online in "
                f"{time.monotonic() - start:.2f} s (one forward of one micro-batch); largest difference "
                f"{worst.per_token:.2e} nats/token (pair id {worst.pair_id}), tolerance {tolerance}"
            )
        line = verdict(worst, tolerance, str(self.cfg.dpo.reference_logprobs))
        if line is not None:
            raise ReferenceMismatch(line)

    # ------------------------------------------------------------------ checkpoint
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.gamma_po is not None:
            # NeMo's distributed checkpoint writes this (non-sharded) entry from global rank 0,
            # which is on the first pipeline stage; the queue lives on the last one.
            state = {**self.gamma_po.state_dict(), "train_steps": self.train_steps}
            checkpoint[CHECKPOINT_KEY] = broadcast_from_last_stage(state)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        if self.gamma_po is not None and CHECKPOINT_KEY in checkpoint:
            self.gamma_po.load_state_dict(checkpoint[CHECKPOINT_KEY])
            self.train_steps = int(checkpoint[CHECKPOINT_KEY].get("train_steps", 0))
