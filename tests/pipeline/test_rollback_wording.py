"""A rollback reads as one, everywhere: "Rollback of dapper-puffin: back to fba5a17",
never as a deploy of a commit, a downgrade."""

from __future__ import annotations

import redis

from bot.rendering import as_text, render
from pipeline.config import Settings
from pipeline.intake import approval, control
from pipeline.intake import flow as intake
from pipeline.requests.states import RequestState as S
from pipeline.requests.store import Origin, RequestStore
from pipeline.update import jobs
from tests.support import ServiceRepo

ALICE = Origin("console", "alice")


def _landed(settings: Settings, conn: redis.Redis) -> str:
    """A deploy of main, approved and run as its job runs it: its codename."""
    request = intake.submit(settings, conn, ALICE, "deploy", "main", "deploy main")
    assert approval.approve(settings, conn, request.id, Origin("console", "bob"))
    turn = jobs.wait_for_turn(settings, conn)
    assert turn is not None
    taken, codename = turn
    jobs.Update(settings, conn, taken).run(codename)
    landed = RequestStore(conn).get(request.id)
    assert landed.state is S.SUCCEEDED, landed.message
    return landed.codename


def test_a_rollback_is_named_by_the_update_it_undoes_and_where_it_returns(
    settings: Settings, conn: redis.Redis, service: ServiceRepo
) -> None:
    old = service.live_head()
    service.commit({"notes.txt": "v2\n"}, "v2")
    codename = _landed(settings, conn)
    asked = control.rollback(settings, conn, ALICE, codename)
    assert asked and asked.request is not None
    rollback = RequestStore(conn).get(asked.request.id)
    assert rollback.state is S.PLAN_READY, rollback.message
    said = f"Rollback of {codename}: back to {old[:7]}"
    assert rollback.plan is not None and rollback.plan["summary"].startswith(said)
    shown = [
        as_text(render(template, rollback.context()).plain())
        for template in ("processing", "planning", "plan_ready")
    ]
    assert all(f"rollback of {codename}" in text.lower() for text in shown), shown
    assert not any("Deploy" in text or "downgrade" in text for text in shown), shown
