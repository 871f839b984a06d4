"""Module-level worker functions for the multi-process tests (spawned ranks import them)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from nemo_gammapo.distributed.process_groups import reset_between_runs


def _full_problem(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    b, s, v = 3, 6, 8
    mask = (torch.rand(b, s, generator=g) > 0.3).float()
    mask[2] = 0.0  # a fully masked (truncated) sequence
    return {
        "logits": torch.randn(b, s, v, generator=g) * 3,
        "labels": torch.randint(0, v, (b, s), generator=g),
        "mask": mask,
        "weights": torch.randn(b, generator=g),
    }


def _reference(p: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    logits = p["logits"].clone().requires_grad_(True)
    per_token = torch.log_softmax(logits, -1).gather(-1, p["labels"].unsqueeze(-1)).squeeze(-1)
    logps = (per_token * p["mask"]).sum(-1)
    (logps * p["weights"]).sum().backward()
    return logps.detach(), p["mask"].sum(-1), logits.grad


def logprobs_worker(rank: int, world_size: int) -> dict[str, Any]:
    """Vocab-parallel (TP=2) and context-parallel (CP=2) sequence log-probs vs the full softmax."""
    from megatron.core import parallel_state

    from nemo_gammapo.distributed import sequence_logprobs

    p = _full_problem()
    ref_logps, ref_tokens, ref_grad = _reference(p)
    out: dict[str, Any] = {"ref_logps": ref_logps, "ref_tokens": ref_tokens}

    parallel_state.initialize_model_parallel(tensor_model_parallel_size=2)
    shard = p["logits"].chunk(2, dim=-1)[rank].clone().requires_grad_(True)
    logps, tokens = sequence_logprobs(shard, p["labels"], p["mask"])
    (logps * p["weights"]).sum().backward()
    out["tp"] = {"logps": logps.detach(), "tokens": tokens, "grad": shard.grad, "ref_grad": ref_grad.chunk(2, -1)[rank]}
    parallel_state.destroy_model_parallel()

    parallel_state.initialize_model_parallel(context_parallel_size=2)
    chunk = slice(rank * 3, rank * 3 + 3)
    part = p["logits"][:, chunk].clone().requires_grad_(True)
    logps, tokens = sequence_logprobs(part, p["labels"][:, chunk], p["mask"][:, chunk])
    (logps * p["weights"]).sum().backward()
    out["cp"] = {"logps": logps.detach(), "tokens": tokens, "grad": part.grad, "ref_grad": ref_grad[:, chunk]}
    parallel_state.destroy_model_parallel()
    return out


def gather_worker(rank: int, world_size: int) -> dict[str, Any]:
    """Uneven pair counts per rank: fixed-size gather with padding and a validity mask."""
    from nemo_gammapo.distributed import gather_margins, local_slice

    n = 3 if rank == 0 else 1
    margins = torch.arange(n, dtype=torch.float32) + 10 * rank
    valid = torch.ones(n, dtype=torch.bool)
    if rank == 0:
        valid[1] = False
    all_m, all_v = gather_margins(margins, valid, dist.group.WORLD, pad_to=3)
    return {"margins": all_m, "valid": all_v, "mine": local_slice(all_m, dist.group.WORLD, n, pad_to=3)}


_CALLS: dict[str, int] = {}


def _count_reference_calls() -> dict[str, int]:
    """Count every call into the reference-policy machinery (installed once per process)."""
    if _CALLS:
        return _CALLS
    import nemo_aligner.utils.utils as aligner_utils
    from nemo_aligner.models.nlp.gpt.megatron_gpt_dpo_model import MegatronGPTDPOModel

    def counted(owner: Any, name: str) -> None:
        original = getattr(owner, name)
        _CALLS[name] = 0

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            _CALLS[name] += 1
            return original(*args, **kwargs)

        setattr(owner, name, wrapper)

    counted(MegatronGPTDPOModel, "get_ref_policy_logprobs")  # the parent's: reference forward + swap
    counted(MegatronGPTDPOModel, "get_logprob_batch")
    counted(aligner_utils, "retrieve_model_state_dict_in_cpu")
    return _CALLS


def aligner_train_worker(
    rank: int,
    world_size: int,
    run_dir: str,
    overrides: list[str],
    config_name: str = "tiny_cpu",
    restore_from_run: str | None = None,
) -> dict[str, Any]:
    """One NeMo-Aligner γ-PO training run of a tiny CPU preset (PyTorch Lightning makes the group).

    ``restore_from_run``: start from the ``.nemo`` an earlier run wrote into its ``checkpoints/``.
    Records every call into the reference-policy machinery so tests can assert it never ran.
    """
    if restore_from_run is not None:
        nemo = next((Path(restore_from_run) / "checkpoints").glob("*.nemo"))
        overrides = [f"pretrained_checkpoint.restore_from_path={nemo}", *overrides]

    from nemo_gammapo.bench.nemo_step import train_preset
    from nemo_gammapo.cpu_compat import maybe_apply_cpu_patches

    maybe_apply_cpu_patches(nemo=True)  # before the counters import NeMo-Aligner (train_preset applies it again)
    calls = _count_reference_calls()
    for name in calls:
        calls[name] = 0
    result = train_preset(world_size, run_dir, overrides, config_name)
    return {
        "history": result.history,
        "calls": dict(calls),
        "reference_free": result.reference_free,
        "holds_reference_weights": result.holds_reference_weights,
        "gamma_state": result.gamma_state,
        "stopped_on_request": result.stopped_on_request,
    }


def aligner_killed_worker(rank: int, world_size: int, run: dict[str, Any], kill_after_steps: int) -> None:
    """A training run whose processes all die (``os._exit(137)``, as under ``kill -9``) right after
    training step ``kill_after_steps``: no checkpoint, no clean-up, nothing flushed after it."""
    import os

    from nemo_gammapo.aligner.train import RunLimit

    upstream = RunLimit.is_finished

    def is_finished(self: RunLimit) -> bool:
        finished = upstream(self)
        if self.steps >= kill_after_steps:
            os._exit(137)
        return finished

    RunLimit.is_finished = is_finished
    aligner_train_worker(rank, world_size, **run)


def aligner_runs_worker(rank: int, world_size: int, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Several training runs, one after another, in the same processes (imports paid once).

    Each entry of ``runs`` holds the keyword arguments of :func:`aligner_train_worker` (and
    ``expect_user_error: True`` for a run start-up must refuse: its result is the error). Between
    runs everything a fresh process would not have is torn down — the model-parallel state, the
    micro-batch calculator and the process group (NeMo sets up the model-parallel groups while
    restoring a ``.nemo`` only when no process group exists; PP > 1 needs them then) — and the
    ranks agree on a new rendezvous port.
    """
    import time

    import torch.distributed as dist

    from nemo_gammapo.aligner.errors import UserError

    results = []
    for run in runs:
        start = time.monotonic()
        run = dict(run)
        if run.pop("expect_user_error", False):  # a run that start-up checks must refuse
            try:
                aligner_train_worker(rank, world_size, **run)
                results.append({"error": None})
            except UserError as error:
                results.append({"error": str(error), "exit_code": error.exit_code})
        else:
            results.append({**aligner_train_worker(rank, world_size, **run), "wall_s": time.monotonic() - start})
        if dist.is_initialized():
            reset_between_runs(rank)
    return results


