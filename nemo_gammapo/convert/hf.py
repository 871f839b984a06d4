"""Hugging Face ``transformers`` checkpoints ↔ NeMo 1.x ``.nemo`` files that γ-PO training restores.

    hf_to_nemo("/ckpt/Llama-3-8B-Instruct", "/ckpt/llama3-8b-instruct.nemo", family="llama", tp=8)
    run_to_nemo("runs/x", "/ckpt/x-trained.nemo")  # the run's newest complete checkpoint
    nemo_to_hf("/ckpt/x-trained.nemo", "/ckpt/llama3-8b-gammapo-hf")  # family: the one recorded

The weight mapping is NeMo's own: each family's ``HF<Family>Importer`` / ``HF<Family>Exporter`` from
``nemo.collections.llm.gpt.model`` (NeMo 2.x) converts between the ``transformers`` state dict and the
megatron-core ``GPTModel`` state names, and we call its ``convert_state`` unchanged. Two small
adapters let the NeMo 2.x connectors act on the NeMo 1.x model that NeMo-Aligner trains:

* The connectors name the Transformer Engine layout (``linear_qkv.layer_norm_weight``); a model built
  without Transformer Engine (the CPU stack) keeps its norms in ``input_layernorm`` /
  ``pre_mlp_layernorm``. megatron-core records that correspondence on each layer
  (``submodules_config.sharded_state_dict_keys_map``, what its distributed checkpoints use); we rename
  with it, so the same code serves both layouts.
* ``apply_transforms`` wants modules on both sides; the megatron-core side is handed over as a module
  tree holding exactly the state in those names (:class:`_StateTree`), with the model's config.

The ``.nemo`` is written by NeMo itself (``MegatronGPTModel.save_to``, a distributed checkpoint inside)
at TP1/PP1, so it restores at the training run's layout; the vocabulary keeps the checkpoint's row
count (``override_vocab_size``), so the embedding has one shape at every TP (docs/hf.md). The
tokenizer is the Hugging Face one, referenced by the folder it was converted from
(``model.tokenizer.type``): keep that folder, or override the key when training elsewhere.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "FAMILIES",
    "Family",
    "check_layout",
    "hf_to_nemo",
    "nemo_model_config",
    "nemo_session",
    "nemo_to_hf",
    "run_checkpoint",
    "run_to_hf",
    "run_to_nemo",
    "save_hf",
]


@dataclass(frozen=True)
class Family:
    """One model family: its ``transformers`` classes and NeMo's connectors, named after ``stem``."""

    name: str  # also the module in nemo.collections.llm.gpt.model
    stem: str  # Llama: LlamaConfig, LlamaForCausalLM, HFLlamaImporter, HFLlamaExporter
    qkv_bias: bool = False
    # whether NeMo's connectors map tied input/output embeddings; the others import a tied
    # checkpoint untied (output layer = a copy of the embedding) and export it untied, as NeMo does
    ties: bool = False

    @property
    def hf_config(self) -> str:
        return f"{self.stem}Config"

    @property
    def hf_model(self) -> str:
        return f"{self.stem}ForCausalLM"

    @property
    def importer(self) -> str:
        return f"nemo.collections.llm.gpt.model.{self.name}:HF{self.stem}Importer"

    @property
    def exporter(self) -> str:
        return f"nemo.collections.llm.gpt.model.{self.name}:HF{self.stem}Exporter"


FAMILIES: dict[str, Family] = {
    "llama": Family("llama", "Llama", ties=True),
    "mistral": Family("mistral", "Mistral"),
    "qwen2": Family("qwen2", "Qwen2", qkv_bias=True),
}
UNSUPPORTED = {
    "gemma2": "Gemma-2 needs logit soft-capping, alternating sliding-window attention and extra post-norms, "
    "which NeMo 1.x's megatron-core GPT builds only with Transformer Engine; not converted here",
}

