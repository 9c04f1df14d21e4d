"""The restart after an update and the check that the service came back
(pipeline/service/restart.py), with the service's real restart and health commands."""

from __future__ import annotations

from pathlib import Path

from tests.desk import StartChat
from tests.support import ServiceRepo


def test_a_health_check_failing_after_restart_rolls_back_and_restarts_again(
    service: ServiceRepo, start_chat: StartChat, tmp_path: Path
) -> None:
    restarts = tmp_path / "restarts.log"
    old = service.live_head()
    new = service.commit({"UNHEALTHY": "the new version cannot serve\n"}, "breaks at runtime")
    chat = start_chat(
        MOLT_BOOT_TIMEOUT="2", MOLT_RESTART_COMMAND=f"git rev-parse HEAD >> {restarts}"
    )
    since = chat.send("deploy main")
    chat.send("press approve")
    chat.work()
    chat.wait_for(r"❌ Failed: ", since=since)
    chat.wait_for(r"health command `python health.py` still failing", since=since)
    assert service.live_head() == old
    assert service.live_status() == ""
    # Restarted onto the new code, then again onto the snapshot once rolled back.
    assert restarts.read_text().split() == [new, old]
