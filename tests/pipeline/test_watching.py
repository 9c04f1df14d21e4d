"""The watch window after a restart (pipeline/service/watching.py): the update run by an RQ worker
in this process, with real git and the service's real restart and health commands."""

from __future__ import annotations

import pytest

from pipeline.requests.states import RequestState as S
from tests.desk import StartChat
from tests.support import ServiceRepo

#: The restart command starts the count of the service's health checks afresh, inside .git
#: so the checkout stays clean.
RESTART = "python -c \"import pathlib; pathlib.Path('.git/checks').unlink(missing_ok=True)\""
#: A release that boots healthy and turns unhealthy after its first two health checks since
#: its start (the check after the restart, the watch's first probe).
SOURING_HEALTH = """\
import pathlib, sys
checks = pathlib.Path(".git/checks")
seen = len(checks.read_text()) + 1 if checks.exists() else 1
checks.write_text("." * seen)
sys.exit(1 if seen > 2 else 0)
"""
WATCH = {"MOLT_WATCH_SECONDS": "6", "MOLT_WATCH_INTERVAL": "0.4", "MOLT_RESTART_COMMAND": RESTART}


@pytest.mark.slow
def test_a_release_that_turns_unhealthy_after_its_restart_is_rolled_back_in_the_watch(
    service: ServiceRepo, start_chat: StartChat
) -> None:
    old = service.live_head()
    service.commit({"health.py": SOURING_HEALTH}, "health that sours")
    chat = start_chat(**WATCH)
    since = chat.send("deploy main")
    chat.wait_for(r"📋 Plan ready", since=since)
    chat.send("press approve")
    chat.work()
    chat.wait_for(r"👀 Watching", since=since)
    chat.wait_for(r"❌ Failed", since=since)
    chat.wait_for(
        r"Failed during watch: 2 of \d+ health probes failed in the watch window", since=since
    )
    assert service.live_head() == old
    assert service.live_status() == ""
    [request] = chat.requests(1)
    assert request.state is S.FAILED
    assert request.phase == "watch"
    assert "python health.py` exit 1" in request.message


@pytest.mark.slow
def test_a_healthy_release_succeeds_saying_what_was_watched(
    service: ServiceRepo, start_chat: StartChat
) -> None:
    new = service.commit({"app.py": "def greet():\n    return 'hello'\n\n\nV = 2\n"}, "v2")
    chat = start_chat(**(WATCH | {"MOLT_WATCH_SECONDS": "1"}))
    since = chat.send("deploy main")
    chat.wait_for(r"📋 Plan ready", since=since)
    chat.send("press approve")
    chat.work()
    chat.wait_for(r"✅ Live", since=since)
    chat.wait_for(r"watched 1 s: 3/3 probes healthy, 0 new errors", since=since)
    assert service.live_head() == new
