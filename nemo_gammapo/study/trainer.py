"""One seeded robustness-study run: the tiny megatron-core GPT trained with the shipped ``GammaPOLoss``.

Per seed, a short SFT *warm start* teaches the model the task's format (uniformly random
responses, so it carries no preference); every method of that seed starts from it, and it is
the DPO family's frozen reference policy, whose log-probs are computed once per pair and seed.
The preference step is megatron-core's own ``get_forward_backward_func`` schedule (one
micro-batch) with :meth:`GammaPOLoss.forward_step`, so every method goes through the real loss,
margin queue, solver and reference path (``batch["ref_logps"]``); then gradient clipping and
torch AdamW with linear warm-up and cosine decay. Each step's per-pair margins and γ are kept in
the γ-dump schema (:mod:`nemo_gammapo.artifacts.dumps`, with content ``pair_id``\\ s), so
``nemo-gammapo data suspects`` reads them unchanged. One process, one CPU thread: a run is
bit-for-bit repeatable for a given seed, whichever process runs it.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from megatron.core import parallel_state
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

from nemo_gammapo.artifacts.dumps import PairDumper
from nemo_gammapo.core.config import GammaConfig, PreferenceLossConfig
from nemo_gammapo.core.registry import LOSSES
from nemo_gammapo.core.rewards import PairLogProbs
from nemo_gammapo.data.noise import flip_records
from nemo_gammapo.data.pair_id import pair_id
from nemo_gammapo.distributed.gamma_loss import GammaPOLoss
from nemo_gammapo.distributed.logprobs import sequence_logprobs
from nemo_gammapo.distributed.process_groups import init_single_process_group
from nemo_gammapo.models.tiny_gpt import TinyGPTConfig, build_tiny_gpt
from nemo_gammapo.study.data import VOCAB_SIZE, PairTensors, encode_pairs, encode_sequences
from nemo_gammapo.study.methods import Method
from nemo_gammapo.study.stats import spearman
from nemo_gammapo.study.task import TaskSpec, sample_pairs, sft_sequences


@dataclass(frozen=True)
class StudyConfig:
    """Hyperparameters shared by every method of the study (reward units noted where they matter).

    SimPO family: β = ``simpo_beta`` on mean token log-probs, γ0 = ``simpo_gamma_beta_ratio``·β.
    DPO family: β = ``dpo_beta`` on summed log-ratios to the warm start, γ0 (γ-DPO only, offset
    convention) = ``dpo_gamma_beta_ratio``·β. Both γ0 are 1.0 by default.
    """

    task: TaskSpec = field(default_factory=TaskSpec)
    n_train: int = 1024
    n_heldout: int = 256
    steps: int = 64
    batch_pairs: int = 32
    lr: float = 5e-3
    warmup_steps: int = 4
    min_lr_ratio: float = 0.05
    grad_clip: float = 1.0
    simpo_beta: float = 5.0
    simpo_gamma_beta_ratio: float = 0.2
    dpo_beta: float = 0.5
    dpo_gamma_beta_ratio: float = 2.0
    beta_dpo_alpha: float = 0.1
    queue_capacity: int = 64
    solve_size: int = 32
    sft_steps: int = 24
    sft_batch: int = 32
    sft_lr: float = 3e-3
    curve_every: int = 8
    num_layers: int = 2
    hidden_size: int = 64
    num_attention_heads: int = 4
    ffn_hidden_size: int = 128
    seq_length: int = 8
    init_std: float = 0.02

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def ensure_single_process_group() -> None:
    """A gloo group of size 1 and megatron's model-parallel state (TP = PP = 1), created once."""
    torch.set_num_threads(1)
    from nemo_gammapo.cpu_compat import maybe_apply_cpu_patches

    maybe_apply_cpu_patches()
    init_single_process_group("gloo")
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(1, 1)


