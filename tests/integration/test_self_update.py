"""Molt managing its own checkout: it updates itself, restarts onto the new code, and
the new process reports healthy on the new version."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from pipeline import processes, store
from pipeline.config import load_settings
from pipeline.requests.store import RequestStore
from pipeline.service import restart
from tests.support import ROOT, Molt, git

# Molt on its default: the embedded Redis of its data directory, kept across its re-exec.
pytestmark = pytest.mark.own_redis


def _copy_of_molt(root: Path) -> tuple[Path, Path]:
    """Molt's source as it is now, as an upstream repo with a bare origin, and a live clone."""
    work, origin, live = root / "work", root / "origin.git", root / "live"
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard", "-z"],
        capture_output=True,
        check=True,
    ).stdout.decode()
    for rel in filter(None, listed.split("\0")):
        source = ROOT / rel
        if source.is_file():
            (work / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, work / rel)
    git(work, "init", "-q", "-b", "main")
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", "Molt as tested")
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(origin)], check=True)
    git(work, "remote", "add", "origin", str(origin))
    subprocess.run(["git", "clone", "-q", str(origin), str(live)], check=True)
    return work, live


def _healthz(port: int) -> dict[str, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as reply:
        return dict(json.loads(reply.read()))


@pytest.fixture
def molt_checkout(tmp_path: Path) -> tuple[Path, Path]:
    return _copy_of_molt(tmp_path / "molt")


@pytest.mark.slow
def test_molt_updates_itself_and_comes_back_on_the_new_version(
    molt_checkout: tuple[Path, Path], data_dir: Path, tmp_path: Path
) -> None:
    work, live = molt_checkout
    (work / "templates" / "refusals" / "newtheme.txt").write_text(
        "\n".join(f"New theme line {n}." for n in range(12)) + "\n"
    )
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", "a new refusal theme")
    git(work, "push", "-q", "origin", "main")
    new = git(work, "rev-parse", "HEAD")
    old = git(live, "rev-parse", "HEAD")

    molt = Molt(
        ["console"],
        {
            "MOLT_DATA_DIR": str(data_dir),
            "MOLT_TEST_COMMAND": (
                "python -c \"import bot.cli, pipeline.update.jobs; print('1 passed')\""
            ),
            "MOLT_HTTP_PORT": "0",
            "MOLT_CONSOLE_USER": "alice",
            "MOLT_BOOT_TIMEOUT": "60",
            "MOLT_LOCK_TTL": "5",
        },
        cwd=live,
        pythonpath=live,
    )
    try:
        molt.wait_for(rf"Molt {old[:7]} is up")
        since = molt.send("deploy main")
        molt.wait_for(r"📋 Plan ready", since=since)
        molt.send("press approve")
        molt.wait_for(rf"Molt is restarting onto {new[:7]}", since=since)
        up = molt.wait_for(rf"Molt {new[:7]} is up on port (\d+)", since=since)
        molt.wait_for(r"✅ Live: ", since=since)
        assert git(live, "rev-parse", "HEAD") == new
        assert git(live, "status", "--porcelain") == ""
        health = _healthz(int(up.group(1)))
        assert health["status"] == "ok" and health["version"] == new
        # The worker that ran the update finished it, then started again on the new code.
        workers_log = data_dir / "workers.log"
        deadline = time.monotonic() + 60
        while "this worker starts again on it" not in workers_log.read_text():
            if time.monotonic() > deadline:
                raise AssertionError(workers_log.read_text()[-2000:])
            time.sleep(0.2)
    finally:
        molt.stop()


@pytest.mark.slow
def test_a_release_that_cannot_start_is_rolled_back_and_molt_relaunched(
    molt_checkout: tuple[Path, Path], data_dir: Path
) -> None:
    work, live = molt_checkout
    app = work / "bot" / "app.py"
    app.write_text(app.read_text() + '\nraise SystemExit("this release cannot start")\n')
    git(work, "commit", "-q", "-am", "a release that crashes at start")
    git(work, "push", "-q", "origin", "main")
    old = git(live, "rev-parse", "HEAD")

    molt = Molt(
        ["console"],
        {
            "MOLT_DATA_DIR": str(data_dir),
            "MOLT_TEST_COMMAND": (
                "python -c \"import bot.cli, pipeline.update.jobs; print('1 passed')\""
            ),
            "MOLT_HTTP_PORT": "0",
            "MOLT_CONSOLE_USER": "alice",
            "MOLT_BOOT_TIMEOUT": "60",
            "MOLT_LOCK_TTL": "5",
            # No supervisor starts this Molt again: no need to wait long for one.
            "MOLT_RESTART_GRACE": "0.5",
        },
        cwd=live,
        pythonpath=live,
    )
    conn = store.connect(load_settings(data_dir=data_dir))
    try:
        molt.wait_for(rf"Molt {old[:7]} is up")
        since = molt.send("deploy main")
        molt.wait_for(r"📋 Plan ready", since=since)
        molt.send("press approve")
        molt.wait_for(r"this release cannot start", since=since)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            [request] = RequestStore(conn).recent(1)
            if request.terminal:
                break
            time.sleep(0.2)
        assert request.state.value == "failed", request.message
        assert "did not report healthy" in request.message
        assert "it exited at start and nothing started it again" in request.message
        assert "(this release cannot start)" in request.message
        assert git(live, "rev-parse", "HEAD") == old
        assert git(live, "status", "--porcelain") == ""
        info = restart.bot_info(conn)
        assert info is not None and info.version == old
        assert _healthz(info.port)["version"] == old
    finally:
        molt.stop()
        info = restart.bot_info(conn)
        if info is not None and info.alive:  # the relaunched Molt
            processes.terminate(info.pid, grace=30)
