"""The way back (pipeline/service/rollback.py) as operators use it from the console, with the update
run by an RQ worker in this process: an emergency stop mid-update, and ``rollback
<codename>`` returning to the release before an update."""

from __future__ import annotations

import time
from pathlib import Path

from pipeline.requests.states import RequestState as S
from tests.desk import StartChat
from tests.support import ServiceRepo

V2 = {"app.py": "def greet():\n    return 'hello'\n\n\nVERSION = 2\n"}


def _running(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _wait_for_file(path: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} never appeared")
        time.sleep(0.05)


def test_an_emergency_stop_during_phase_one_rolls_back_and_clears_the_queue(
    service: ServiceRepo, start_chat: StartChat, tmp_path: Path
) -> None:
    started = tmp_path / "tests-started"
    endless = (
        "import os, pathlib, time\n\n\ndef test_endless():\n"
        f"    pathlib.Path({str(started)!r}).write_text(str(os.getpid()))\n"
        "    time.sleep(600)\n"
    )
    old = service.live_head()
    service.commit({"checks/test_endless.py": endless}, "tests that never end", branch="slow")
    service.commit(V2, "fine", branch="fine")
    chat = start_chat()
    first = chat.send("deploy slow")
    chat.wait_for(r"📋 Plan ready", since=first)
    chat.send("press approve")
    chat.work_in_background()
    _wait_for_file(started)  # phase 1 runs the endless test in the sandbox
    second = chat.send("deploy fine")
    chat.wait_for(r"📋 Plan ready", since=second)
    chat.send("press approve")
    chat.wait_for(r"🕒 Queued", since=second)

    stop = chat.send("stop")
    codename = chat.wait_for(
        r"Emergency stop: update (\S+) will roll back at its next safe point; "
        r"1 queued request\(s\) cleared\.",
        since=stop,
    ).group(1)
    chat.wait_for(rf"\[{codename}\] ❌ Failed: {codename}", since=stop)
    # The console names its people by name; Redis keeps the principal (below).
    chat.wait_for(r"Failed during phase 1: emergency stop by alice\b", since=stop)
    chat.wait_for(r"cleared from the queue by an emergency stop \(alice\)", since=stop)
    assert not _running(int(started.read_text()))  # the test command was killed
    assert service.live_head() == old
    assert service.live_status() == ""
    states = {r.argument: (r.state, r.message) for r in chat.requests(2)}
    assert states["slow"] == (S.FAILED, "emergency stop by console:alice")
    assert states["fine"][0] is S.FAILED


def test_rollback_of_an_update_plans_a_downgrade_and_returns_to_its_rollback_point(
    service: ServiceRepo, start_chat: StartChat
) -> None:
    old = service.live_head()
    new = service.commit(V2, "v2")
    chat = start_chat()
    since = chat.send("deploy main")
    chat.send("press approve")
    chat.work()
    codename = chat.wait_for(r"✅ Live: (\S+)", since=since).group(1)
    assert service.live_head() == new

    back = chat.send(f"rollback {codename}")
    chat.wait_for(r"📋 Plan ready", since=back)
    chat.wait_for(rf"Rollback of {codename}: back to {old[:7]}", since=back)
    chat.send("press approve")
    chat.work()
    chat.wait_for(r"✅ Live: ", since=back)
    assert service.live_head() == old
    assert service.live_status() == ""
