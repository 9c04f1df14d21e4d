"""Signed releases through updates and rollbacks, and an operator's way back
(pipeline/update/release_rollback.py): the console's updates run by an RQ worker in this process,
``molt release`` at a shell run in it too."""

from __future__ import annotations

from pipeline import audit
from tests.desk import StartChat, molt
from tests.support import ServiceRepo, git


def test_a_lower_release_is_refused_until_an_operator_rolls_back(
    service: ServiceRepo, start_chat: StartChat
) -> None:
    old = service.live_head()
    new = service.commit({"NOTES.md": "Release notes.\n"}, "notes")
    chat = start_chat()
    since = chat.send("deploy main")
    chat.send("press approve")
    chat.work()
    update = chat.wait_for(r"✅ Live: (\S+)", since=since).group(1)
    chat.wait_for(rf"{new[:7]} is live and healthy as signed release 2", since=since)

    since = chat.send(f"rollback {update}")
    chat.wait_for(r"📋 Plan ready", since=since)
    chat.send("press approve")
    chat.work()
    back = chat.wait_for(r"✅ Live: (\S+)", since=since).group(1)
    chat.wait_for(rf"{old[:7]} is live and healthy as signed release 3", since=since)
    checked = molt("release", "verify")
    assert f"is signed release 3 ({back}, rollback by console:alice)" in checked.stdout

    # Someone puts the newer release back by hand: release 2 is lower than 3.
    git(service.live, "reset", "-q", "--hard", new)
    refused = molt("release", "verify")
    assert refused.returncode == 1
    assert (
        f"downgrade refused: {new[:7]} is release 2 ({update}, update), lower than "
        f"release 3 ({back}, rollback by console:alice) of {old[:7]} already seen"
    ) in refused.stderr
    assert f"`molt release rollback {back}`" in refused.stderr

    mallory = molt("release", "rollback", back, env={"MOLT_CONSOLE_USER": "mallory"})
    assert mallory.returncode == 1 and "console:mallory may not release rollback" in mallory.stderr
    allowed = molt("release", "rollback", back)
    assert allowed.returncode == 0, allowed.stderr
    assert f"{new[:7]} is signed release 4" in allowed.stdout
    assert "rollback by console:alice" in allowed.stdout
    checked = molt("release", "verify")
    assert checked.returncode == 0, checked.stderr
    assert f"✓ {new[:7]} is signed release 4" in checked.stdout
    assert service.live_head() == new

    rollbacks = [e for e in audit.entries(chat.conn) if e["action"] == "release_rollback"]
    assert [e["actor"] for e in rollbacks] == ["console:alice", "console:alice"]
    assert [e["detail"]["release"] for e in rollbacks] == [3, 4]
