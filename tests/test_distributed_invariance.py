"""DP / TP / PP invariance of γ-PO on the tiny megatron-core GPT (gloo, CPU).

Every layout trains the same weights on the same global micro-batches for 3 steps (the margin
queue filling up, one pair truncated away in step 1); γ, losses and gradients must agree with a
single-process run, and the queue must be identical on every rank of the last stage.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from nemo_gammapo.distributed.process_groups import run_on_ranks
from nemo_gammapo.testing.layouts import checkpoint_worker, job, train_layouts_worker

pytestmark = pytest.mark.distributed

LOSS_SPECS = {
    "gamma_simpo": {"loss_name": "gamma_simpo"},
    "gamma_dpo": {"loss_name": "gamma_dpo", "beta": 0.5, "gamma_beta_ratio": 1.0},
}
GAMMA_TOL, LOSS_TOL, GRAD_TOL = 1e-6, 1e-5, 1e-5


@pytest.fixture(scope="module")
def runs() -> dict[str, list[dict[str, Any]]]:
    """All layouts, grouped by world size (process start-up dominates, so batch them)."""
    specs = LOSS_SPECS.values()
    return {
        "ref": run_on_ranks(train_layouts_worker, 1, 240, {"jobs": [job(1, 1, 2, **s) for s in specs]}),
        "w2": run_on_ranks(
            train_layouts_worker,
            2,
            300,
            {
                "jobs": [job(tp, pp, mb, **s) for s in specs for tp, pp, mb in [(1, 1, 1), (2, 1, 2), (1, 2, 2)]],
                "validate_after": 1,
            },
        ),
        "w4": run_on_ranks(
            train_layouts_worker,
            4,
            300,
            {"jobs": [job(2, 2, 2, **s) for s in specs] + [job(2, 1, 1, **LOSS_SPECS["gamma_simpo"])]},
        ),
    }


def record(results: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The record of the last-stage rank with tp_rank 0 and dp_rank 0."""
    for r in results:
        rec = r[key]
        if rec["last_stage"] and rec["tp_rank"] == 0 and rec["dp_rank"] == 0:
            return rec
    raise AssertionError(f"no last-stage record for {key}")


def merged_grads(results: list[dict[str, Any]], key: str, step: int) -> dict[str, torch.Tensor]:
    grads: dict[str, torch.Tensor] = {}
    for r in results:
        rec = r[key]
        if rec["tp_rank"] == 0 and rec["dp_rank"] == 0:
            grads.update(rec["steps"][step]["grads"])
    return grads


def assert_same_training(ref: dict[str, Any], other: dict[str, Any], ref_grads, other_grads, steps: int) -> None:
    for step in range(steps):
        a, b = ref["steps"][step], other["steps"][step]
        assert len(a["gamma"]) == len(b["gamma"]) == 2
        for ga, gb in zip(a["gamma"], b["gamma"], strict=True):
            torch.testing.assert_close(gb, ga, atol=GAMMA_TOL, rtol=0)
        for name in ("loss", "preference_accuracy", "gamma_mean", "gamma_max", "margin_mean", "excluded_pairs"):
            assert b["metrics"][name] == pytest.approx(a["metrics"][name], abs=LOSS_TOL), (step, name)
        ga, gb = ref_grads(step), other_grads(step)
        assert set(ga) == set(gb)
        for name in ga:
            torch.testing.assert_close(gb[name], ga[name], atol=GRAD_TOL, rtol=0, msg=lambda m, n=name: f"{n}: {m}")


LAYOUTS = [
    ("w2", "tp1-pp1-dp2-mb1"),
    ("w2", "tp2-pp1-dp1-mb2"),
    ("w2", "tp1-pp2-dp1-mb2"),
    ("w4", "tp2-pp2-dp1-mb2"),
]


@pytest.mark.parametrize("loss", list(LOSS_SPECS))
@pytest.mark.parametrize("world,layout", LAYOUTS)
def test_layout_matches_single_process(runs, loss: str, world: str, layout: str) -> None:
    ref_key, key = f"{loss}/tp1-pp1-dp1-mb2", f"{loss}/{layout}"
    assert_same_training(
        record(runs["ref"], ref_key),
        record(runs[world], key),
        lambda s: merged_grads(runs["ref"], ref_key, s),
        lambda s: merged_grads(runs[world], key, s),
        steps=3,
    )


