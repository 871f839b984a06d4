"""Read a ``conf/*.yaml`` training config (composed with Hydra) into the planner's inputs.

The configs come from :func:`nemo_gammapo.configs.config_dir` (the checkout's ``conf/``, or the
copy an installed wheel carries).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nemo_gammapo.configs import compose
from nemo_gammapo.launch.memory import RECOMPUTE_GRANULARITIES, Layout, Training

# Mandatory (???) keys the planner does not need; placeholders let the config compose.
PLACEHOLDERS = [
    "pretrained_checkpoint.restore_from_path=/planner/model.nemo",
    "model.data.data_prefix.train=[/planner/train.jsonl]",
    "model.data.data_prefix.validation=[/planner/val.jsonl]",
]


def compose_config(name: str, overrides: list[str] | None = None, conf_dir: Path | None = None) -> Any:
    """Compose ``conf_dir/<name>.yaml`` with Hydra (defaults list, overrides) and resolve it.

    ``conf_dir`` defaults to the package's config directory (:func:`~nemo_gammapo.configs.config_dir`).
    """
    from omegaconf import OmegaConf

    cfg = compose(name, [*PLACEHOLDERS, *(overrides or [])], conf_dir)
    OmegaConf.resolve(cfg)
    return cfg


def needs_reference(loss_name: str) -> bool:
    """Whether the loss reads reference-policy log-probs (NeMo-Aligner's own rpo_* losses do)."""
    from nemo_gammapo.core.registry import get_loss_spec

    if loss_name.startswith("rpo_"):
        return True
    return get_loss_spec(loss_name).needs_reference


def training_from_config(cfg: Any, grad_bytes: int = 4, overhead_gib: float = 4.0) -> Training:
    """The layout-independent training settings of a composed config."""
    m = cfg.model
    granularity = m.get("activations_checkpoint_granularity")
    if granularity not in RECOMPUTE_GRANULARITIES:
        raise ValueError(f"model.activations_checkpoint_granularity must be one of {RECOMPUTE_GRANULARITIES}")
    dropout = float(m.get("hidden_dropout") or 0.0) > 0 or float(m.get("attention_dropout") or 0.0) > 0
    return Training(
        seq_length=int(m.encoder_seq_length),
        micro_batch_size=int(m.micro_batch_size),
        global_batch_size=int(m.global_batch_size),
        optimizer=str(m.optim.name),
        grad_bytes=grad_bytes,
        recompute_granularity=granularity,
        recompute_method=m.get("activations_checkpoint_method"),
        recompute_num_layers=m.get("activations_checkpoint_num_layers"),
        flash_attention=bool(m.get("transformer_engine", False)),
        dropout=dropout,
        needs_reference=needs_reference(str(m.dpo.preference_loss)),
        overhead_gib=overhead_gib,
    )


def layout_from_config(cfg: Any) -> Layout:
    """The configured layout; DP is what the configured world size leaves over."""
    m = cfg.model
    tp, pp = int(m.tensor_model_parallel_size), int(m.pipeline_model_parallel_size)
    cp = int(m.get("context_parallel_size") or 1)
    world = int(cfg.trainer.num_nodes) * int(cfg.trainer.devices)
    if world % (tp * pp * cp):
        raise ValueError(f"world size {world} is not a multiple of TP·PP·CP = {tp * pp * cp}")
    return Layout(tp=tp, pp=pp, cp=cp, dp=world // (tp * pp * cp), sequence_parallel=bool(m.sequence_parallel))
