"""End-to-end NeMo-Aligner training of the tiny GPT on 2 CPU processes (gloo, data parallel).

Real parts throughout: NeMo's trainer builder and exp_manager, NeMo-Aligner's dataset builders
and DPOTrainer, our model class, distributed checkpoints on disk.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import ALIGNER_LOSSES as LOSSES
from conftest import ALIGNER_STEPS as STEPS

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


@pytest.fixture(params=list(LOSSES))
def trained(request, aligner_runs) -> tuple[str, Path, list[dict[str, Any]]]:
    return request.param, aligner_runs.dir(request.param), aligner_runs[request.param]


def train_losses(result: dict[str, Any]) -> list[float]:
    return [r["train/loss"] for r in result["history"] if "train/loss" in r]


def test_trains_and_loss_decreases(trained) -> None:
    loss, _, results = trained
    losses = train_losses(results[0])
    assert len(losses) == STEPS
    first, last = statistics.fmean(losses[:5]), statistics.fmean(losses[-5:])
    # DPO (β 0.5) starts at log 2 and falls least: it is at ~0.80× after 40 steps.
    assert last < 0.85 * first, f"{loss}: mean loss {first:.3f} over the first 5 steps -> {last:.3f} over the last 5"
    assert train_losses(results[1]) == losses  # every rank logs the same numbers


def test_gamma_metrics_are_logged(trained) -> None:
    loss, run_dir, results = trained
    last = [r for r in results[0]["history"] if "train/loss" in r][-1]
    for key in ("gamma_mean", "gamma_std", "gamma_min", "gamma_max", "margin_mean", "queue_fill", "excluded_pairs"):
        assert f"train/gamma_po/{key}" in last, key
    val = [r for r in results[0]["history"] if "val/loss" in r]
    assert val and "val/gamma_po/gamma_mean" in val[-1]
    if loss.startswith("gamma_"):
        assert last["train/gamma_po/gamma_std"] > 0 and last["train/gamma_po/queue_fill"] > 0
        assert last["train/gamma_po/gamma_min"] < last["train/gamma_po/gamma_mean"] < last["train/gamma_po/gamma_max"]
    assert (run_dir / "metrics.jsonl").stat().st_size > 0
    assert list(run_dir.glob("events.out.tfevents.*")), "no TensorBoard log through NeMo's logger"
    assert list((run_dir / "checkpoints").glob("*-last")), "no checkpoint written"


def test_reference_policy_is_skipped_exactly_for_reference_free_losses(trained) -> None:
    loss, _, results = trained
    for r in results:
        if loss in ("gamma_simpo", "simpo"):
            assert r["reference_free"] and not r["holds_reference_weights"]
            assert r["calls"] == {
                "get_ref_policy_logprobs": 0,
                "get_logprob_batch": 0,
                "retrieve_model_state_dict_in_cpu": 0,
            }
        else:
            assert not r["reference_free"] and r["holds_reference_weights"]
            # The reference pass runs every training and validation step, inside a weight swap
            # that also copies the current weights to the host.
            assert r["calls"]["get_ref_policy_logprobs"] > STEPS
            assert r["calls"]["retrieve_model_state_dict_in_cpu"] > STEPS


def test_stop_and_resume_is_bit_exact(aligner_runs) -> None:
    """16 steps uninterrupted == 8 steps, stop (checkpoint), the same command again for 8 more."""
    full_losses = train_losses(aligner_runs["full"][0])
    resumed_records = [r for r in aligner_runs["resumed"][0]["history"] if "train/loss" in r]
    assert [int(r["step"]) for r in resumed_records] == list(range(8, 16))  # it resumed at step 8
    assert [r["train/loss"] for r in resumed_records] == full_losses[8:]
    for a, b in zip(aligner_runs["full"], aligner_runs["resumed"], strict=True):
        qa, qb = a["gamma_state"]["policy"]["queue"], b["gamma_state"]["policy"]["queue"]
        assert torch.equal(qa["margins"], qb["margins"]) and torch.equal(qa["valid"], qb["valid"])
        assert (qa["pointer"], qa["count"]) == (qb["pointer"], qb["count"])
        assert torch.equal(qa["generator"], qb["generator"])


def test_gamma_dumps_match_logged_metrics(trained) -> None:
    """Per-pair dumps (every 8 steps in the tiny preset) agree with the step metrics logged.

    Every registry loss dumps margins and losses; only γ-PO losses have a γ column with values.
    """
    from nemo_gammapo.artifacts.dumps import read_dumps

    loss, run_dir, results = trained
    dumps = read_dumps(run_dir)
    assert sorted(dumps["step"].unique()) == list(range(0, STEPS, 8))
    logged = {int(r["step"]): r for r in results[0]["history"] if "train/loss" in r}
    for step, frame in dumps.groupby("step"):
        assert sorted(frame["dp_rank"].unique()) == [0, 1]  # both data-parallel ranks wrote their pairs
        if loss.startswith("gamma_"):
            assert frame["gamma"].mean() == pytest.approx(logged[step]["train/gamma_po/gamma_mean"], abs=1e-5)
        else:  # base losses dump margins and losses; they have no dynamic γ
            assert frame["gamma"].isna().all()
        assert frame["margin"].mean() == pytest.approx(logged[step]["train/gamma_po/margin_mean"], abs=1e-5)
        assert frame["loss"].mean() == pytest.approx(logged[step]["train/loss"], abs=1e-5)


def test_restores_a_nemo_checkpoint(aligner_runs) -> None:
    """A .nemo written at the end of one run is restored by the entry point with the same weights.

    SimPO (no queue state) so that the validation loss depends on the weights alone; the second run
    uses learning rate 0, so its validation after one step sees exactly the restored weights.
    """
    a, b = aligner_runs["nemo_a"], aligner_runs["nemo_b"]
    assert len(list((aligner_runs.dir("nemo_a") / "checkpoints").glob("*.nemo"))) == 1
    val_a = [r["val/loss"] for r in a[0]["history"] if "val/loss" in r][-1]
    val_b = [r["val/loss"] for r in b[0]["history"] if "val/loss" in r][-1]
    assert val_b == pytest.approx(val_a, abs=1e-6)
    fresh_first_loss = next(r["train/loss"] for r in a[0]["history"] if "train/loss" in r)
    restored_first_loss = next(r["train/loss"] for r in b[0]["history"] if "train/loss" in r)
    assert restored_first_loss != fresh_first_loss  # same first batch, trained weights


def test_lora_reference_is_the_base_model_with_adapters_off(aligner_runs) -> None:
    """LoRA: the reference is the base model with the adapters switched off, never a host copy.

    Run A trains adapters (they start at zero, so its first step has policy = reference: loss
    log 2) and saves them; run B restores them with learning rate 0. B's reference is still the
    base model, so B's validation equals A's last one; were the reference a copy of B's starting
    weights (base + restored adapters), B's rewards would be 0 and its loss log 2.
    """
    a, b = aligner_runs["lora_a"], aligner_runs["lora_b"]
    for r in a + b:
        assert not r["holds_reference_weights"] and r["calls"]["retrieve_model_state_dict_in_cpu"] == 0
        assert r["calls"]["get_ref_policy_logprobs"] > 0  # the reference pass runs (adapters off)
    first_a = next(r for r in a[0]["history"] if "train/loss" in r)
    assert first_a["train/loss"] == pytest.approx(math.log(2), abs=1e-6)
    first_b = next(r for r in b[0]["history"] if "train/loss" in r)
    assert abs(first_b["train/rewards_chosen_mean"]) > 1e-3
    val_a = [r["val/loss"] for r in a[0]["history"] if "val/loss" in r][-1]
    val_b = [r["val/loss"] for r in b[0]["history"] if "val/loss" in r][-1]
    assert val_b == pytest.approx(val_a, abs=1e-6)
    assert abs(val_b - math.log(2)) > 1e-3
