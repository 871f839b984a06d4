"""The suite leaves nothing running: a session that would is failed and cleaned up
(``nemo_gammapo.testing.leftovers``), checked on inner pytest sessions."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

INNER = """
import multiprocessing
import subprocess


def _square(x):
    return x * x


def test_pool_and_daemon(tmp_path_factory):
    ctx = multiprocessing.get_context("forkserver")  # the fork server outlives the pool
    with ctx.Pool(2) as pool:
        assert pool.map(_square, [1, 2]) == [1, 4]
    if LEAVE_A_DAEMON:
        # double fork + new session: re-parented to init, as a daemon would be
        subprocess.Popen(["setsid", "sh", "-c", "sleep 300 & echo $! > daemon.pid"]).wait()
"""


def inner_session(tmp_path: Path, leave_a_daemon: bool) -> subprocess.CompletedProcess:
    (tmp_path / "test_inner.py").write_text(f"LEAVE_A_DAEMON = {leave_a_daemon}\n{INNER}")
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--noconftest",
            "-p",
            "nemo_gammapo.testing.leftovers",
            "test_inner.py",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_session_that_ends_what_it_started_passes(tmp_path: Path) -> None:
    done = inner_session(tmp_path, leave_a_daemon=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "left" not in done.stdout


def test_a_daemon_left_behind_fails_the_session_and_is_killed(tmp_path: Path) -> None:
    done = inner_session(tmp_path, leave_a_daemon=True)
    pid = int((tmp_path / "daemon.pid").read_text())
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 passed" in done.stdout and "the test session left 1 process(es) running (now killed):" in done.stdout
    assert f"pid {pid}: sleep 300" in done.stdout
    for _ in range(20):  # killed; reaped by init
        if not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1][:3]:
            break
        time.sleep(0.1)
    else:
        os.kill(pid, 9)
        raise AssertionError(f"pid {pid} still runs")