# Settings the CPU build needs but a .nemo should not carry (a GPU run keeps NeMo's defaults for them).
CPU_RUNTIME = {
    "megatron_amp_O2": False,
    "transformer_engine": False,
    "use_cpu_initialization": True,
    "masked_softmax_fusion": False,
    "bias_activation_fusion": False,
    "bias_dropout_add_fusion": False,
    "gradient_accumulation_fusion": False,
    "persist_layer_norm": False,
    "apply_rope_fusion": False,
    "precision": 32,
}
# Training-only sections of the base config, left out of the .nemo (the training config supplies them).
NOT_SAVED = ("dpo", "data", "optim", "peft", "restore_from_path", "resume_from_checkpoint")
EMBEDDING_KEY = "model.embedding.word_embeddings.weight"  # its name in NeMo's distributed checkpoints


def get_family(name: str) -> Family:
    """The :class:`Family` called ``name``; ``ValueError`` naming the supported ones otherwise."""
    if name in FAMILIES:
        return FAMILIES[name]
    if name in UNSUPPORTED:
        raise ValueError(f"family {name!r}: {UNSUPPORTED[name]}")
    raise ValueError(f"unknown family {name!r}; supported: {', '.join(FAMILIES)}")


def _load(spec: str) -> Any:
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


def _transformers(name: str) -> Any:
    import transformers

    return getattr(transformers, name)


def vocab_divisor(vocab_size: int, tp: int = 1) -> int:
    """The largest ``make_vocab_size_divisible_by`` (≤ 128) that pads ``vocab_size`` by nothing at ``tp``."""
    base = 128
    while base > 1 and vocab_size % (base * tp):
        base //= 2
    return base


def check_layout(hf_config: Any, tp: int = 1, pp: int = 1) -> None:
    """Raise ``ValueError`` unless a model of ``hf_config`` can be trained at tensor/pipeline sizes ``tp``/``pp``.

    TP splits the attention heads, the KV groups, the MLP width and the (unpadded, see
    :func:`nemo_model_config`) vocabulary; PP splits the layers.
    """
    c = hf_config
    if tp < 1 or pp < 1:
        raise ValueError(f"TP and PP must be positive, got TP={tp}, PP={pp}")
    splits = {
        "num_attention_heads": (c.num_attention_heads, tp, "TP"),
        "num_key_value_heads": (getattr(c, "num_key_value_heads", None) or c.num_attention_heads, tp, "TP"),
        "intermediate_size": (c.intermediate_size, tp, "TP"),
        "vocab_size": (c.vocab_size, tp, "TP"),
        "num_hidden_layers": (c.num_hidden_layers, pp, "PP"),
    }
    for key, (size, parts, name) in splits.items():
        if size % parts:
            raise ValueError(f"{key} = {size} is not divisible by {name}={parts}")


