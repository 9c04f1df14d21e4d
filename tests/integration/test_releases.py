"""Signed releases and the boot guard, on real Molt processes updating a temporary copy of
Molt's own repository: what starts must be a signed release, and a release that cannot
start is replaced by the last one that started well. Releases through updates, rollbacks
and an operator's way back run in-process (tests/pipeline/test_release_rollback.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

from pipeline import audit, processes, store
from pipeline.config import load_settings
from pipeline.keyspace import TargetKeys
from pipeline.queue.targets import Target
from pipeline.requests.store import RequestStore
from pipeline.service import restart
from pipeline.update import bootguard
from tests.integration.test_self_update import _copy_of_molt, _healthz
from tests.support import Molt, git

#: Counted by phase 1 and 2 ("1 passed") and quick: the import is what a broken release fails.
TEST_COMMAND = "python -c \"import bot.cli, pipeline.update.jobs; print('1 passed')\""

#: A supervisor like systemd's Restart=on-failure: start Molt again whenever it exits non-zero.
SUPERVISOR = """
import signal, subprocess, sys, time
child = None
stopping = False
def stop(*_):
    global stopping
    stopping = True
    if child is not None and child.poll() is None:
        child.terminate()
signal.signal(signal.SIGTERM, stop)
while not stopping:
    child = subprocess.Popen([sys.executable, "-m", "bot.cli", *sys.argv[1:]])
    code = child.wait()
    print(f"supervisor: molt exited with {code}", flush=True)
    if code == 0 or stopping:
        break
    time.sleep(0.3)
"""


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    return {
        "MOLT_DATA_DIR": str(data_dir),
        "MOLT_TEST_COMMAND": TEST_COMMAND,
        "MOLT_HTTP_PORT": "0",
        "MOLT_CONSOLE_USER": "alice",
        "MOLT_AUTHORISED_USERS": "console:alice",
        "MOLT_BOOT_TIMEOUT": "60",
        "MOLT_LOCK_TTL": "5",
        **extra,
    }


def _cli(code: Path, data_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``molt <args>`` run from the copy of Molt in ``code``, to its end."""
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", *args],
        env={**os.environ, **_env(data_dir, **env), "PYTHONPATH": str(code)},
        cwd=code,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _molt(live: Path, data_dir: Path, **env: str) -> Molt:
    return Molt(["console"], _env(data_dir, **env), cwd=live, pythonpath=live)


def _commit_upstream(work: Path, files: Mapping[str, str], message: str) -> str:
    for rel, content in files.items():
        (work / rel).write_text(content)
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", message)
    git(work, "push", "-q", "origin", "main")
    return git(work, "rev-parse", "HEAD")


def _stop_relaunched(conn: object) -> None:
    """A Molt the worker relaunched (headless) belongs to no test process: stop it."""
    info = restart.bot_info(conn)  # type: ignore[arg-type]
    if info is not None and info.alive:
        processes.terminate(info.pid, grace=30)


@pytest.fixture
def molt_checkout(tmp_path: Path) -> tuple[Path, Path]:
    return _copy_of_molt(tmp_path / "molt")