def test_dp2_times_tp2_matches_single_process(runs) -> None:
    key = "gamma_simpo/tp2-pp1-dp2-mb1"
    ref_key = "gamma_simpo/tp1-pp1-dp1-mb2"
    assert_same_training(
        record(runs["ref"], ref_key),
        record(runs["w4"], key),
        lambda s: merged_grads(runs["ref"], ref_key, s),
        lambda s: merged_grads(runs["w4"], key, s),
        steps=3,
    )


def test_excluded_pair_is_counted_and_queue_fills(runs) -> None:
    rec = record(runs["ref"], "gamma_simpo/tp1-pp1-dp1-mb2")
    assert [s["metrics"]["excluded_pairs"] for s in rec["steps"]] == [0.0, 1.0, 0.0]
    # 3 steps x 4 pairs pushed into 8 slots: steps 1 and 2 remain, and step 1's truncated pair
    # is held as invalid (it never enters a solve).
    queue = rec["queue"]["queue"]
    assert queue["count"] == 8
    assert queue["valid"].tolist() == [True] * 5 + [False] + [True] * 2


def queues_equal(a: dict[str, Any], b: dict[str, Any]) -> bool:
    qa, qb = a["queue"], b["queue"]
    return (
        torch.equal(qa["margins"], qb["margins"])
        and torch.equal(qa["valid"], qb["valid"])
        and (qa["pointer"], qa["count"]) == (qb["pointer"], qb["count"])
        and torch.equal(qa["generator"], qb["generator"])
    )


@pytest.mark.parametrize("world", ["w2", "w4"])
def test_queue_identical_on_every_last_stage_rank(runs, world: str) -> None:
    for key in runs[world][0]:
        states = [r[key]["queue"] for r in runs[world] if r[key]["last_stage"] and r[key]["queue"] is not None]
        assert len(states) >= 1
        assert all(queues_equal(states[0], s) for s in states[1:]), key
        ref = record(runs["ref"], key.split("/")[0] + "/tp1-pp1-dp1-mb2")["queue"]["queue"]
        torch.testing.assert_close(states[0]["queue"]["margins"], ref["margins"], atol=LOSS_TOL, rtol=0)
        assert torch.equal(states[0]["queue"]["generator"], ref["generator"])


def test_validation_leaves_queue_unchanged(runs) -> None:
    for r in runs["w2"]:
        for key, rec in r.items():
            if not rec["last_stage"]:
                continue
            assert queues_equal(rec["queue_before_validation"], rec["queue_after_validation"]), key
            metrics = rec["validation_metrics"]
            assert metrics is not None and metrics["gamma_max"] >= metrics["gamma_min"] > 0


def test_checkpoint_round_trip_tp2_pp2(runs, tmp_path) -> None:
    """Save after 2 steps (real megatron dist-checkpoint), restore into fresh processes, step 3 matches."""
    layout = {"tp": 2, "pp": 2, "pairs_per_rank": 2}
    spec = job(**layout, steps=2, **LOSS_SPECS["gamma_simpo"])["spec"]
    ckpt = str(tmp_path / "ckpt")
    run_on_ranks(checkpoint_worker, 4, 240, {"layout": layout, "spec": spec, "ckpt_dir": ckpt, "phase": "save"})
    resumed = run_on_ranks(
        checkpoint_worker, 4, 240, {"layout": layout, "spec": spec, "ckpt_dir": ckpt, "phase": "resume"}
    )
    uninterrupted = record(runs["w4"], "gamma_simpo/tp2-pp2-dp1-mb2")
    last = next(r for r in resumed if r["last_stage"] and r["tp_rank"] == 0)
    assert last["steps"][0]["metrics"] == uninterrupted["steps"][2]["metrics"]
    for a, b in zip(last["steps"][0]["gamma"], uninterrupted["steps"][2]["gamma"], strict=True):
        assert torch.equal(a, b)
    assert queues_equal(last["queue"], uninterrupted["queue"])
    # Every rank (first stage included) restored the same queue.
    first = next(r for r in resumed if not r["last_stage"])
    assert first["queue"]["queue"]["count"] > 0
