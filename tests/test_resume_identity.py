"""Identity guards on resume (``nemo_gammapo.aligner.identity``), on the composed tiny preset.

The end-to-end refusals (a real checkpoint, a real ``train()``) are in ``test_elastic_resume``.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from test_configs import composed

from nemo_gammapo.aligner.errors import ConfigError
from nemo_gammapo.aligner.identity import RECORD, guard_resume
from nemo_gammapo.aligner.preflight import validate_config

ROOT = Path(__file__).resolve().parent.parent
LAYOUT = {"tensor": 1, "pipeline": 1, "data": 2, "micro_batch_size": 2}


@pytest.fixture
def run(tmp_path: Path):
    """(cfg(overrides), run_dir, a checkpoint folder): data copied to tmp_path/data."""
    data = tmp_path / "data"
    data.mkdir()
    for name in ("train.jsonl", "validation.jsonl"):
        shutil.copy(ROOT / "data/demo" / name, data / name)
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints" / "step=4-last").mkdir(parents=True)

    def cfg(*overrides: str, data_dir: Path = data):
        return composed(
            "tiny_cpu",
            [
                f"run_dir={run_dir}",
                "pretrained_checkpoint.restore_from_path=null",  # a random start, as the demo
                f"model.data.data_prefix.train=[{data_dir / 'train.jsonl'}]",
                f"model.data.data_prefix.validation=[{data_dir / 'validation.jsonl'}]",
                *overrides,
            ],
        )

    return cfg, run_dir, run_dir / "checkpoints" / "step=4-last"


def test_first_start_records_the_identity_and_the_layout(run) -> None:
    cfg, run_dir, _ = run
    assert guard_resume(cfg(), run_dir, None, LAYOUT) == {}
    record = json.loads((run_dir / RECORD).read_text())
    assert set(record["identity"]) == {"data", "model", "loss", "training"}
    assert record["identity"]["data"]["train"].startswith("sha256:")
    assert [s["G"] for s in record["starts"]] == [4]
    assert record["config"]["model"]["global_batch_size"] == 16


def test_what_cannot_change_the_numbers_may_change_silently(run, tmp_path: Path, capsys) -> None:
    cfg, run_dir, ckpt = run
    guard_resume(cfg(), run_dir, None, LAYOUT)
    moved = tmp_path / "elsewhere"  # the same files on another allocation's mount
    shutil.copytree(tmp_path / "data", moved)
    again = cfg(
        "model.tensor_model_parallel_size=2",
        "model.micro_batch_size=4",
        "trainer.dpo.stop_after_steps=3",
        "trainer.dpo.val_check_interval=8",
        "trainer.dpo.save_interval=16",
        "trainer.dpo.hang_timeout_s=null",
        "model.dpo.gamma_dump.every=0",
        "name=renamed",
        "trainer.dpo.max_steps=128",  # run it longer: deliberate, recorded
        data_dir=moved,
    )
    assert guard_resume(again, run_dir, ckpt, {**LAYOUT, "tensor": 2, "data": 1, "micro_batch_size": 4}) == {}
    assert capsys.readouterr().out == ""  # G = 1 × 4 = 2 × 2: nothing to say
    starts = json.loads((run_dir / RECORD).read_text())["starts"]
    assert [s["max_steps"] for s in starts] == [64, 128]


def test_edited_data_is_refused_naming_the_file_and_the_override(run, tmp_path: Path) -> None:
    """The issue's case: rows shuffled and 40 % removed, then the same command re-run."""
    cfg, run_dir, ckpt = run
    guard_resume(cfg(), run_dir, None, LAYOUT)
    train = tmp_path / "data/train.jsonl"
    rows = train.read_text().splitlines()
    random.Random(0).shuffle(rows)
    train.write_text("\n".join(rows[: int(len(rows) * 0.6)]) + "\n")
    with pytest.raises(ConfigError) as error:
        guard_resume(cfg(), run_dir, ckpt, LAYOUT)
    line = str(error.value)
    assert "\n" not in line and "other data (data: train: sha256:" in line
    assert "+resume.allow_changes=[data]" in line and "new run_dir" in line
    # accepted on request: said once, recorded, and the next resume compares with the new data
    said: list[str] = []
    accepted = guard_resume(cfg("+resume.allow_changes=[data]"), run_dir, ckpt, LAYOUT, say=said.append)
    assert list(accepted) == ["data"] and len(said) == 1 and "accepted changes (train: sha256:" in said[0]
    record = json.loads((run_dir / RECORD).read_text())
    assert record["starts"][-1]["accepted_changes"] == accepted
    assert guard_resume(cfg(), run_dir, ckpt, LAYOUT) == {}