def loss_config(method: Method, flip_rate: float, cfg: StudyConfig) -> PreferenceLossConfig:
    """The registry loss config of ``method`` at this flip rate (rSimPO / rDPO's ε may be the rate)."""
    simpo = method.base == "simpo"
    return PreferenceLossConfig(
        name=method.loss,
        beta=cfg.simpo_beta if simpo else cfg.dpo_beta,
        gamma_beta_ratio=cfg.simpo_gamma_beta_ratio if simpo else cfg.dpo_gamma_beta_ratio,
        label_smoothing=method.label_smoothing(flip_rate),
        beta_dpo_alpha=cfg.beta_dpo_alpha,
    )


def _lr_factor(step: int, warmup: int, steps: int, min_ratio: float) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(steps - warmup, 1)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def _optimizer(model: torch.nn.Module, lr: float, warmup: int, steps: int, min_ratio: float) -> tuple[Any, Any]:
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.0)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, warmup, steps, min_ratio))


def _new_model(seed: int, cfg: StudyConfig) -> torch.nn.Module:
    torch.manual_seed(seed)
    model_parallel_cuda_manual_seed(seed + 1)
    tiny = TinyGPTConfig(
        num_layers=cfg.num_layers,
        hidden_size=cfg.hidden_size,
        num_attention_heads=cfg.num_attention_heads,
        ffn_hidden_size=cfg.ffn_hidden_size,
        vocab_size=VOCAB_SIZE,
        seq_length=cfg.seq_length,
        init_std=cfg.init_std,
    )
    return build_tiny_gpt(tiny, seed=seed)