def nemo_model_config(hf_config: Any, fam: Family, hf_dir: str | Path) -> dict[str, Any]:
    """The NeMo 1.x ``model`` keys (architecture and tokenizer) of a ``transformers`` config, at TP1/PP1.

    The vocabulary keeps the checkpoint's ``vocab_size`` rows at every layout (``override_vocab_size``)
    instead of NeMo's padding of the tokenizer's size to ``make_vocab_size_divisible_by × TP``: the
    weights then have one shape at any TP that divides it (no resharding of padded rows), and a
    checkpoint with more rows than its tokenizer has tokens (Qwen2) loads as it is.
    """
    c = hf_config
    heads = c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // heads
    cfg: dict[str, Any] = {
        "mcore_gpt": True,
        "num_layers": c.num_hidden_layers,
        "hidden_size": c.hidden_size,
        "ffn_hidden_size": c.intermediate_size,
        "num_attention_heads": heads,
        "num_query_groups": getattr(c, "num_key_value_heads", None) or heads,
        "kv_channels": head_dim,
        "encoder_seq_length": c.max_position_embeddings,
        "max_position_embeddings": c.max_position_embeddings,
        "init_method_std": c.initializer_range,
        "normalization": "rmsnorm",
        "layernorm_epsilon": c.rms_norm_eps,
        "activation": "fast-swiglu",
        "bias": False,
        "qkv_bias": fam.qkv_bias,
        "position_embedding_type": "rope",
        "rotary_percentage": 1.0,
        "rotary_base": float(getattr(c, "rope_theta", 10000.0)),
        "share_embeddings_and_output_weights": bool(getattr(c, "tie_word_embeddings", False)) and fam.ties,
        "make_vocab_size_divisible_by": vocab_divisor(c.vocab_size),  # unused with override_vocab_size
        "override_vocab_size": c.vocab_size,
        # the true vocabulary: the way back (nemo_to_hf) and MegatronGPTGammaPOModel's logit mask read it
        "hf_vocab_size": c.vocab_size,
        "hf_family": fam.name,  # nemo_to_hf's default family
        "hidden_dropout": 0.0,
        "attention_dropout": float(getattr(c, "attention_dropout", 0.0)),
        "ffn_dropout": 0.0,
        "apply_query_key_layer_scaling": False,
        "tensor_model_parallel_size": 1,
        "pipeline_model_parallel_size": 1,
        "tokenizer": {
            "library": "huggingface",
            "type": str(Path(hf_dir).resolve()),
            "model": None,
            "vocab_file": None,
            "merge_file": None,
            "use_fast": True,
        },
    }
    if getattr(c, "hidden_act", "silu") != "silu":
        raise ValueError(f"hidden_act {c.hidden_act!r}: only SwiGLU (silu) models are converted")
    scaling = getattr(c, "rope_scaling", None)
    if scaling:
        kind = scaling.get("rope_type", scaling.get("type"))
        if kind != "llama3":
            raise ValueError(f"rope_scaling {kind!r} is not supported by NeMo 1.x GPT (only llama3)")
        cfg.update(
            scale_positional_embedding=True,
            scale_factor=scaling.get("factor", 8.0),
            low_freq_factor=scaling.get("low_freq_factor", 1.0),
            high_freq_factor=scaling.get("high_freq_factor", 4.0),
            old_context_len=scaling.get("original_max_position_embeddings", 8192),
        )
    window = getattr(c, "sliding_window", None)
    if window is not None and getattr(c, "use_sliding_window", True) and window < c.max_position_embeddings:
        cfg["window_size"] = [window, 0]  # NeMo 1.x passes it to megatron-core (Transformer Engine only)
    return cfg


def hf_config_from_nemo(cfg: Any, fam: Family, vocab_size: int) -> Any:
    """The ``transformers`` config of a NeMo 1.x model config (the inverse of :func:`nemo_model_config`)."""
    if cfg.get("normalization") != "rmsnorm" or cfg.get("activation") not in ("fast-swiglu", "swiglu"):
        raise ValueError("only RMSNorm + SwiGLU (Llama-shaped) models export to Hugging Face")
    heads = cfg.num_attention_heads
    kwargs: dict[str, Any] = {
        "vocab_size": vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.ffn_hidden_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": heads,
        "num_key_value_heads": cfg.get("num_query_groups") or heads,
        "max_position_embeddings": cfg.max_position_embeddings,
        "rms_norm_eps": cfg.layernorm_epsilon,
        "rope_theta": cfg.get("rotary_base", 10000),
        "initializer_range": cfg.get("init_method_std", 0.02),
        "tie_word_embeddings": bool(cfg.get("share_embeddings_and_output_weights", False)),
        "torch_dtype": "float32",
    }
    kv_channels = cfg.get("kv_channels")
    if kv_channels and kv_channels != cfg.hidden_size // heads:
        kwargs["head_dim"] = kv_channels
    if cfg.get("scale_positional_embedding"):
        kwargs["rope_scaling"] = {
            "rope_type": "llama3",
            "factor": cfg.get("scale_factor", 8.0),
            "low_freq_factor": cfg.get("low_freq_factor", 1.0),
            "high_freq_factor": cfg.get("high_freq_factor", 4.0),
            "original_max_position_embeddings": cfg.get("old_context_len", 8192),
        }
    window = cfg.get("window_size")
    if fam.name in ("mistral", "qwen2"):
        kwargs["sliding_window"] = window[0] if window else None
        if fam.name == "qwen2":
            kwargs["use_sliding_window"] = bool(window)
    return _transformers(fam.hf_config)(**kwargs)


# --- the megatron-core side --------------------------------------------------------------------


