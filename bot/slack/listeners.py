"""What Slack sends in: the slash command, the buttons, the Request changes modal, App Home
and replies in a request's thread.

Slack wants an answer within 3 s, so every listener acks first and queues the rest for one
hand-over thread, which gives it to the ``Desk`` (which returns at once): nothing before
the ack waits on Redis, and no thread is started per request.

Keys: ``molt:slack:seen:<delivery id>`` marks a delivery (trigger or event id) as acted
on, for ``SEEN_TTL``, so Slack's retries and Socket Mode's redeliveries act once.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog
from slack_bolt import Ack, App
from slack_sdk import WebClient

from bot.slack.blocks import ACTIONS, REVISION_VIEW, revision_view
from pipeline import keyspace
from pipeline.requests.store import Origin, RequestStore

if TYPE_CHECKING:
    from bot.base import Front

log = structlog.get_logger(__name__)

#: How long a delivery id is remembered to recognise Slack's retries.
SEEN_TTL = 3600


class Listeners:
    """Bolt's listeners for Molt, and the thread that hands their work to the desk."""

    def __init__(
        self,
        app: App,
        client: WebClient,
        store: RequestStore,
        command: str,
        *,
        desk: Callable[[], Front | None],
    ) -> None:
        self.client = client
        self.store = store
        #: The adapter's desk, once it has one.
        self.desk = desk
        self._handoffs: queue.SimpleQueue[tuple[str, Callable[[], Any]] | None] = (
            queue.SimpleQueue()
        )
        self._handoff = threading.Thread(target=self._hand_over, name="molt-slack", daemon=True)
        app.command(command)(self._on_command)
        for action in ACTIONS:
            app.action(f"molt_{action}")(self._on_button)
        # Opening a modal must happen within the click's 3 s: on Bolt's own thread.
        app.action("molt_revise")(ack=_ack, lazy=[self._open_revision])
        app.view(REVISION_VIEW)(self._on_revision)
        app.event("app_home_opened")(self._on_home)
        app.event("message")(self._on_message)

    def start(self) -> None:
        self._handoff.start()

    def stop(self) -> None:
        if self._handoff.is_alive():
            self._handoffs.put(None)
            self._handoff.join(timeout=5)

    def _first_time(self, key: str) -> bool:
        """Slack redelivers (retries, Socket Mode reconnects): act on each delivery once."""
        if not key:
            return True
        return bool(self.store.conn.set(keyspace.slack_seen(key), 1, nx=True, ex=SEEN_TTL))

    def _later(self, key: str, work: Callable[[], Any]) -> None:
        self._handoffs.put((key, work))

    def _hand_over(self) -> None:
        """Deduplicate by delivery id and hand to the desk, in arrival order."""
        while (item := self._handoffs.get()) is not None:
            key, work = item
            try:
                if self._first_time(key):
                    work()
            except Exception:
                log.exception("handing a Slack delivery over failed")

    def _acked(self, ack: Ack) -> Front | None:
        """Ack first (Slack wants it within 3 s); then the desk to hand to, if there is one."""
        ack()
        return self.desk()

    def _on_command(self, ack: Ack, command: dict[str, Any]) -> None:
        desk = self._acked(ack)
        if desk is None:
            return
        origin = Origin(
            "slack", command["user_id"], command["channel_id"], str(command.get("user_name") or "")
        )
        text = str(command.get("text") or "").strip()
        self._later(str(command.get("trigger_id") or ""), lambda: desk.say(origin, text))

    def _on_button(self, ack: Ack, body: dict[str, Any], action: dict[str, Any]) -> None:
        desk = self._acked(ack)
        if desk is None:
            return
        verb = str(action["action_id"]).removeprefix("molt_")
        origin, value = _clicker(body), str(action.get("value") or "")
        self._later(str(body.get("trigger_id") or ""), lambda: desk.press(origin, verb, value))

    def _open_revision(self, body: dict[str, Any], action: dict[str, Any]) -> None:
        """Request changes: a modal asking what to change (the trigger lives 3 s)."""
        request_id = str(action.get("value") or "")
        channel = _clicker(body).channel
        self.client.views_open(
            trigger_id=body["trigger_id"], view=revision_view(request_id, channel)
        )

    def _on_revision(self, ack: Ack, body: dict[str, Any], view: dict[str, Any]) -> None:
        desk = self._acked(ack)
        if desk is None:
            return
        meta = json.loads(view.get("private_metadata") or "{}")
        values = (view.get("state") or {}).get("values") or {}
        note = str(((values.get("note") or {}).get("note") or {}).get("value") or "")
        origin = _person(body["user"], str(meta.get("channel") or ""))
        request_id = str(meta.get("request_id") or "")
        self._later("", lambda: desk.revise(origin, request_id, note))

    def _on_home(self, ack: Ack, event: dict[str, Any], body: dict[str, Any]) -> None:
        desk = self._acked(ack)
        if desk is None or event.get("tab", "home") != "home":
            return
        origin = Origin("slack", str(event["user"]))
        self._later(str(body.get("event_id") or ""), lambda: desk.home(origin))

    def _on_message(self, ack: Ack, event: dict[str, Any], body: dict[str, Any]) -> None:
        """A person's reply in a request's thread answers the planner's questions."""
        desk = self._acked(ack)
        thread = str(event.get("thread_ts") or "")
        if desk is None or not thread or event.get("bot_id") or event.get("subtype"):
            return
        channel = str(event.get("channel") or "")
        origin = Origin("slack", str(event.get("user") or ""), channel)
        text = str(event.get("text") or "")

        def answer() -> None:
            request_id = self.store.conn.get(keyspace.slack_thread(channel, thread))
            if request_id:
                desk.answer(origin, str(request_id), text)

        self._later(str(body.get("event_id") or ""), answer)


def _ack(ack: Ack) -> None:
    ack()


def _clicker(body: dict[str, Any]) -> Origin:
    """Who clicked, and in which channel (a message's, or the container's)."""
    channel = body.get("channel") or {}
    container = body.get("container") or {}
    return _person(body["user"], str(channel.get("id") or container.get("channel_id") or ""))


def _person(user: dict[str, Any], channel: str) -> Origin:
    """The origin of a Slack user object (clicks and modal submissions carry one)."""
    return Origin("slack", user["id"], channel, str(user.get("username") or user.get("name") or ""))
