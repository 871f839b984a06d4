"""CPU compatibility shims for megatron-core, NeMo and NeMo-Aligner — CPU runs only.

megatron-core hard-codes CUDA in places that have nothing to do with the maths: buffers are
allocated on ``torch.cuda.current_device()``, the RNG tracker swaps CUDA generator states,
pipeline p2p calls ``torch.cuda.synchronize()``. On a machine without CUDA (our CI, a laptop
demo) these shims route each of those to the CPU so the *real* megatron-core code runs with gloo
process groups. Each shim was found by running the code; each says what it replaces and why.

Rules: every patch that replaces CUDA-only code for CPU runs lives here; none is applied when CUDA
is available (:func:`apply_cpu_patches` and :func:`apply_nemo_cpu_patches` raise,
:func:`maybe_apply_cpu_patches` returns ``False``), and every patch is idempotent.

It is not the only place that patches a library at run time. Two others, for other reasons:

* :mod:`nemo_gammapo.version_adapters` bridges mismatches between library *versions* (torch and
  megatron-core) on every device, each adapter gated on a probe of the behaviour it fixes;
* :func:`nemo_gammapo.data.sources.local_fs_compat` swaps ``datasets``' ``is_remote_filesystem``
  check while a local file is loaded (datasets 2.14 with a newer fsspec), and restores it after.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

_applied: set[str] = set()
_lock = threading.Lock()


def _is_cuda_device(device: Any) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    return isinstance(device, int) and not isinstance(device, bool)  # a bare CUDA ordinal


class CudaToCpuMode(TorchFunctionMode):
    """Rewrites ``device="cuda"`` (or a CUDA ordinal) to CPU and drops ``pin_memory=True``."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if "device" in kwargs and _is_cuda_device(kwargs["device"]):
            kwargs["device"] = "cpu"
        if kwargs.get("pin_memory"):
            kwargs["pin_memory"] = False
        if func in (torch.Tensor.to, torch.Tensor.cuda) and args:
            args = tuple(
                "cpu" if (i > 0 and not isinstance(a, int) and _is_cuda_device(a)) else a for i, a in enumerate(args)
            )
            if func is torch.Tensor.cuda:
                return args[0]
        return func(*args, **kwargs)


_mode: CudaToCpuMode | None = None


class _NullStream:
    """``torch.cuda.Stream`` stand-in: CPU work is already ordered."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def wait_stream(self, other: Any) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def record_event(self, event: Any = None) -> _NullEvent:
        return event or _NullEvent()


class _NullEvent:
    """``torch.cuda.Event`` stand-in (timing events report 0 ms)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def record(self, stream: Any = None) -> None:
        pass

    def wait(self, stream: Any = None) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def query(self) -> bool:
        return True

    def elapsed_time(self, other: Any) -> float:
        return 0.0


def _enter_mode() -> None:
    global _mode
    if _mode is None:
        _mode = CudaToCpuMode()
        _mode.__enter__()  # stays active for the life of the (CPU-only) process


def _cpu_rng_tracker_patches() -> None:
    """Map the CUDA RNG state calls megatron-core makes onto the CPU default generator."""
    from megatron.core.tensor_parallel import random as mrandom

    def get_state(device: Any = "cuda", clone: bool = False, graph_safe: bool = False) -> torch.Tensor:
        return torch.get_rng_state()

    def set_state(new_state: torch.Tensor, device: int = -1, graph_safe: bool = False) -> None:
        torch.set_rng_state(new_state)

    @contextlib.contextmanager
    def fork(self: Any, name: str = mrandom._MODEL_PARALLEL_RNG_TRACKER_NAME) -> Any:
        # Same contract as upstream fork(), but the tracked state *is* the CPU generator's, so
        # upstream's "CPU RNG state changed" check would fire on every dropout.
        if name not in self.states_:
            raise KeyError(f"rng state {name} is not added")
        outer = torch.get_rng_state()
        torch.set_rng_state(self.states_[name])
        try:
            yield
        finally:
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(outer)

    mrandom.CudaRNGStatesTracker.fork = fork
    mrandom._get_cuda_rng_state = get_state
    mrandom._set_cuda_rng_state = set_state
    torch.cuda.get_rng_state = lambda device="cuda": torch.get_rng_state()
    torch.cuda.set_rng_state = lambda state, device="cuda": torch.set_rng_state(state)
    # "The device generator" is the CPU generator here, as in a CUDA run's per-device seeding.
    # (torch.manual_seed itself calls torch.cuda.manual_seed_all, hence the no-op there.)
    torch.cuda.manual_seed = lambda seed: torch.default_generator.manual_seed(int(seed))
    torch.cuda.manual_seed_all = lambda seed: None