@pytest.mark.slow
@pytest.mark.own_redis  # its stop is recorded before the data directory's Redis stops
def test_a_tampered_tree_is_refused_at_start_with_the_paths_named(
    molt_checkout: tuple[Path, Path], data_dir: Path
) -> None:
    _, live = molt_checkout
    head = git(live, "rev-parse", "HEAD")
    molt = _molt(live, data_dir)
    try:
        molt.wait_for(rf"{head[:7]} is now the signed baseline, release 1 \(baseline by ")
        molt.wait_for(rf"Molt {head[:7]} is up")
    finally:
        molt.stop()
    key = data_dir / "keys" / "release-signing.pem"
    assert key.stat().st_mode & 0o777 == 0o600

    desk = live / "bot" / "desk.py"
    desk.write_text(desk.read_text() + "\nGRANTED = True\n")
    (live / "pipeline" / "backdoor.py").write_text("print('hello')\n")
    refused = _cli(live, data_dir, "run", "--no-console")
    assert refused.returncode == bootguard.REFUSED_EXIT, refused.stderr
    assert "molt: refusing to start: the checkout differs from signed release 1" in refused.stderr
    assert "modified: bot/desk.py" in refused.stderr
    assert "added: pipeline/backdoor.py" in refused.stderr
    checked = _cli(live, data_dir, "release", "verify")
    assert checked.returncode == 1
    assert "modified: bot/desk.py; added: pipeline/backdoor.py" in checked.stderr

    git(live, "checkout", "--", ".")
    (live / "pipeline" / "backdoor.py").unlink()
    checked = _cli(live, data_dir, "release", "verify")
    assert checked.returncode == 0, checked.stderr
    assert f"✓ {head[:7]} is signed release 1 (baseline by " in checked.stdout
    settings = load_settings(data_dir=data_dir, target_dir=live)
    conn = store.connect(settings)
    actions = [entry["action"] for entry in audit.entries(conn)]
    assert "release_baseline" in actions and "start_refused" in actions
    # The stop was recorded before the embedded Redis stopped: the boot guard never counts
    # it among starts that failed.
    endings = [start.ended for start in Target(settings, conn).boots.starts()]
    assert sorted(endings) == ["refused", "stopped"]


@pytest.mark.parametrize("worker_dies", [True, False], ids=["worker-dies", "worker-waits"])
@pytest.mark.slow
def test_a_crash_loop_under_a_supervisor_returns_to_the_last_good_release(
    molt_checkout: tuple[Path, Path], data_dir: Path, worker_dies: bool
) -> None:
    """The restarted Molt fails at import and the supervisor keeps starting it. If the
    update's worker died too (as in a container restart), the third start's boot guard
    returns to the release that started well; if the worker is waiting, it sees the crash
    loop and rolls back, and the third start follows it. The update fails in its thread."""
    work, live = molt_checkout
    old = git(live, "rev-parse", "HEAD")
    app = (work / "bot" / "app.py").read_text()
    new = _commit_upstream(
        work,
        {"bot/app.py": app + '\nraise SystemExit("this release cannot start")\n'},
        "a release that crashes at start",
    )
    # A killed worker's lock expires after MOLT_LOCK_TTL, which the boot guard waits for.
    molt = Molt(
        ["console"],
        _env(data_dir, MOLT_CRASH_LOOP="2/60", MOLT_LOCK_TTL="3"),
        live,
        live,
        launcher=(sys.executable, "-c", SUPERVISOR),
    )
    settings = load_settings(data_dir=data_dir, target_dir=live)
    conn = store.connect(settings)
    try:
        molt.wait_for(rf"Molt {old[:7]} is up")
        since = molt.send("deploy main")
        molt.wait_for(r"📋 Plan ready", since=since)
        molt.send("press approve")
        molt.wait_for(rf"Molt is restarting onto {new[:7]}", since=since)
        if worker_dies:
            holder = Target(settings, conn).lock.holder()
            assert holder is not None
            os.killpg(os.getpgid(int(holder.holder.rpartition(":")[2])), signal.SIGKILL)

        failed = molt.wait_for(r"❌ Failed: (\S+)", since=since)
        molt.wait_for(r"Failed during verify: Molt failed to start 2 times within 60s", since=since)
        molt.wait_for(r"this release cannot start", since=since)
        up = molt.wait_for(rf"Molt {old[:7]} is up on port (\d+)", since=since)
        assert molt.output.count("supervisor: molt exited with 1") == 2
        assert git(live, "rev-parse", "HEAD") == old
        assert git(live, "status", "--porcelain") == ""
        health = _healthz(int(up.group(1)))
        assert health["status"] == "ok" and health["version"] == old
        [request] = RequestStore(conn).recent(1)
        assert request.codename == failed.group(1) and request.state.value == "failed"
        guard = "; the boot guard returned to release 1 (baseline by "
        assert (guard in request.message) is worker_dies
        boot = conn.hgetall(TargetKeys(settings.target_id).boot)
        assert boot["clean"] == "1" and boot["commit"] == old
    finally:
        molt.stop()
    checked = _cli(live, data_dir, "release", "verify")
    assert checked.returncode == 0, checked.stderr
    assert "is signed release 3" in checked.stdout and "rollback by molt" in checked.stdout
