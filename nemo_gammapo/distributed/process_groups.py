"""Process groups for the tools and the tests: one place that picks ports, starts groups and ends them.

* :func:`free_port` — a TCP port on 127.0.0.1 that is free now (for a rendezvous).
* :func:`init_process_group` — join a group from the torchrun-style environment (NCCL with CUDA, else
  gloo) with a hard collective timeout (:data:`TIMEOUT`), so a dead peer fails a collective instead of
  blocking it forever.
* :func:`init_single_process_group` — a group of size 1 on a free port, unless one exists (the GPU
  benchmark and the robustness study run megatron-core in the calling process).
* :func:`teardown` — megatron-core's model-parallel state, then the process group.
* :func:`run_on_ranks` — a function on N local ranks in fresh processes, each with its group, under
  a hard timeout; the per-rank results come back (the training-step and NeMo benchmarks, the tests).
* :func:`preload_rank_modules` — start those processes from a fork server that imported the heavy
  modules once (the test suite: importing the NeMo stack costs ~17 s per process on 2 cores).
"""

from __future__ import annotations

import datetime
import os
import random
import signal
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

LOCALHOST = "127.0.0.1"
# How long any collective may wait for a peer before it fails.
TIMEOUT = datetime.timedelta(seconds=120)
_preloaded: list[str] = []  # modules of the fork server's preload (empty: ranks are spawned)


def preload_rank_modules(modules: Sequence[str]) -> None:
    """Start :func:`run_on_ranks`' processes from a fork server that imported ``modules`` once.

    Call it before the first :func:`run_on_ranks` of the process (the server starts with the
    first call and lives until this process exits). Each rank is then a fork of that server
    instead of a fresh interpreter: the imports are paid once per session instead of once per
    rank. The server must only import (no threads, no computation), so that forking it is safe.
    A rank still gets this process's current environment variables, working directory and
    ``sys.path``, as a spawned one does.
    """
    _preloaded[:] = list(modules)
    mp.get_context("forkserver").set_forkserver_preload(_preloaded)


FIRST_RENDEZVOUS_PORT = 10000  # free_port() picks from here up to the ephemeral range


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for a rendezvous), below the kernel's ephemeral range.

    A port the kernel hands out for binding to port 0 comes from the same range as every outgoing
    connection's local port, so with other processes connecting (gloo, SLURM, another test worker) it
    can be taken between this check and the rendezvous server's bind (EADDRINUSE): a random port below
    that range is never handed out implicitly. Random from the OS, not from ``random`` (seeded runs
    would pick the same port in every process)."""
    low = 32768
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    pick = random.SystemRandom()
    for _ in range(64 if low > FIRST_RENDEZVOUS_PORT else 0):
        port = pick.randrange(FIRST_RENDEZVOUS_PORT, low)
        with socket.socket() as s:
            try:
                s.bind((LOCALHOST, port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # no room below the ephemeral range: any free port
        s.bind((LOCALHOST, 0))
        return s.getsockname()[1]


def reset_between_runs(rank: int) -> None:
    """Between two training runs in the same processes: tear down what a fresh process would not
    have — megatron-core's model-parallel state, the micro-batch calculator (runs may differ in
    batch sizes) and the process group — and agree on a new rendezvous port (``MASTER_PORT``).
    Call it on every rank of the group."""
    from megatron.core import parallel_state
    from megatron.core.num_microbatches_calculator import destroy_num_microbatches_calculator

    port = [free_port() if rank == 0 else None]
    dist.broadcast_object_list(port, src=0)
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    destroy_num_microbatches_calculator()
    dist.destroy_process_group()
    os.environ["MASTER_PORT"] = str(port[0])


def default_backend() -> str:
    """``"nccl"`` when CUDA is available, else ``"gloo"``."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def torchrun_env(rank: int, world_size: int, port: int, addr: str = LOCALHOST) -> dict[str, str]:
    """The environment torchrun gives rank ``rank`` of a single-node job of ``world_size`` processes.

    With it, launchers such as PyTorch Lightning treat the ranks as started externally
    (``LOCAL_RANK``) and join the same rendezvous (``MASTER_ADDR``/``MASTER_PORT``).
    """
    return {
        "MASTER_ADDR": addr,
        "MASTER_PORT": str(port),
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": str(world_size),
        "LOCAL_WORLD_SIZE": str(world_size),
    }


def init_process_group(
    rank: int, world_size: int, backend: str | None = None, timeout: datetime.timedelta = TIMEOUT
) -> None:
    """Join the default process group at ``MASTER_ADDR``/``MASTER_PORT`` (see :func:`torchrun_env`).

    ``backend`` defaults to :func:`default_backend`; with NCCL this process first selects GPU
    ``rank % device_count``.
    """
    backend = backend or default_backend()
    if backend == "nccl":
        torch.cuda.set_device(rank % torch.cuda.device_count())
    dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=timeout)


