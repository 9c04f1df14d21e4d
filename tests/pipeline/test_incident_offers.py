"""The incident cooldown bounds what Molt does on its own, not what it offers a person: after
an incident's rollback, an update that lands and then breaks is a new suspect, whose
rollback is offered with Approve rollback (once, however many incidents follow), and in
auto mode the incident says how a person rolls it back. The suspect already acted on is
still left alone within the cooldown."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import pytest
import redis

from bot.rendering import render
from pipeline import events, keyspace
from pipeline.config import Settings
from pipeline.incidents import oncall
from pipeline.incidents.alerts import FIRING, Signal
from pipeline.incidents.book import Incident, IncidentBook
from pipeline.intake import approval
from pipeline.queue.targets import Target
from pipeline.requests.states import RequestState as S
from pipeline.requests.store import Origin, Request, RequestStore
from tests.support import ServiceRepo, git

BOB = Origin("console", "bob")
V2 = {"app.py": "def greet():\n    return 'hello'\n\n\nVERSION = 2\n"}
V3 = {"app.py": "def greet():\n    return 'hello'\n\n\nVERSION = 3\n"}


def _landed(
    conn: redis.Redis, service: ServiceRepo, files: dict[str, str], codename: str
) -> Request:
    """A person's update that landed just now: its request succeeded, the live checkout is
    on it."""
    old = service.live_head()
    new = service.commit(files, codename)
    git(service.live, "pull", "-q", "--ff-only")
    store = RequestStore(conn)
    request = store.create(Origin("console", "alice"), "deploy main", "deploy", "main")
    plan = {"kind": "deploy", "base_commit": old, "target_commit": new, "files": []}
    for state in (S.PREFLIGHT, S.PLANNING, S.PLAN_READY, S.APPROVED, S.QUEUED, S.RUNNING):
        store.transition(request.id, state, actor="molt", fields={"plan": plan})
    return store.transition(request.id, S.SUCCEEDED, actor="molt", fields={"codename": codename})


def _rollback_landed(
    settings: Settings, conn: redis.Redis, service: ServiceRepo, rollback: Request
) -> None:
    """The approved rollback ran: the live checkout is back on the release before the suspect."""
    store = RequestStore(conn)
    Target(settings, conn).line.leave(rollback.id)
    git(service.live, "reset", "-q", "--hard", rollback.argument)
    store.transition(rollback.id, S.RUNNING, actor="molt", fields={"codename": "blue-yak"})
    store.transition(rollback.id, S.SUCCEEDED, actor="molt")


def _error(fingerprint: str, settings: Settings, conn: redis.Redis) -> Incident:
    """A new exception fills the service's log: taken until it opens an incident."""
    book = IncidentBook(settings, conn)
    signal = Signal(
        "log", fingerprint, FIRING, summary=f"{fingerprint} at app.py:greet", counted=True
    )
    for _ in range(settings.incident_threshold_limit[0]):
        oncall.take(settings, conn, replace(signal, at=time.time()))
    [incident] = [i for i in book.recent() if i.fingerprint == fingerprint]
    return incident


def _said(conn: redis.Redis, incident: Incident) -> list[Any]:
    """What the incident channel shows of ``incident`` after it opened."""
    shown = []
    for entry_id, fields in conn.xrange(keyspace.EVENTS):
        event = events.Event.from_fields(entry_id, fields)
        if event.request_id == incident.id and event.state != "incident_opened":
            shown.append(render("incident", {**event.data, "state": event.state}))
    return shown


def _rollbacks(conn: redis.Redis) -> list[Request]:
    return [r for r in RequestStore(conn).recent(50) if r.command == "rollback"]


def _first_incident_rolled_back(
    settings: Settings, conn: redis.Redis, service: ServiceRepo
) -> Incident:
    """amber-otter landed and broke; its rollback, approved, landed too."""
    _landed(conn, service, V2, "amber-otter")
    first = _error("log:KeyError", settings, conn)
    [rollback] = _rollbacks(conn)
    if rollback.state is S.PLAN_READY:
        decision = approval.approve(settings, conn, rollback.id, BOB)
        assert decision.allowed, decision.reason
    _rollback_landed(settings, conn, service, RequestStore(conn).get(rollback.id))
    return first


def test_a_new_update_that_breaks_within_the_cooldown_is_offered_for_rollback(
    settings: Settings, conn: redis.Redis, service: ServiceRepo
) -> None:
    first = _first_incident_rolled_back(settings, conn, service)
    # Within the cooldown, the suspect already acted on is left alone.
    again = _error("log:OSError", settings, conn)
    [said] = _said(conn, again)
    assert f"no automatic action: incident {first.id} acted on this target" in said.text
    assert len(_rollbacks(conn)) == 1
    suspect = _landed(conn, service, V3, "brave-heron")
    broken = _error("log:ValueError", settings, conn)
    [offer] = _said(conn, broken)
    [button] = offer.buttons
    assert (button.label, button.action) == ("Approve rollback", "approve")
    assert "update brave-heron is the suspect" in offer.text
    assert f"landed after incident {first.id} acted" in offer.text
    [newest, _] = _rollbacks(conn)
    assert newest.id == button.value and newest.state is S.PLAN_READY  # for a person to press
    assert newest.argument == (suspect.plan or {})["base_commit"]
    assert IncidentBook(settings, conn).get(broken.id).suspect == "brave-heron"  # type: ignore[union-attr]
    # The storm that follows does not offer it again.
    storm = _error("log:TypeError", settings, conn)
    [said] = _said(conn, storm)
    assert f"no automatic action: incident {broken.id} acted on this target" in said.text
    assert len(_rollbacks(conn)) == 2
    decision = approval.approve(settings, conn, newest.id, BOB)
    assert decision.allowed, decision.reason
    assert RequestStore(conn).get(newest.id).state is S.QUEUED


def test_in_auto_mode_the_incident_says_how_a_person_rolls_the_new_suspect_back(
    settings: Settings, conn: redis.Redis, service: ServiceRepo
) -> None:
    auto = settings.model_copy(update={"autonomy": "auto"})
    first = _first_incident_rolled_back(auto, conn, service)
    _landed(conn, service, V3, "brave-heron")
    broken = _error("log:ValueError", auto, conn)
    [said] = _said(conn, broken)
    assert not said.buttons
    assert said.text.startswith(f"no automatic action: incident {first.id} acted on this target")
    assert "Update brave-heron landed after that and is the suspect" in said.text
    assert "an operator's `rollback brave-heron` plans the return to the release before it" in (
        said.text
    )
    assert len(_rollbacks(conn)) == 1  # Molt did not act on its own again


@pytest.mark.parametrize("autonomy", ["assisted", "auto"])
def test_without_a_new_update_the_cooldown_still_leaves_the_target_alone(
    settings: Settings, conn: redis.Redis, service: ServiceRepo, autonomy: str
) -> None:
    view = settings.model_copy(update={"autonomy": autonomy})
    first = _first_incident_rolled_back(view, conn, service)
    again = _error("log:ValueError", view, conn)
    [said] = _said(conn, again)
    assert not said.buttons
    assert said.text == (
        f"no automatic action: incident {first.id} acted on this target within "
        "MOLT_INCIDENT_COOLDOWN"
    )
    assert len(_rollbacks(conn)) == 1