class _StateTree(nn.Module):
    """A module tree holding ``state`` under exactly its dotted names, plus a ``config`` attribute.

    What ``apply_transforms`` needs on the megatron-core side: ``state_dict()`` / ``named_parameters()``
    in the connector's names and ``config`` (megatron-core's ``TransformerConfig``) for the QKV layout.
    """

    def __init__(self, state: dict[str, torch.Tensor], config: Any) -> None:
        super().__init__()
        self.config = config
        for name, tensor in state.items():
            *path, leaf = name.split(".")
            module: nn.Module = self
            for part in path:
                if part not in module._modules:
                    module.add_module(part, nn.Module())
                module = module._modules[part]
            module.register_parameter(leaf, nn.Parameter(tensor.detach().clone(), requires_grad=False))


def mcore_module(model: Any) -> nn.Module:
    """The megatron-core ``GPTModel`` inside a NeMo 1.x ``MegatronGPTModel`` (unwrapping Float16Module)."""
    inner = model.model
    if isinstance(inner, list):
        if len(inner) != 1:
            raise ValueError("virtual pipeline stages are not supported by the converter")
        inner = inner[0]
    while not hasattr(inner, "decoder") and hasattr(inner, "module"):
        inner = inner.module
    return inner


def _connector_names(mcore: nn.Module) -> Callable[[str], str]:
    """Local-layout state name → the connector's (Transformer Engine) name, from megatron-core's own key maps."""
    renames: list[tuple[str, str]] = []
    for prefix, module in mcore.named_modules():
        keys_map = getattr(getattr(module, "submodules_config", None), "sharded_state_dict_keys_map", None) or {}
        renames += [(f"{prefix}.{old}", f"{prefix}.{new}") for old, new in keys_map.items()]

    def rename(name: str) -> str:
        for old, new in renames:
            if name.startswith(old):
                return new + name[len(old) :]
        return name

    return rename


def _weights(mcore: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in mcore.state_dict().items() if not k.endswith("_extra_state") and v is not None}


def load_hf_weights(mcore: nn.Module, hf_model: nn.Module, fam: Family) -> None:
    """Copy a ``transformers`` model's weights into a megatron-core ``GPTModel`` with NeMo's importer."""
    rename = _connector_names(mcore)
    local = _weights(mcore)
    to_local = {rename(k): k for k in local}
    tree = _StateTree({rename(k): v for k, v in local.items()}, mcore.config)
    importer = _load(fam.importer)
    converted = importer(str(hf_model.name_or_path or "hf")).convert_state(hf_model, tree)
    state = {to_local[k]: v for k, v in converted.state_dict().items()}
    missing, unexpected = mcore.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("_extra_state")]
    if missing or unexpected:
        raise RuntimeError(f"weights not matched: missing {missing}, unexpected {unexpected}")


def export_hf_weights(mcore: nn.Module, hf_model: nn.Module, fam: Family) -> None:
    """Copy a megatron-core ``GPTModel``'s weights into a ``transformers`` model with NeMo's exporter."""
    rename = _connector_names(mcore)
    tree = _StateTree({rename(k): v for k, v in _weights(mcore).items()}, mcore.config)
    hf_config = hf_model.config
    exporter_cls = _load(fam.exporter)
    # The exporter reads the target's config from a NeMo 2.x context; ours is the HF config we built.
    exporter = type(exporter_cls.__name__, (exporter_cls,), {"config": property(lambda self: hf_config)})
    exporter("nemo").convert_state(tree, hf_model)


# --- NeMo 1.x model: build, save, restore ---------------------------------------------------------


def _base_config(tp: int, pp: int, run_dir: str) -> Any:
    from omegaconf import open_dict

    from nemo_gammapo.configs import compose

    cfg = compose(
        "gpt_gammapo",
        [
            f"run_dir={run_dir}",
            f"trainer.accelerator={'gpu' if torch.cuda.is_available() else 'cpu'}",
            "trainer.devices=1",
            "trainer.precision=32",
            f"model.tensor_model_parallel_size={tp}",
            f"model.pipeline_model_parallel_size={pp}",
            "model.micro_batch_size=1",
            "model.global_batch_size=1",
            "model.sequence_parallel=false",
        ],
    )
    with open_dict(cfg):
        cfg.model.update(CPU_RUNTIME)
    return cfg