@pytest.mark.parametrize(
    ("override", "group", "named"),
    [
        ("model.dpo.gamma.tau=3.0", "loss", "gamma.tau: "),
        ("model.dpo.preference_loss=simpo", "loss", "preference_loss: gamma_simpo → simpo"),
        ("model.dpo.ref_policy_kl_penalty=1.0", "loss", "ref_policy_kl_penalty"),
        ("model.optim.lr=1e-3", "training", "model.optim.lr"),
        ("model.global_batch_size=32", "training", "model.global_batch_size: 16 → 32"),
        ("trainer.dpo.limit_train_batches=4", "training", "trainer.dpo.limit_train_batches"),
        ("model.num_layers=3", "model", "num_layers: 2 → 3"),
        ("model.init_method_std=0.05", "model", "random_init.init_method_std"),
    ],
)
def test_changes_that_move_the_numbers_are_refused(run, override: str, group: str, named: str) -> None:
    cfg, run_dir, ckpt = run
    guard_resume(cfg(), run_dir, None, LAYOUT)
    with pytest.raises(ConfigError, match=rf"other {group} \(.*{named}") as error:
        guard_resume(cfg(override), run_dir, ckpt, LAYOUT)
    assert f"+resume.allow_changes=[{group}]" in str(error.value)


def test_another_starting_checkpoint_is_refused(run, tmp_path: Path) -> None:
    """Same path, other bytes: the model group holds the .nemo's fingerprint, not its name."""
    cfg, run_dir, ckpt = run
    nemo = tmp_path / "start.nemo"
    nemo.write_bytes(b"weights of model A")
    guard_resume(cfg(f"pretrained_checkpoint.restore_from_path={nemo}"), run_dir, None, LAYOUT)
    nemo.write_bytes(b"weights of model B")
    with pytest.raises(ConfigError, match=r"other model \(model: checkpoint: "):
        guard_resume(cfg(f"pretrained_checkpoint.restore_from_path={nemo}"), run_dir, ckpt, LAYOUT)


def test_a_checkpoint_of_another_architecture_is_refused_without_a_record(run) -> None:
    cfg, run_dir, ckpt = run
    saved = OmegaConf.to_container(cfg().model, resolve=True)
    torch.save({"hyper_parameters": {"cfg": OmegaConf.create({**saved, "hidden_size": 128})}}, ckpt / "common.pt")
    with pytest.raises(ConfigError, match=r"holds another model's weights \(hidden_size: 128 in the checkpoint, 64"):
        guard_resume(cfg(), run_dir, ckpt, LAYOUT)
    assert not (run_dir / RECORD).exists()


def test_a_new_g_is_said_once_and_recorded(run) -> None:
    cfg, run_dir, ckpt = run
    guard_resume(cfg(), run_dir, None, LAYOUT)
    said: list[str] = []
    guard_resume(cfg(), run_dir, ckpt, {**LAYOUT, "data": 1}, say=said.append)
    assert len(said) == 1 and "is now 2, was 4" in said[0] and "not an error" in said[0]
    assert [s["G"] for s in json.loads((run_dir / RECORD).read_text())["starts"]] == [4, 2]


def test_a_fresh_start_in_a_used_run_dir_starts_a_new_record(run) -> None:
    """No checkpoint to resume from (say, the first job died before its first save): a new run."""
    cfg, run_dir, _ = run
    guard_resume(cfg(), run_dir, None, LAYOUT)
    guard_resume(cfg("model.dpo.gamma.tau=3.0"), run_dir, None, LAYOUT)
    record = json.loads((run_dir / RECORD).read_text())
    assert len(record["starts"]) == 1 and record["identity"]["loss"]["gamma"]["tau"] == 3.0


def test_an_unknown_group_is_refused_at_start_up(run) -> None:
    cfg, _, _ = run
    with pytest.raises(ConfigError, match=r"resume.allow_changes: 'layout' is not a group; allowed \['data'"):
        validate_config(cfg("+resume.allow_changes=[data,layout]"))
