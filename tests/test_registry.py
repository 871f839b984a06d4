"""The loss registry is the single source: docs, configs and checks read it, and a loss declared
outside the package (here, in this test module) trains through the NeMo path by one declaration."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from nemo_gammapo.aligner.cli import compose
from nemo_gammapo.aligner.cli import main as train_cli
from nemo_gammapo.aligner.errors import ConfigError
from nemo_gammapo.aligner.preflight import preflight
from nemo_gammapo.core import rewards
from nemo_gammapo.core.config import GammaConfig, GammaDumpConfig, PreferenceLossConfig
from nemo_gammapo.core.registry import (
    LOSSES,
    REFERENCE_FREE,
    FormulaInputs,
    LossSpec,
    base_margin,
    markdown_table,
    register_loss,
)

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"


# ------------------------------------------------------------------ a loss declared outside the package
def _simpo_reward(pairs: Any, cfg: PreferenceLossConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(β/\\|y\\|)·log π"""
    return rewards.simpo_rewards(pairs, cfg.beta)


def hinge(x: FormulaInputs) -> torch.Tensor:
    """SLiC-style hinge on the margin above its target: max(0, 1 − (m − target))."""
    return torch.relu(1.0 - (x.margin - x.target))


HINGE = LossSpec(
    "test_hinge",
    "Hinge",
    reward=_simpo_reward,
    formula=hinge,
    target=base_margin,
    uses_gamma0=True,
    description="max(0, 1 − (m − γ0))",
)


def register_hinge() -> list[str]:
    before = set(LOSSES)
    register_loss(HINGE)
    return sorted(set(LOSSES) - before)


@pytest.fixture
def hinge_registered() -> Iterator[list[str]]:
    added = register_hinge()
    try:
        yield added
    finally:
        for name in added:
            del LOSSES[name]


def test_one_declaration_registers_the_loss_and_its_gamma_variant(hinge_registered) -> None:
    assert hinge_registered == ["gamma_test_hinge", "test_hinge"]
    assert LOSSES["gamma_test_hinge"].label == "γ-Hinge" and LOSSES["gamma_test_hinge"].gamma
    assert {"test_hinge", "gamma_test_hinge"} <= set(REFERENCE_FREE)
    # the README check sees it (the table in the README no longer matches the registry) ...
    assert "| `gamma_test_hinge` | γ-Hinge |" in markdown_table()
    assert readme_table() != markdown_table()
    # ... and so do the configuration checks and the launcher
    preflight(compose(CONF, "tiny_cpu", ["model.dpo.preference_loss=gamma_test_hinge"]))
    assert train_cli(["--config-name", "tiny_cpu", "model.dpo.preference_loss=test_hinge", "--check-only"]) == 0
    with pytest.raises(ConfigError, match="'gamma_test_hinge'"):
        preflight(compose(CONF, "tiny_cpu", ["model.dpo.preference_loss=no_such_loss"]))


def test_registering_a_different_loss_under_a_taken_name_is_refused() -> None:
    clash = LossSpec("dpo", "Not DPO", reward=_simpo_reward, formula=hinge, target=base_margin)
    with pytest.raises(ValueError, match="already registered"):
        register_loss(clash)


# ------------------------------------------------------------------ docs and configs read the registry
def readme_table() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- loss-table:start[^>]*-->\n(.*?)\n<!-- loss-table:end -->", text, re.S)
    assert match, "README.md has no generated loss table"
    return match.group(1)


def test_readme_loss_table_is_the_registry() -> None:
    assert readme_table() == markdown_table(), (
        "README loss table is stale: paste nemo_gammapo.core.registry.markdown_table()"
    )


def test_yaml_keys_are_the_dataclass_fields_and_leave_defaults_to_them() -> None:
    dpo = yaml.safe_load((CONF / "gpt_gammapo.yaml").read_text(encoding="utf-8"))["model"]["dpo"]
    top_level = {"name", "beta", "gamma_beta_ratio", "average_log_probs"}
    assert set(dpo["loss_params"]) == {f.name for f in fields(PreferenceLossConfig)} - top_level
    assert set(dpo["gamma"]) == {f.name for f in fields(GammaConfig)}
    assert set(dpo["gamma_dump"]) == {f.name for f in fields(GammaDumpConfig)}
    assert all(v is None for v in dpo["loss_params"].values())  # defaults live in the dataclass
    assert all(v is None for v in dpo["gamma"].values())
    assert dpo["gamma_dump"]["every"] is None and dpo["gamma_dump"]["max_pairs"] is None


def test_yaml_comments_name_only_losses_that_read_the_key() -> None:
    lines = (CONF / "gpt_gammapo.yaml").read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "loss_params:")
    checked = 0
    for line in lines[start + 1 :]:
        if not line.startswith("      "):
            break
        key, _, comment = line.strip().partition("#")
        key = key.split(":")[0].strip()
        names = [w for w in re.findall(r"[a-z_]+", comment) if w in LOSSES or w.replace("_", "") in LOSSES]
        assert names, f"the comment of loss_params.{key} names no loss"
        for name in names:
            assert key in LOSSES[name].params, f"loss_params.{key}: the comment names {name}, which does not read it"
        checked += 1
    assert checked == len({f.name for f in fields(PreferenceLossConfig)}) - 4


# ------------------------------------------------------------------ through the NeMo path
def hinge_worker(rank: int, world_size: int, run_dir: str) -> dict[str, Any]:
    """Register the test-module loss in this rank, then train it with the real entry point's ``train()``."""
    from dist_workers import aligner_train_worker

    register_hinge()
    overrides = [
        "model.dpo.preference_loss=gamma_test_hinge",
        "trainer.dpo.max_steps=4",
        "trainer.dpo.val_check_interval=2",
        "trainer.dpo.save_interval=4",
        "model.dpo.gamma_dump.every=1",
    ]
    return aligner_train_worker(rank, world_size, run_dir, overrides)


@pytest.mark.distributed
@pytest.mark.slow
def test_a_loss_declared_in_a_test_module_trains_through_the_nemo_path(tmp_path) -> None:
    from nemo_gammapo.artifacts.dumps import read_dumps
    from nemo_gammapo.distributed.process_groups import run_on_ranks

    ranks = run_on_ranks(hinge_worker, 2, 600, {"run_dir": str(tmp_path)}, init_process_group=False)
    history = [r for r in ranks[0]["history"] if "train/loss" in r]
    assert [r["step"] for r in history] == [0, 1, 2, 3]
    assert all(r["train/gamma_po/gamma_std"] > 0 for r in history)  # γ varies per pair: the policy ran
    dumps = read_dumps(tmp_path)
    dumps = dumps[dumps["valid"].astype(bool)]
    assert len(dumps) > 0
    expected = torch.relu(1.0 - (torch.tensor(dumps["margin"].values) - torch.tensor(dumps["gamma"].values)))
    torch.testing.assert_close(torch.tensor(dumps["loss"].values), expected, rtol=1e-5, atol=1e-6)