@contextlib.contextmanager
def nemo_session() -> Iterator[None]:
    """This process as a 1-rank job for NeMo: CPU patches without CUDA, version adapters, a process group."""
    from nemo_gammapo.cpu_compat import maybe_apply_cpu_patches
    from nemo_gammapo.distributed.process_groups import free_port, init_single_process_group, teardown

    maybe_apply_cpu_patches(nemo=True)
    from nemo_gammapo.version_adapters import apply_version_adapters

    apply_version_adapters()
    # a 1-process torchrun environment for PyTorch Lightning; a launcher's own is left as it is
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "RANK": "0", "LOCAL_RANK": "0"}
    env["WORLD_SIZE"] = "1"
    saved = {k: os.environ.get(k) for k in env}
    for k, v in env.items():
        os.environ.setdefault(k, v)
    created = init_single_process_group()
    try:
        yield
    finally:
        if created:  # what a fresh process would not have: the micro-batch calculator, the groups
            from megatron.core.num_microbatches_calculator import destroy_num_microbatches_calculator

            destroy_num_microbatches_calculator()
            teardown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)


def _trainer(cfg: Any) -> Any:
    from nemo_aligner.utils.train_script_utils import resolve_and_create_trainer

    return resolve_and_create_trainer(cfg, "dpo")


def load_hf(hf_dir: str | Path, fam: Family) -> Any:
    """The ``transformers`` model in ``hf_dir`` on the CPU in float32, in eval mode."""
    model = _transformers(fam.hf_model).from_pretrained(str(hf_dir), torch_dtype=torch.float32)
    return model.eval()


def hf_to_nemo(
    hf_dir: str | Path,
    out_nemo: str | Path,
    family: str = "llama",
    tp: int = 1,
    pp: int = 1,
    progress: Callable[[str], None] = lambda msg: None,
) -> Path:
    """Convert the ``transformers`` checkpoint in ``hf_dir`` into the ``.nemo`` file ``out_nemo``.

    Runs in this process as a 1-rank job (a gloo group of size 1 is created when none exists) and
    always writes a TP1/PP1 ``.nemo``: its weights are a distributed checkpoint, which NeMo restores
    at the training run's layout. ``tp`` / ``pp`` are the layout the model will be trained at; they
    are checked (:func:`check_layout`) so that a model that cannot be split that way fails here, not
    at the start of a training job. Returns ``out_nemo``.
    """
    fam = get_family(family)
    out = Path(out_nemo).resolve()
    hf_config = _transformers(fam.hf_config).from_pretrained(str(hf_dir))
    check_layout(hf_config, tp, pp)  # before any weights are read
    model_cfg = nemo_model_config(hf_config, fam, hf_dir)
    progress(f"{fam.hf_model}: {hf_config.num_hidden_layers} layers, checked for TP={tp}, PP={pp}")
    with nemo_session(), tempfile.TemporaryDirectory(prefix="gammapo-convert-") as scratch:
        from nemo.collections.nlp.models.language_modeling.megatron_gpt_model import MegatronGPTModel
        from nemo_aligner.utils.train_script_utils import init_distributed
        from omegaconf import open_dict

        progress(f"loading {hf_dir}")
        hf_model = load_hf(hf_dir, fam)
        cfg = _base_config(1, 1, scratch)
        with open_dict(cfg):
            cfg.model.update(model_cfg)
            cfg.model.update(CPU_RUNTIME)
        trainer = _trainer(cfg)
        progress("building the NeMo model (TP1/PP1; restores at any layout that divides it)")
        model = MegatronGPTModel(cfg.model, trainer)
        init_distributed(trainer, model, False)
        progress("mapping the weights (NeMo's importer)")
        load_hf_weights(mcore_module(model), hf_model, fam)
        out.parent.mkdir(parents=True, exist_ok=True)
        progress(f"writing {out}")
        _save_nemo(model, out)
    return out