class SequenceParallelTorchNorm:
    """megatron-core's torch-norm fallback (no apex, no Transformer Engine), with sequence parallel.

    Upstream's ``WrappedTorchNorm`` refuses ``sequence_parallel``; the fused norms it stands in for
    only need to mark their parameters ``sequence_parallel`` so that their gradients — computed on
    a sequence shard per TP rank — are all-reduced over the TP group (NeMo does that for every
    parameter so marked). A ``torch.nn.LayerNorm`` / ``RMSNorm`` does the same maths.
    """

    def __new__(
        cls,
        config: Any,
        hidden_size: int,
        eps: float = 1e-5,
        persist_layer_norm: bool = False,
        zero_centered_gamma: bool = False,
        normalization: str = "LayerNorm",
    ) -> torch.nn.Module:
        if config.layernorm_zero_centered_gamma or config.memory_efficient_layer_norm:
            raise ValueError("zero-centred / memory-efficient layer norms need apex or Transformer Engine")
        norms = {"LayerNorm": torch.nn.LayerNorm, "RMSNorm": torch.nn.RMSNorm}
        if config.normalization not in norms:
            raise ValueError(f"normalization must be one of {sorted(norms)} (got {config.normalization!r})")
        norm = norms[config.normalization](normalized_shape=hidden_size, eps=eps)
        for param in norm.parameters():
            param.sequence_parallel = config.sequence_parallel
        return norm


def _torch_norm_patches() -> None:
    from megatron.core.models.gpt import gpt_layer_specs
    from megatron.core.transformer import transformer_block

    if getattr(gpt_layer_specs, "HAVE_APEX", False) or getattr(transformer_block, "HAVE_TE", False):
        return  # the fused norms are in use
    gpt_layer_specs.LNImpl = SequenceParallelTorchNorm
    transformer_block.LayerNormImpl = SequenceParallelTorchNorm


def apply_cpu_patches() -> None:
    """Make megatron-core run on CPU with gloo. Call once per process, before building models.

    Raises:
        RuntimeError: if CUDA is available (never patch a GPU run).
    """
    if torch.cuda.is_available():
        raise RuntimeError("nemo_gammapo.cpu_compat must not be applied when CUDA is available")
    with _lock:
        if "megatron" in _applied:
            return
        torch.cuda.current_device = lambda: "cpu"
        torch.cuda.synchronize = lambda device=None: None
        torch.cuda.device_count = lambda: 0
        torch.cuda.set_device = lambda device: None
        torch.cuda.Stream = _NullStream
        torch.cuda.Event = _NullEvent
        torch.cuda.current_stream = lambda device=None: _NullStream()
        torch.cuda.stream = lambda stream: contextlib.nullcontext()
        _enter_mode()
        _cpu_rng_tracker_patches()
        _torch_norm_patches()
        _applied.add("megatron")


def maybe_apply_cpu_patches(nemo: bool = False) -> bool:
    """Apply the CPU patches when CUDA is absent; returns whether they are active.

    ``nemo=True`` adds the NeMo / NeMo-Aligner ones (call it before importing NeMo).
    """
    if torch.cuda.is_available():
        return False
    apply_cpu_patches()
    if nemo:
        apply_nemo_cpu_patches()
    return True


