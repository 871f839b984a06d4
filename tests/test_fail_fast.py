"""Bad input fails at start-up with one line naming the key; checkpoints, locks and metrics fail safe.

Fast tests (no training): the start-up checks on a corpus of bad configurations and files, the
interval arithmetic against NeMo-Aligner's own, checkpoint selection over real NeMo file names,
the run-directory lock against a live and a killed holder, the one-line error report, and the
metric that tells non-finite pairs from excluded ones. The training-run faults are in
``test_fault_recovery.py``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from nemo_gammapo.aligner import checkpoints
from nemo_gammapo.aligner.cli import compose
from nemo_gammapo.aligner.cli import main as train_cli
from nemo_gammapo.aligner.errors import ConfigError, RunDirBusy
from nemo_gammapo.aligner.preflight import check_intervals, preflight, steps_per_epoch
from nemo_gammapo.aligner.run_dir import RunDirLock
from nemo_gammapo.core.policy import gamma_statistics

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"
PAPER_PRESETS = [
    "gpt_gammapo",
    "llama3_8b_instruct",
    "mistral_7b_instruct",
    "gemma2_9b_it",
    "qwen25_7b_instruct",
    "qwen25_32b_instruct",
    "llama3_70b_instruct",
]


def tiny(overrides: list[str] = ()) -> OmegaConf:
    return compose(CONF, "tiny_cpu", list(overrides))


# (overrides, text the one-line message must contain)
BAD_CONFIGS = [
    # item 1: the interval assertion NeMo-Aligner makes after the first step
    (
        ["trainer.dpo.val_check_interval=0.1", "trainer.dpo.save_interval=4"],
        "trainer.dpo.val_check_interval=0.1 (3 steps",
    ),
    (["trainer.dpo.val_check_interval=0.01"], "is less than one step"),
    (["trainer.dpo.val_check_interval=5"], "must divide trainer.dpo.save_interval=32"),
    # item 3: overrides that silently changed the loss
    (["+model.dpo.loss_params.beta=100"], "model.dpo.loss_params.beta would override model.dpo.ref_policy_kl_penalty"),
    (["+model.dpo.loss_params.name=dpo"], "model.dpo.loss_params.name would override model.dpo.preference_loss"),
    (["+model.dpo.loss_params.gamma_beta_ratio=1"], "would override model.dpo.gamma_beta_ratio"),
    (["model.dpo.gamma_beta_ratio=0"], "model.dpo.gamma_beta_ratio must be > 0 for preference_loss=gamma_simpo"),
    (["~model.dpo.gamma_beta_ratio"], "model.dpo.gamma_beta_ratio is required by preference_loss=gamma_simpo"),
    (
        ["model.dpo.preference_loss=gamma_dpo", "model.dpo.gamma_beta_ratio=0"],
        "must be > 0 for preference_loss=gamma_dpo",
    ),
    (["+model.dpo.gamma_beta_raito=0.3"], "model.dpo.gamma_beta_raito is not a configuration key; did you mean"),
    (["+model.dpo.gamma.tua=3"], "model.dpo.gamma.tua is not a configuration key; did you mean model.dpo.gamma.tau"),
    (["+model.dpo.loss_params.label_smothing=0.1"], "did you mean model.dpo.loss_params.label_smoothing"),
    (["+model.dpo.gamma_dump.evry=2"], "model.dpo.gamma_dump.evry is not a configuration key"),
    (["model.dpo.gamma_dump.every=-1"], "model.dpo.gamma_dump.every: GammaDumpConfig.every must be an integer >= 0"),
    (
        ["model.dpo.loss_params.label_smoothing=0.1"],
        "model.dpo.loss_params.label_smoothing is not used by preference_loss=gamma_simpo (its loss_params: none)",
    ),
    (["~model.dpo.ref_policy_kl_penalty"], "model.dpo.ref_policy_kl_penalty is required"),
    # item 6: layout and batch errors that ended in framework tracebacks
    (["model.tensor_model_parallel_size=4"], "= 4 must divide the 2 processes (trainer.devices=2"),
    (["model.pipeline_model_parallel_size=2", "model.tensor_model_parallel_size=2"], "= 4 must divide the 2"),
    (["trainer.devices=8", "model.tensor_model_parallel_size=8"], "model.num_attention_heads (4) must be divisible"),
    (
        ["model.tensor_model_parallel_size=2", "model.num_attention_heads=5"],
        "num_attention_heads (5) must be divisible",
    ),
    (["model.pipeline_model_parallel_size=2", "model.num_layers=3"], "model.num_layers (3) must be divisible"),
    (["model.global_batch_size=6"], "model.global_batch_size (6) must be a multiple of model.micro_batch_size (2)"),
    (["model.dpo.log_prob_forward_micro_batch_size=3"], "log_prob_forward_micro_batch_size (3) must divide"),
    (["model.micro_batch_size=0"], "model.micro_batch_size must be an integer >= 1"),
    # item 6: data files
    (
        ["model.data.data_prefix.train=[data/demo/train.jsonl,data/demo/validation.jsonl]"],
        "model.data.data_prefix.train must be a list with exactly one JSONL file (got 2 entries",
    ),
    (["model.data.data_prefix.train=[0.5,data/demo/train.jsonl]"], "exactly one JSONL file (got 2 entries"),
    (["model.global_batch_size=1024"], "has 512 pairs, fewer than one global batch (model.global_batch_size=1024)"),
    (["model.global_batch_size=128"], "model.data.data_prefix.validation: data/demo/validation.jsonl has 64 pairs"),
]


@pytest.mark.parametrize("overrides,expected", BAD_CONFIGS, ids=[" ".join(o) for o, _ in BAD_CONFIGS])
def test_bad_configuration_fails_with_one_line_naming_the_key(overrides: list[str], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        preflight(tiny(overrides))
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_a_directory_as_data_file_says_so(tmp_path) -> None:
    with pytest.raises(ConfigError) as info:
        preflight(tiny([f"model.data.data_prefix.train=[{tmp_path}]"]))
    assert f"{tmp_path}:0: not_a_file: is a directory" in str(info.value)
    assert "no such file" not in str(info.value)


def test_the_shipped_tiny_presets_pass_every_check() -> None:
    for name in ("tiny_cpu", "tiny_llama_cpu"):
        checked = preflight(compose(CONF, name, []))
        assert checked["pairs"] == {"train": 512, "validation": 64, "test": 64}
        assert checked["layout"].data == 2


# -------------------------------------------------------------- intervals vs NeMo-Aligner's own check
def _aligner_accepts(step_count: int, val_interval: int, save_interval: int) -> bool:
    """Run NeMo-Aligner's ``check_progress`` for every step of an epoch (it asserts on bad intervals)."""
    from nemo_aligner.utils.trainer_utils import check_progress

    try:
        for step in range(1, step_count + 1):
            check_progress(step, step_count, val_interval, save_interval, 1.0)
    except AssertionError:
        return False
    return True