def init_single_process_group(backend: str = "gloo", timeout: datetime.timedelta = TIMEOUT) -> bool:
    """A default process group of size 1 on a free 127.0.0.1 port, unless one exists already.

    Returns whether it created one. ``MASTER_ADDR`` is set to 127.0.0.1 if unset (megatron-core's
    later ``new_group`` calls need no more).
    """
    if dist.is_initialized():
        return False
    os.environ.setdefault("MASTER_ADDR", LOCALHOST)
    init_method = f"tcp://{LOCALHOST}:{free_port()}"
    dist.init_process_group(backend, init_method=init_method, rank=0, world_size=1, timeout=timeout)
    return True


def teardown() -> None:
    """Destroy megatron-core's model-parallel state (if megatron is installed and it exists), then the group."""
    try:
        from megatron.core import parallel_state

        if parallel_state.model_parallel_is_initialized():
            parallel_state.destroy_model_parallel()
    except ImportError:
        pass
    if dist.is_initialized():
        dist.destroy_process_group()


def _entry(
    worker: Callable[..., Any],
    rank: int,
    world_size: int,
    port: int,
    out_dir: str,
    kwargs: dict[str, Any],
    init_group: bool,
    parent: tuple[dict[str, str], str, list[str]],
) -> None:
    out = Path(out_dir)
    os.setpgid(0, 0)  # a group of its own: the helpers it starts go with it (see run_on_ranks)
    try:
        # The caller's, now: a fork server's are from when it started (its own additions, such
        # as the CPU patches' environment variables, stay).
        environ, cwd, path = parent
        os.environ.update(environ)
        os.chdir(cwd)
        sys.path[:] = path
        torch.set_num_threads(1)
        os.environ.update(torchrun_env(rank, world_size, port))
        from nemo_gammapo.cpu_compat import maybe_apply_cpu_patches
        from nemo_gammapo.version_adapters import apply_version_adapters

        maybe_apply_cpu_patches()
        apply_version_adapters()
        if init_group:
            init_process_group(rank, world_size)
        try:
            result = worker(rank, world_size, **kwargs)
        finally:
            teardown()
        torch.save(result, out / f"rank{rank}.pt")
    except BaseException:
        (out / f"rank{rank}.err").write_text(traceback.format_exc())
        raise


def _kill_group(pid: int | None) -> None:
    """SIGKILL what is left of a rank's process group: helpers it spawned (megatron's checkpoint
    writer manager, ...) outlive a rank that died without its exit handlers (killed, ``os._exit``)."""
    if pid is None:
        return
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_on_ranks(
    worker: Callable[..., Any],
    world_size: int,
    timeout_s: float = 180.0,
    kwargs: dict[str, Any] | None = None,
    init_process_group: bool = True,
) -> list[Any]:
    """Run ``worker(rank, world_size, **kwargs)`` on ``world_size`` fresh processes; the results in rank order.

    ``worker`` must be importable (module level): the ranks are spawned (or forked from the fork
    server of :func:`preload_rank_modules`). Each rank gets
    ``torch.set_num_threads(1)``, the torchrun environment (:func:`torchrun_env`, one free port),
    the CPU patches when CUDA is absent, the version adapters and — unless
    ``init_process_group=False``, for workers that create the group themselves (e.g. through
    PyTorch Lightning) — a process group (:func:`init_process_group`), torn down (:func:`teardown`)
    when the worker returns or raises. Each rank's return value comes back through ``torch.save``.
    A failing rank's traceback is raised in the caller as ``RuntimeError``; if any rank is still
    running after ``timeout_s`` every rank is killed and ``TimeoutError`` is raised (a failed rank
    would otherwise leave the others blocked in a collective forever). Each rank leads its own
    process group, which is killed once the rank has ended: nothing a rank started outlives the call.
    """
    ctx = mp.get_context("forkserver" if _preloaded else "spawn")
    parent = (dict(os.environ), os.getcwd(), list(sys.path))
    with tempfile.TemporaryDirectory(prefix="gammapo-ranks-") as out_dir:
        port = free_port()
        procs = [
            ctx.Process(
                target=_entry,
                args=(worker, r, world_size, port, out_dir, kwargs or {}, init_process_group, parent),
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
                _kill_group(p.pid)
        errors = sorted(Path(out_dir).glob("rank*.err"))
        if errors:
            first = errors[0]
            raise RuntimeError(f"{first.stem} failed:\n{first.read_text()}")
        bad = [(r, p.exitcode) for r, p in enumerate(procs) if p.exitcode != 0]
        if bad:
            raise RuntimeError(f"ranks exited abnormally (rank, exitcode): {bad}")
        return [torch.load(Path(out_dir) / f"rank{r}.pt", weights_only=False) for r in range(world_size)]
