"""End to end through the console chat: a real Molt process with its real workers,
the embedded Redis, and real git repositories. Here are the scenarios whose point is the
processes (the bot, its workers, a worker killed); the rest of what a person does in the
console runs in-process (tests/pipeline/test_jobs.py, test_intake.py, test_restart.py)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline import store
from pipeline.config import load_settings
from pipeline.requests.store import RequestStore
from tests.support import (
    Molt,
    ServiceRepo,
    hang_on_live,
    processes_in,
    update_processes,
    wait_for_file,
)

StartMolt = Callable[..., Molt]


def _up(molt: Molt) -> Molt:
    molt.wait_for(r"Molt \S+ is up")
    return molt


def _store(data_dir: Path) -> RequestStore:
    return RequestStore(store.connect(load_settings(data_dir=data_dir)))


@pytest.mark.slow
def test_deploy_lands_after_approval_and_reports_success(
    service: ServiceRepo, start_molt: StartMolt
) -> None:
    old = service.live_head()
    new = service.commit({"app.py": "def greet():\n    return 'hello'\n\n\nVERSION = 2\n"}, "v2")
    molt = _up(start_molt())
    since = molt.send("deploy main")
    molt.wait_for(r"📋 Plan ready", since=since)
    molt.wait_for(rf"Rollback point: {old[:7]} on main", since=since)
    molt.send("press approve")
    molt.wait_for(r"✅ Live: ", since=since)
    assert service.live_head() == new
    assert service.live_status() == ""
    assert "phase 1: tests" in molt.output and "phase 2: tests" in molt.output


@pytest.mark.slow
def test_worker_killed_mid_update_is_rolled_back(
    service: ServiceRepo, start_molt: StartMolt, data_dir: Path, tmp_path: Path
) -> None:
    started = tmp_path / "phase2-started"
    hang = hang_on_live(service.live, started)
    old = service.live_head()
    service.commit({"checks/test_hang.py": hang}, "hangs in phase 2")
    molt = _up(start_molt())
    since = molt.send("deploy main")
    molt.send("press approve")
    wait_for_file(started, molt)
    assert service.live_head() != old  # the live checkout was touched
    for group in update_processes(data_dir):  # as an OOM killer or a crash would
        os.killpg(group, signal.SIGKILL)
    molt.wait_for(r"❌ Failed: ", since=since)
    molt.wait_for(r"worker running this update stopped during phase 2", since=since)
    assert service.live_head() == old
    assert service.live_status() == ""
    assert processes_in(service.live) == []  # its test command went with it


@pytest.mark.slow
def test_a_worker_killed_in_phase_two_leaves_no_test_command_running(
    service: ServiceRepo, start_molt: StartMolt, data_dir: Path, tmp_path: Path
) -> None:
    """The test command's own children ignore their parent's death: they end with the
    worker all the same (the test command's PID namespace, or its subreaper, ends them)."""
    started = tmp_path / "phase2-started"
    stubborn = (
        "import os, pathlib, signal, subprocess, sys, time\n\n\ndef test_stubborn():\n"
        f"    if os.getcwd() == {str(service.live)!r}:\n"
        "        subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        f"        pathlib.Path({str(started)!r}).touch()\n"
        "        signal.signal(signal.SIGHUP, signal.SIG_IGN)\n"
        "        time.sleep(600)\n"
    )
    old = service.live_head()
    service.commit({"checks/test_stubborn.py": stubborn}, "never ends in phase 2")
    molt = _up(start_molt())
    since = molt.send("deploy main")
    molt.send("press approve")
    wait_for_file(started, molt)
    assert processes_in(service.live)  # the test command runs in the live checkout
    for group in update_processes(data_dir):
        os.killpg(group, signal.SIGKILL)
    molt.wait_for(r"worker running this update stopped during phase 2", since=since)
    deadline = time.monotonic() + 30
    while processes_in(service.live) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_in(service.live) == []
    assert service.live_head() == old
    assert service.live_status() == ""


def test_sigterm_stops_a_console_whose_input_is_still_open(start_molt: StartMolt) -> None:
    """As a supervisor stops a console left waiting at a terminal: nobody types a line, and
    the read that waits for one must not hold the stop up."""
    molt = _up(start_molt())
    molt.proc.send_signal(signal.SIGTERM)
    assert molt.proc.wait(timeout=60) == 0
    assert molt.proc.stdin is not None and not molt.proc.stdin.closed  # its input never ended


def test_sigterm_sent_again_and_again_still_ends_in_one_clean_stop(
    start_molt: StartMolt,
) -> None:
    """As a supervisor that repeats its SIGTERM (and as these tests stop Molt: end of input,
    then SIGTERM): a second one arriving while the first was being handled once left Molt
    waiting for a lock it held itself, until it was killed."""
    molt = _up(start_molt())
    molt.close_input()
    deadline = time.monotonic() + 2  # one after another until it has gone, or for 2 s
    with contextlib.suppress(ProcessLookupError):
        while molt.proc.poll() is None and time.monotonic() < deadline:
            os.kill(molt.proc.pid, signal.SIGTERM)
    assert molt.proc.wait(timeout=60) == 0
