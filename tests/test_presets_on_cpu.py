"""Every shipped preset, composed as a user would, trains, checkpoints and resumes on CPU.

Each preset (``conf/*.yaml`` except the tiny CPU ones, which the other tests train) is composed by
name with the keys a user supplies, plus only what cannot exist on a CPU or in a test:

* the model: a tiny Llama-shaped ``.nemo`` (``tiny_llama_cpu``) instead of the 7–70B checkpoint, so
  widths, layers, vocabulary and tokenizer come from it, as they come from the real checkpoint;
* the data: the bundled parity task; global batch 4 and 3 steps (validation every step on one
  batch, saves at the end) instead of 128 and an epoch; ranks > 0 wait 1 s instead of 5 s for
  rank 0's log set-up (one machine);
* the device: ``accelerator=cpu``, and the layout scaled to ≤ 4 processes keeping every parallel
  feature the preset switches on (table below).

Kept as shipped: the loss and every γ / β / τ value, the learning-rate schedule, weight decay,
sequence parallelism, selective activation recomputation, micro-batch 1, gradient clipping,
distributed checkpoints (``torch_dist``).

What cannot run on a CPU, and is therefore replaced (each preset asks for all four):

* BF16 (``trainer.precision: bf16``) → fp32: NeMo's precision plugins autocast on ``device='cuda'``
  (a no-op on CPU), and ``megatron_amp_O2`` needs apex's multi-tensor kernels;
* ``megatron_amp_O2: true`` → false: apex (see above);
* Transformer Engine (``transformer_engine: true``) → megatron-core's local layer spec: TE needs CUDA;
* ``optim.name: distributed_fused_adam`` (apex) → torch ``adamw`` with the same hyperparameters;
  megatron-core's ``mcore_distributed_optim`` trains on CPU but cannot resume there.

Per preset: an uninterrupted run, and the same run stopped after step 2 (checkpoint, exit) and
started again; the re-run must end with the uninterrupted run's losses, margin queue and
checkpointed weights and optimizer state, bit for bit. Presets that differ from another one only in
loss hyperparameters and learning rate (:data:`HYPERPARAMETERS_ONLY`, checked key by key on the
composed configs) take the same code path at the same layout: they run uninterrupted, and their
stop/resume is their representative's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from dist_workers import aligner_runs_worker, checkpoint_tensors, same_state

from nemo_gammapo.distributed.process_groups import run_on_ranks

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
# preset -> (processes, layout overrides): TP8 becomes TP2 and PP4 becomes PP2, nothing else.
PRESETS: dict[str, tuple[int, list[str]]] = {
    "gpt_gammapo": (2, []),  # TP1/PP1: the processes are data parallel
    "llama3_8b_instruct": (2, []),  # TP2 + SP, as shipped
    "mistral_7b_instruct": (2, []),
    "gemma2_9b_it": (2, []),
    "qwen25_7b_instruct": (2, []),
    "qwen25_32b_instruct": (4, ["model.tensor_model_parallel_size=2"]),  # TP8+SP × DP2 → TP2+SP × DP2
    "llama3_70b_instruct": (  # TP8+SP × PP4 → TP2+SP × PP2
        4,
        ["model.tensor_model_parallel_size=2", "model.pipeline_model_parallel_size=2"],
    ),
}
STEPS = 3
STOP_AFTER = 2
# preset -> the preset it differs from only in the keys of HYPERPARAMETER_KEYS (same layout and code path)
HYPERPARAMETERS_ONLY = {
    "mistral_7b_instruct": "llama3_8b_instruct",
    "gemma2_9b_it": "llama3_8b_instruct",
    "qwen25_7b_instruct": "llama3_8b_instruct",
}
HYPERPARAMETER_KEYS = {
    "name",
    "model.dpo.ref_policy_kl_penalty",
    "model.dpo.gamma_beta_ratio",
    "model.dpo.gamma.tau",
    "model.optim.lr",
}
ON_CPU = [
    "trainer.accelerator=cpu",
    "trainer.num_nodes=1",
    "trainer.precision=32",
    "model.megatron_amp_O2=false",
    "model.transformer_engine=false",
    "model.optim.name=adamw",
    "model.encoder_seq_length=32",
    "model.global_batch_size=4",
    "model.data.data_prefix.train=[data/demo/train.jsonl]",
    "model.data.data_prefix.validation=[data/demo/validation.jsonl]",
    f"trainer.dpo.max_steps={STEPS}",
    "trainer.dpo.val_check_interval=1",
    f"trainer.dpo.save_interval={STEPS}",
    "trainer.dpo.limit_val_batches=1",
    "exp_manager.seconds_to_sleep=1",  # one machine: ranks > 0 need not wait NeMo's 5 s for rank 0
]


def test_every_preset_is_listed() -> None:
    tiny = {"tiny_cpu", "tiny_llama_cpu"}
    assert set(PRESETS) == {p.stem for p in (ROOT / "conf").glob("*.yaml")} - tiny


@pytest.fixture(scope="module")
def preset_runs(tmp_path_factory) -> tuple[Path, dict[str, list[list[dict[str, Any]]]]]:
    """Per preset: [uninterrupted, stopped, re-run] per-rank results; one process pool per size."""
    root = tmp_path_factory.mktemp("presets")
    seed = {
        "config_name": "tiny_llama_cpu",
        "run_dir": str(root / "seed"),
        "overrides": [
            "trainer.dpo.max_steps=2",
            "trainer.dpo.val_check_interval=2",
            "trainer.dpo.save_interval=2",
            "exp_manager.checkpoint_callback_params.save_nemo_on_train_end=true",
        ],
    }
    results: dict[str, list[list[dict[str, Any]]]] = {}
    for processes in (2, 4):
        names = [name for name, (n, _) in PRESETS.items() if n == processes]
        runs = [seed] if processes == 2 else []  # the 2-process pool runs first and writes the .nemo

        def run(name: str, run_dir: str, extra: tuple[str, ...] = ()) -> dict[str, Any]:
            return {
                "config_name": name,
                "run_dir": str(root / run_dir),
                "restore_from_run": str(root / "seed"),
                "overrides": [*ON_CPU, *PRESETS[name][1], *extra],
            }

        counts = []
        for name in names:
            runs.append(run(name, f"{name}_full"))
            if name not in HYPERPARAMETERS_ONLY:
                runs += [
                    run(name, f"{name}_resumed", (f"trainer.dpo.stop_after_steps={STOP_AFTER}",)),
                    run(name, f"{name}_resumed"),
                ]
            counts.append(1 if name in HYPERPARAMETERS_ONLY else 3)
        per_run = [
            list(r)
            for r in zip(
                *run_on_ranks(aligner_runs_worker, processes, 1200, {"runs": runs}, init_process_group=False),
                strict=True,
            )
        ]
        per_run = per_run[1:] if processes == 2 else per_run
        start = 0
        for name, count in zip(names, counts, strict=True):
            results[name] = per_run[start : start + count]
            start += count
    return root, results


def flat_config(name: str) -> dict[str, object]:
    from omegaconf import OmegaConf

    from nemo_gammapo.configs import compose

    def flatten(node: object, prefix: str = "") -> dict[str, object]:
        if isinstance(node, dict):
            return {k: v for key, value in node.items() for k, v in flatten(value, f"{prefix}{key}.").items()}
        return {prefix[:-1]: node}

    return flatten(OmegaConf.to_container(compose(name, ["run_dir=/tmp/x"]), resolve=False))


@pytest.mark.parametrize("name", list(HYPERPARAMETERS_ONLY))
def test_hyperparameter_only_presets_differ_from_their_representative_in_those_keys_only(name: str) -> None:
    """The presets whose stop/resume is their representative's really share its layout and code path."""
    mine, theirs = flat_config(name), flat_config(HYPERPARAMETERS_ONLY[name])
    assert mine.keys() == theirs.keys()
    differing = {k for k in mine if mine[k] != theirs[k]}
    assert differing <= HYPERPARAMETER_KEYS, differing - HYPERPARAMETER_KEYS


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_trains_checkpoints_and_resumes(preset_runs, name: str, tmp_path) -> None:
    root, results = preset_runs

    def records(result: dict[str, Any], key: str) -> list[tuple[int, float]]:
        return [(int(r["step"]), r[key]) for r in result["history"] if key in r]

    if name in HYPERPARAMETERS_ONLY:  # trains and checkpoints; stop/resume is its representative's
        (full,) = results[name]
        for rank, a in enumerate(full):
            assert [s for s, _ in records(a, "train/loss")] == list(range(STEPS)), f"rank {rank}"
            assert all(torch.isfinite(torch.tensor(v)) for _, v in records(a, "train/loss")), f"rank {rank}"
        assert checkpoint_tensors(root / f"{name}_full", STEPS, tmp_path), "no checkpoint of the last step"
        return
    full, stopped, resumed = results[name]

    for rank, (a, b, c) in enumerate(zip(full, stopped, resumed, strict=True)):
        assert [s for s, _ in records(a, "train/loss")] == list(range(STEPS)), f"rank {rank}"
        assert [s for s, _ in records(b, "train/loss")] == list(range(STOP_AFTER)), f"rank {rank}"
        assert records(c, "train/loss") == records(a, "train/loss")[STOP_AFTER:], f"rank {rank}: resumed losses"
        assert records(c, "val/loss")[-1] == records(a, "val/loss")[-1], f"rank {rank}: final validation"
        assert same_state(a["gamma_state"], c["gamma_state"]), f"rank {rank}: margin queue"
    ckpt_full = checkpoint_tensors(root / f"{name}_full", STEPS, tmp_path)
    ckpt_resumed = checkpoint_tensors(root / f"{name}_resumed", STEPS, tmp_path)
    assert ckpt_full.keys() == ckpt_resumed.keys()
    assert [k for k in ckpt_full if not torch.equal(ckpt_full[k], ckpt_resumed[k])] == []
