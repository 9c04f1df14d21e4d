"""The desk: every verb of the grammar reaches what it names; a click that came too late
is answered like any other refused click."""

from __future__ import annotations

import redis

from bot.commands import OPERATOR_VERBS, VERBS
from bot.desk import BY_VERB, Desk
from pipeline import approval, audit, events, intake
from pipeline.config import Settings
from pipeline.requests import Origin, RequestStore
from pipeline.states import RequestState as S
from tests.support import ServiceRepo

ALICE = Origin("console", "alice")


def test_every_operator_verb_has_its_own_entry_and_never_becomes_a_request() -> None:
    assert BY_VERB.keys() >= OPERATOR_VERBS
    assert Desk._ask not in [BY_VERB[verb] for verb in OPERATOR_VERBS]


def test_only_deploy_and_words_become_a_new_request() -> None:
    assert VERBS - BY_VERB.keys() == {"deploy"}
    assert {"help", "answer", "invalid"} <= BY_VERB.keys()


def test_a_click_on_a_request_that_moved_on_is_refused_to_that_person_alone(
    settings: Settings, conn: redis.Redis, service: ServiceRepo
) -> None:
    """Retry, Request changes and answers on a request that succeeded, failed or was
    answered are told where it is now, audited, and never "that did not work"."""
    service.commit({"notes.txt": "x\n"}, "notes")
    request = intake.submit(settings, conn, ALICE, "deploy", "main", "deploy main")
    assert approval.reject(settings, conn, request.id, Origin("console", "bob"))
    desk = Desk(settings, conn, {})
    try:
        desk.press(ALICE, "retry", request.id).result(timeout=60)
        desk.revise(ALICE, request.id, "deploy other").result(timeout=60)
        desk.answer(ALICE, request.id, "yes").result(timeout=60)
    finally:
        desk.close()
    said = "this plan was already rejected by console:bob; ask again if it is still wanted"
    unanswerable = "this request is not waiting for answers: it was already rejected by console:bob"
    told = [
        (e.template, e.data.get("reason"))
        for e in (events.Event.from_fields(i, f) for i, f in conn.xrange(events.STREAM))
        if e.audience == ALICE.principal
    ]
    assert told == [
        ("not_allowed", said),
        ("not_allowed", said),
        ("not_allowed", f"{unanswerable}; ask again if it is still wanted"),
    ]
    refused = [e["action"] for e in audit.entries(conn, request.id) if "refused" in e["action"]]
    assert refused == ["retry_refused", "revise_refused", "answer_refused"]
    assert RequestStore(conn).get(request.id).state is S.REJECTED
