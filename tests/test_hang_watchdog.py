"""The hang watchdog (``trainer.dpo.hang_timeout_s``) and the lost-peer exit, in one process.

The end-to-end behaviour — a SIGSTOPped task of a 2-node SLURM job, the requeue, the resumed run
equal to an uninterrupted one — is in ``tests/test_slurm_multi_node.py``.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from nemo_gammapo.aligner.errors import ConfigError
from nemo_gammapo.aligner.hang_watchdog import (
    FAULT_EXIT_CODE,
    FAULT_MARKER,
    HangWatchdog,
    hang_dir,
    incarnation,
    is_peer_failure,
)
from nemo_gammapo.aligner.preflight import check_fault_timeouts
from nemo_gammapo.configs import compose


class Exited(Exception):
    pass


def watchdog(run_dir: Path, timeout_s: float, rank: int = 0, world_size: int = 1) -> tuple[HangWatchdog, list[int]]:
    codes: list[int] = []
    return HangWatchdog(run_dir, timeout_s, rank, world_size, exit=codes.append), codes


def wait_until(predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def blocked_in_a_collective(release: threading.Event) -> None:
    """Stands in for the main thread stuck in a collective (its frame must show in the stacks)."""
    release.wait(30)


def test_no_progress_writes_stacks_names_the_silent_rank_and_exits_75(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    dog, codes = watchdog(tmp_path, 1.0, rank=0, world_size=2)
    # rank 1 reported once, long ago, from another host, then went silent (frozen, or its node died)
    peer = dog.progress_file(1)
    peer.parent.mkdir(parents=True)
    peer.write_text(json.dumps({"rank": 1, "host": "node2", "pid": 1, "step": 5, "time": 0}))
    os.utime(peer, (time.time() - 60, time.time() - 60))
    release = threading.Event()
    stuck = threading.Thread(target=blocked_in_a_collective, args=(release,), name="main-stand-in")
    stuck.start()
    try:
        dog.start()
        dog.mark(5)
        assert wait_until(lambda: codes, 15), "the watchdog did not fire"
    finally:
        release.set()
        stuck.join()
        dog.stop()
    assert codes == [FAULT_EXIT_CODE]
    out = hang_dir(tmp_path)
    assert out == tmp_path / "hangs" / "77-2" and incarnation() == "77-2"
    stacks = (out / "rank0.txt").read_text()
    assert "no training progress" in stacks and "after step 5" in stacks
    assert "blocked_in_a_collective" in stacks  # every thread's stack, not only the watchdog's
    err = capsys.readouterr().err
    (line,) = [ln for ln in err.splitlines() if "hang:" in ln]
    assert "trainer.dpo.hang_timeout_s=1 s after step 5" in line
    assert "ranks that stopped reporting progress: rank 1 (node2, last step 5)" in line
    assert f"exiting with code {FAULT_EXIT_CODE}" in line
    assert (out / FAULT_MARKER).read_text().strip() == line


def test_the_clock_starts_at_the_first_completed_step(tmp_path) -> None:
    """Start-up and a slow first step (compilation) are never timed."""
    dog, codes = watchdog(tmp_path, 0.5)
    dog.start()
    try:
        time.sleep(2.0)  # 4 × the timeout without a single step: not armed yet
        assert codes == [] and not dog.fired
        dog.mark(1)
        assert wait_until(lambda: codes, 10)
    finally:
        dog.stop()


def test_a_slow_but_progressing_run_is_not_killed(tmp_path) -> None:
    dog, codes = watchdog(tmp_path, 1.0)
    dog.start()
    try:
        for step in range(1, 13):  # 3 s in all, a mark every 0.25 s
            dog.mark(step)
            time.sleep(0.25)
        assert codes == []
        record = json.loads(dog.progress_file(0).read_text())
        assert record["rank"] == 0 and record["step"] >= 1
    finally:
        dog.stop()


def test_off_when_null(tmp_path) -> None:
    dog, codes = watchdog(tmp_path, None)  # type: ignore[arg-type]
    dog.start()
    dog.mark(1)
    assert not dog.enabled and dog._thread is None and codes == []
    assert not (tmp_path / ".nemo_gammapo").exists()


def test_peer_failures_are_told_from_other_errors() -> None:
    import torch.distributed as dist

    assert is_peer_failure(dist.DistBackendError("anything"))
    assert is_peer_failure(
        RuntimeError("[gloo/transport/tcp/pair.cc:534] Timed out waiting 20000ms for recv operation")
    )
    assert is_peer_failure(RuntimeError("Connection closed by peer [10.217.0.12]:51234"))
    assert not is_peer_failure(RuntimeError("CUDA out of memory"))
    assert not is_peer_failure(ValueError("Timed out waiting"))


@pytest.mark.parametrize(
    ("key", "value", "ok"),
    [
        ("hang_timeout_s", None, True),
        ("hang_timeout_s", 60, True),
        ("hang_timeout_s", 0, False),
        ("hang_timeout_s", "soon", False),
        ("collective_timeout_s", 20.5, True),
        ("collective_timeout_s", None, False),
        ("collective_timeout_s", -1, False),
        ("collective_timeout_s", True, False),
    ],
)
def test_timeout_keys_are_checked_at_start_up(key: str, value, ok: bool) -> None:
    cfg = compose("tiny_cpu", [])
    OmegaConf.update(cfg, f"trainer.dpo.{key}", value)
    if ok:
        check_fault_timeouts(cfg)
    else:
        with pytest.raises(ConfigError, match=f"trainer.dpo.{key} must be"):
            check_fault_timeouts(cfg)


def test_documented_defaults() -> None:
    """A collective may wait 30 minutes (a large checkpoint save); a hang ends after 20, before it."""
    dpo = compose("gpt_gammapo", []).trainer.dpo
    assert dpo.collective_timeout_s == 1800 and dpo.hang_timeout_s == 1200
    assert dpo.hang_timeout_s < dpo.collective_timeout_s


def test_the_first_fault_record_wins(tmp_path, monkeypatch) -> None:
    """A rank woken later (or killed while writing) never replaces or empties the first record."""
    from nemo_gammapo.aligner.hang_watchdog import record_fault

    monkeypatch.setenv("SLURM_JOB_ID", "5")
    first = record_fault(tmp_path, "hang: rank 1 stopped")
    again = record_fault(tmp_path, "hang: rank 0 stopped")
    assert first == again and first.read_text() == "hang: rank 1 stopped\n"
    assert sorted(p.name for p in first.parent.iterdir()) == [FAULT_MARKER]  # no stray temporary files
