"""Slack in Socket Mode: the real bot holds a WebSocket to a fake Socket Mode end, acks
every envelope, reconnects when dropped (the bot in the test's process,
tests/integration/inprocess.py), and loses nothing across a restart of ``molt run``'s
processes."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline import store
from pipeline.config import load_settings
from pipeline.requests.store import RequestStore
from tests.fakes.slack import (
    APP_TOKEN,
    BOT_TOKEN,
    FakeSlack,
    FakeSocketMode,
    action_payload,
    command_payload,
)
from tests.integration.inprocess import InProcessBot, StartBot
from tests.support import Molt, ServiceRepo

ALICE = {"user_id": "U1ALICE", "user_name": "alice"}
BOB = {"user_id": "U2BOB", "user_name": "bob"}


def _template(call: Any) -> str:
    return str(((call.args.get("metadata") or {}).get("event_payload") or {}).get("template"))


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    with FakeSlack() as fake:
        fake.with_socket_mode()
        yield fake


def socket_mode_env(slack: FakeSlack) -> dict[str, str]:
    return {
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_APP_TOKEN": APP_TOKEN,
        "SLACK_API_URL": slack.url,
        "MOLT_AUTHORISED_USERS": "slack:U1ALICE",
        "MOLT_APPROVERS": "slack:U1ALICE,slack:U2BOB",
    }


@pytest.fixture
def start_socket_bot(slack: FakeSlack, start_bot: StartBot) -> Callable[[], InProcessBot]:
    """Molt's bot in Socket Mode, in this process (stopped before the fake Slack is)."""
    return lambda: start_bot(**socket_mode_env(slack))


@pytest.fixture
def start_socket_molt(slack: FakeSlack, start_molt: Callable[..., Molt]) -> Callable[[], Molt]:
    """``molt run`` in Socket Mode: the bot, its HTTP process and its worker."""

    def start() -> Molt:
        molt = start_molt("run", "--no-console", **socket_mode_env(slack))
        molt.wait_for(r"molt is up")
        return molt

    return start


def _shown(slack: FakeSlack, template: str, timeout: float = 60) -> Any:
    return slack.wait_for(lambda c: _template(c) == template, timeout=timeout)


@pytest.mark.slow
def test_socket_mode_deploy_acks_every_envelope_and_lands(
    service: ServiceRepo, slack: FakeSlack, start_socket_bot: Callable[[], InProcessBot]
) -> None:
    socket: FakeSocketMode = slack.socket_mode  # type: ignore[assignment]
    new = service.commit({"notes.txt": "x\n"}, "notes")
    start_socket_bot()
    socket.wait_connected()
    asked = socket.send("slash_commands", command_payload("deploy main", **ALICE))
    socket.wait_ack(asked)
    plan = _shown(slack, "plan_ready")
    request_id = plan.args["metadata"]["event_payload"]["request_id"]
    clicked = socket.send("interactive", action_payload("molt_approve", request_id, **BOB))
    socket.wait_ack(clicked)
    _shown(slack, "success")
    assert service.live_head() == new
    assert [c.method for c in slack.calls("apps.connections.open")]


@pytest.mark.slow
def test_a_dropped_connection_is_reopened_and_nothing_is_lost(
    service: ServiceRepo, slack: FakeSlack, start_socket_bot: Callable[[], InProcessBot]
) -> None:
    socket: FakeSocketMode = slack.socket_mode  # type: ignore[assignment]
    service.commit({"notes.txt": "x\n"}, "notes")
    start_socket_bot()
    socket.wait_connected()
    socket.send("slash_commands", command_payload("deploy main", **ALICE))
    plan = _shown(slack, "plan_ready")
    request_id = plan.args["metadata"]["event_payload"]["request_id"]
    socket.drop()
    # Sent while the client is reconnecting: delivered on the new connection.
    clicked = socket.send("interactive", action_payload("molt_approve", request_id, **BOB))
    socket.wait_connected(count=2)
    socket.wait_ack(clicked, timeout=30)
    _shown(slack, "success")
    assert len(slack.calls("apps.connections.open")) >= 2


@pytest.mark.slow
def test_a_restart_of_the_bot_loses_no_event_and_repeats_none(
    service: ServiceRepo, slack: FakeSlack, start_socket_molt: Callable[[], Molt], data_dir: Path
) -> None:
    """With ``molt run``'s processes, stopped and started again."""
    socket: FakeSocketMode = slack.socket_mode  # type: ignore[assignment]
    service.commit({"notes.txt": "x\n"}, "notes")
    first = start_socket_molt()
    socket.wait_connected()
    first.stop()
    # Slack keeps the envelope while nobody is connected, and sends it again after.
    asked = socket.send("slash_commands", command_payload("deploy main", **ALICE))
    start_socket_molt()
    socket.wait_connected(count=2)
    socket.wait_ack(asked, timeout=30)
    _shown(slack, "plan_ready")
    # A redelivery of an envelope already handled is acked and ignored.
    payload = command_payload("deploy main", **ALICE)
    again = [socket.send("slash_commands", payload) for _ in range(2)]
    for envelope in again:
        socket.wait_ack(envelope)
    recorded = RequestStore(store.connect(load_settings(data_dir=data_dir)))
    deadline = time.monotonic() + 30
    while len(recorded.recent(10)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1)  # room for a wrongly repeated delivery to show up
    assert len(recorded.recent(10)) == 2
