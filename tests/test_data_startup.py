"""The start-up validation the training entry point calls on ``model.data.data_prefix``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from nemo_gammapo.data.startup import validate_training_data
from nemo_gammapo.data.validate import DataValidationError

REPO = Path(__file__).resolve().parent.parent


def test_demo_config_paths_pass() -> None:
    prefix = OmegaConf.create(
        {"train": [str(REPO / "data/demo/train.jsonl")], "validation": [str(REPO / "data/demo/validation.jsonl")]}
    )
    reports = validate_training_data(prefix, max_length=64)
    assert [r.records for r in reports["train"]] == [512] and [r.records for r in reports["validation"]] == [64]


def test_bad_validation_file_is_refused_with_key_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "val.jsonl"
    row = {"prompt": "Q", "chosen_response": "a", "rejected_response": "b"}
    bad.write_text(json.dumps(row) + "\n" + json.dumps({**row, "chosen_response": 3}) + "\n")
    prefix = OmegaConf.create({"train": [str(REPO / "data/demo/train.jsonl")], "validation": [str(bad)]})
    with pytest.raises(DataValidationError) as e:
        validate_training_data(prefix)
    assert str(e.value).startswith("model.data.data_prefix.validation: 1 data file(s) failed validation")
    assert f"{bad}:2: wrong_type" in str(e.value)


def test_over_length_is_warned_not_fatal(tmp_path: Path) -> None:
    warnings: list[str] = []
    prefix = {"train": str(REPO / "data/demo/train.jsonl")}
    validate_training_data(prefix, max_length=16, warn=warnings.append)
    assert len(warnings) == 1 and "512 of 512 pairs are longer than 16 bytes" in warnings[0]
