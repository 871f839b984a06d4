"""CPU compatibility shims for megatron-core (and, later, NeMo / NeMo-Aligner) — CPU runs only.

megatron-core hard-codes CUDA in places that have nothing to do with the maths: buffers are
allocated on ``torch.cuda.current_device()``, the RNG tracker swaps CUDA generator states,
pipeline p2p calls ``torch.cuda.synchronize()``. On a machine without CUDA (our CI, a laptop
demo) these shims route each of those to the CPU so the *real* megatron-core code runs with gloo
process groups. Each shim was found by running the code (see DESIGN §5).

Rules: this is the only module that patches third-party code; it refuses to do anything when
CUDA is available (:func:`apply_cpu_patches` raises), and every patch is idempotent.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

_applied: set[str] = set()
_lock = threading.Lock()


def cpu_patches_applied() -> bool:
    return "megatron" in _applied


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


def adapt_megatron_checkpoint_writer() -> bool:
    """Let megatron-core 0.11's async checkpoint writer call torch >= 2.6's ``_write_item``.

    Not a CPU patch but a version adapter (our pinned stack pairs megatron-core 0.11 with torch
    2.13): megatron calls the private ``_write_item(stream, data, write_item, storage_key)``;
    newer torch added ``transforms`` first and ``serialization_format`` last. Gated on the
    signature, so it is a no-op where the two agree (e.g. inside a matching NGC container).
    Returns whether the adapter was installed.
    """
    import inspect

    from megatron.core.dist_checkpointing.strategies import filesystem_async
    from torch.distributed.checkpoint import filesystem as tfs

    params = list(inspect.signature(tfs._write_item).parameters)
    if params[0] != "transforms" or getattr(filesystem_async._write_item, "_gammapo_adapter", False):
        return False

    def write_item(stream: Any, data: Any, write_item: Any, storage_key: str) -> Any:
        return tfs._write_item(
            tfs._StorageWriterTransforms(), stream, data, write_item, storage_key, tfs.SerializationFormat.TORCH_SAVE
        )

    write_item._gammapo_adapter = True  # type: ignore[attr-defined]
    filesystem_async._write_item = write_item
    return True


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
        _enter_mode()
        _cpu_rng_tracker_patches()
        adapt_megatron_checkpoint_writer()
        _applied.add("megatron")


def maybe_apply_cpu_patches() -> bool:
    """Apply :func:`apply_cpu_patches` when CUDA is absent; returns whether patches are active."""
    if torch.cuda.is_available():
        return False
    apply_cpu_patches()
    return True
