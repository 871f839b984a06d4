"""Pair ids through the pipeline, and precomputed reference log-probs equal to the online reference.

All runs start from one ``.nemo`` (the session's ``nemo_a`` run, TP1) and train γ-DPO on the tiny
preset for 8 steps (validation after 4 and 8) in two processes:

* the sidecar is precomputed once at DP2 (``nemo_gammapo.aligner.precompute``) and serves both
  layouts below (a restored checkpoint's reference does not depend on the layout);
* DP2: online reference vs precomputed — the precomputed run is stopped after 4 steps and resumed;
* PP2: online reference vs precomputed.

Per step, training and validation losses agree to ≤ 1e-6 relative (measured: bit-identical), the
precomputed runs never call the reference machinery nor keep a host copy of the weights, and the γ
dumps name every pair by its content id — the same pairs with the same margins at DP2 and PP2.
The start-up refusals (wrong data, wrong model, a pair without a value) need no training.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import AlignerRuns
from dist_workers import reference_runs_worker
from omegaconf import open_dict

from nemo_gammapo.aligner.errors import ConfigError
from nemo_gammapo.aligner.preflight import preflight
from nemo_gammapo.aligner.reference import ReferenceLogprobs, check_sidecar, place_sums
from nemo_gammapo.artifacts.dumps import read_dumps
from nemo_gammapo.bench.nemo_step import use_bundled_demo_data
from nemo_gammapo.configs import compose, demo_data_dir
from nemo_gammapo.data.pair_id import file_pair_ids, pair_id
from nemo_gammapo.distributed.process_groups import run_on_ranks

ROOT = Path(__file__).resolve().parent.parent
STEPS = 8
GAMMA_DPO = [
    "model.dpo.preference_loss=gamma_dpo",
    "model.dpo.ref_policy_kl_penalty=0.5",
    "model.dpo.gamma_beta_ratio=2.0",
]
RUN = [
    *GAMMA_DPO,
    f"trainer.dpo.max_steps={STEPS}",
    "trainer.dpo.val_check_interval=4",
    "trainer.dpo.save_interval=4",
    "model.global_batch_size=8",
    "model.dpo.gamma_dump.every=2",
]
PP2 = ["model.pipeline_model_parallel_size=2", "trainer.dpo.gradient_clip_val=0"]
DP2_NO_CLIP = ["trainer.dpo.gradient_clip_val=0"]  # the same optimisation as at PP2 (clipping differs there)


def nemo_file(aligner_runs: AlignerRuns) -> Path:
    return next((aligner_runs.dir("nemo_a") / "checkpoints").glob("*.nemo"))


@pytest.fixture(scope="module")
def reference_runs(aligner_runs, tmp_path_factory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("reference")
    nemo = nemo_file(aligner_runs)
    sidecar = root / "reference_logprobs.pt"
    stale = root / "stale_reference_logprobs.pt"  # its values, not its digests, are off
    start = [f"pretrained_checkpoint.restore_from_path={nemo}", f"model.dpo.reference_logprobs={sidecar}"]
    pre = ["model.dpo.reference=precomputed"]
    plan = [
        {"precompute": {"run_dir": str(root / "precompute"), "overrides": [*start, *RUN]}},
        {"run_dir": str(root / "dp2_online"), "overrides": [*start, *RUN, *DP2_NO_CLIP]},
        {
            "run_dir": str(root / "dp2_pre"),
            "overrides": [*start, *RUN, *DP2_NO_CLIP, *pre, "trainer.dpo.stop_after_steps=4"],
        },
        {"run_dir": str(root / "dp2_pre"), "overrides": [*start, *RUN, *DP2_NO_CLIP, *pre]},  # resumes
        {"run_dir": str(root / "pp2_online"), "overrides": [*start, *RUN, *PP2]},
        {"run_dir": str(root / "pp2_pre"), "overrides": [*start, *RUN, *PP2, *pre]},
        {"tamper": {"src": str(sidecar), "dst": str(stale), "nats_per_token": 0.5}},
        {
            "run_dir": str(root / "pp2_stale"),
            "overrides": [*start, *RUN, *PP2, *pre, f"model.dpo.reference_logprobs={stale}"],
            "expect_user_error": True,
        },
    ]
    per_rank = run_on_ranks(reference_runs_worker, 2, 900, {"plan": plan}, init_process_group=False)
    names = ["precompute", "dp2_online", "dp2_pre_stopped", "dp2_pre", "pp2_online", "pp2_pre", "tamper", "pp2_stale"]
    return {"root": root, "sidecar": sidecar, "nemo": nemo, **dict(zip(names, per_rank[0], strict=True))}


def history(root: Path, run: str) -> tuple[dict[int, float], dict[int, float]]:
    from nemo_gammapo.artifacts.metrics import read_history

    records = read_history(root / run)
    return (
        {r["step"]: r["train/loss"] for r in records if "train/loss" in r},
        {r["step"]: r["val/loss"] for r in records if "val/loss" in r},
    )


def assert_close(a: dict[int, float], b: dict[int, float], rel: float = 1e-6) -> None:
    assert a.keys() == b.keys(), (sorted(a), sorted(b))
    for step in a:
        assert abs(a[step] - b[step]) <= rel * abs(b[step]), (step, a[step], b[step])


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("layout", ["dp2", "pp2"])
def test_precomputed_reference_trains_like_the_online_reference(reference_runs, layout: str) -> None:
    root = reference_runs["root"]
    online_train, online_val = history(root, f"{layout}_online")
    pre_train, pre_val = history(root, f"{layout}_pre")
    assert sorted(online_train) == list(range(STEPS)) and len(online_val) == 2, (online_train, online_val)
    assert_close(pre_train, online_train)
    assert_close(pre_val, online_val)
    # the online runs ran the reference; the precomputed ones never did and kept no weights for it
    online, pre = reference_runs[f"{layout}_online"], reference_runs[f"{layout}_pre"]
    assert online["calls"]["get_ref_policy_logprobs"] > 0 and online["holds_reference_weights"]
    # the precomputed run's one reference forward: the check of the file at its first step; at PP2 a
    # fresh start (the current weights are the reference: no swap, no host copy), at DP2 the resumed
    # half of the run (test_precomputed_run_resumes)
    if layout == "pp2":
        assert pre["calls"] == {
            "get_logprob_batch": 1,
            "get_ref_policy_logprobs": 0,
            "retrieve_model_state_dict_in_cpu": 0,
        }
    assert not pre["holds_reference_weights"]


@pytest.mark.distributed
@pytest.mark.slow
def test_precomputed_run_resumes(reference_runs) -> None:
    """The DP2 precomputed run stopped after step 4 and resumed: steps 5–8 continue it exactly."""
    stopped = reference_runs["dp2_pre_stopped"]
    assert stopped["stopped_on_request"] is False and stopped["history"]
    first = [r["step"] for r in stopped["history"] if "train/loss" in r]
    resumed = [r["step"] for r in reference_runs["dp2_pre"]["history"] if "train/loss" in r]
    assert first == [0, 1, 2, 3] and resumed == [4, 5, 6, 7], (first, resumed)
    # ...and the joined history equals the online run's (test above); the sidecar was read again and
    # checked again: one forward of the starting weights, from a host copy taken before the
    # checkpoint restore and dropped after the check, swapped in by NeMo-Aligner (whose swap keeps
    # a second host copy, of the current weights, to swap back)
    assert reference_runs["dp2_pre_stopped"]["calls"]["get_logprob_batch"] == 1  # its own start's check
    calls = reference_runs["dp2_pre"]["calls"]
    assert calls == {"get_logprob_batch": 1, "get_ref_policy_logprobs": 1, "retrieve_model_state_dict_in_cpu": 2}
    assert not reference_runs["dp2_pre"]["holds_reference_weights"]


@pytest.mark.distributed
@pytest.mark.slow
def test_a_stale_reference_file_stops_the_first_step(reference_runs) -> None:
    """Same digests, other values (as after a tokenizer or template change): one line, exit 2."""
    result = reference_runs["pp2_stale"]
    assert result["exit_code"] == 2, result
    line = result["error"]
    assert "\n" not in line and "disagrees with the reference computed online for pair id " in line, line
    assert "0.5000 nats/token > model.dpo.reference_check_tolerance=0.1" in line
    assert "likely causes: another tokenizer" in line and "precompute-reference" in line


@pytest.mark.distributed
@pytest.mark.slow
def test_sidecar_holds_every_pair_of_both_files(reference_runs) -> None:
    sidecar = ReferenceLogprobs.load(reference_runs["sidecar"])
    ids = {pid for split in ("train", "validation") for _, pid in file_pair_ids(demo_data_dir() / f"{split}.jsonl")}
    assert set(sidecar.pair_ids.tolist()) == ids
    assert torch.all(sidecar.chosen < 0) and torch.all(sidecar.rejected < 0)  # sums of log-probs
    assert torch.all(sidecar.chosen_tokens > 0) and torch.all(sidecar.rejected_tokens > 0)
    assert reference_runs["precompute"]["calls"]["get_logprob_batch"] > 0  # it ran the reference


@pytest.mark.distributed
@pytest.mark.slow
def test_dumps_carry_pair_ids_through_dp2_and_pp2(reference_runs) -> None:
    """Every dumped pair has its content id; at each step DP2 and PP2 saw the same pairs, and a
    pair's margin is the same in both (ids travel with their pairs, not with batch positions)."""
    root = reference_runs["root"]
    train_ids = {pid for _, pid in file_pair_ids(demo_data_dir() / "train.jsonl")}
    frames = {layout: read_dumps(root / f"{layout}_pre") for layout in ("dp2", "pp2")}
    for layout, frame in frames.items():
        assert (frame["pair_id"] >= 0).all() and set(frame["pair_id"]) <= train_ids, layout
        assert sorted(frame["step"].unique()) == [0, 2, 4, 6], layout
    by_id = {
        layout: {(int(r.step), int(r.pair_id)): float(r.margin) for r in frame.itertuples()}
        for layout, frame in frames.items()
    }
    assert by_id["dp2"].keys() == by_id["pp2"].keys()
    # step 0: both start from the same weights, so a pair's margin agrees to float rounding —
    # a pair id attached to the wrong pair would be off by the spread of margins (~0.3)
    first = [(key, margin) for key, margin in by_id["dp2"].items() if key[0] == 0]
    assert len(first) == 8
    for key, margin in first:
        assert abs(margin - by_id["pp2"][key]) <= 1e-5 * max(1.0, abs(margin)), (key, margin, by_id["pp2"][key])


