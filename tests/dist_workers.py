"""Module-level worker functions for the multi-process tests (spawned ranks import them)."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


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


REPO = __import__("pathlib").Path(__file__).resolve().parent.parent


def aligner_train_worker(rank: int, world_size: int, run_dir: str, overrides: list[str]) -> dict[str, Any]:
    """One NeMo-Aligner γ-PO training run of the tiny CPU preset (PyTorch Lightning makes the group).

    Records every call into the reference-policy machinery so tests can assert it never ran.
    """
    import os

    os.chdir(REPO)
    from nemo_gammapo.cpu_compat import maybe_apply_cpu_patches

    maybe_apply_cpu_patches(nemo=True)
    from hydra import compose, initialize_config_dir
    from nemo_aligner.models.nlp.gpt.megatron_gpt_dpo_model import MegatronGPTDPOModel

    from nemo_gammapo.aligner import train as train_module

    calls = {"get_ref_policy_logprobs": 0, "get_logprob_batch": 0, "retrieve_model_state_dict_in_cpu": 0}

    def counted(owner: Any, name: str) -> None:
        original = getattr(owner, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            return original(*args, **kwargs)

        setattr(owner, name, wrapper)

    counted(MegatronGPTDPOModel, "get_ref_policy_logprobs")  # the parent's: reference forward + swap
    counted(MegatronGPTDPOModel, "get_logprob_batch")
    import nemo_aligner.utils.utils as aligner_utils

    counted(aligner_utils, "retrieve_model_state_dict_in_cpu")
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = compose("tiny_cpu", overrides=[f"run_dir={run_dir}", f"trainer.devices={world_size}", *overrides])
    result = train_module.train(cfg)
    return {
        "history": result.history,
        "calls": calls,
        "reference_free": result.reference_free,
        "holds_reference_weights": result.holds_reference_weights,
        "gamma_state": result.gamma_state,
    }