def _save_nemo(model: Any, out: Path) -> None:
    """``model.save_to(out)`` without the training-only and CPU-runtime keys of its config."""
    from omegaconf import open_dict

    with open_dict(model.cfg):
        for key in (*NOT_SAVED, *CPU_RUNTIME):
            model.cfg.pop(key, None)
    model.save_to(str(out))


def run_checkpoint(run_dir: str | Path) -> Path:
    """The newest complete checkpoint under ``run_dir/checkpoints`` (as training's resume picks it).

    ``FileNotFoundError`` when there is none; unfinished ones are skipped, not moved.
    """
    from nemo_gammapo.aligner.checkpoints import newest_complete

    checkpoint_dir = Path(run_dir) / "checkpoints"
    entry = newest_complete(checkpoint_dir)
    if entry is None:
        raise FileNotFoundError(f"no complete checkpoint in {checkpoint_dir}")
    return entry.path


def run_to_nemo(
    run_dir: str | Path,
    out_nemo: str | Path,
    checkpoint: str | Path | None = None,
    progress: Callable[[str], None] = lambda msg: None,
) -> Path:
    """Write the model weights of a training run's checkpoint as the ``.nemo`` file ``out_nemo``.

    ``checkpoint``: a NeMo distributed-checkpoint folder; by default the run's newest complete one
    (:func:`run_checkpoint`). The model config is the one the checkpoint recorded (``common.pt``);
    the weights are read at TP1/PP1 whatever layout wrote them, with the vocabulary kept at the
    checkpoint's row count, and only the model's own state is read (no optimizer or γ state).
    Full fine-tuning runs only (a PEFT run's checkpoint raises ``ValueError``). Runs in this process
    as a 1-rank job. Returns ``out_nemo``.
    """
    ckpt = Path(checkpoint) if checkpoint is not None else run_checkpoint(run_dir)
    out = Path(out_nemo).resolve()
    with nemo_session(), tempfile.TemporaryDirectory(prefix="gammapo-convert-") as scratch:
        from megatron.core import dist_checkpointing
        from nemo.collections.nlp.models.language_modeling.megatron_gpt_model import MegatronGPTModel
        from nemo_aligner.utils.train_script_utils import init_distributed
        from omegaconf import OmegaConf, open_dict

        progress(f"reading the config of {ckpt}")
        common = torch.load(ckpt / "common.pt", map_location="cpu", weights_only=False)
        model_cfg = OmegaConf.create(common["hyper_parameters"]["cfg"])
        scheme = str(OmegaConf.select(model_cfg, "peft.peft_scheme", default="none")).lower()
        if scheme not in ("none", "null"):
            raise ValueError(f"{ckpt}: a PEFT ({scheme}) run; only full fine-tuning runs are converted")
        rows = dist_checkpointing.load_tensors_metadata(str(ckpt))[EMBEDDING_KEY].global_shape[0]
        cfg = _base_config(1, 1, scratch)
        OmegaConf.set_struct(cfg, False)
        cfg.model = OmegaConf.merge(cfg.model, model_cfg)
        with open_dict(cfg.model):
            cfg.model.update(CPU_RUNTIME)
            cfg.model.update(tensor_model_parallel_size=1, pipeline_model_parallel_size=1, override_vocab_size=rows)
            for key in ("restore_from_path", "peft"):
                cfg.model.pop(key, None)
        trainer = _trainer(cfg)
        progress("building the NeMo model (TP1/PP1)")
        model = MegatronGPTModel(cfg.model, trainer)
        init_distributed(trainer, model, False)
        progress("reading the weights")
        loaded = dist_checkpointing.load({"state_dict": model.sharded_state_dict()}, str(ckpt))
        model.on_load_checkpoint(loaded)
        out.parent.mkdir(parents=True, exist_ok=True)
        progress(f"writing {out}")
        _save_nemo(model, out)
    return out


