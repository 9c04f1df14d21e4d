"""Molt's messages into Slack: a request's status is one message, posted once and then
edited in place (``message_ref`` on the request), with milestones also replied in its
thread so the channel is notified of what matters.

Keys: ``molt:slack:thread:<channel>:<ts>`` names the request whose status message that
is, so a reply in its thread answers the planner's questions; ``molt:slack:replied:…``, a plan
already replied in the thread (both kept ``THREAD_TTL``).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import structlog
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot.base import MessageRefs
from bot.messages import Message
from bot.slack.blocks import content, to_blocks
from pipeline import keyspace
from pipeline.requests.store import Origin, Request, RequestStore

log = structlog.get_logger(__name__)

#: Messages that are also posted as thread replies, so the channel gets a notification.
MILESTONES = frozenset({"plan_ready", "needs_info", "restarting", "success", "failure", "blocked"})
#: How long a thread keeps pointing at its request (for answers in the thread).
THREAD_TTL = 30 * 86400

#: Errors that mean the status message is gone or frozen: post a new one.
_REPOST = frozenset({"message_not_found", "cant_update_message", "edit_window_closed"})
#: Errors that mean the bot cannot write where the request came from: write to the person.
_NO_CHANNEL = frozenset({"channel_not_found", "not_in_channel", "is_archived"})


class Delivery:
    """Posts, edits and private answers through the Web API."""

    def __init__(self, client: WebClient, store: RequestStore) -> None:
        self.client = client
        self.store = store
        self._refs = MessageRefs()

    def deliver(self, request: Request, message: Message) -> None:
        posted = content(message, request.id, message.codename or request.codename)
        if message.private:
            self._ephemeral(request.origin, posted)
            return
        ref = self._root(request, posted)
        if message.template not in MILESTONES:
            return
        seen = self._seen_key(request, message)
        if seen and self.store.conn.exists(seen):
            return  # the same plan shown again (its pre-flight run ended): edited, not news
        # A reply in the thread too, so the channel is notified of what matters.
        self.client.chat_postMessage(channel=ref["channel"], thread_ts=ref["ts"], **posted)
        if seen:
            self.store.conn.set(seen, "1", ex=THREAD_TTL)

    @staticmethod
    def _seen_key(request: Request, message: Message) -> str:
        """Each plan is news once in its thread: a revised plan, or a Retry's, is another."""
        if message.template != "plan_ready":
            return ""
        plan = json.dumps(request.plan or {}, sort_keys=True, default=str).encode()
        digest = hashlib.sha256(plan).hexdigest()[:16]
        return keyspace.slack_replied(request.id, f"plan:{request.attempt}:{digest}")

    def show_home(self, origin: Origin, message: Message) -> None:
        """The App Home tab: the current update, the queue, the last ten updates."""
        self.client.views_publish(
            user_id=origin.user, view={"type": "home", "blocks": to_blocks(message)}
        )

    def reply(self, origin: Origin, message: Message) -> None:
        self._ephemeral(origin, content(message, message.request_id, message.codename))

    def _root(self, request: Request, posted: dict[str, Any]) -> dict[str, str]:
        """Post the request's status message, or update it in place; returns where it is."""
        ref = request.message_ref or self._refs.get(request.id)
        if ref and ref.get("channel") and ref.get("ts"):
            try:
                self.client.chat_update(channel=ref["channel"], ts=ref["ts"], **posted)
                return {"channel": ref["channel"], "ts": ref["ts"]}
            except SlackApiError as exc:
                if error_code(exc) not in _REPOST:
                    raise
                log.info("status message gone; posting a new one", request_id=request.id)
        try:
            answer = self.client.chat_postMessage(channel=request.origin.channel, **posted)
        except SlackApiError as exc:
            if error_code(exc) not in _NO_CHANNEL:
                raise
            # The bot is not in that channel: the app's DM with the requester always works.
            answer = self.client.chat_postMessage(channel=request.origin.user, **posted)
        new_ref = {"channel": str(answer["channel"]), "ts": str(answer["ts"])}
        self._refs.remember(request.id, new_ref)
        self.store.update(request.id, message_ref=new_ref)
        self.store.conn.set(
            keyspace.slack_thread(new_ref["channel"], new_ref["ts"]), request.id, ex=THREAD_TTL
        )
        return new_ref

    def announce(self, channel: str, message: Message) -> None:
        """A message for the whole channel, outside any request's thread."""
        self.client.chat_postMessage(
            channel=channel, **content(message, message.request_id, message.codename)
        )

    def _ephemeral(self, origin: Origin, posted: dict[str, Any]) -> None:
        try:
            self.client.chat_postEphemeral(channel=origin.channel, user=origin.user, **posted)
        except SlackApiError as exc:
            if error_code(exc) not in _NO_CHANNEL:
                raise
            self.client.chat_postMessage(channel=origin.user, **posted)


def error_code(exc: SlackApiError) -> str:
    """The ``error`` Slack answered with, or "" when the response has none."""
    try:
        return str(exc.response.get("error", ""))
    except Exception:
        return ""