def tiny_cfg(tmp_path: Path, *overrides: str) -> Any:
    cfg = compose("tiny_cpu", [f"run_dir={tmp_path / 'run'}", *GAMMA_DPO, *overrides])
    use_bundled_demo_data(cfg)
    return cfg


def write_sidecar(cfg: Any, path: Path, drop: int | None = None) -> None:
    """A sidecar for ``cfg``'s data and model with made-up values (only identity is checked here)."""
    from nemo_gammapo.aligner.preflight import data_files
    from nemo_gammapo.aligner.reference import file_digest, model_digest

    files = data_files(cfg)
    rows = {pid: (-1.0, -2.0, 3, 4) for paths in files.values() for _, pid in file_pair_ids(paths[0]) if pid != drop}
    ReferenceLogprobs.from_rows(rows, {s: file_digest(p[0]) for s, p in files.items()}, model_digest(cfg)).save(path)


def test_start_up_refuses_a_sidecar_that_does_not_belong_to_the_run(tmp_path: Path) -> None:
    sidecar = tmp_path / "ref.pt"
    cfg = tiny_cfg(tmp_path, "model.dpo.reference=precomputed", f"model.dpo.reference_logprobs={sidecar}")
    with pytest.raises(ConfigError, match="does not exist; write it first with `nemo-gammapo precompute-reference`"):
        preflight(cfg)
    write_sidecar(cfg, sidecar)
    assert preflight(cfg)["pairs"]["train"] == 512  # it belongs: accepted

    # other data: one changed pair in a copy of the training file
    data = tmp_path / "train.jsonl"
    lines = (demo_data_dir() / "train.jsonl").read_text().splitlines()
    row = json.loads(lines[6])
    row["chosen_response"] += " (edited)"
    data.write_text("\n".join([*lines[:6], json.dumps(row), *lines[7:]]) + "\n")
    with open_dict(cfg):
        cfg.model.data.data_prefix.train = [str(data)]
    with pytest.raises(ConfigError, match=rf"computed for other train data than {data}"):
        check_sidecar(cfg, {"train": [str(data)], "validation": list(cfg.model.data.data_prefix.validation)})

    # other model: the random start of another seed
    cfg = tiny_cfg(
        tmp_path, "model.dpo.reference=precomputed", f"model.dpo.reference_logprobs={sidecar}", "model.seed=7"
    )
    with pytest.raises(ConfigError, match="computed with another reference model"):
        preflight(cfg)

    # a pair without a value: named by file and line
    cfg = tiny_cfg(tmp_path, "model.dpo.reference=precomputed", f"model.dpo.reference_logprobs={sidecar}")
    missing = pair_id(json.loads(lines[41]))
    write_sidecar(cfg, sidecar, drop=missing)
    train_file = cfg.model.data.data_prefix.train[0]
    with pytest.raises(ConfigError, match=rf"no value for the pair at {train_file}:42 \(pair id {missing}\)"):
        preflight(cfg)


