"""The notifier: reads the event stream and shows each event on its platform.

It reads in the consumer group ``notifier`` under one consumer name, so after a
restart it first re-reads what it had taken but not yet shown. An event is
acknowledged only after its adapter delivered it; a failed delivery holds it and
those after it for a retry after a pause (pipeline/streams.py, ``OnFault.RETRY``),
up to MAX_ATTEMPTS. Progress events superseded by a later event of the same
request already in the stream are not shown, which keeps a busy update within
the platforms' rate limits.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, cast

import redis
import structlog

from bot.base import Adapter
from bot.desk import background_thread
from bot.rendering import refusal_line, render
from pipeline import events, keyspace, metrics
from pipeline.config import Settings
from pipeline.exceptions import UnknownRequest
from pipeline.incidents.book import is_incident_event
from pipeline.requests import steps
from pipeline.requests.steps import ROLLOUT
from pipeline.requests.store import Origin, Request, RequestStore
from pipeline.streams import OnFault, StreamReader
from pipeline.update import rollouts

log = structlog.get_logger(__name__)
CONSUMER = "bot"
#: Deliveries of one event that may fail (with backoff, minutes in all) before it is dropped.
MAX_ATTEMPTS = 12
#: Messages that may be skipped when a newer one for the same request is waiting.
TRANSIENT = frozenset({"processing", "planning", "working", "starting", None})
#: How many of the events after a progress message are looked at for a newer one.
LOOK_AHEAD = 100


class Notifier:
    def __init__(
        self, settings: Settings, conn: redis.Redis, adapters: Mapping[str, Adapter]
    ) -> None:
        self.settings = settings
        self.conn = conn
        self.adapters = adapters
        self.store = RequestStore(conn)
        self.delivered = 0
        self._attempts: dict[str, int] = {}
        self.reader = StreamReader(
            conn,
            keyspace.EVENTS,
            events.GROUP,
            CONSUMER,
            self._show,
            on_fault=OnFault.RETRY,
            name="molt-notifier",
            on_thread=background_thread,
        )

    def start(self) -> None:
        self.reader.start()

    def stop(self, timeout: float = 5.0) -> None:
        self.reader.stop(timeout)

    def _show(self, event_id: str, fields: dict[str, str]) -> None:
        """Deliver one event, unless superseded; a failed delivery raises, leaving the event
        (and those after it) for a retry, until the last attempt drops it."""
        try:
            event = events.Event.from_fields(event_id, fields)
            if not self._superseded(event):
                self._deliver(event)
        except Exception:
            attempts = self._attempts.get(event_id, 0) + 1
            if attempts < MAX_ATTEMPTS:
                self._attempts[event_id] = attempts
                raise
            log.error("delivery failed; giving up", event=event_id, template=fields.get("template"))
            metrics.dropped()
        self._attempts.pop(event_id, None)

    def _superseded(self, event: events.Event) -> bool:
        """A passing progress message with a newer message of its request already waiting."""
        if event.audience or event.template not in TRANSIENT:
            return False
        waiting = self.conn.xrange(keyspace.EVENTS, min=event.id, count=LOOK_AHEAD + 1)
        return any(
            i != event.id and f.get("request_id") == event.request_id and not f.get("audience")
            for i, f in cast(list[tuple[str, dict[str, str]]], waiting)
        )

    def _deliver(self, event: events.Event) -> None:
        if not event.template:
            return
        if is_incident_event(event):
            self._announce(event)
            return
        try:
            request = self.store.get(event.request_id)
        except UnknownRequest:
            log.warning("event for an unknown request", request_id=event.request_id)
            return
        rollout = "" if event.audience else steps.rollout_of(self.conn, request.id)
        if rollout or (request.command == ROLLOUT and not event.audience):
            self._show_rollout(rollout or request.id, event)
            return
        if not event.audience and any(
            [adapter.act_on(request, event.template) for adapter in self.adapters.values()]
        ):
            request = self.store.get(event.request_id)
        message = render(event.template, self.context(request, event))
        if event.audience:
            platform, _, user = event.audience.partition(":")
            adapter = self.adapters.get(platform)
            if adapter:
                adapter.reply(Origin(platform, user, request.origin.channel), message)
                metrics.delivered(platform, event.at)
            return
        adapter = self.adapters.get(request.origin.platform)
        if adapter is None:
            log.warning("no adapter for platform", platform=request.origin.platform)
            return
        started = time.perf_counter()
        adapter.deliver(request, message)
        metrics.delivered(request.origin.platform, event.at)
        self.delivered += 1
        log.debug(
            "delivered",
            template=event.template,
            ms=round((time.perf_counter() - started) * 1000, 1),
        )

    def _show_rollout(self, request_id: str, event: events.Event) -> None:
        """A rollout has one message, showing every step: each event of the rollout or of one
        of its steps shows it again as it stands now, refreshed in place."""
        request = self.store.get(request_id)
        adapter = self.adapters.get(request.origin.platform)
        if adapter is None:
            log.warning("no adapter for platform", platform=request.origin.platform)
            return
        context = request.context() | rollouts.view(self.conn, request)
        adapter.deliver(request, render("rollout", context | {"state": request.state.value}))
        metrics.delivered(request.origin.platform, event.at)
        self.delivered += 1

    def _announce(self, event: events.Event) -> None:
        """An incident's news, posted where MOLT_INCIDENT_CHANNEL says."""
        assert event.template is not None
        platform, _, channel = self.settings.incident_channel.partition(":")
        adapter = self.adapters.get(platform)
        if adapter is None:
            log.warning("no adapter for the incident channel", platform=platform)
            return
        context = {"request_id": "", **event.data, "state": event.state}
        adapter.announce(channel, render(event.template, context), thread=event.request_id)

    def context(self, request: Request, event: events.Event) -> dict[str, Any]:
        context = request.context() | event.data | {"state": event.state}
        context.setdefault("log_dir", request.update_dir)
        if event.template == "refused":
            context["refusal_line"] = refusal_line(self.settings.refusal_theme, request.id)
        return context