def checkpoint_tensors(run_dir: Path, step: int, scratch: Path | None = None) -> dict[str, Any]:
    """Every tensor (weights and optimizer state) of a run's ``-last`` distributed checkpoint at ``step``.

    Read with torch's public checkpoint API into tensors allocated from the checkpoint's metadata
    (``dcp_to_torch_save`` needs the writer's ``planner_data``, which megatron-core 0.11 leaves
    ``None``: torch 2.6's converter then fails). ``scratch`` is unused (kept for callers).
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    del scratch
    (last,) = (Path(run_dir) / "checkpoints").glob(f"*-step={step}-*-last")
    reader = dcp.FileSystemReader(str(last))
    entries = reader.read_metadata().state_dict_metadata
    state = {
        key: torch.empty(md.size, dtype=md.properties.dtype)
        for key, md in entries.items()
        if isinstance(md, TensorStorageMetadata)
    }
    # no process group here: both torch 2.6 and 2.13 then read without one (2.6 has no `no_dist` argument)
    dcp.load(state, storage_reader=reader, planner=DefaultLoadPlanner(flatten_state_dict=False))
    return state


def same_state(a: Any, b: Any) -> bool:
    """Exact equality of nested state (dicts, lists, tensors, plain values), e.g. a margin queue."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(same_state, a, b))
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    return a == b