def _seq_logps(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    logits = model(batch["tokens"], batch["position_ids"], None)
    return sequence_logprobs(logits, batch["labels"], batch["loss_mask"])


@dataclass
class SeedData:
    """Everything a seed shares across methods: data, warm-start weights, reference log-probs."""

    seed: int
    train: list[dict[str, Any]]
    heldout: list[dict[str, Any]]
    warm_state: dict[str, torch.Tensor]
    train_ref: torch.Tensor  # [2, N] reference log-probs of the clean training pairs
    heldout_pairs: PairTensors  # with ref_logps


_SEED_CACHE: dict[tuple[int, str], SeedData] = {}


def seed_data(seed: int, cfg: StudyConfig) -> SeedData:
    """The seed's data, SFT warm start and reference log-probs (cached per process and config)."""
    key = (seed, repr(cfg))
    if key in _SEED_CACHE:
        return _SEED_CACHE[key]
    ensure_single_process_group()
    train = sample_pairs(cfg.task, seed, cfg.n_train, "train")
    heldout = sample_pairs(cfg.task, seed, cfg.n_heldout, "heldout")
    model = _new_model(seed, cfg)
    sft = encode_sequences(sft_sequences(cfg.task, seed, cfg.sft_steps * cfg.sft_batch), cfg.seq_length)
    opt, sched = _optimizer(model, cfg.sft_lr, 2, cfg.sft_steps, 0.1)
    for step in range(cfg.sft_steps):
        rows = slice(step * cfg.sft_batch, (step + 1) * cfg.sft_batch)
        logps, tokens = _seq_logps(model, {k: v[rows] for k, v in sft.items()})
        opt.zero_grad(set_to_none=True)
        (-logps.sum() / tokens.sum()).backward()
        opt.step()
        sched.step()
    model.eval()
    with torch.no_grad():
        train_ref = _pair_logps(model, encode_pairs(train, cfg.seq_length))[0]
        held = encode_pairs(heldout, cfg.seq_length)
        held = held.with_reference(_pair_logps(model, held)[0])
    state = {k: v.detach().clone() if isinstance(v, torch.Tensor) else v for k, v in model.state_dict().items()}
    _SEED_CACHE.clear()  # one seed at a time is enough (runs are ordered seed-major)
    _SEED_CACHE[key] = SeedData(seed, train, heldout, state, train_ref, held)
    return _SEED_CACHE[key]


def _pair_logps(model: torch.nn.Module, pairs: PairTensors) -> tuple[torch.Tensor, torch.Tensor]:
    """``([2, N] summed log-probs, [2, N] token counts)`` of every pair's chosen and rejected rows."""
    logps, tokens = _seq_logps(model, pairs.batch(torch.arange(len(pairs))))
    return logps.view(2, -1), tokens.view(2, -1)


def _run_schedule(
    loss: GammaPOLoss, model: torch.nn.Module, batch: dict[str, torch.Tensor], cfg: StudyConfig, forward_only: bool
) -> dict[str, torch.Tensor]:
    out = get_forward_backward_func()(
        forward_step_func=loss.forward_step(),
        data_iterator=iter([batch]),
        model=model,
        num_microbatches=1,
        seq_length=cfg.seq_length,
        micro_batch_size=batch["tokens"].shape[0],
        forward_only=forward_only,
    )
    return out[0]


@torch.no_grad()
def implicit_rewards(
    model: torch.nn.Module, pairs: PairTensors, lcfg: PreferenceLossConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss's own reward ``(r_w, r_l)`` (registry reward function) of every pair of ``pairs``."""
    was_training = model.training
    model.eval()
    logps, tokens = _pair_logps(model, pairs)
    ref = pairs.ref_logps
    lp = PairLogProbs(logps[0], logps[1], tokens[0], tokens[1], *(ref if ref is not None else (None, None)))
    out = LOSSES[lcfg.name].reward(lp, lcfg)
    model.train(was_training)
    return out


def heldout_metrics(
    model: torch.nn.Module, data: SeedData, lcfg: PreferenceLossConfig, task: TaskSpec
) -> dict[str, float]:
    """True-preference accuracy (ties count ½), mean margin, and Spearman ρ(implicit reward, R).

    ρ is taken over the held-out responses of each prompt class and averaged over the classes.
    """
    r_w, r_l = implicit_rewards(model, data.heldout_pairs, lcfg)
    margin = (r_w - r_l).double().numpy()
    accuracy = float(np.mean((margin > 0) + 0.5 * (margin == 0)))
    rewards = np.concatenate([r_w.double().numpy(), r_l.double().numpy()])
    truth = np.array([r["chosen_reward"] for r in data.heldout] + [r["rejected_reward"] for r in data.heldout])
    prompts = np.array([r["prompt"] for r in data.heldout] * 2)
    rhos = [spearman(rewards[prompts == p], truth[prompts == p]) for p in task.prompts if (prompts == p).sum() > 2]
    finite = [r for r in rhos if np.isfinite(r)]  # a constant reward (DPO at step 0) has no ρ
    rho = float(np.mean(finite)) if finite else float("nan")
    return {"accuracy": accuracy, "margin_mean": float(margin.mean()), "spearman": rho}


@dataclass
class RunOutput:
    """One run: its results row, held-out learning curve and per-pair γ dumps (dump schema)."""

    row: dict[str, Any]
    curve: list[dict[str, Any]]
    dumps: pd.DataFrame
    train: list[dict[str, Any]]  # the (noisy) training rows, with ``label_flipped`` and ``pair_id``
    records: list[dict[str, torch.Tensor]]  # per step, the loss's pair log (what PairDumper writes)


def train_one(method: Method, flip_rate: float, seed: int, cfg: StudyConfig) -> RunOutput:
    """Train ``method`` from the seed's warm start on the seed's pairs with labels flipped at ``flip_rate``.

    The flip draw, data order, γ queue sampling and warm start all come from ``seed``, so every
    method of a seed sees the same data, flips and initial weights.
    """
    start = time.perf_counter()
    data = seed_data(seed, cfg)
    noisy, flips = flip_records(data.train, flip_rate, seed)
    flipped = torch.tensor([bool(r["label_flipped"]) for r in noisy])
    ref = torch.where(flipped, data.train_ref.flip(0), data.train_ref)  # a flip swaps the two rows
    train = encode_pairs(noisy, cfg.seq_length).with_reference(ref)
    ids = torch.tensor([pair_id(r) for r in noisy], dtype=torch.int64)
    for row, pid in zip(noisy, ids.tolist(), strict=True):
        row["pair_id"] = pid

    model = _new_model(seed, cfg)
    model.load_state_dict(data.warm_state)
    model.train()
    lcfg = loss_config(method, flip_rate, cfg)
    gcfg = GammaConfig(tau=method.tau or 10.0, queue_capacity=cfg.queue_capacity, solve_size=cfg.solve_size, seed=seed)
    loss = GammaPOLoss(lcfg, gcfg)
    opt, sched = _optimizer(model, cfg.lr, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio)
    order = torch.Generator().manual_seed(seed)
    perm, cursor = torch.randperm(len(train), generator=order), 0
    curve, dumps, records = [], [], []
    metrics: dict[str, torch.Tensor] = {}
    for step in range(cfg.steps + 1):
        if step % cfg.curve_every == 0 or step == cfg.steps:
            held = heldout_metrics(model, data, lcfg, cfg.task)
            curve.append({"step": step, "heldout_accuracy": held["accuracy"], "heldout_spearman": held["spearman"]})
        if step == cfg.steps:
            break
        if cursor + cfg.batch_pairs > len(train):
            perm, cursor = torch.randperm(len(train), generator=order), 0
        index = perm[cursor : cursor + cfg.batch_pairs]
        cursor += cfg.batch_pairs
        loss.pair_log = []
        opt.zero_grad(set_to_none=True)
        metrics = _run_schedule(loss, model, train.batch(index), cfg, forward_only=False)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        record = {**loss.pair_log[0], "pair_ids": ids[index]}
        records.append(record)
        dumps.append(_dump_rows(step, record))

    r_w, r_l = implicit_rewards(model, train, lcfg)
    fit = (r_w - r_l)[flipped]
    row = {
        "method": method.key,
        "loss": method.loss,
        "base": method.base,
        "tau": method.tau,
        "flip_rate": flip_rate,
        "seed": seed,
        "realised_flip_rate": flips.rate,
        "heldout_accuracy": curve[-1]["heldout_accuracy"],
        "heldout_spearman": curve[-1]["heldout_spearman"],
        "heldout_margin_mean": held["margin_mean"],
        "flipped_pairs_fit": float((fit > 0).float().mean()) if fit.numel() else float("nan"),
        "final_train_loss": float(metrics["loss"]),
        "label_smoothing": lcfg.label_smoothing,
        "gamma0": lcfg.gamma0 if method.base == "simpo" else 0.0,
        "wall_s": time.perf_counter() - start,
    }
    for c in curve:
        c.update(method=method.key, flip_rate=flip_rate, seed=seed)
    return RunOutput(row, curve, pd.concat(dumps, ignore_index=True), noisy, records)


def _dump_rows(step: int, record: dict[str, torch.Tensor]) -> pd.DataFrame:
    """One step's pairs in the γ-dump schema (single rank: dp_rank 0, one micro-batch)."""
    ids = record["pair_ids"]
    n = ids.numel()
    gamma = record.get("gamma")
    return pd.DataFrame(
        {
            "step": step,
            "microbatch": 0,
            "dp_rank": 0,
            "pair": np.arange(n),
            "pair_id": ids.numpy(),
            "margin": record["margins"].float().numpy(),
            "gamma": gamma.float().numpy() if gamma is not None else np.full(n, np.nan, dtype=np.float32),
            "loss": record["local_losses"].float().numpy(),
            "valid": record["valid"].numpy(),
        }
    )


def write_run_dir(out: RunOutput, run_dir: Path) -> Path:
    """Write a run as a run directory: ``gamma_dumps/`` through :class:`PairDumper` and ``train.jsonl``.

    ``nemo-gammapo data suspects RUN_DIR --data RUN_DIR/train.jsonl`` then reads it like a NeMo run.
    """
    dumper = PairDumper(run_dir, every=1, max_pairs=max(r["pair_ids"].numel() for r in out.records))
    for step, record in enumerate(out.records):
        dumper.write(step, [record], dp_rank=0)
    rows = [{k: v for k, v in r.items() if k != "pair_id"} for r in out.train]
    (run_dir / "train.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows), encoding="utf-8")
    return run_dir
