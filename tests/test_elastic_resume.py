"""Elastic resume: a checkpoint written at one layout resumes at another, equal to one uninterrupted process.

Every run starts from one ``.nemo``; epochs are shortened to 3 steps (``limit_train_batches``), 2
epochs, global batch 8, G = DP × micro-batch = 4 at every layout. A run stopped after step 2 (in
the middle of epoch 1, with a checkpoint) is resumed from the same run_dir at another layout with
only the layout (and ``micro_batch_size``, so that G stays) changed; its steps 3–6 cross into
epoch 2. Its per-step train losses, validation losses and final margin queue must equal a
one-process uninterrupted run's (≤ 1e-5) — with shuffling on, so the rest of epoch 1 and all of
epoch 2 must be read in the same order.

| stopped at (processes) | resumed at | loss |
|---|---|---|
| DP4 × micro-batch 1 (4) | DP2 × micro-batch 2 | γ-SimPO |
| TP2 × DP2 × micro-batch 2 (4) | TP2 × micro-batch 4 | γ-DPO |
| PP2 × micro-batch 4 (2) | one process, micro-batch 4 | DPO |

Then, through the same ``train()``, the identity guards refuse (one line, exit 2, before the model
is built) a resume after the training file was edited (rows shuffled, 40 % removed) and a resume
whose configured architecture does not fit the run_dir's checkpoint.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from dist_workers import aligner_runs_worker

from nemo_gammapo.distributed.process_groups import run_on_ranks

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
STEPS, STOP_AFTER = 6, 2
COMMON = [
    "model.global_batch_size=8",
    "trainer.dpo.max_epochs=2",
    "trainer.dpo.limit_train_batches=3",  # 3 steps per epoch
    f"trainer.dpo.max_steps={STEPS}",
    "trainer.dpo.val_check_interval=2",
    "trainer.dpo.save_interval=2",
    "trainer.dpo.limit_val_batches=1",
    "model.dpo.gamma_dump.every=0",
]
LOSSES = {
    "gamma_simpo": [],
    "gamma_dpo": [
        "model.dpo.preference_loss=gamma_dpo",
        "model.dpo.ref_policy_kl_penalty=0.5",
        "model.dpo.gamma_beta_ratio=2.0",
    ],
    "dpo": ["model.dpo.preference_loss=dpo", "model.dpo.ref_policy_kl_penalty=0.5"],
}
ONE = ["model.micro_batch_size=4"]
CASES = {  # name -> (loss, (processes, layout stopped at), (processes, layout resumed at))
    "dp4_to_dp2": ("gamma_simpo", (4, ["model.micro_batch_size=1"]), (2, ["model.micro_batch_size=2"])),
    "tp2dp2_to_tp2": (
        "gamma_dpo",
        (4, ["model.tensor_model_parallel_size=2", "model.micro_batch_size=2"]),
        (2, ["model.tensor_model_parallel_size=2", *ONE]),
    ),
    "pp2_to_one": ("dpo", (2, ["model.pipeline_model_parallel_size=2", *ONE]), (1, ONE)),
}


def _run(root: Path, name: str, loss: str, layout: list[str], *extra: str) -> dict[str, Any]:
    return {
        "run_dir": str(root / name),
        "restore_from_run": str(root / "seed"),
        "overrides": [*COMMON, *LOSSES[loss], *layout, *extra],
    }


def _pool(world_size: int, runs: list[dict[str, Any]], timeout_s: float = 900) -> list[list[dict[str, Any]]]:
    per_rank = run_on_ranks(aligner_runs_worker, world_size, timeout_s, {"runs": runs}, init_process_group=False)
    return [list(ranks) for ranks in zip(*per_rank, strict=True)]


@pytest.fixture(scope="module")
def elastic(tmp_path_factory) -> dict[str, Any]:
    """Pools of 4, 2 and 1 processes, in that order (each resume after the run it continues)."""
    root = tmp_path_factory.mktemp("elastic")
    seed = {  # writes the .nemo every run starts from (a TP1/PP1 model: DP4 initialises as one process)
        "run_dir": str(root / "seed"),
        "overrides": [
            "model.dpo.preference_loss=simpo",
            "trainer.dpo.max_steps=2",
            "trainer.dpo.val_check_interval=2",
            "trainer.dpo.save_interval=2",
            "model.micro_batch_size=1",
            "exp_manager.checkpoint_callback_params.save_nemo_on_train_end=true",
        ],
    }
    stop = f"trainer.dpo.stop_after_steps={STOP_AFTER}"
    out: dict[str, Any] = {"root": root}
    by_world: dict[int, list[tuple[str, dict[str, Any]]]] = {4: [("seed", seed)], 2: [], 1: []}
    for name, (loss, (n_stop, at), (n_resume, to)) in CASES.items():
        by_world[n_stop].append((f"{name}:stopped", _run(root, name, loss, at, stop)))
        by_world[n_resume].append((f"{name}:resumed", _run(root, name, loss, to)))
    for loss in LOSSES:
        by_world[1].append((f"{loss}:uninterrupted", _run(root, f"{loss}_one", loss, ONE)))
    # the identity guards, on the run_dir of the uninterrupted γ-SimPO run (it has checkpoints)
    edited = root / "edited_train.jsonl"
    rows = (ROOT / "data/demo/train.jsonl").read_text().splitlines()
    random.Random(0).shuffle(rows)
    edited.write_text("\n".join(rows[: int(len(rows) * 0.6)]) + "\n")
    guarded = {"expect_user_error": True}
    by_world[1].append(
        (
            "edited data",
            {
                **_run(root, "gamma_simpo_one", "gamma_simpo", ONE, f"model.data.data_prefix.train=[{edited}]"),
                **guarded,
            },
        )
    )
    by_world[1].append(
        ("other architecture", {**_run(root, "gamma_simpo_one", "gamma_simpo", ONE, "model.num_layers=3"), **guarded})
    )
    for world_size in (4, 2, 1):
        names, runs = zip(*by_world[world_size], strict=True)
        out.update(zip(names, _pool(world_size, list(runs)), strict=True))
    return out


def _series(result: dict[str, Any], metric: str) -> dict[int, float]:
    return {int(r["step"]): r[metric] for r in result["history"] if metric in r}


@pytest.mark.parametrize("case", list(CASES))
def test_resumed_at_another_layout_equals_one_uninterrupted_process(elastic: dict[str, Any], case: str) -> None:
    loss = CASES[case][0]
    (full,) = elastic[f"{loss}:uninterrupted"]
    stopped, resumed = elastic[f"{case}:stopped"], elastic[f"{case}:resumed"]
    train = _series(full, "train/loss")
    assert sorted(train) == list(range(STEPS)) and len(_series(full, "val/loss")) == STEPS // 2
    for rank, result in enumerate(stopped):
        assert result["stopped_on_request"] is False
        assert sorted(_series(result, "train/loss")) == list(range(STOP_AFTER)), rank
    for rank, result in enumerate(resumed):
        got = _series(result, "train/loss")
        assert sorted(got) == list(range(STOP_AFTER, STEPS)), f"rank {rank} resumed at the wrong step"
        bad = {s: (got[s], train[s]) for s in got if not math.isclose(got[s], train[s], rel_tol=1e-5, abs_tol=1e-7)}
        assert not bad, f"rank {rank}: (resumed, uninterrupted) train loss by step: {bad}"
        val, want = _series(result, "val/loss"), _series(full, "val/loss")
        assert sorted(val) == [4, 6]
        assert all(math.isclose(val[s], want[s], rel_tol=1e-5, abs_tol=1e-7) for s in val), (val, want)
    first = _series(stopped[0], "train/loss")
    assert all(math.isclose(first[s], train[s], rel_tol=1e-5, abs_tol=1e-7) for s in first)
    if loss.startswith("gamma_"):
        queue = full["gamma_state"]["policy"]["queue"]
        scale = max(abs(v) for r in full["history"] for k, v in r.items() if k.startswith("train/rewards_"))
        for rank, result in enumerate(resumed):
            mine = result["gamma_state"]["policy"]["queue"]
            assert (int(mine["pointer"]), int(mine["count"])) == (int(queue["pointer"]), int(queue["count"])), rank
            assert torch.equal(mine["valid"], queue["valid"]) and torch.equal(mine["generator"], queue["generator"])
            assert (mine["margins"] - queue["margins"]).abs().max().item() <= 1e-5 * max(scale, 1.0), rank


def test_a_resume_after_the_data_changed_is_refused(elastic: dict[str, Any]) -> None:
    (result,) = elastic["edited data"]
    assert result["exit_code"] == 2, result
    line = result["error"]
    assert "\n" not in line and "other data (data: train: sha256:" in line, line
    assert "+resume.allow_changes=[data]" in line


def test_a_checkpoint_of_another_architecture_is_refused(elastic: dict[str, Any]) -> None:
    (result,) = elastic["other architecture"]
    assert result["exit_code"] == 2, result
    assert "holds another model's weights (num_layers: 2 in the checkpoint, 3 configured)" in result["error"]
