"""The bot's own processes are forks of a copy of the bot taken once Molt is imported
(bot/spawner.py): each runs its ``molt`` command as a new process would, and the copy never
outlives the bot. Run in a Python of its own, as ``molt run`` is: the spawner is only
forked from a process with a single thread."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from pipeline import processes
from tests.support import ROOT

SCRIPT = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path
    from bot.cli import main
    from bot.spawner import Spawned, spawner

    out = Path(sys.argv[1])
    os.environ.pop("MOLT_SANDBOX", None)
    spawner.start(main)
    os.environ["MOLT_SANDBOX"] = "off"  # set after the spawner started: the child sees it
    forked = spawner.popen(["doctor"], log_to=out / "doctor.log", new_session=True)
    code = forked.wait(30)
    os.kill(spawner.pid, 9)
    while os.waitpid(spawner.pid, 0)[0] != spawner.pid:
        pass
    fallback = spawner.popen(["doctor"], log_to=out / "fallback.log")
    print(json.dumps({
        "spawner": spawner.pid,
        "forked": isinstance(forked, Spawned),
        "forked_code": code,
        "fallback": type(fallback).__name__,
        "fallback_code": fallback.wait(30),
    }))
    """
)


def test_a_forked_child_runs_its_molt_command_and_a_gone_spawner_leaves_new_pythons(
    tmp_path: Path, molt_env: dict[str, str]
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        cwd=ROOT,
        env={**os.environ, **molt_env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.splitlines()[-1])
    # Forked: it ran molt doctor with the environment the bot's process had when it asked,
    # wrote to its own log, and its end was seen.
    assert seen["forked"] is True
    assert (
        "test commands run without a sandbox (MOLT_SANDBOX=off)"
        in (tmp_path / "doctor.log").read_text()
    )
    assert seen["forked_code"] == -1  # ended; its status belongs to the spawner
    # The spawner gone, a new Python runs the command instead.
    assert seen["fallback"] == "Popen" and seen["fallback_code"] == 0
    assert "MOLT_SANDBOX=off" in (tmp_path / "fallback.log").read_text()
    assert not processes.alive(seen["spawner"])  # reaped by the script: gone


def _gone(pid: int) -> bool:
    """``pid`` ends within a deadline generous for a loaded machine."""
    deadline = time.monotonic() + 30
    while processes.alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    return not processes.alive(pid)


CHILD_VIEW = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path
    from bot.cli import main
    from bot.spawner import spawner

    out = Path(sys.argv[1])
    spawner.start(main)
    os.chdir(out)
    child = spawner.popen(["worker"], log_to=out / "worker.log", new_session=True)
    print(json.dumps({"me": os.getpid(), "spawner": spawner.pid, "child": child.pid}))
    sys.stdout.flush()
    sys.stdin.read()  # until the test has looked
    child.terminate()
    child.wait(30)
    """
)


def test_a_forked_worker_is_started_as_a_new_process_would_be(
    tmp_path: Path, molt_env: dict[str, str]
) -> None:
    with subprocess.Popen(
        [sys.executable, "-c", CHILD_VIEW, str(tmp_path)],
        cwd=ROOT,
        env={**os.environ, **molt_env},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as script:
        assert script.stdout is not None and script.stdin is not None
        pids = json.loads(script.stdout.readline())
        child = pids["child"]
        stat = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
        assert int(stat[1]) == pids["spawner"] != pids["me"]  # forked by the spawner
        assert int(stat[3]) == child  # a session of its own, as asked
        # Where the bot's process was when it asked, not when the spawner was forked.
        assert os.readlink(f"/proc/{child}/cwd") == str(tmp_path.resolve())
        assert os.readlink(f"/proc/{child}/fd/0") == os.devnull
        script.stdin.close()
        assert script.wait(30) == 0
    # The worker was stopped; the spawner ended with the process that started it.
    assert _gone(child) and _gone(pids["spawner"])
