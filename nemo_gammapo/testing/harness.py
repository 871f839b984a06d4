"""Run a function on N gloo ranks in fresh processes, with a hard timeout and clean teardown.

    results = run_on_ranks(worker, world_size=4, timeout_s=120, kwargs={...})

``worker(rank, world_size, **kwargs)`` must be importable (module level). Each rank gets
``torch.set_num_threads(1)``, the CPU patches when CUDA is absent, and a gloo process group that
is destroyed when the worker returns or raises. The return value of each rank is passed back
through ``torch.save``; a failing rank's traceback is re-raised in the parent; if any rank is
still running at the deadline every rank is killed and ``TimeoutError`` is raised (a failed rank
would otherwise leave the others blocked in a collective forever).
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for a rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(
    worker: Callable[..., Any],
    rank: int,
    world_size: int,
    port: int,
    out_dir: str,
    kwargs: dict[str, Any],
    init_process_group: bool,
) -> None:
    out = Path(out_dir)
    try:
        torch.set_num_threads(1)
        # The torchrun environment, so that launchers such as PyTorch Lightning treat the ranks as
        # started externally (LOCAL_RANK) and join the same rendezvous.
        os.environ.update(
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE=str(world_size),
            LOCAL_WORLD_SIZE=str(world_size),
        )
        from nemo_gammapo.cpu_compat import maybe_apply_cpu_patches
        from nemo_gammapo.version_adapters import apply_version_adapters

        maybe_apply_cpu_patches()
        apply_version_adapters()
        if init_process_group:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            if backend == "nccl":
                torch.cuda.set_device(rank % torch.cuda.device_count())
            dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=_pg_timeout())
        try:
            result = worker(rank, world_size, **kwargs)
        finally:
            _teardown()
        torch.save(result, out / f"rank{rank}.pt")
    except BaseException:
        (out / f"rank{rank}.err").write_text(traceback.format_exc())
        raise


def _pg_timeout() -> Any:
    import datetime

    return datetime.timedelta(seconds=120)


def _teardown() -> None:
    try:
        from megatron.core import parallel_state

        if parallel_state.model_parallel_is_initialized():
            parallel_state.destroy_model_parallel()
    except ImportError:
        pass
    if dist.is_initialized():
        dist.destroy_process_group()


def run_on_ranks(
    worker: Callable[..., Any],
    world_size: int,
    timeout_s: float = 180.0,
    kwargs: dict[str, Any] | None = None,
    init_process_group: bool = True,
) -> list[Any]:
    """Run ``worker`` on ``world_size`` fresh processes; returns the per-rank results in rank order.

    With ``init_process_group=False`` the worker creates the process group itself (e.g. through
    PyTorch Lightning) from the torchrun-style environment the harness sets.
    """
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="gammapo-ranks-") as out_dir:
        port = free_port()
        procs = [
            ctx.Process(
                target=_entry,
                args=(worker, r, world_size, port, out_dir, kwargs or {}, init_process_group),
                daemon=False,
            )
            for r in range(world_size)
        ]
        for p in procs:
            p.start()
        deadline = time.monotonic() + timeout_s
        try:
            for p in procs:
                p.join(max(0.0, deadline - time.monotonic()))
            if any(p.is_alive() for p in procs):
                raise TimeoutError(f"{worker.__name__} on {world_size} ranks exceeded {timeout_s:.0f} s; killed")
        finally:
            for p in procs:
                if p.is_alive():
                    p.kill()
                    p.join(5)
        errors = sorted(Path(out_dir).glob("rank*.err"))
        if errors:
            first = errors[0]
            raise RuntimeError(f"{first.stem} failed:\n{first.read_text()}")
        bad = [(r, p.exitcode) for r, p in enumerate(procs) if p.exitcode != 0]
        if bad:
            raise RuntimeError(f"ranks exited abnormally (rank, exitcode): {bad}")
        return [torch.load(Path(out_dir) / f"rank{r}.pt", weights_only=False) for r in range(world_size)]
