"""Freeze windows as a person meets them in the console, with Molt in this process: a deploy
into a frozen target is blocked at plan time, and again when a freeze began after its
approval; an operator breaks glass with a second operator's approval; a rollback is never
held; ``freezes`` lists the windows; a bad [[freeze]] table stops start-up."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import redis

from pipeline import audit
from pipeline.config import Freeze, Settings
from pipeline.intake import approval
from pipeline.intake import flow as intake
from pipeline.requests.states import RequestState as S
from pipeline.requests.store import Origin
from tests.desk import StartChat, molt
from tests.support import ServiceRepo, shown_message

BOB = Origin("console", "bob")
OPERATORS = "console:alice,console:bob"


def _freeze(config: Path, reason: str = "holidays", days: float = 2) -> datetime:
    """Write molt.toml with a one-off freeze in force from now for ``days``; its end (UTC)."""
    now = datetime.now(UTC).replace(microsecond=0)
    end = now + timedelta(days=days)
    config.write_text(
        "[[freeze]]\n"
        f'start = "{(now - timedelta(hours=1)).isoformat()}"\n'
        f'end = "{end.isoformat()}"\n'
        f'reason = "{reason}"\n'
    )
    return end


def test_a_deploy_into_a_frozen_target_is_blocked_at_plan_time_saying_how_to_break_glass(
    service: ServiceRepo, start_chat: StartChat, tmp_path: Path
) -> None:
    old = service.live_head()
    service.commit({"notes.txt": "x\n"}, "notes")
    config = tmp_path / "molt.toml"
    end = _freeze(config)
    chat = start_chat(MOLT_CONFIG=str(config))
    since = chat.send("deploy main")
    chat.wait_for(r"⛔ Blocked", since=since)
    name = chat.settings.target_name
    chat.wait_for(rf"{name} is frozen until {end:%a %H:%M} UTC: holidays\.", since=since)
    chat.wait_for(r"`deploy <ref> --break-glass <reason>`, which a second operator", since=since)
    [request] = chat.requests(5)
    assert request.state is S.BLOCKED and request.plan is None
    assert service.live_head() == old


def test_a_freeze_that_begins_between_approval_and_start_holds_the_update_untouched(
    service: ServiceRepo, start_chat: StartChat, tmp_path: Path
) -> None:
    old = service.live_head()
    service.commit({"notes.txt": "x\n"}, "notes")
    config = tmp_path / "molt.toml"
    chat = start_chat(MOLT_CONFIG=str(config))
    since = chat.send("deploy main")
    chat.wait_for(r"📋 Plan ready", since=since)
    chat.send("press approve")
    [request] = chat.requests(5)
    assert request.state is S.QUEUED
    end = _freeze(config, "change freeze")  # molt.toml as the worker reads it when it starts
    chat.work()
    chat.wait_for(r"❌ Failed", since=since)
    name = chat.settings.target_name
    chat.wait_for(rf"Failed during freeze: {name} is frozen until {end:%a %H:%M} UTC", since)
    chat.wait_for(r"Nothing was touched: the service runs as before", since=since)
    [request] = chat.requests(5)
    assert request.state is S.FAILED and request.snapshot is None
    assert service.live_head() == old


def test_break_glass_needs_a_second_operator_and_both_are_audited(
    service: ServiceRepo, start_chat: StartChat, tmp_path: Path
) -> None:
    new = service.commit({"notes.txt": "x\n"}, "notes")
    config = tmp_path / "molt.toml"
    end = _freeze(config)
    chat = start_chat(MOLT_CONFIG=str(config), MOLT_OPERATORS=OPERATORS)
    since = chat.send("deploy main --break-glass login is down for everyone")
    chat.wait_for(r"📋 Plan ready", since=since)
    chat.wait_for(r"Break glass.* by console:alice.*: login is down for everyone", since=since)
    chat.wait_for(rf"is frozen until {end:%a %H:%M} UTC: holidays\.", since=since)

    pressed = chat.send("press approve")  # the requester's own approval
    chat.wait_for(r"the requester cannot approve their own", since=pressed)
    [request] = chat.requests(5)
    assert request.state is S.PLAN_READY

    assert approval.approve(chat.settings, chat.conn, request.id, BOB)
    chat.work()
    chat.wait_for(r"✅ Live: ", since=since)
    assert service.live_head() == new
    done = [(e["actor"], e["action"]) for e in audit.entries(chat.conn, request.id)]
    assert ("console:alice", "break_glass") in done
    assert ("console:bob", "break_glass_approved") in done
    asked = next(e for e in audit.entries(chat.conn, request.id) if e["action"] == "break_glass")
    assert asked["detail"]["reason"] == "login is down for everyone"
    assert "holidays" in asked["detail"]["freeze"]


def test_only_an_operator_may_break_glass(
    service: ServiceRepo, start_chat: StartChat, tmp_path: Path
) -> None:
    config = tmp_path / "molt.toml"
    _freeze(config)
    chat = start_chat(MOLT_CONFIG=str(config), MOLT_OPERATORS="console:bob")
    since = chat.send("deploy main --break-glass because")
    chat.wait_for(r"🚫 Request refused", since=since)
    chat.wait_for(r"only an operator of this target may break glass", since=since)
    [request] = chat.requests(5)
    assert request.state is S.REFUSED


def test_a_rollback_is_never_held_by_a_freeze(
    service: ServiceRepo, start_chat: StartChat, tmp_path: Path
) -> None:
    old = service.live_head()
    service.commit({"notes.txt": "x\n"}, "notes")
    config = tmp_path / "molt.toml"
    first = start_chat(MOLT_CONFIG=str(config))
    since = first.send("deploy main")
    first.wait_for(r"📋 Plan ready", since=since)
    first.send("press approve")
    first.work()
    first.wait_for(r"✅ Live: ", since=since)
    first.close()

    _freeze(config)
    chat = start_chat(MOLT_CONFIG=str(config))
    since = chat.send("rollback")
    chat.wait_for(r"📋 Plan ready", since=since)
    chat.send("press approve")
    chat.work()
    chat.wait_for(r"✅ Live: .*|Rolled back", since=since)
    rollback = chat.requests(5)[0]
    assert rollback.command == "rollback" and rollback.state is S.SUCCEEDED
    assert service.live_head() == old


def test_freezes_lists_the_windows_and_which_are_in_force(
    service: ServiceRepo, start_chat: StartChat, tmp_path: Path
) -> None:
    config = tmp_path / "molt.toml"
    end = _freeze(config)
    with config.open("a") as toml:
        toml.write(
            '\n[[freeze]]\ndays = ["sat", "sun"]\nfrom = "00:00"\nto = "00:00"\n'
            'timezone = "Europe/London"\nreason = "weekends"\n'
        )
    chat = start_chat(MOLT_CONFIG=str(config))
    since = chat.send("freezes")
    chat.wait_for(r"❄️ Freeze windows", since=since)
    chat.wait_for(rf"1\. in force until {end:%a %H:%M} UTC · holidays · .* · every target", since)
    chat.wait_for(
        r"2\. .*weekends · weekly, sat 00:00 to mon 00:00 Europe/London · every target", since
    )
    said = molt("freezes")
    assert said.returncode == 0
    assert (
        "holidays" in said.stdout and "weekly, sat 00:00 to mon 00:00 Europe/London" in said.stdout
    )


def test_freezes_is_for_operators_only(
    service: ServiceRepo, start_chat: StartChat, tmp_path: Path
) -> None:
    chat = start_chat(MOLT_OPERATORS="console:bob")
    since = chat.send("freezes")
    chat.wait_for(r"only operators may do that", since=since)
    assert "Freeze windows" not in chat.output


def test_a_bad_freeze_table_stops_start_up_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "molt.toml"
    config.write_text(
        '[[freeze]]\ndays = ["fri"]\nfrom = "16:00"\nto = "9am"\nreason = "weekend"\n'
    )
    said = molt("status", env={"MOLT_CONFIG": str(config)})
    assert said.returncode != 0
    assert "freeze #1: to: expected a time of day" in said.stderr


def test_molt_never_approves_a_break_glass_plan_itself(
    service: ServiceRepo, settings: Settings, conn: redis.Redis
) -> None:
    """Under MOLT_AUTONOMY=auto a low-risk plan is approved by Molt itself, but not one that
    breaks glass: that needs a second operator."""
    service.commit({"notes.txt": "x\n"}, "notes")
    now = datetime.now(UTC)
    holidays = {"start": now - timedelta(hours=1), "end": now + timedelta(days=1), "reason": "x"}
    auto = settings.model_copy(update={"autonomy": "auto", "freeze": [Freeze.parse(holidays, 1)]})
    alice = Origin("console", "alice")
    request = intake.submit(auto, conn, alice, "deploy", "main", "deploy main", break_glass="y")
    assert request.state is S.PLAN_READY and not request.approver
    assert "Molt approves this plan itself" not in shown_message(conn, request, "plan_ready").text
    plain = intake.submit(auto, conn, alice, "rollback", "main", "rollback amber-otter")
    assert plain.state is S.QUEUED  # what auto does to a plan that breaks no glass