def test_precomputed_needs_a_reference_using_loss_and_no_context_parallelism(tmp_path: Path) -> None:
    cfg = compose("tiny_cpu", [f"run_dir={tmp_path}", "model.dpo.reference=precomputed"])  # γ-SimPO
    with pytest.raises(ConfigError, match="gamma_simpo uses no reference policy"):
        preflight(cfg)
    cfg = tiny_cfg(tmp_path, "model.dpo.reference=sometimes")
    with pytest.raises(ConfigError, match=r"model.dpo.reference='sometimes': allowed \['online', 'precomputed'\]"):
        preflight(cfg)


def test_place_sums_gives_back_each_sum_exactly() -> None:
    labels = torch.tensor([[-100, -100, 5, 6, -100], [-100, 7, 8, 9, 10], [-100] * 5])
    sums = torch.tensor([-3.25, -17.0000019, 0.0])
    placed = place_sums(sums, labels)
    mask = (labels > -1).float()
    assert torch.equal((placed * mask).sum(-1), sums)
    assert placed[0, 2] == sums[0] and placed[1, 1] == sums[1] and placed.count_nonzero() == 2


def test_pair_id_is_content_only() -> None:
    row = {"prompt": "p", "chosen_response": "a", "rejected_response": "b"}
    assert pair_id(row) == pair_id({"rejected_response": "b", "id": 9, **row})  # order, extra keys
    assert pair_id(row) != pair_id({**row, "chosen_response": "b", "rejected_response": "a"})  # a flip is another pair
    chat = {"prompt": [{"role": "user", "content": "p"}], "chosen_response": {"role": "assistant", "content": "a"}}
    assert 0 <= pair_id({**chat, "rejected_response": "x"}) < 2**63