def aligner_fault_runs_worker(rank: int, world_size: int, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Like :func:`aligner_runs_worker`, for runs that may stop on a user error.

    A run entry may add ``poison_before_step: k``: just before training step ``k`` (0-based) every
    weight is multiplied by NaN on every rank — a fault injected into the model, not into the guard;
    and ``signal_before_step: (rank, k)``: that rank sends itself ``SIGUSR1`` just before step ``k``.
    A run that stops on a :class:`~nemo_gammapo.aligner.errors.UserError` returns ``{"error": str}``;
    every result lists the run's checkpoint directory as the run left it (``checkpoints_after``).
    """
    import os
    import signal

    from nemo_gammapo.aligner import finite_guard
    from nemo_gammapo.aligner.errors import UserError

    upstream = finite_guard.GuardedDPOTrainer.train_single_step
    results = []
    for run in runs:
        run = dict(run)
        poison = run.pop("poison_before_step", None)
        signal_at = run.pop("signal_before_step", None)  # (rank, step): that rank gets SIGUSR1 before that step

        def train_single_step(
            self: Any, global_batch: Any, poison: int | None = poison, signal_at: tuple | None = signal_at
        ) -> Any:
            if signal_at is not None and (rank, self.step) == tuple(signal_at):
                os.kill(os.getpid(), signal.SIGUSR1)  # a real signal, through the installed handler
            if poison is not None and self.step == poison:
                with torch.no_grad():
                    for p in self.model.parameters():
                        p.mul_(float("nan"))
            return upstream(self, global_batch)

        finite_guard.GuardedDPOTrainer.train_single_step = train_single_step
        try:
            results.append(aligner_train_worker(rank, world_size, **run))
        except UserError as e:
            results.append({"error": str(e), "error_type": type(e).__name__})
        finally:
            finite_guard.GuardedDPOTrainer.train_single_step = upstream
        checkpoint_dir = Path(run["run_dir"]) / "checkpoints"
        results[-1]["checkpoints_after"] = (
            sorted(p.name for p in checkpoint_dir.iterdir()) if checkpoint_dir.is_dir() else []
        )
        reset_between_runs(rank)
    return results


def aligner_killed_in_save_worker(rank: int, world_size: int, run: dict[str, Any], kill_at_save: int) -> None:
    """A training run whose processes all die (``os._exit(137)``, as under ``kill -9``) in the middle
    of checkpoint save number ``kill_at_save``: its files are written, NeMo's ``-unfinished`` marker
    is still in place (NeMo removes it only after the save returns)."""
    import os

    from lightning.pytorch import Trainer

    upstream = Trainer.save_checkpoint
    saves = [0]

    def save_checkpoint(self: Trainer, *args: Any, **kwargs: Any) -> Any:
        out = upstream(self, *args, **kwargs)
        saves[0] += 1
        if saves[0] == kill_at_save:
            os._exit(137)
        return out

    Trainer.save_checkpoint = save_checkpoint
    aligner_train_worker(rank, world_size, **run)


def reference_runs_worker(rank: int, world_size: int, plan: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Reference precomputes and training runs, one after another, in the same processes.

    An entry ``{"precompute": {...}}`` runs ``nemo_gammapo.aligner.precompute.precompute`` on the
    composed ``tiny_cpu`` config (keys ``run_dir``, ``overrides``); ``{"tamper": {"src", "dst",
    "nats_per_token"}}`` writes a sidecar whose chosen sums are shifted; any other entry is a training
    run (:func:`aligner_train_worker`; with ``expect_user_error: True`` its result is the error).
    Returns one dict per entry.
    """
    import os

    import torch.distributed as dist

    from nemo_gammapo.aligner.errors import UserError

    results: list[dict[str, Any]] = []
    for entry in plan:
        if "precompute" in entry:
            run = entry["precompute"]
            from nemo_gammapo.bench.nemo_step import precompute_preset

            calls = _count_reference_calls()
            for name in calls:
                calls[name] = 0
            sidecar = precompute_preset(world_size, run["run_dir"], run["overrides"])
            results.append({"sidecar": str(sidecar), "calls": dict(calls)})
        elif "tamper" in entry:  # a copy of a sidecar whose chosen sums are off by `nats_per_token`
            src, dst, shift = entry["tamper"]["src"], entry["tamper"]["dst"], entry["tamper"]["nats_per_token"]
            state = torch.load(src, weights_only=True)
            state["chosen"] = state["chosen"] + shift * state["chosen_tokens"]
            torch.save(state, f"{dst}.tmp{rank}")  # every rank writes the same bytes, each atomically
            os.replace(f"{dst}.tmp{rank}", dst)
            results.append({})
            continue
        elif entry.get("expect_user_error"):
            try:
                aligner_train_worker(rank, world_size, **{k: v for k, v in entry.items() if k != "expect_user_error"})
                results.append({"error": None})
            except UserError as error:
                results.append({"error": str(error), "exit_code": error.exit_code})
        else:
            results.append(aligner_train_worker(rank, world_size, **entry))
        if dist.is_initialized():
            reset_between_runs(rank)
    return results


def helper_then_die_worker(rank: int, world_size: int, out_dir: str) -> None:
    """Start a spawned helper, as megatron's async checkpoint writer does (a ``Manager``), record
    its PID, then die as under ``kill -9`` (no exit handlers: the helper is not shut down)."""
    import multiprocessing

    manager = multiprocessing.get_context("spawn").Manager()
    Path(out_dir, f"helper{rank}.pid").write_text(str(manager._process.pid))
    os._exit(137)
