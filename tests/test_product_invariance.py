"""The product path at every layout: ``train()`` → NeMo-Aligner's ``DPOTrainer`` → ``MegatronGPTGammaPOModel``.

Every layout starts from the *same* ``.nemo`` written by a one-process run (TP1/PP1), so each
multi-rank run also proves that checkpoint restores resharded (TP2, PP2, TP2×PP2; the padded
vocabulary grows with TP). Defaults kept: gradient clipping on, the preset's optimizer and
schedule. Per-step train loss, validation loss and γ statistics must agree with one process to
1e-5 relative (1e-7 absolute for values at zero), and the margin queue must be identical to the
one-process run's on every rank.

What runs (each run is 4 steps, validation after steps 2 and 4), for the tiny GPT-2-style model
(``tiny_cpu``) and a tiny Llama-shaped one (``tiny_llama_cpu``: RMSNorm, SwiGLU, GQA, untied):

| layout | processes | vs one process with | GPT losses | Llama losses |
|---|---|---|---|---|
| TP2, PP2, TP2+SP | 2 | micro-batch 2, global batch 8 | γ-SimPO, γ-DPO, DPO | TP2+SP: γ-SimPO, γ-DPO |
| DP2 × micro-batch 1 | 2 | micro-batch 2, global batch 8 | γ-SimPO, γ-DPO, DPO, β-DPO, KTO | — |
| TP2×PP2 | 4 | micro-batch 2, global batch 8 | γ-SimPO, γ-DPO, DPO | γ-SimPO, γ-DPO |

Every run reads the preset's shuffled order (one global order at every layout,
``nemo_gammapo.data.order``), 4 global micro-batches per step. Left out to fit the CI budget: the
Llama-shaped model at TP2, PP2 and DP2 (its TP and PP code paths are covered by TP2+SP and TP2×PP2),
TP2×PP2×DP2 (8 processes), and the other registry losses (IPO, CPO, ORPO, R-DPO, rDPO, SimPO,
rSimPO, β-SimPO share the reward, gather and loss code that these runs exercise). Runs share
processes (one pool per world size) because importing the stack costs ~20 s per process on the CI
machine.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from dist_workers import aligner_killed_worker, aligner_runs_worker, checkpoint_tensors, same_state

from nemo_gammapo.distributed.process_groups import run_on_ranks

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

STEPS = 4
LOSSES = {
    "gamma_simpo": [],
    "gamma_dpo": ["model.dpo.ref_policy_kl_penalty=0.5", "model.dpo.gamma_beta_ratio=2.0"],
    "dpo": ["model.dpo.ref_policy_kl_penalty=0.5"],
    # Batch-relative losses: M0 / z_ref are running means over global micro-batches.
    "beta_dpo": ["model.dpo.ref_policy_kl_penalty=0.5", "model.dpo.loss_params.beta_dpo_alpha=0.5"],
    "kto_pair": ["model.dpo.ref_policy_kl_penalty=0.5"],
}
CORE_LOSSES = ("gamma_simpo", "gamma_dpo", "dpo")
ARCHS = {"gpt": "tiny_cpu", "llama": "tiny_llama_cpu"}
COMMON = [
    f"trainer.dpo.max_steps={STEPS}",
    "trainer.dpo.val_check_interval=2",
    "trainer.dpo.limit_val_batches=2",  # 2 validation batches of 8 pairs
    "model.dpo.gamma_dump.every=0",
]
# Batching of the one-process reference each layout is compared with.
BATCHING = {
    "accumulate": ["model.micro_batch_size=2", "model.global_batch_size=8"],  # 4 micro-batches per step
}
LAYOUTS: dict[str, tuple[int, str, list[str]]] = {  # name -> (processes, reference batching, overrides)
    "tp2": (2, "accumulate", ["model.tensor_model_parallel_size=2"]),
    "pp2": (2, "accumulate", ["model.pipeline_model_parallel_size=2"]),
    "tp2_sp": (2, "accumulate", ["model.tensor_model_parallel_size=2", "model.sequence_parallel=true"]),
    "dp2_mb1": (2, "accumulate", ["model.micro_batch_size=1"]),  # G = 2 × 1 as at DP1 × micro-batch 2
    "tp2_pp2": (4, "accumulate", ["model.tensor_model_parallel_size=2", "model.pipeline_model_parallel_size=2"]),
}
GRID = [
    *[("gpt", loss, layout) for layout in LAYOUTS for loss in CORE_LOSSES],
    *[("gpt", loss, "dp2_mb1") for loss in ("beta_dpo", "kto_pair")],
    *[("llama", loss, layout) for layout in ("tp2_sp", "tp2_pp2") for loss in ("gamma_simpo", "gamma_dpo")],
]
COMPARED = [
    f"{split}/{name}"
    for split in ("train", "val")
    for name in (
        "loss",
        "rewards_chosen_mean",
        "rewards_rejected_mean",
        *[f"gamma_po/{m}" for m in ("gamma_mean", "gamma_std", "gamma_min", "gamma_max", "queue_fill")],
        "gamma_po/margin_mean",
        "gamma_po/margin_std",
    )
]
# Rewards and margins are differences (policy − reference log-probs; chosen − rejected reward), so
# their float error scales with what they are differences of, not with themselves: a margin near 0
# is a difference of rewards near -30. They are compared to 1e-5 relative or 1e-5 of the step's
# largest |mean reward| (at least 1e-5 absolute), whichever is looser.
DIFFERENCES = (
    "rewards_chosen_mean",
    "rewards_rejected_mean",
    "gamma_po/margin_mean",
    "gamma_po/margin_std",
)


def _seed_run(arch: str, root: Path) -> dict[str, Any]:
    """A short one-process run that writes the .nemo every layout starts from."""
    return {
        "config_name": ARCHS[arch],
        "run_dir": str(root / f"seed_{arch}"),
        "overrides": [
            "model.dpo.preference_loss=simpo",
            "trainer.dpo.max_steps=2",
            "trainer.dpo.val_check_interval=2",
            "trainer.dpo.save_interval=2",
            "exp_manager.checkpoint_callback_params.save_nemo_on_train_end=true",
        ],
    }


# Resume: this grid run also saves every 2 steps and is the uninterrupted run; the same run is
# killed (every process, as by kill -9) after step 3 and re-run in the same run_dir.
RESUMED = ("gpt", "gamma_dpo", "tp2_pp2")
KILL_AFTER_STEPS = 3


def _run(arch: str, loss: str, layout: str, root: Path, name: str) -> dict[str, Any]:
    """A grid run; layout "ref:<batching>" is the one-process reference with that batching."""
    batching, parallel = (layout[4:], []) if layout.startswith("ref:") else LAYOUTS[layout][1:]
    save_interval = 2 if (arch, loss, layout) == RESUMED else 0
    return {
        "config_name": ARCHS[arch],
        "run_dir": str(root / name),
        "restore_from_run": str(root / f"seed_{arch}"),
        "overrides": [
            f"model.dpo.preference_loss={loss}",
            *LOSSES[loss],
            *COMMON,
            f"trainer.dpo.save_interval={save_interval}",
            *BATCHING[batching],
            *parallel,
        ],
    }


def run_pool(world_size: int, runs: list[dict[str, Any]], timeout_s: float) -> list[list[dict[str, Any]]]:
    """Runs one after another in one pool of processes; returns, per run, the per-rank results."""
    per_rank = run_on_ranks(aligner_runs_worker, world_size, timeout_s, {"runs": runs}, init_process_group=False)
    return [list(ranks) for ranks in zip(*per_rank, strict=True)]


Key = tuple[str, str, str]  # (arch, loss, layout); layout "ref:<batching>" is the one-process run
RERUN: Key = (*RESUMED[:2], "tp2_pp2 killed and re-run")


class Runs(dict):
    """Per-rank results keyed by :data:`Key`; ``root`` holds the run directories."""

    root: Path
    killed: str  # how the killed run ended


@pytest.fixture(scope="module")
def product_runs(tmp_path_factory) -> Runs:
    """Every run of the grid and its references, in one process pool per world size."""
    results = Runs()
    results.root = root = tmp_path_factory.mktemp("product")
    refs = sorted({(arch, loss, f"ref:{LAYOUTS[layout][1]}") for arch, loss, layout in GRID})
    single = [_seed_run(arch, root) for arch in ARCHS]  # first: the other runs restore their .nemo
    single += [_run(arch, loss, ref, root, f"{arch}_{loss}_{ref[4:]}_ref") for arch, loss, ref in refs]
    results.update(zip(refs, run_pool(1, single, 900)[len(ARCHS) :], strict=True))
    for world_size in sorted({n for n, _, _ in LAYOUTS.values()}):
        keys = [key for key in GRID if LAYOUTS[key[2]][0] == world_size]
        runs = [_run(arch, loss, layout, root, f"{arch}_{loss}_{layout}") for arch, loss, layout in keys]
        if world_size == 4:
            killed = _run(*RESUMED, root, "killed_and_rerun")
            try:
                kwargs = {"run": killed, "kill_after_steps": KILL_AFTER_STEPS}
                run_on_ranks(aligner_killed_worker, 4, 600, kwargs, init_process_group=False)
                results.killed = "exited normally"
            except RuntimeError as e:
                results.killed = str(e)
            keys, runs = [*keys, RERUN], [*runs, killed]
        results.update(zip(keys, run_pool(world_size, runs, 1500), strict=True))
    return results


# β-DPO's per-pair scale β_i/β = 1 + α·(M_i − M0) multiplies the margin by a function of the margins
# (and of M0, a running mean of them), so the margins' float error enters its loss twice: measured
# 1.04e-5 relative at DP2 × micro-batch 1 on this model, before and after the γ-PO changes.
LOSS_REL_TOL = {"beta_dpo": 3e-5}


def _close(
    got: dict[tuple[int, str], float], expected: dict[tuple[int, str], float], key: tuple[int, str], loss: str = ""
) -> bool:
    step, metric = key
    split, name = metric.split("/", 1)
    abs_tol, rel_tol = 1e-7, 1e-5
    if name in DIFFERENCES:
        scale = max(abs(expected[(step, f"{split}/rewards_{side}_mean")]) for side in ("chosen", "rejected"))
        abs_tol = 1e-5 * max(scale, 1.0)
    if name == "loss":
        rel_tol = LOSS_REL_TOL.get(loss, rel_tol)
    return math.isclose(got[key], expected[key], rel_tol=rel_tol, abs_tol=abs_tol)


@pytest.mark.parametrize("key", GRID, ids=["-".join(k) for k in GRID])
def test_layout_matches_one_process(product_runs: Runs, key: Key) -> None:
    arch, loss, layout = key
    ref = product_runs[(arch, loss, f"ref:{LAYOUTS[layout][1]}")][0]
    ranks = product_runs[key]

    def series(result: dict[str, Any]) -> dict[tuple[int, str], float]:
        return {(int(r["step"]), k): r[k] for r in result["history"] for k in COMPARED if k in r}

    expected = series(ref)
    assert len([k for k in expected if k[1] == "train/loss"]) == STEPS
    assert len([k for k in expected if k[1] == "val/loss"]) == 2
    for rank, result in enumerate(ranks):
        got = series(result)
        assert got.keys() == expected.keys(), f"rank {rank} logged different metrics"
        bad = {k: (got[k], expected[k]) for k in expected if not _close(got, expected, k, loss)}
        assert not bad, f"rank {rank} differs from one process (step, metric): (layout, one process): {bad}"
    reference = ref["gamma_state"]["reference"]
    if reference is not None:  # β-DPO's M0 / KTO's z_ref after the last step
        assert bool(reference["initialized"])
        for rank, result in enumerate(ranks):
            mine = result["gamma_state"]["reference"]
            assert math.isclose(mine["value"].item(), reference["value"].item(), rel_tol=1e-5, abs_tol=1e-5), rank
    if loss.startswith("gamma_"):
        queue = ref["gamma_state"]["policy"]["queue"]
        assert int(queue["count"]) > 0
        # Queued margins are β-scaled reward differences: tolerance from the largest mean reward.
        scale = max(abs(v) for (_, k), v in expected.items() if k.startswith("train/rewards_"))
        for rank, result in enumerate(ranks):
            mine = result["gamma_state"]["policy"]["queue"]
            assert (int(mine["pointer"]), int(mine["count"])) == (int(queue["pointer"]), int(queue["count"]))
            assert torch.equal(mine["valid"], queue["valid"]), f"rank {rank}: validity flags"
            assert torch.equal(mine["generator"], queue["generator"]), f"rank {rank}: sampling generator"
            # Every rank of a layout holds the same queue, bit for bit (it is fed gathered margins).
            assert same_state(mine, ranks[0]["gamma_state"]["policy"]["queue"]), f"rank {rank} differs from rank 0"
            diff = (mine["margins"] - queue["margins"]).abs().max().item()
            assert diff <= 1e-5 * max(scale, 1.0), (
                f"rank {rank}: queued margins differ by {diff:.2e} (scale {scale:.1f})"
            )


def test_killed_tp2_pp2_run_reruns_to_the_uninterrupted_result(product_runs: Runs, tmp_path) -> None:
    """Kill every process of a TP2×PP2 γ-DPO run after step 3; re-running the same command resumes
    from the step-2 checkpoint and ends with the uninterrupted run's losses, queue and weights."""
    assert "(0, 137)" in product_runs.killed, product_runs.killed
    for full, rerun in zip(product_runs[RESUMED], product_runs[RERUN], strict=True):
        resumed = [r for r in rerun["history"] if "train/loss" in r]
        assert [int(r["step"]) for r in resumed] == [2, 3]  # it lost step 3 and resumed at step 2
        assert [r["train/loss"] for r in resumed] == [r["train/loss"] for r in full["history"] if "train/loss" in r][2:]
        assert same_state(full["gamma_state"], rerun["gamma_state"])
    full_ckpt = checkpoint_tensors(product_runs.root / "gpt_gamma_dpo_tp2_pp2", STEPS, tmp_path)
    rerun_ckpt = checkpoint_tensors(product_runs.root / "killed_and_rerun", STEPS, tmp_path)
    assert full_ckpt.keys() == rerun_ckpt.keys()
    assert any(k.startswith("optimizer.") for k in full_ckpt) and any(k.startswith("model.") for k in full_ckpt)
    assert [k for k in full_ckpt if not torch.equal(full_ckpt[k], rerun_ckpt[k])] == []