def restore_nemo(nemo: str | Path, overrides: dict[str, Any] | None = None) -> Any:
    """A NeMo 1.x ``MegatronGPTModel`` restored from a ``.nemo`` (file or extracted folder) at TP1/PP1.

    Call inside :func:`nemo_session`. ``overrides``: model keys set over the checkpoint's config.
    """
    from nemo.collections.nlp.models.language_modeling.megatron_gpt_model import MegatronGPTModel
    from nemo_aligner.utils.train_script_utils import init_distributed
    from nemo_aligner.utils.utils import load_and_override_model_config, load_from_nemo
    from omegaconf import OmegaConf

    scratch = tempfile.mkdtemp(prefix="gammapo-convert-")
    try:
        cfg = _base_config(1, 1, scratch)
        wanted = OmegaConf.create({**CPU_RUNTIME, "tensor_model_parallel_size": 1, "pipeline_model_parallel_size": 1})
        model_cfg = load_and_override_model_config(str(nemo), OmegaConf.merge(wanted, overrides or {}))
        OmegaConf.set_struct(cfg, False)
        cfg.model = OmegaConf.merge(cfg.model, model_cfg)
        trainer = _trainer(cfg)
        model = load_from_nemo(MegatronGPTModel, cfg.model, trainer, strict=True, restore_path=str(nemo))
        init_distributed(trainer, model, False)
        return model
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def nemo_to_hf(
    nemo: str | Path,
    out_dir: str | Path,
    family: str | None = None,
    progress: Callable[[str], None] = lambda msg: None,
) -> Path:
    """Convert a ``.nemo`` (file or extracted folder) into a ``transformers`` checkpoint folder ``out_dir``.

    ``family``: by default the one :func:`hf_to_nemo` recorded in the model config (``hf_family``; it
    survives training and :func:`run_to_nemo`); required for other ``.nemo`` files.
    """
    fam = get_family(family) if family is not None else None
    with nemo_session():
        progress(f"restoring {nemo}")
        model = restore_nemo(nemo)
        if fam is None:
            recorded = model.cfg.get("hf_family")
            if not recorded:
                raise ValueError(f"{nemo} records no model family (not converted by hf-to-nemo): pass the family")
            fam = get_family(recorded)
        progress(f"building {fam.hf_model} and mapping the weights (NeMo's exporter)")
        out = save_hf(model, out_dir, fam)
        progress(f"wrote {out}")
    return out


def save_hf(model: Any, out_dir: str | Path, fam: Family | str) -> Path:
    """Write a NeMo 1.x GPT model (in memory, TP1/PP1) as a ``transformers`` checkpoint folder ``out_dir``.

    The tokenizer is saved beside the weights when the model's tokenizer is a Hugging Face one.
    """
    fam = get_family(fam) if isinstance(fam, str) else fam
    out = Path(out_dir).resolve()
    hf_config = hf_config_from_nemo(model.cfg, fam, _true_vocab_size(model))
    hf_model = _transformers(fam.hf_model)(hf_config).to(torch.float32)
    export_hf_weights(mcore_module(model), hf_model, fam)
    out.mkdir(parents=True, exist_ok=True)
    hf_model.save_pretrained(str(out))
    hf_tokenizer = getattr(model.tokenizer, "tokenizer", None)
    if hasattr(hf_tokenizer, "save_pretrained"):
        hf_tokenizer.save_pretrained(str(out))
    return out


def _true_vocab_size(model: Any) -> int:
    """The unpadded vocabulary: recorded by :func:`hf_to_nemo`, else the tokenizer's (as NeMo's exporters do)."""
    recorded = model.cfg.get("hf_vocab_size")
    return int(recorded) if recorded else int(model.tokenizer.vocab_size)


def run_to_hf(
    run_dir: str | Path,
    out_dir: str | Path,
    family: str | None = None,
    checkpoint: str | Path | None = None,
    progress: Callable[[str], None] = lambda msg: None,
) -> Path:
    """A training run's checkpoint straight to a ``transformers`` folder: :func:`run_to_nemo` into a
    temporary ``.nemo`` (next to ``out_dir``, deleted afterwards), then :func:`nemo_to_hf`. Returns ``out_dir``."""
    out = Path(out_dir).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".gammapo-run-to-hf-", dir=out.parent) as scratch:
        nemo = run_to_nemo(run_dir, Path(scratch) / "model.nemo", checkpoint, progress=progress)
        return nemo_to_hf(nemo, out, family, progress=progress)
