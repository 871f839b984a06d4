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


# Session fixtures that cost minutes: with -n N (pytest-xdist) each worker that uses one builds its own,
# so the modules that use one run in the same worker (a group). Both SLURM clusters share one group: the
# layout .ci/run was measured green with (#26).
SHARED_SESSION_FIXTURES = {"slurm_cluster": "slurm", "slurm_nodes": "slurm", "aligner_runs": "aligner_runs"}


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups (and before -k, -m deselect)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Whole modules, each in its own order (otherwise collection order): first those with SLURM tests
    # (they spend about half their time waiting on the scheduler, requeues and timeouts, CPU that the
    # other worker and .ci/run's container leg use), then those with slow tests, then the rest.
    modules: dict[Path, list[pytest.Item]] = {}
    for item in items:
        modules.setdefault(item.path, []).append(item)
    groups = {path: _xdist_group(path, module) for path, module in modules.items()}
    slurm = {path for path, module in modules.items() if any("slurm" in item.keywords for item in module)}
    slow = {path for path, module in modules.items() if any("slow" in item.keywords for item in module)}
    items.sort(key=lambda item: (item.path not in slurm, item.path not in slow))
    if config.pluginmanager.hasplugin("xdist"):  # pyproject's --dist loadgroup: one worker per group
        for item in items:
            item.add_marker(pytest.mark.xdist_group(groups[item.path]))
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA (runs on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


def _xdist_group(path: Path, module: list[pytest.Item]) -> str:
    """A module's worker group: that of the costly session fixture its tests use, else the module itself."""
    names = {name for item in module for name in item.fixturenames}
    used = {SHARED_SESSION_FIXTURES[name] for name in names & SHARED_SESSION_FIXTURES.keys()}
    if len(used) > 1:
        raise pytest.UsageError(f"{path.name} uses the session fixtures of groups {sorted(used)}: give them one group")
    return used.pop() if used else path.name


def _run(root: Path, name: str, overrides: list[str], **kwargs: Any) -> dict[str, Any]:
    return {"run_dir": str(root / name), "overrides": overrides, **kwargs}


ALIGNER_RUN = [
    f"trainer.dpo.max_steps={ALIGNER_STEPS}",
    "trainer.dpo.val_check_interval=20",
    f"trainer.dpo.save_interval={ALIGNER_STEPS}",
]
RESUME = ["trainer.dpo.max_steps=16", "trainer.dpo.val_check_interval=8", "trainer.dpo.save_interval=8"]
SAVE_NEMO = ["exp_manager.checkpoint_callback_params.save_nemo_on_train_end=true"]
LR0 = ["model.optim.lr=0.0", "model.optim.sched.min_lr=0.0"]
LORA = [
    "model.dpo.preference_loss=dpo",
    "model.dpo.ref_policy_kl_penalty=0.5",
    "model.peft.peft_scheme=lora",
    "model.peft.lora_tuning.adapter_dim=8",
    "model.optim.lr=2e-2",
]
PLOTS = [
    "trainer.dpo.max_steps=16",
    "trainer.dpo.val_check_interval=8",
    "trainer.dpo.save_interval=96",
    "model.dpo.gamma_dump.every=4",
]


def _aligner_plan(root: Path) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """The shared runs by group: a group's runs train one after another in one pair of processes
    (a later run may start from an earlier one's output); each entry is (result name, run)."""
    four_steps = ["trainer.dpo.max_steps=4", "trainer.dpo.val_check_interval=4", *SAVE_NEMO]
    one_step_lr0 = ["trainer.dpo.max_steps=1", "trainer.dpo.val_check_interval=1", *LR0]
    lora_a_nemo = root / "lora_a" / "checkpoints" / "tiny_cpu_gamma_simpo.nemo"
    losses = {
        loss: [(loss, _run(root, loss, [f"model.dpo.preference_loss={loss}", *ALIGNER_RUN, *ALIGNER_LOSSES[loss]]))]
        for loss in ALIGNER_LOSSES
    }
    return {
        **losses,
        # 16 steps uninterrupted; 8 steps then stop (checkpoint); the same command again resumes.
        "resume": [
            ("full", _run(root, "full", RESUME)),
            ("stopped", _run(root, "resumed", [*RESUME, "trainer.dpo.stop_after_steps=8"])),
            ("resumed", _run(root, "resumed", RESUME)),
        ],
        # A .nemo written at the end of one run, restored by the next with learning rate 0.
        "nemo": [
            ("nemo_a", _run(root, "nemo_a", ["model.dpo.preference_loss=simpo", *four_steps])),
            (
                "nemo_b",
                _run(
                    root,
                    "nemo_b",
                    ["model.dpo.preference_loss=simpo", *one_step_lr0],
                    restore_from_run=str(root / "nemo_a"),
                ),
            ),
        ],
        # LoRA (DPO): train adapters and save them; then restore them with learning rate 0.
        "lora": [
            ("lora_a", _run(root, "lora_a", [*LORA, *four_steps])),
            ("lora_b", _run(root, "lora_b", [*LORA, *one_step_lr0, f"model.peft.restore_from_path={lora_a_nemo}"])),
        ],
        # γ-SimPO with per-pair dumps every 4 steps, for the plots.
        "plots": [("plots", _run(root, "plots", PLOTS))],
    }


class AlignerRuns:
    """The 2-process (DP2) tiny-GPT runs that several test modules read, each group trained the first
    time one of its results is asked for (a session that selects none of its tests never trains it).

    ``runs[name]`` is the run's per-rank results (what ``aligner_train_worker`` returns, rank order);
    ``runs.dir(name)`` its run directory, trained.
    """

    def __init__(self, root: Path) -> None:
        self.plan = _aligner_plan(root)
        self._group = {name: group for group, runs in self.plan.items() for name, _ in runs}
        self._dir = {name: Path(run["run_dir"]) for runs in self.plan.values() for name, run in runs}
        self._results: dict[str, list[dict[str, Any]]] = {}

    def __getitem__(self, name: str) -> list[dict[str, Any]]:
        if name not in self._group:
            raise KeyError(f"no shared aligner run {name!r}; the runs: {sorted(self._group)}")
        if name not in self._results:
            runs = self.plan[self._group[name]]
            plan = {"runs": [run for _, run in runs]}
            per_rank = run_on_ranks(aligner_runs_worker, 2, 900, plan, init_process_group=False)
            for (run_name, _), ranks in zip(runs, zip(*per_rank, strict=True), strict=True):
                self._results[run_name] = list(ranks)
        return self._results[name]

    def dir(self, name: str) -> Path:
        self[name]
        return self._dir[name]


@pytest.fixture(scope="session")
def aligner_runs(tmp_path_factory) -> AlignerRuns:
    """The shared DP2 runs of test_aligner_training, test_viz_plots, test_suspects and
    test_reference_precompute (see :class:`AlignerRuns`)."""
    return AlignerRuns(tmp_path_factory.mktemp("aligner"))


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