def apply_nemo_cpu_patches() -> None:
    """CPU shims for NeMo 2.2.1 (1.x-style NLP collection) and NeMo-Aligner 0.7.0."""
    if torch.cuda.is_available():
        raise RuntimeError("nemo_gammapo.cpu_compat must not be applied when CUDA is available")
    with _lock:
        if "nemo" in _applied:
            return
        # NeMo checks for an NGC container through this variable before taking torch code paths.
        os.environ.setdefault("NVIDIA_PYTORCH_VERSION", "cpu")
        _nemo_apex_stand_ins()
        _applied.add("nemo")


@torch.no_grad()
def clip_grad_norm_model_parallel(
    parameters: Any, max_norm: float, norm_type: float = 2, use_fsdp: bool = False
) -> torch.Tensor:
    """Plain-torch gradient clipping with the model-parallel norm (what NeMo's apex version does).

    Tensor-parallel duplicates (replicated params) and pipeline-shared copies (tied embeddings)
    count once; the squared norm is summed over
    the model-parallel group, so every TP/PP rank clips with the same global norm.
    """
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel.layers import param_is_not_tensor_parallel_duplicate
    from megatron.core.transformer.module import param_is_not_shared

    if norm_type != 2:
        raise NotImplementedError("only the L2 norm is supported on CPU")
    params = [p for p in ([parameters] if isinstance(parameters, torch.Tensor) else parameters) if p.grad is not None]
    # A parameter held by two pipeline stages (the tied embedding / output weight at PP > 1) has
    # the same gradient on both after the embedding all-reduce: count the first stage's copy only.
    model_parallel = torch.distributed.is_initialized() and parallel_state.model_parallel_is_initialized()
    counted = [
        p.grad.float()
        for p in params
        if param_is_not_shared(p) and (not model_parallel or param_is_not_tensor_parallel_duplicate(p))
    ]
    total = torch.stack([g.pow(2).sum() for g in counted]).sum() if counted else torch.zeros(())
    if model_parallel:
        torch.distributed.all_reduce(total, group=parallel_state.get_model_parallel_group())
    total_norm = total.sqrt()
    coeff = (max_norm / (total_norm + 1e-6)).clamp(max=1.0)
    for p in params:
        p.grad.mul_(coeff)
    return total_norm