@pytest.mark.parametrize("preset", PAPER_PRESETS)
def test_paper_presets_pass_the_interval_check_at_any_data_size(preset: str) -> None:
    cfg = compose(
        CONF,
        preset,
        ["pretrained_checkpoint.restore_from_path=/x.nemo", "model.data.data_prefix.train=[/t]"],
    )
    gbs = cfg.model.global_batch_size
    for pairs in (gbs, 1000, 7 * gbs + 5, 61135, 100_003, 1_000_000):
        interval = check_intervals(cfg, pairs)
        steps = steps_per_epoch(pairs, gbs)
        assert _aligner_accepts(steps, interval, cfg.trainer.dpo.save_interval), (preset, pairs)


def test_the_old_fractional_interval_is_refused_exactly_where_aligner_asserts() -> None:
    """61,135 pairs at batch 128: 0.1 of an epoch is 47 steps, which does not divide 100."""
    cfg = compose(CONF, "tiny_cpu", ["model.global_batch_size=128", "trainer.dpo.val_check_interval=0.1"])
    cfg.trainer.dpo.save_interval = 100
    assert not _aligner_accepts(steps_per_epoch(61135, 128), int(0.1 * steps_per_epoch(61135, 128)), 100)
    with pytest.raises(ConfigError, match=r"val_check_interval=0\.1 \(47 steps of the 477 per epoch"):
        check_intervals(cfg, 61135)
    cfg.trainer.dpo.save_interval = 94  # 47 divides it: accepted by both
    assert check_intervals(cfg, 61135) == 47 and _aligner_accepts(477, 47, 94)


