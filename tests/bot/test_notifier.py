"""The notifier (bot/notifier.py) with the real console on real Redis: what a person sees
of the events a request left in the stream."""

from __future__ import annotations

import redis

from bot.console import Console
from bot.notifier import Notifier
from pipeline import events
from pipeline.config import Settings
from pipeline.requests.store import Origin, RequestStore
from tests.desk import Transcript


def test_progress_overtaken_by_a_newer_message_is_not_shown(
    settings: Settings, conn: redis.Redis
) -> None:
    """A notifier that was away finds progress already outdated: only the newest shows."""
    store = RequestStore(conn)
    request = store.create(Origin("console", "alice"), "deploy main", "deploy", "main")
    for phase in ("snapshot", "apply"):
        events.emit(conn, events.Event(request.id, "running", "working", data={"phase": phase}))
    events.emit(conn, events.Event(request.id, "cancelled", "cancelled"))
    other = store.create(Origin("console", "alice"), "deploy v2", "deploy", "v2")
    events.emit(conn, events.Event(other.id, "running", "working", data={"phase": "apply"}))

    transcript = Transcript()
    notifier = Notifier(settings, conn, {"console": Console("alice", store, out=transcript)})
    notifier.start()
    try:
        transcript.wait_for(rf"\[{other.id}\] ⚙️ .*applying to the live checkout")
        transcript.wait_for(rf"\[{request.id}\] ⏹️ Cancelled")
    finally:
        notifier.stop()
    shown = transcript.text()
    assert "taking a snapshot" not in shown
    assert f"[{request.id}] ⚙️" not in shown
