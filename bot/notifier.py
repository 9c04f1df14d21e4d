"""The notifier: reads the event stream and shows each event on its platform.

It reads in the consumer group ``notifier`` under one consumer name, so after a
restart it first re-reads what it had taken but not yet shown. An event is
acknowledged only after its adapter delivered it. Progress events superseded
by a later event of the same request in the same batch are not shown (they
are acknowledged with the one that replaces them), which keeps a busy update
within the platforms' rate limits.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

import redis
import structlog

from bot.base import Adapter
from bot.desk import background_thread
from bot.rendering import refusal_line, render
from pipeline import events, metrics
from pipeline.config import Settings
from pipeline.exceptions import UnknownRequest
from pipeline.incidents.book import is_incident_event
from pipeline.requests import steps
from pipeline.requests.steps import ROLLOUT
from pipeline.requests.store import Origin, Request, RequestStore
from pipeline.update import rollouts

log = structlog.get_logger(__name__)
CONSUMER = "bot"
#: Deliveries of one event that may fail (with backoff, minutes in all) before it is dropped.
MAX_ATTEMPTS = 12
#: Messages that may be skipped when a newer one for the same request is waiting.
TRANSIENT = frozenset({"processing", "planning", "working", "starting", None})


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
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="molt-notifier", daemon=True)

    def start(self) -> None:
        events.ensure_group(self.conn)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout=timeout)

    def _loop(self) -> None:
        background_thread()
        backoff = 0.0
        while not self._stop.is_set():
            try:
                batch = events.read(self.conn, CONSUMER, block_ms=200)
                if batch:
                    failed = self.show(batch)
                    backoff = min(5.0, backoff * 2 or 0.2) if failed else 0.0
                    if failed:
                        self._stop.wait(backoff)
            except redis.RedisError as exc:
                log.warning("event stream unreachable", error=str(exc))
                self._stop.wait(1.0)
            except Exception:
                log.exception("notifier loop")
                self._stop.wait(1.0)

    def show(self, batch: list[events.Event]) -> bool:
        """Deliver a batch in order; returns true if any delivery failed (left pending)."""
        latest: dict[str, int] = {}
        for index, event in enumerate(batch):
            if not event.audience:
                latest[event.request_id] = index
        failed = False
        done: list[str] = []
        for index, event in enumerate(batch):
            if self._stop.is_set():
                break
            superseded = (
                not event.audience
                and event.template in TRANSIENT
                and latest.get(event.request_id, index) > index
            )
            if superseded or (failed and not event.audience):
                if superseded:
                    done.append(event.id)
                continue
            try:
                self._deliver(event)
            except Exception as exc:
                attempts = self._attempts.get(event.id, 0) + 1
                self._attempts[event.id] = attempts
                if attempts < MAX_ATTEMPTS:
                    failed = True
                    log.warning("delivery failed; will retry", event=event.id, error=str(exc))
                    continue
                log.error("delivery failed; giving up", event=event.id, template=event.template)
                metrics.dropped()
            self._attempts.pop(event.id, None)
            done.append(event.id)
        events.ack(self.conn, *done)
        return failed

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
