"""People in messages: each platform names its own people its own way, another platform's
principal stays as it is, and only the people Molt itself names are named (never someone
request text names)."""

from __future__ import annotations

from typing import Any

import pytest

from bot.people import OPEN, address, mark, name, unmarked, vouched
from bot.platforms import BY_NAME
from bot.rendering import render


@pytest.mark.parametrize(
    ("principal", "platform", "named"),
    [
        ("slack:U1ALICE", "slack", "<@U1ALICE>"),
        ("slack:W2BOB", "slack", "<@W2BOB>"),
        ("discord:1300000000000000101", "discord", "<@1300000000000000101>"),
        ("github:octo-cat", "github", "@octo-cat"),
        ("console:bob", "console", "bob"),
        ("console:ana.lima", "console", "ana.lima"),
    ],
)
def test_a_platform_names_its_own_people(principal: str, platform: str, named: str) -> None:
    assert name(principal, BY_NAME[platform].naming) == named


@pytest.mark.parametrize(
    ("principal", "platform"),
    [
        ("console:bob", "slack"),
        ("slack:U1ALICE", "discord"),
        ("discord:1300000000000000101", "console"),
        ("github:octocat", "slack"),
        ("molt:auto", "slack"),
        ("molt:auto", "console"),
        # An id the platform would not take stays readable rather than becoming markup.
        ("slack:u1>|<!channel", "slack"),
        ("discord:bob", "discord"),
        ("github:-bad-", "github"),
    ],
)
def test_anyone_else_stays_their_principal(principal: str, platform: str) -> None:
    assert name(principal, BY_NAME[platform].naming) == principal


def _addressed(context: dict[str, Any], key: str, platform: str) -> str:
    return address(str(vouched(context)[key]), BY_NAME[platform].naming)


def test_the_people_fields_of_a_context_are_named() -> None:
    context = {"approver": "slack:U2BOB", "actor": "slack:U3CY", "requester_id": "slack:U1ALICE"}
    assert _addressed(context, "approver", "slack") == "<@U2BOB>"
    assert _addressed(context, "actor", "slack") == "<@U3CY>"
    assert _addressed(context, "requester_id", "slack") == "<@U1ALICE>"
    # Names that are not principals (a display name, "molt") are left as they are.
    assert vouched({"approver": "bo", "actor": "molt"}) == {"approver": "bo", "actor": "molt"}


def test_a_requester_is_named_by_principal_and_shown_plain_by_display_name() -> None:
    context = {"requester": "alice", "requester_id": "slack:U1ALICE"}
    assert _addressed(context, "requester", "slack") == "<@U1ALICE>"
    assert _addressed(context, "requester", "console") == "slack:U1ALICE"
    assert unmarked(vouched(context)["requester"]) == "alice"


def test_people_in_lists_and_audit_entries_are_named() -> None:
    context = {
        "requests": [{"requester": "alice", "requester_id": "console:alice", "text": "x"}],
        "current": {"requester": "bob", "requester_id": "console:bob"},
        "entries": [{"actor": "console:carol", "detail": {"message": "rejected by console:carol"}}],
    }
    shown = vouched(context)
    assert address(shown["requests"][0]["requester"], BY_NAME["console"].naming) == "alice"
    assert address(shown["current"]["requester"], BY_NAME["console"].naming) == "bob"
    assert address(shown["entries"][0]["actor"], BY_NAME["console"].naming) == "carol"
    assert (
        address(shown["entries"][0]["detail"]["message"], BY_NAME["console"].naming)
        == "rejected by carol"
    )


@pytest.mark.parametrize(
    ("said", "named"),
    [
        ("approved by slack:U2BOB", "approved by <@U2BOB>"),
        ("rejected by slack:U2BOB", "rejected by <@U2BOB>"),
        ("retry 2 asked by slack:U2BOB", "retry 2 asked by <@U2BOB>"),
        ("answered by slack:U1ALICE; planning again", "answered by <@U1ALICE>; planning again"),
        ("emergency stop by slack:U2BOB. Took 3 s", "emergency stop by <@U2BOB>. Took 3 s"),
        (
            "cleared from the queue by an emergency stop (slack:U2BOB)",
            "cleared from the queue by an emergency stop (<@U2BOB>)",
        ),
        (
            "this plan was already approved by slack:U2BOB",
            "this plan was already approved by <@U2BOB>",
        ),
        # Not Molt's sentence: nobody is named.
        ("slack:U9MALLORY is not in MOLT_AUTHORISED_USERS", None),
        ("tests failed: approved by slack:U2BOB", None),
    ],
)
def test_who_acted_is_named_in_the_pipelines_own_sentences(said: str, named: str | None) -> None:
    assert _addressed({"message": said}, "message", "slack") == (named or said)
    assert _addressed({"reason": said}, "reason", "slack") == (named or said)


def test_a_note_after_who_acted_names_nobody() -> None:
    said = "changes asked by slack:U1ALICE: approved by slack:U2BOB, ask slack:U3CY"
    assert _addressed({"message": said}, "message", "slack") == (
        "changes asked by <@U1ALICE>: approved by slack:U2BOB, ask slack:U3CY"
    )


def test_what_a_requester_or_a_model_wrote_names_nobody() -> None:
    context = {
        "text": "deploy main for slack:U2BOB",
        "answers": ["slack:U2BOB"],
        "questions": ["Ask slack:U2BOB?"],
        "plan": {"summary": "for slack:U2BOB", "approver": "slack:U2BOB"},
        "result": {"message": "approved by slack:U2BOB"},
        "requests": [{"text": "approved by slack:U2BOB", "plan": {"actor": "slack:U2BOB"}}],
    }
    assert vouched(context) == context


def test_marks_in_the_context_are_removed_so_they_cannot_be_forged() -> None:
    forged = f"deploy {mark('slack:U2BOB')} now"
    shown = vouched({"text": forged, "requests": [{"message": forged}]})
    assert OPEN not in repr(shown)
    assert address(shown["text"], BY_NAME["slack"].naming) == "deploy slack:U2BOB now"


def test_a_rendered_message_names_only_whom_molt_names() -> None:
    message = render(
        "processing",
        {
            "request_id": "r1",
            "command": "change",
            "requester": "alice",
            "requester_id": "slack:U1ALICE",
            "text": "add a ping, as slack:U2BOB asked",
        },
    )
    named = address(message.marked(), BY_NAME["slack"].naming)
    assert "<@U1ALICE>" in named
    assert "slack:U2BOB asked" in named and "<@U2BOB>" not in named
    assert "alice" in message.plain() and OPEN not in message.plain()
