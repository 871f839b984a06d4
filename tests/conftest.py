"""Shared pytest setup: markers, thread limits for the 2-core CI machine, the shared DP2 runs; the
session fails if it leaves a process running (``nemo_gammapo.testing.leftovers``)."""

from pathlib import Path
from typing import Any

import pytest
import torch
from dist_workers import aligner_runs_worker

from nemo_gammapo.distributed.process_groups import preload_rank_modules, run_on_ranks
from nemo_gammapo.testing import slurm

pytest_plugins = ["nemo_gammapo.testing.leftovers"]

ALIGNER_STEPS = 40
ALIGNER_LOSSES = {
    "gamma_simpo": [],
    "simpo": [],
    "gamma_dpo": ["model.dpo.ref_policy_kl_penalty=0.5", "model.dpo.gamma_beta_ratio=2.0"],
    "dpo": ["model.dpo.ref_policy_kl_penalty=0.5"],
}


def pytest_configure(config: pytest.Config) -> None:
    torch.set_num_threads(1)
    # Rank processes fork from one server that imported the NeMo stack once (not ~17 s per rank).
    preload_rank_modules(["nemo_gammapo.testing.preload"])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The modules with SLURM tests first, each whole and in its own order (otherwise collection order):
    # they spend about half their time waiting on the scheduler, requeues and timeouts, CPU that
    # whatever runs beside the session can use (.ci/run's container leg, run beside `pytest tests`).
    slurm_modules = {item.path for item in items if "slurm" in item.keywords}
    items.sort(key=lambda item: item.path not in slurm_modules)
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA (runs on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


def _run(root: Path, name: str, overrides: list[str], **kwargs: Any) -> dict[str, Any]:
    return {"run_dir": str(root / name), "overrides": overrides, **kwargs}


RESUME = ["trainer.dpo.max_steps=16", "trainer.dpo.val_check_interval=8", "trainer.dpo.save_interval=8"]
SAVE_NEMO = ["exp_manager.checkpoint_callback_params.save_nemo_on_train_end=true"]
LORA = [
    "model.dpo.preference_loss=dpo",
    "model.dpo.ref_policy_kl_penalty=0.5",
    "model.peft.peft_scheme=lora",
    "model.peft.lora_tuning.adapter_dim=8",
    "model.optim.lr=2e-2",
]
NEMO_RESTORE = ["model.dpo.preference_loss=simpo", "trainer.dpo.max_steps=1", "trainer.dpo.val_check_interval=1"]


@pytest.fixture(scope="session")
def aligner_runs(tmp_path_factory) -> dict[str, Any]:
    """The 2-process (DP2) tiny-GPT runs of test_aligner_training and test_viz_plots, one after
    another in one pair of processes (imports paid once)."""
    root = tmp_path_factory.mktemp("aligner")
    plan = [
        *[
            _run(
                root,
                loss,
                [
                    f"model.dpo.preference_loss={loss}",
                    f"trainer.dpo.max_steps={ALIGNER_STEPS}",
                    "trainer.dpo.val_check_interval=20",
                    f"trainer.dpo.save_interval={ALIGNER_STEPS}",
                    *ALIGNER_LOSSES[loss],
                ],
            )
            for loss in ALIGNER_LOSSES
        ],
        # 16 steps uninterrupted; 8 steps then stop (checkpoint); the same command again resumes.
        _run(root, "full", RESUME),
        _run(root, "resumed", [*RESUME, "trainer.dpo.stop_after_steps=8"]),
        _run(root, "resumed", RESUME),
        # A .nemo written at the end of one run, restored by the next with learning rate 0.
        _run(
            root,
            "nemo_a",
            [
                "model.dpo.preference_loss=simpo",
                "trainer.dpo.max_steps=4",
                "trainer.dpo.val_check_interval=4",
                *SAVE_NEMO,
            ],
        ),
        _run(
            root,
            "nemo_b",
            [*NEMO_RESTORE, "model.optim.lr=0.0", "model.optim.sched.min_lr=0.0"],
            restore_from_run=str(root / "nemo_a"),
        ),
        # LoRA (DPO): train adapters and save them; then restore them with learning rate 0.
        _run(root, "lora_a", [*LORA, "trainer.dpo.max_steps=4", "trainer.dpo.val_check_interval=4", *SAVE_NEMO]),
        _run(
            root,
            "lora_b",
            [
                *LORA,
                "trainer.dpo.max_steps=1",
                "trainer.dpo.val_check_interval=1",
                "model.optim.lr=0.0",
                "model.optim.sched.min_lr=0.0",
                f"model.peft.restore_from_path={root / 'lora_a' / 'checkpoints' / 'tiny_cpu_gamma_simpo.nemo'}",
            ],
        ),
        # γ-SimPO with per-pair dumps every 4 steps, for the plots.
        _run(
            root,
            "plots",
            [
                "trainer.dpo.max_steps=16",
                "trainer.dpo.val_check_interval=8",
                "trainer.dpo.save_interval=96",
                "model.dpo.gamma_dump.every=4",
            ],
        ),
    ]
    per_rank = run_on_ranks(aligner_runs_worker, 2, 1500, {"runs": plan}, init_process_group=False)
    names = [*ALIGNER_LOSSES, "full", "stopped", "resumed", "nemo_a", "nemo_b", "lora_a", "lora_b", "plots"]
    return {"root": root, **{name: list(ranks) for name, ranks in zip(names, zip(*per_rank, strict=True), strict=True)}}


def _start_slurm(tmp_path_factory, name: str, nodes: int, env: dict[str, str] | None = None) -> Any:
    """Start a test cluster, or skip with the reason — or fail, with GAMMAPO_REQUIRE_SLURM=1 (CI)."""
    import os

    reason = slurm.why_unavailable(nodes)
    if reason is not None:
        if os.environ.get(slurm.REQUIRE_ENV) == "1":
            pytest.fail(f"{slurm.REQUIRE_ENV}=1 but {reason}")
        pytest.skip(reason)
    return slurm.SlurmCluster.start(tmp_path_factory.mktemp(name), nodes, env)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory) -> Any:
    """A real single-node SLURM cluster with accounting (scripts/slurm_cluster.sh) for the session."""
    cluster = _start_slurm(tmp_path_factory, "slurm", 1)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def slurm_nodes(tmp_path_factory) -> Any:
    """A real 3-node SLURM cluster (node1..node3, each a network namespace; scripts/slurm_cluster.sh).

    A requeued job may start again after 5 s (cred_expire), so a test that takes a node away keeps
    it away for over 60 s after the requeue: a signal slurmctld queued for the unreachable node is
    retried about 60 s later and would reach a restarted job there (DESIGN §8).
    """
    cluster = _start_slurm(tmp_path_factory, "slurm_nodes", 3)
    try:
        yield cluster
    finally:
        cluster.stop()
