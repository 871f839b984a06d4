"""A pytest plugin: the test session leaves nothing running, and fails if something would survive it.

Rank pools, the fork server ranks are forked from, multiprocessing's resource tracker, SLURM
daemons, munged: a suite that starts processes must end them, also when a test fails or times out.
A daemon re-parents to init, so survivors are found by a mark, not by parentage: at start-up the
session puts ``GAMMAPO_TEST_SESSION=<id>`` into its environment, which every process it starts
afterwards inherits (``/proc/<pid>/environ`` keeps a process's environment from its exec, and a
fork keeps its parent's). At the end of the session the plugin stops multiprocessing's fork server
and resource tracker, gives the rest a few seconds to exit, then SIGKILLs every process that still
carries the mark, lists each (PID, command line) and fails the session.

Enable with ``pytest_plugins = ["nemo_gammapo.testing.leftovers"]`` (``tests/conftest.py``) or
``pytest -p nemo_gammapo.testing.leftovers``.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import pytest

MARK = "GAMMAPO_TEST_SESSION"
GRACE_S = 10.0  # for processes that are already shutting down when the session ends


def marked_processes(session_id: str, mark: str = MARK) -> list[tuple[int, str]]:
    """``(pid, command line)`` of every live process whose environment has ``mark=session_id``."""
    needle = f"{mark}={session_id}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            if state == "Z":  # a zombie has ended; its parent just has not reaped it
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        found.append((int(entry.name), cmdline))
    return found


def stop_multiprocessing_helpers() -> None:
    """Stop this process's multiprocessing fork server and resource tracker, if they run."""
    from multiprocessing import forkserver, resource_tracker

    for helper in (forkserver._forkserver, resource_tracker._resource_tracker):
        try:
            helper._stop()
        except Exception:  # never started, or already gone
            pass


def end_leftovers(session_id: str, grace_s: float = GRACE_S, mark: str = MARK) -> list[tuple[int, str]]:
    """Wait up to ``grace_s`` for the marked processes to exit, SIGKILL the rest; returns those."""
    deadline = time.monotonic() + grace_s
    while (left := marked_processes(session_id, mark)) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid, _ in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return left


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):  # a pytest-xdist worker: its controller checks
        return
    config._gammapo_session = os.environ[MARK] = uuid.uuid4().hex  # type: ignore[attr-defined]


@pytest.hookimpl(trylast=True)  # after pytest-xdist's controller has shut its workers down
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    stop_multiprocessing_helpers()  # also in a pytest-xdist worker (its controller checks for the rest)
    session_id = getattr(session.config, "_gammapo_session", None)
    if session_id is None:
        return
    left = end_leftovers(session_id)
    if not left:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    lines = [f"the test session left {len(left)} process(es) running (now killed):"]
    lines += [f"  pid {pid}: {cmd[:200]}" for pid, cmd in left]
    if reporter is not None:
        reporter.write_line("\n".join(lines), red=True)
    else:
        print("\n".join(lines), flush=True)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
