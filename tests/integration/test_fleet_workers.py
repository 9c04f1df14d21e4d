"""A fleet's worker that goes away, as processes: one stopped with SIGTERM is gone at once
(a busy one finishes its update, and takes nothing more), so a request sent right after is
blocked saying when it was last seen; one killed with -9
still looks alive for a moment, and the request whose job it never takes is blocked by the
bot's housekeeping once MOLT_WORKER_WAIT has passed. Neither waits in "Checking" forever."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline import store
from pipeline.config import load_settings
from pipeline.requests.states import RequestState as S
from pipeline.requests.store import Request, RequestStore
from tests.support import Hosts, Molt, ServiceRepo, wait_for_file

V2 = {"app.py": "def greet():\n    return 'hello'\n\n\nVERSION = 2\n"}
TARGET = """
[targets.web]
dir = "{web}"
test_command = "python service_tests.py"
approvers = ["console:alice"]
operators = ["console:alice"]
"""


class Web(Hosts):
    """The bot (no checkout of web) and web's worker on a "host" of its own, sharing one
    Redis server."""

    def __init__(self, root: Path) -> None:
        self.web = ServiceRepo.create(root / "web")
        self.web.commit(V2, "web v2")
        (root / "molt.toml").write_text(TARGET.format(web=root / "no-web"))
        (root / "hosts.toml").write_text(TARGET.format(web=self.web.live))
        super().__init__(root)

    def bot(self, **env: str) -> Molt:
        molt = self.start("bot", "console", **env)
        molt.wait_for(r"Molt \S+ is up")
        return molt

    def newest(self) -> Request:
        conn = store.connect(load_settings(redis_url=self.env["REDIS_URL"]))
        [request] = RequestStore(conn).recent(1)
        return request


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[Web]:
    found = Web(tmp_path)
    yield found
    found.stop()


def test_a_request_right_after_its_worker_stopped_is_blocked_at_once(hosts: Web) -> None:
    worker = hosts.worker("web")
    molt = hosts.bot()
    worker.stop()  # SIGTERM, as a supervisor stops it
    since = molt.send("deploy web main")
    molt.wait_for(r"⛔ Blocked", since=since)
    molt.wait_for(r"no worker for web is running \(last seen \d\d:\d\d:\d\d UTC", since=since)
    request = hosts.newest()
    assert request.state is S.BLOCKED and request.target == "web"


@pytest.mark.slow
def test_a_request_whose_worker_was_killed_is_blocked_after_the_worker_wait(
    hosts: Web,
) -> None:
    worker = hosts.worker("web")
    # The dead worker still counts for MOLT_WORKER_STALE after its last beat: 4 s, twice the
    # beat, is what sets it apart from a live one; 10 s (the default) would add only waiting.
    molt = hosts.bot(MOLT_WORKER_WAIT="3", MOLT_WORKER_STALE="4")
    os.killpg(worker.proc.pid, signal.SIGKILL)
    since = molt.send("deploy web main")  # its registration still looks fresh: a job is queued
    molt.wait_for(r"⛔ Blocked", since=since)
    # Housekeeping ends it either way: the job no worker took, or (once the dead worker's
    # registration went stale before intake looked) the request no worker is there for.
    molt.wait_for(
        r"no worker for web (took it in 3 s|is there to finish it|is running) \(last seen ",
        since=since,
    )
    request = hosts.newest()
    assert request.state is S.BLOCKED and request.target == "web"


def test_a_busy_worker_told_to_stop_finishes_its_update_and_is_gone_for_new_requests(
    hosts: Web, tmp_path: Path
) -> None:
    started, go = tmp_path / "phase-2-started", tmp_path / "go"
    waits = (
        "import os, pathlib, time\n\n\ndef test_waits_on_live():\n"
        f"    if os.getcwd() == {str(hosts.web.live)!r}:\n"
        f"        pathlib.Path({str(started)!r}).touch()\n"
        f"        while not pathlib.Path({str(go)!r}).exists():\n"
        "            time.sleep(0.1)\n"
    )
    new = hosts.web.commit({"checks/test_wait.py": waits}, "web waits in phase 2")
    worker = hosts.worker("web")
    molt = hosts.bot()
    since = molt.send("deploy web main")
    planned = molt.wait_for(r"press approve (r[0-9a-f]+)", since=since).group(1)
    molt.send(f"press approve {planned}")
    wait_for_file(started, molt)  # phase 2 runs on web's worker
    worker.proc.send_signal(signal.SIGTERM)  # warm: it finishes the update first
    worker.wait_for(r"got signal SIGTERM")
    since = molt.send("deploy web main")
    molt.wait_for(r"no worker for web is running \(last seen ", since=since)
    go.touch()
    molt.wait_for(r"✅ Live: ", since=since, timeout=120)
    assert hosts.web.live_head() == new
    worker.proc.wait(60)  # and then it stops
