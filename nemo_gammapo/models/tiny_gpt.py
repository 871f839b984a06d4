"""A tiny megatron-core ``GPTModel`` whose weights do not depend on the parallel layout.

Used by the robustness study, the training-step benchmark and the invariance tests, which compare
TP/PP/DP layouts against a single process "from the same weights". Every parameter is filled from
a generator seeded by its *global* name (pipeline layer offsets undone), drawn at its *full*
(unsharded) shape and then sliced to this tensor-parallel rank's shard, so every layout holds
exactly the same model. :func:`unfused_transformer_config` is also the GPU benchmark's config.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.models.gpt.gpt_model import GPTModel
from megatron.core.transformer.transformer_config import TransformerConfig
from torch import Tensor


@dataclass(frozen=True)
class TinyGPTConfig:
    """Sizes of the tiny GPT and the standard deviation of its (non-norm) initial weights."""

    num_layers: int = 2
    hidden_size: int = 32
    num_attention_heads: int = 4
    ffn_hidden_size: int = 64
    vocab_size: int = 64
    seq_length: int = 16
    init_std: float = 0.15


def unfused_transformer_config(**fields: object) -> TransformerConfig:
    """A ``TransformerConfig`` without dropout or apex/TE fusions (runs on CPU and any GPU).

    ``fields`` are the model's own settings (sizes, dtypes, parallelism) and override the defaults.
    """
    defaults: dict[str, object] = {
        "hidden_dropout": 0.0,
        "attention_dropout": 0.0,
        "bias_dropout_fusion": False,
        "masked_softmax_fusion": False,
        "gradient_accumulation_fusion": False,
        "persist_layer_norm": False,
    }
    return TransformerConfig(**{**defaults, **fields})


def build_tiny_gpt(cfg: TinyGPTConfig, seed: int = 0) -> GPTModel:
    """Build this rank's shard of the tiny GPT (parallel_state must be initialised)."""
    tc = unfused_transformer_config(
        num_layers=cfg.num_layers,
        hidden_size=cfg.hidden_size,
        num_attention_heads=cfg.num_attention_heads,
        ffn_hidden_size=cfg.ffn_hidden_size,
        tensor_model_parallel_size=parallel_state.get_tensor_model_parallel_world_size(),
        pipeline_model_parallel_size=parallel_state.get_pipeline_model_parallel_world_size(),
        pipeline_dtype=torch.float32,
        use_cpu_initialization=True,
    )
    model = GPTModel(
        config=tc,
        transformer_layer_spec=get_gpt_layer_local_spec(),
        vocab_size=cfg.vocab_size,
        max_sequence_length=cfg.seq_length,
        pre_process=parallel_state.is_pipeline_first_stage(),
        post_process=parallel_state.is_pipeline_last_stage(),
        share_embeddings_and_output_weights=False,
    )
    fill_layout_independent(model, seed, cfg.init_std)
    return model


def global_param_names(model: torch.nn.Module) -> dict[str, str]:
    """Local parameter name -> global name (pipeline-local layer index replaced by the global one)."""
    offsets = {}
    for name, module in model.named_modules():
        m = re.fullmatch(r"decoder\.layers\.(\d+)", name)
        if m:
            offsets[int(m.group(1))] = module.layer_number - 1
    out = {}
    for name, _ in model.named_parameters():
        m = re.match(r"decoder\.layers\.(\d+)\.(.*)", name)
        out[name] = f"decoder.layers.{offsets[int(m.group(1))]}.{m.group(2)}" if m else name
    return out


def _tp_info(p: Tensor) -> tuple[bool, int]:
    return bool(getattr(p, "tensor_model_parallel", False)), int(getattr(p, "partition_dim", -1))


@torch.no_grad()
def fill_layout_independent(model: torch.nn.Module, seed: int, std: float) -> None:
    """Fill every parameter from a generator seeded by ``seed`` and its global name, then shard it.

    Norm weights become ``1 + 0.1·N(0, 1)``, everything else ``std·N(0, 1)``; each tensor is drawn at
    its full shape and sliced to this tensor-parallel rank, so the model is the same at every layout.
    """
    tp = parallel_state.get_tensor_model_parallel_world_size()
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    names = global_param_names(model)
    for name, p in model.named_parameters():
        sharded, dim = _tp_info(p)
        full_shape = list(p.shape)
        if sharded:
            full_shape[dim] *= tp
        g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(names[name].encode()))
        full = torch.randn(full_shape, generator=g)
        full = 1.0 + 0.1 * full if "norm" in name and name.endswith("weight") else std * full
        if sharded:
            full = full.chunk(tp, dim=dim)[tp_rank]
        p.copy_(full)


def full_gradients(model: torch.nn.Module) -> dict[str, Tensor]:
    """Unsharded gradients keyed by global name (tensor-parallel shards all-gathered)."""
    tp = parallel_state.get_tensor_model_parallel_world_size()
    group = parallel_state.get_tensor_model_parallel_group()
    names = global_param_names(model)
    out = {}
    for name, p in model.named_parameters():
        grad = p.grad if p.grad is not None else torch.zeros_like(p)
        sharded, dim = _tp_info(p)
        if sharded and tp > 1:
            parts = [torch.empty_like(grad) for _ in range(tp)]
            dist.all_gather(parts, grad.contiguous(), group=group)
            grad = torch.cat(parts, dim=dim)
        out[names[name]] = grad.detach().clone()
    return out
