"""The command grammar shared by every front end."""

from __future__ import annotations

import pytest

from bot.commands import MAX_LENGTH, parse


@pytest.mark.parametrize(
    ("text", "verb", "argument"),
    [
        ("deploy v1.4", "deploy", "v1.4"),
        ("  DEPLOY   main ", "deploy", "main"),
        ("rollback", "rollback", ""),
        ("rollback amber-otter", "rollback", "amber-otter"),
        ("status", "status", ""),
        ("queue", "queue", ""),
        ("history", "history", ""),
        ("pause", "pause", ""),
        ("resume", "resume", ""),
        ("stop", "stop", ""),
        ("help", "help", ""),
        ("", "help", ""),
        ("answer it returns pong", "answer", "it returns pong"),
        ("Answer  in app.py,  please", "answer", "in app.py, please"),
        ("add a /ping command", "change", "add a /ping command"),
        ("status of the billing service please", "change", "status of the billing service please"),
    ],
)
def test_grammar(text: str, verb: str, argument: str) -> None:
    command = parse(text)
    assert (command.verb, command.argument) == (verb, argument)


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("clear", "unknown command `clear`. A change described in words is a sentence."),
        ("stauts", "unknown command `stauts`; did you mean `status`?"),
        ("status please", "unknown command `status please`; did you mean `status`?"),
    ],
)
def test_one_or_two_words_that_are_not_a_command_are_an_unknown_command(
    text: str, said: str
) -> None:
    command = parse(text)
    assert (command.verb, command.error) == ("invalid", said)


def test_deploy_needs_exactly_one_ref() -> None:
    assert parse("deploy").verb == "invalid"
    assert "usage: deploy <ref>" in parse("deploy main and also v2").error


def test_answer_needs_the_answers() -> None:
    command = parse("answer")
    assert command.verb == "invalid" and "usage: answer <" in command.error


def test_control_and_zero_width_characters_are_dropped() -> None:
    command = parse("dep\u200bloy\x00 main")
    assert "\u200b" not in command.text and "\x00" not in command.text


def test_oversized_text_is_refused_with_a_reason() -> None:
    command = parse("x" * (MAX_LENGTH + 1))
    assert command.verb == "invalid"
    assert str(MAX_LENGTH) in command.error