# -------------------------------------------------------------- the launcher and the one-line report
def test_launcher_refuses_before_starting_any_worker(capsys) -> None:
    rc = train_cli(["--config-name", "tiny_cpu", "+model.dpo.gamma_beta_raito=0.3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err == [
        "nemo-gammapo train: error: model.dpo.gamma_beta_raito is not a configuration key; "
        "did you mean model.dpo.gamma_beta_ratio?"
    ]


def test_launcher_reports_a_bad_override_and_a_missing_config(capsys) -> None:
    assert train_cli(["--config-name", "tiny_cpu", "model.dpo.gamma_beta_raito=0.3"]) == 2
    assert "Could not override 'model.dpo.gamma_beta_raito'" in capsys.readouterr().err
    assert train_cli(["--config-name", "no_such_preset"]) == 2
    assert "no no_such_preset.yaml in" in capsys.readouterr().err


def test_launcher_check_only_summarises_the_run(capsys) -> None:
    assert train_cli(["--config-name", "tiny_cpu", "--check-only"]) == 0
    out = capsys.readouterr().out
    assert "checks passed: 2 processes (TP 1 × PP 1 × CP 1 × DP 2), 512 training pairs, validation every 16" in out


RAISE = """
from nemo_gammapo.aligner.errors import ConfigError, exit_on_user_error
with exit_on_user_error():
    raise ConfigError("model.dpo.gamma.tau must be > 0 (got -1)")
"""


@pytest.mark.parametrize("rank,shown", [("0", True), ("1", False)])
def test_user_error_is_one_line_on_rank_0_with_no_traceback(rank: str, shown: bool) -> None:
    env = {**os.environ, "RANK": rank}
    proc = subprocess.run([sys.executable, "-c", RAISE], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 2
    assert proc.stdout == ""
    expected = "nemo-gammapo train: error: model.dpo.gamma.tau must be > 0 (got -1)\n" if shown else ""
    assert proc.stderr == expected


# -------------------------------------------------------------- checkpoint selection
def _checkpoint(root: Path, step: int, last: bool = False, unfinished: bool = False, val_loss: str = "1.2345") -> Path:
    name = f"gammapo--val_loss={val_loss}-step={step}-consumed_samples={16 * step}.0-epoch=0" + (
        "-last" if last else ""
    )
    path = root / "checkpoints" / name
    path.mkdir(parents=True)
    (path / "common.pt").write_bytes(b"x")
    if unfinished:
        Path(str(path) + checkpoints.UNFINISHED_SUFFIX).touch()
    return path


def test_kill_during_the_first_last_checkpoint_resumes_from_the_complete_top_k(tmp_path) -> None:
    """NeMo refuses to resume here ("Last checkpoint is unfinished… remove it manually")."""
    top_k = _checkpoint(tmp_path, 2)
    last = _checkpoint(tmp_path, 2, last=True, unfinished=True)
    moved = checkpoints.set_aside_unusable(tmp_path / "checkpoints")
    assert moved == [tmp_path / checkpoints.SET_ASIDE_DIR / last.name]
    assert Path(str(moved[0]) + checkpoints.UNFINISHED_SUFFIX).exists()  # kept, with its marker
    assert not last.exists() and not Path(str(last) + checkpoints.UNFINISHED_SUFFIX).exists()
    assert checkpoints.newest_complete(tmp_path / "checkpoints").path == top_k


def test_kill_during_a_later_save_resumes_from_the_newer_top_k_not_the_older_last(tmp_path) -> None:
    _checkpoint(tmp_path, 2)
    _checkpoint(tmp_path, 2, last=True)
    newer = _checkpoint(tmp_path, 4)
    _checkpoint(tmp_path, 4, last=True, unfinished=True)
    assert checkpoints.newest_complete(tmp_path / "checkpoints").path == newer


def test_ties_prefer_last_and_unfinished_or_nonfinite_never_win(tmp_path) -> None:
    _checkpoint(tmp_path, 4)
    last = _checkpoint(tmp_path, 4, last=True)
    _checkpoint(tmp_path, 6, val_loss="nan")
    _checkpoint(tmp_path, 8, unfinished=True)
    assert checkpoints.newest_complete(tmp_path / "checkpoints").path == last
    moved = {p.name for p in checkpoints.set_aside_unusable(tmp_path / "checkpoints")}
    assert moved == {"gammapo--val_loss=nan-step=6-consumed_samples=96.0-epoch=0",
                     "gammapo--val_loss=1.2345-step=8-consumed_samples=128.0-epoch=0"}  # fmt: skip


def test_only_unfinished_checkpoints_means_a_fresh_start(tmp_path) -> None:
    _checkpoint(tmp_path, 2, last=True, unfinished=True)
    checkpoints.set_aside_unusable(tmp_path / "checkpoints")
    assert checkpoints.newest_complete(tmp_path / "checkpoints") is None
    assert checkpoints.newest_complete(tmp_path / "no_such_dir") is None


# -------------------------------------------------------------- the run-directory lock
HOLD = """
import sys, time
from nemo_gammapo.aligner.run_dir import RunDirLock
RunDirLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(120)
"""


def test_a_second_run_is_refused_naming_the_holder_and_a_dead_holder_is_stale(tmp_path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirBusy) as info:
            RunDirLock(tmp_path).acquire()
        message = str(info.value)
        assert f"run_dir {tmp_path} is in use by another run (host {socket.gethostname()}, PID {holder.pid}" in message
        assert "\n" not in message
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
    warnings: list[str] = []
    lock = RunDirLock(tmp_path)
    lock.acquire(warn=warnings.append)  # the holder died without releasing: stale
    assert len(warnings) == 1 and "stale lock" in warnings[0]
    record = json.loads(lock.path.read_text())
    assert record["pid"] == os.getpid()
    lock.release()
    assert not lock.path.exists()


def test_a_lock_from_another_host_is_stale_only_when_its_heartbeat_stops(tmp_path) -> None:
    path = tmp_path / ".nemo_gammapo" / "lock.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"host": "node-that-died", "pid": 1, "started": "then"}))
    with pytest.raises(RunDirBusy, match="host node-that-died, PID 1"):
        RunDirLock(tmp_path, stale_after_s=60).acquire()
    old = time.time() - 120
    os.utime(path, (old, old))
    lock = RunDirLock(tmp_path, stale_after_s=60)
    lock.acquire(warn=lambda _: None)
    assert json.loads(path.read_text())["host"] == socket.gethostname()
    lock.release()


def test_a_requeued_slurm_job_takes_over_the_lock_of_its_earlier_incarnation(tmp_path, monkeypatch) -> None:
    path = tmp_path / ".nemo_gammapo" / "lock.json"
    path.parent.mkdir()
    record = {"host": "other-node", "pid": 1, "slurm_job_id": "77", "slurm_restart_count": "0"}
    path.write_text(json.dumps(record))
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")  # the same incarnation on another node: a live holder
    with pytest.raises(RunDirBusy, match="SLURM job 77"):
        RunDirLock(tmp_path).acquire()
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # requeued: the old lock is the job's own
    lock = RunDirLock(tmp_path)
    lock.acquire(warn=lambda _: None)
    assert json.loads(path.read_text())["slurm_restart_count"] == "1"
    lock.release()


def test_the_holder_heartbeat_keeps_its_lock_fresh(tmp_path) -> None:
    lock = RunDirLock(tmp_path, heartbeat_s=0.05)
    lock.acquire()
    old = time.time() - 1000
    os.utime(lock.path, (old, old))
    time.sleep(0.3)
    assert time.time() - lock.path.stat().st_mtime < 5
    lock.release()


# -------------------------------------------------------------- metrics: excluded vs non-finite
def test_nonfinite_pairs_are_counted_apart_from_excluded_ones() -> None:
    margins = torch.tensor([1.0, float("nan"), 2.0, float("inf"), 0.5])
    valid = torch.tensor([True, True, False, True, True])
    stats = gamma_statistics(torch.full_like(margins, 1.0), margins, valid, gamma0=1.0)
    assert stats["excluded_pairs"].item() == 1.0  # the masked (truncated) pair
    assert stats["nonfinite_pairs"].item() == 2.0  # NaN and inf margins of real pairs
    assert stats["margin_mean"].item() == pytest.approx(0.75)  # over the two finite, unmasked pairs