def broadcast_2d_tensor(
    tensor: torch.Tensor | None, src: int, group: Any, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """NeMo-Aligner's ``broadcast_2d_tensor`` contract (shape, then data, from global rank ``src``) on CPU.

    Aligner's version builds its shape message with the CUDA-only ``torch.cuda.FloatTensor``; it moves
    the reference log-probs from the last pipeline stage to the others at PP > 1.
    """
    if torch.distributed.get_rank() == src:
        if tensor is None or tensor.ndim != 2:
            raise ValueError(f"broadcast_2d_tensor: expected a 2-D tensor on the source rank, got {tensor!r:.80}")
        tensor = tensor.to(dtype).contiguous()
        shape = torch.tensor(tensor.shape, dtype=torch.int64)
        torch.distributed.broadcast(shape, src, group)
    else:
        shape = torch.empty(2, dtype=torch.int64)
        torch.distributed.broadcast(shape, src, group)
        tensor = torch.empty(*shape.tolist(), dtype=dtype)
    torch.distributed.broadcast(tensor, src, group)
    return tensor


_STEP_KEY = "nemo_gammapo_adam_step"


def _scalar_optimizer_step_patches(nlp_overrides: Any) -> None:
    """Checkpoint torch Adam's per-parameter scalar ``step`` through NeMo's distributed checkpoint.

    On GPU NeMo uses apex / megatron distributed optimizers; on CPU we use torch ``adamw``,
    whose per-parameter ``step`` is a 0-dim tensor that megatron's sharding of optimizer state
    (which expects parameter-shaped state) rejects. Every parameter is stepped together, so the
    steps are one number: it goes into each (non-sharded) param-group entry on save and back onto
    every parameter on load, so resumed runs continue with the same Adam bias correction,
    bit-exactly. One number, not one per parameter, because the param groups are written by global
    rank 0 only and hold a different number of parameters on each pipeline stage.
    """
    from lightning.pytorch.strategies import Strategy

    upstream_to_sharding = nlp_overrides.optim_state_to_sharding_state

    def to_sharding_state(optim_state_dict: dict, id_to_sharded_param_map: dict, exclude_keys: tuple = ()) -> None:
        # optimizer.state_dict() shares the per-parameter dicts with the live optimizer: copy.
        optim_state_dict["state"] = {pid: dict(st) for pid, st in optim_state_dict["state"].items()}
        steps = [
            st.pop("step")
            for st in optim_state_dict["state"].values()
            if isinstance(st.get("step"), torch.Tensor) and st["step"].dim() == 0
        ]
        if any(not torch.equal(step, steps[0]) for step in steps):
            seen = sorted({step.item() for step in steps})
            raise RuntimeError(f"Adam steps differ between parameters ({seen}); cannot save them as one number")
        upstream_to_sharding(optim_state_dict, id_to_sharded_param_map, exclude_keys)
        for group in optim_state_dict["param_groups"]:
            group[_STEP_KEY] = steps[0].clone() if steps else None

    nlp_overrides.optim_state_to_sharding_state = to_sharding_state
    upstream_load = Strategy.load_optimizer_state_dict

    def load_optimizer_state_dict(self: Any, checkpoint: dict) -> None:
        for opt_state in checkpoint.get("optimizer_states", []):
            for group in opt_state.get("param_groups", []):
                step = group.pop(_STEP_KEY, None)
                if step is None:
                    continue
                for pid in group["params"]:
                    if pid in opt_state["state"]:
                        opt_state["state"][pid]["step"] = step.clone()
        upstream_load(self, checkpoint)

    nlp_overrides.NLPDDPStrategy.load_optimizer_state_dict = load_optimizer_state_dict


def _lora_without_transformer_engine() -> None:
    """NeMo's LoRA mixins for megatron-core import TE's ``SplitAlongDim`` unconditionally.

    They already fall back to ``torch.split`` when it is ``None``; without Transformer Engine its
    megatron-core module cannot be imported at all, so the mixins get a stand-in module whose
    ``SplitAlongDim`` is ``None`` (no other name: anything else looking for TE there still fails).
    """
    import importlib.util
    import sys
    import types

    name = "megatron.core.extensions.transformer_engine"
    if importlib.util.find_spec("transformer_engine") is not None or name in sys.modules:
        return
    stand_in = types.ModuleType(name, "CPU stand-in: Transformer Engine is not installed")
    stand_in.SplitAlongDim = None
    sys.modules[name] = stand_in


class _AbsentOptimizer:
    """Stands in for an apex-only optimizer class that NeMo names in isinstance checks."""


def _nemo_apex_stand_ins() -> None:
    """NeMo guards whole code paths on apex; give those paths the torch / megatron-core parts."""
    _lora_without_transformer_engine()  # before NeMo's adapter mixins are first imported
    from megatron.core.transformer.module import Float16Module  # noqa: F401  (import order)
    from nemo.collections.nlp.modules.common.megatron import utils as megatron_utils
    from nemo.collections.nlp.parts import nlp_overrides

    # NLPDDPStrategy refuses to start without apex; the optimizers it would use are apex-only
    # and never selected on CPU (we use torch adamw), but their names are used in isinstance.
    nlp_overrides.HAVE_APEX = True
    for name in ("MegatronDistributedFusedAdam", "McoreDistributedOptimizer"):
        if not hasattr(nlp_overrides, name):
            setattr(nlp_overrides, name, type(name, (_AbsentOptimizer,), {}))
    # NLPModel.__init__ lists NeMo's pretrained BERT names by importing the BERT model, whose
    # module needs Transformer Engine; GPT training does not need that list.
    from nemo.collections.nlp.models import nlp_model

    nlp_model.get_megatron_pretrained_bert_models = lambda: []
    # get_specs() builds every entry of its spec table, Transformer Engine ones included, to
    # return one; without TE only the local (megatron-core) spec can be built.
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from nemo.collections.nlp.models.language_modeling import megatron_gpt_model

    upstream_get_specs = megatron_gpt_model.get_specs

    def get_specs(
        spec_name: str, transformer_config: Any = None, use_te: bool = True, *args: Any, **kwargs: Any
    ) -> Any:
        if spec_name == "" and not use_te:
            num_experts = transformer_config.num_moe_experts if transformer_config else None
            grouped = transformer_config.moe_grouped_gemm if transformer_config else False
            return get_gpt_layer_local_spec(num_experts, grouped)
        return upstream_get_specs(spec_name, transformer_config, use_te, *args, **kwargs)

    megatron_gpt_model.get_specs = get_specs
    # NeMo seeds megatron's model-parallel RNG tracker only when a CUDA device exists; without
    # it every dropout/initialisation fork fails. Seed it the same way on CPU.
    from megatron.core import tensor_parallel
    from megatron.core.parallel_state import get_pipeline_model_parallel_rank
    from nemo.collections.nlp.modules.common.megatron import megatron_init

    upstream_set_random_seed = megatron_init._set_random_seed

    def set_random_seed(seed: int) -> None:
        upstream_set_random_seed(seed)
        tensor_parallel.model_parallel_cuda_manual_seed(seed + 100 * get_pipeline_model_parallel_rank())

    megatron_init._set_random_seed = set_random_seed
    # build_model() calls an apex symbol that megatron-core provides under the same name.
    from megatron.core.tensor_parallel.layers import set_defaults_if_not_set_tensor_model_parallel_attributes
    from nemo.collections.nlp.modules.common.megatron import build_model

    build_model.set_defaults_if_not_set_tensor_model_parallel_attributes = (
        set_defaults_if_not_set_tensor_model_parallel_attributes
    )
    # NeMo's fp32 grad clipping asserts torch.cuda.FloatTensor gradients and uses apex's
    # multi-tensor kernels; NeMo-Aligner's trainer calls it through its own import.
    from nemo_aligner.utils import train_utils

    train_utils.clip_grad_norm_fp32 = clip_grad_norm_model_parallel
    # The reference log-probs travel from the last pipeline stage with a CUDA-only broadcast.
    from nemo_aligner.models.nlp.gpt import megatron_gpt_dpo_model
    from nemo_aligner.utils import distributed as aligner_distributed

    aligner_distributed.broadcast_2d_tensor = broadcast_2d_tensor
    megatron_gpt_dpo_model.broadcast_2d_tensor = broadcast_2d_tensor
    # DPOTrainer empties the CUDA caching allocator after every step, with a full gc.collect()
    # first; there is no such allocator on CPU, and the collection costs ~0.4 s a step with NeMo
    # loaded (Python's automatic collection still runs).
    from nemo_aligner.algorithms import dpo

    dpo.clear_memory = lambda: None
    _scalar_optimizer_step_patches(nlp_overrides)
    # Apex-only helpers imported by NeMo's megatron utils.
    if not hasattr(megatron_utils, "listify_model"):
        megatron_utils.listify_model = lambda model: model if isinstance(model, list) else [model]
    for name, torch_class in (
        ("FusedLayerNorm", torch.nn.LayerNorm),
        ("FastLayerNorm", torch.nn.LayerNorm),
        ("MixedFusedRMSNorm", torch.nn.RMSNorm),
    ):
        if not hasattr(megatron_utils, name):
            setattr(megatron_utils, name, torch_class)
