"""Version adapters: where our pinned torch and megatron-core disagree, on every device.

Unlike :mod:`nemo_gammapo.cpu_compat` (CPU-only stand-ins for CUDA), these fix an interface or
behaviour mismatch between two library versions, so they apply on GPU machines too. Each one is
gated on the behaviour it fixes — probed, not guessed from version strings — so it is a no-op
where the two libraries agree. With torch 2.6.0 (PyPI; `requirements/constraints-container.txt`) the writer's
signature agrees with megatron-core 0.11's call and the load plan already refuses size
mismatches, so only the shape-mismatch adapter installs there; with torch 2.13 both do.

Call :func:`apply_version_adapters` once per process before the first checkpoint is saved or
loaded; it is idempotent and returns the names of the adapters it installed.
"""

from __future__ import annotations

import dataclasses
import inspect
import threading
from typing import Any

import torch

_lock = threading.Lock()
_installed: dict[str, bool] = {}


def checkpoint_writer_signature_differs() -> bool:
    """Probe: does torch's private ``_write_item`` take ``transforms`` first (torch > 2.6)?

    megatron-core 0.11 calls ``_write_item(stream, data, write_item, storage_key)``, which matches
    torch 2.6.0; later torch added ``transforms`` first and ``serialization_format`` last.
    """
    from torch.distributed.checkpoint import filesystem as tfs

    return next(iter(inspect.signature(tfs._write_item).parameters)) == "transforms"


def adapt_checkpoint_writer() -> bool:
    """Let megatron-core 0.11's async checkpoint writer call a newer torch's ``_write_item``.

    Gated on :func:`checkpoint_writer_signature_differs`.
    """
    from megatron.core.dist_checkpointing.strategies import filesystem_async
    from torch.distributed.checkpoint import filesystem as tfs

    if not checkpoint_writer_signature_differs() or getattr(filesystem_async._write_item, "_gammapo_adapter", False):
        return False

    def write_item(stream: Any, data: Any, write_item: Any, storage_key: str) -> Any:
        return tfs._write_item(
            tfs._StorageWriterTransforms(), stream, data, write_item, storage_key, tfs.SerializationFormat.TORCH_SAVE
        )

    write_item._gammapo_adapter = True  # type: ignore[attr-defined]
    filesystem_async._write_item = write_item
    return True


def default_load_plan_refuses_size_mismatch() -> bool:
    """Probe: does torch's default load plan raise when a saved tensor's global size differs?

    torch 2.6.0 and later do (2.5.1 does not); megatron-core 0.11 relies on reading overlapping
    chunks of differently sized tensors. NVIDIA's container build (2.6.0a0) is probed like any other.
    """
    from torch.distributed.checkpoint import default_planner
    from torch.distributed.checkpoint.metadata import (
        ChunkStorageMetadata,
        Metadata,
        TensorProperties,
        TensorStorageMetadata,
    )

    saved = TensorStorageMetadata(
        properties=TensorProperties(dtype=torch.float32),
        size=torch.Size([2]),
        chunks=[ChunkStorageMetadata(offsets=torch.Size([0]), sizes=torch.Size([2]))],
    )
    try:
        default_planner.create_default_local_load_plan({"x": torch.zeros(3)}, Metadata({"x": saved}))
    except ValueError:
        return True
    return False


def adapt_shape_mismatch_loading() -> bool:
    """Restore megatron-core's ``allow_shape_mismatch`` loading (resharding across TP sizes).

    The padded vocabulary is a multiple of ``make_vocab_size_divisible_by × TP``, so the embedding
    and output layer change global shape with TP; megatron-core marks them ``allow_shape_mismatch``
    (zero-fills, then reads the overlapping rows). torch's default load plan (2.6.0 on) refuses any size
    mismatch first, so a TP1 checkpoint could not be restored at TP2. For exactly the tensors
    megatron-core left out of its own shape validation, the planner now sees the saved size as the
    current one; read items still come from the saved chunks' real offsets and sizes, so only the
    overlap is read and the padding rows keep their zeros.
    """
    if not default_load_plan_refuses_size_mismatch():
        return False
    from megatron.core.dist_checkpointing.strategies.torch import MCoreLoadPlanner

    if getattr(MCoreLoadPlanner.create_local_plan, "_gammapo_adapter", False):
        return False
    upstream = MCoreLoadPlanner.create_local_plan

    def create_local_plan(self: Any) -> Any:
        validated = {sh_ten.key for sh_ten in self.shapes_validation_sharded_tensors}
        entries = self.metadata.state_dict_metadata
        resized = {}
        for fqn, obj in self.state_dict.items():
            md = entries.get(fqn)
            size = getattr(obj, "size", None)
            if fqn in validated or not hasattr(md, "chunks") or size is None or md.size == obj.size():
                continue
            resized[fqn] = dataclasses.replace(md, size=obj.size())
        if not resized:
            return upstream(self)
        original = self.metadata
        self.metadata = dataclasses.replace(original, state_dict_metadata={**entries, **resized})
        try:
            return upstream(self)
        finally:
            self.metadata = original

    create_local_plan._gammapo_adapter = True  # type: ignore[attr-defined]
    MCoreLoadPlanner.create_local_plan = create_local_plan
    return True


def apply_version_adapters() -> list[str]:
    """Install every adapter whose mismatch is present; returns the names installed now."""
    installed = []
    with _lock:
        for name, adapter in (
            ("checkpoint_writer", adapt_checkpoint_writer),
            ("shape_mismatch_loading", adapt_shape_mismatch_loading),
        ):
            if name not in _installed:
                _installed[name] = adapter()
                if _installed[name]:
                    installed.append(name)
    return installed
