"""One seeded robustness-study run: the tiny megatron-core GPT trained with the shipped ``GammaPOLoss``.

The step is megatron-core's own ``get_forward_backward_func`` schedule (one micro-batch, no
pipelining) with :meth:`GammaPOLoss.forward_step`, so every method goes through the real loss,
margin queue and solver; then gradient clipping and torch AdamW with linear warm-up and cosine
decay. Everything runs in the calling process on one CPU thread, which makes a run bit-for-bit
repeatable for a given seed; many runs can share one process (see :func:`ensure_single_process_group`).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from megatron.core import parallel_state
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

from nemo_gammapo.core.config import GammaConfig, PreferenceLossConfig
from nemo_gammapo.core.registry import LOSSES, REFERENCE_FREE
from nemo_gammapo.data.noise import flip_records
from nemo_gammapo.distributed.gamma_loss import GammaPOLoss
from nemo_gammapo.distributed.process_groups import init_single_process_group
from nemo_gammapo.models.tiny_gpt import TinyGPTConfig, build_tiny_gpt
from nemo_gammapo.study.data import VOCAB_SIZE, PairTensors, encode_pairs

# The study's default grid; any reference-free registry loss can be studied by name.
METHODS = ("simpo", "gamma_simpo", "rsimpo", "beta_simpo")


@dataclass(frozen=True)
class StudyConfig:
    """Hyperparameters shared by every method of the study (units noted where they matter).

    ``rsimpo_epsilon``: ``"flip_rate"`` gives rSimPO the true flip rate as its ε (the oracle
    setting rDPO assumes); a number fixes ε for all rates.
    """

    steps: int = 64
    batch_pairs: int = 16
    lr: float = 2e-3
    warmup_steps: int = 6
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    beta: float = 5.0
    gamma_beta_ratio: float = 0.2  # γ0 = 1.0 (β-scaled margin units)
    tau: float = 5.0
    queue_capacity: int = 64
    solve_size: int = 24
    beta_dpo_alpha: float = 0.1
    rsimpo_epsilon: str | float = "flip_rate"
    num_layers: int = 2
    hidden_size: int = 64
    num_attention_heads: int = 4
    ffn_hidden_size: int = 256
    seq_length: int = 32
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


def loss_config(method: str, flip_rate: float, cfg: StudyConfig) -> PreferenceLossConfig:
    """The registry loss config of ``method`` at this flip rate (rSimPO's ε may depend on it)."""
    if method not in REFERENCE_FREE:  # the study trains without a reference model
        raise ValueError(
            f"method must be a reference-free registry loss, one of {sorted(REFERENCE_FREE)} (got {method!r})"
        )
    eps = 0.0
    if "label_smoothing" in LOSSES[method].params:  # rSimPO-style losses: ε from the flip rate or fixed
        eps = flip_rate if cfg.rsimpo_epsilon == "flip_rate" else float(cfg.rsimpo_epsilon)
    return PreferenceLossConfig(
        name=method,
        beta=cfg.beta,
        gamma_beta_ratio=cfg.gamma_beta_ratio,
        label_smoothing=min(eps, 0.499),
        beta_dpo_alpha=cfg.beta_dpo_alpha,
    )


def _lr_factor(step: int, cfg: StudyConfig) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(cfg.steps - cfg.warmup_steps, 1)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


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
def evaluate(
    loss: GammaPOLoss, model: torch.nn.Module, pairs: PairTensors, cfg: StudyConfig, chunk: int = 128
) -> dict[str, float]:
    """Preference accuracy (share of pairs with margin > 0) and mean β-scaled margin on ``pairs``.

    Runs the loss in eval mode, so the margin queue is never touched.
    """
    model.eval()
    loss.eval()
    correct = margin_sum = 0.0
    for start in range(0, len(pairs), chunk):
        index = torch.arange(start, min(start + chunk, len(pairs)))
        metrics = _run_schedule(loss, model, pairs.batch(index), cfg, forward_only=True)
        correct += float(metrics["preference_accuracy"]) * len(index)
        margin_sum += float(metrics["margin_mean"]) * len(index)
    loss.train()
    model.train()
    n = max(len(pairs), 1)
    return {"accuracy": correct / n, "margin_mean": margin_sum / n}


def train_one(
    method: str,
    flip_rate: float,
    seed: int,
    train_records: list[dict[str, Any]],
    val_records: list[dict[str, Any]],
    cfg: StudyConfig,
) -> dict[str, Any]:
    """Train ``method`` on ``train_records`` with labels flipped at ``flip_rate`` (flip seed = ``seed``).

    Returns one results row: clean held-out accuracy and mean margin, the share of flipped training
    pairs the model ends up agreeing with (their *noisy* label; lower = less noise memorised), the
    realised flip rate, final training loss, γ statistics of the last step and wall seconds.
    """
    ensure_single_process_group()
    start = time.perf_counter()
    noisy, flips = flip_records(train_records, flip_rate, seed)
    train = encode_pairs(noisy, cfg.seq_length)
    val = encode_pairs(val_records, cfg.seq_length)
    flipped = set(flips.flipped_ids)
    flipped_pairs = encode_pairs([r for r in noisy if str(r["id"]) in flipped], cfg.seq_length)

    torch.manual_seed(seed)
    model_parallel_cuda_manual_seed(seed + 1)
    model = build_tiny_gpt(
        TinyGPTConfig(
            num_layers=cfg.num_layers,
            hidden_size=cfg.hidden_size,
            num_attention_heads=cfg.num_attention_heads,
            ffn_hidden_size=cfg.ffn_hidden_size,
            vocab_size=VOCAB_SIZE,
            seq_length=cfg.seq_length,
            init_std=cfg.init_std,
        ),
        seed=seed,
    )
    loss = GammaPOLoss(
        loss_config(method, flip_rate, cfg),
        GammaConfig(tau=cfg.tau, queue_capacity=cfg.queue_capacity, solve_size=cfg.solve_size, seed=seed),
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, cfg))
    order = torch.Generator().manual_seed(seed)
    perm, cursor = torch.randperm(len(train), generator=order), 0
    metrics: dict[str, torch.Tensor] = {}
    for _ in range(cfg.steps):
        if cursor + cfg.batch_pairs > len(train):
            perm, cursor = torch.randperm(len(train), generator=order), 0
        index = perm[cursor : cursor + cfg.batch_pairs]
        cursor += cfg.batch_pairs
        optimizer.zero_grad(set_to_none=True)
        metrics = _run_schedule(loss, model, train.batch(index), cfg, forward_only=False)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()

    held_out = evaluate(loss, model, val, cfg)
    noise_fit = evaluate(loss, model, flipped_pairs, cfg)["accuracy"] if len(flipped_pairs) else float("nan")
    return {
        "method": method,
        "flip_rate": flip_rate,
        "seed": seed,
        "realised_flip_rate": flips.rate,
        "heldout_accuracy": held_out["accuracy"],
        "heldout_margin_mean": held_out["margin_mean"],
        "flipped_pairs_fit": noise_fit,
        "final_train_loss": float(metrics["loss"]),
        "final_gamma_mean": float(metrics["gamma_mean"]),
        "final_gamma_std": float(metrics["gamma_std"]),
        "label_smoothing": loss.loss_config.label_smoothing,
        "wall_s": time.perf_counter() - start,
    }
