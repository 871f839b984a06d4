"""Every YAML under conf/ composes and validates; invalid values fail at start-up naming the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from nemo_gammapo.aligner.config import ConfigError, loss_configs
from nemo_gammapo.aligner.train import validate_config

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted(p.stem for p in (ROOT / "conf").glob("*.yaml"))
# Mandatory (???) values a user supplies on the command line.
REQUIRED = [
    "pretrained_checkpoint.restore_from_path=/ckpt/model.nemo",
    "model.data.data_prefix.train=[/data/train.jsonl]",
    "model.data.data_prefix.validation=[/data/val.jsonl]",
]


def composed(name: str, overrides: list[str] = ()) -> OmegaConf:
    OmegaConf.register_new_resolver("multiply", lambda x, y: x * y, replace=True)  # as NeMo does
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose(name, overrides=[*REQUIRED, *overrides])
    OmegaConf.resolve(cfg)
    return cfg


def test_all_configs_found() -> None:
    assert {
        "gpt_gammapo",
        "tiny_cpu",
        "llama3_8b_instruct",
        "mistral_7b_instruct",
        "gemma2_9b_it",
        "qwen25_7b_instruct",
    } <= set(CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_composes_and_validates(name: str) -> None:
    cfg = composed(name)
    validate_config(cfg)
    loss_cfg, _ = loss_configs(cfg.model.dpo)
    assert loss_cfg.gamma0 == pytest.approx(cfg.model.dpo.gamma_beta_ratio * cfg.model.dpo.ref_policy_kl_penalty)
    assert cfg.model.global_batch_size % cfg.model.micro_batch_size == 0


# (β, γ/β, τ, lr) from the paper's Table 7; γ0 = ratio·β (Llama3 4.0, Mistral 0.375, Gemma2 5.0, Qwen2.5 3.0).
TABLE_7 = {
    "llama3_8b_instruct": (10.0, 0.4, 10.0, 1e-6, 4.0),
    "mistral_7b_instruct": (2.5, 0.15, 10.0, 6e-7, 0.375),
    "gemma2_9b_it": (10.0, 0.5, 20.0, 8e-7, 5.0),
    "qwen25_7b_instruct": (10.0, 0.3, 3.0, 1e-6, 3.0),
}


@pytest.mark.parametrize("name", list(TABLE_7))
def test_paper_presets(name: str) -> None:
    beta, ratio, tau, lr, gamma0 = TABLE_7[name]
    cfg = composed(name)
    loss_cfg, gamma_cfg = loss_configs(cfg.model.dpo)
    assert (loss_cfg.name, loss_cfg.beta, loss_cfg.gamma_beta_ratio, gamma_cfg.tau) == ("gamma_simpo", beta, ratio, tau)
    assert loss_cfg.gamma0 == pytest.approx(gamma0)
    assert cfg.model.optim.lr == lr and cfg.model.optim.sched.warmup_ratio == 0.1
    assert cfg.model.optim.sched.name == "CosineAnnealing" and cfg.trainer.dpo.max_epochs == 1
    assert (cfg.model.global_batch_size, cfg.model.encoder_seq_length) == (128, 2048)
    assert cfg.trainer.precision == "bf16" and cfg.model.transformer_engine is True


@pytest.mark.parametrize(
    "override,key",
    [
        ("model.dpo.preference_loss=simpoo", "model.dpo.preference_loss"),
        ("model.dpo.gamma.tau=0", "model.dpo.gamma.tau"),
        ("model.dpo.gamma.tau=-1.5", "model.dpo.gamma.tau"),
        ("model.dpo.gamma_beta_ratio=-0.1", "model.dpo.gamma_beta_ratio"),
        ("model.dpo.ref_policy_kl_penalty=0", "model.dpo.ref_policy_kl_penalty"),
        ("model.dpo.loss_params.label_smoothing=0.7", "model.dpo.loss_params.label_smoothing"),
        ("model.dpo.gamma.sampling=lifo", "model.dpo.gamma.sampling"),
        ("+model.dpo.gamma.tua=3", "model.dpo.gamma.tua"),
        (
            "model.pipeline_model_parallel_size=2 +model.virtual_pipeline_model_parallel_size=2",
            "model.virtual_pipeline_model_parallel_size",
        ),
        ("trainer.dpo.stop_after_steps=0", "trainer.dpo.stop_after_steps"),
        ("model.data.data_impl=packed_jsonl", "model.data.data_impl"),  # refused at any layout
    ],
)
def test_invalid_values_name_the_key(override: str, key: str) -> None:
    cfg = composed("tiny_cpu", override.split())
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate_config(cfg)


@pytest.mark.slow
def test_entry_point_fails_at_start_up_naming_the_key(tmp_path) -> None:
    """The real entry point, not just the validator: no trainer or model is built."""
    cmd = [
        sys.executable,
        str(ROOT / "examples" / "train_gpt_gammapo.py"),
        "--config-name",
        "tiny_cpu",
        f"run_dir={tmp_path}",
        "model.dpo.gamma.tau=-1",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out
    errors = [line for line in out.splitlines() if "error:" in line]
    assert errors == [
        "nemo-gammapo train: error: model.dpo.gamma.tau: GammaConfig.tau must be a finite number > 0 (got -1)"
    ]
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.slow
def test_entry_point_refuses_a_malformed_data_file(tmp_path) -> None:
    """The training entry point validates its JSONL at start-up and shows the first problems."""
    bad = tmp_path / "train.jsonl"
    good = '{"prompt": "Q", "chosen_response": "a", "rejected_response": "b"}'
    bad.write_text(good + "\n" + "{not json\n", encoding="utf-8")
    cmd = [
        sys.executable,
        str(ROOT / "examples" / "train_gpt_gammapo.py"),
        "--config-name",
        "tiny_cpu",
        f"run_dir={tmp_path / 'run'}",
        f"model.data.data_prefix.train=[{bad}]",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "model.data.data_prefix.train" in out and f"{bad}:2:" in out
    assert not (tmp_path / "run" / "checkpoints").exists()
