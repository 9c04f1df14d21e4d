"""The failure a fix must reproduce: what Fix it carries from the incident to its request.

A press of **Fix it** (pipeline/incidents/diagnosis.py) makes a change request that carries
``carried(incident)``: the incident, its signature, the exception type and the
innermost frame of the service's own code when the source names them (the log watcher's
summary of a traceback, pipeline/incidents/logwatch.py; a Sentry issue's title and
culprit), and the log excerpt. The planner must list a test that reproduces it; the job
runs that test on the base and on the fix before phase 1 (pipeline/update/reproduction.py);
the watch window also watches the signature (``came_back``); and the hold check, run
MOLT_FIX_HOLD after the window, marks the incident held or not (``settle``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import redis

from pipeline.config import Settings
from pipeline.incidents.book import Incident, IncidentBook

#: A Sentry issue title that names its exception: ``ZeroDivisionError: division by zero``.
_EXCEPTION = re.compile(r"^(?P<type>[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Warning))(:|$)")
#: The innermost own frame the log watcher puts after a traceback's last line.
_WHERE = re.compile(r"\((?P<frame>[^()\s]+:[\w.<>]+)\)$")
#: A Sentry culprit: ``handlers in handle`` (module in function).
_CULPRIT = re.compile(r"^(?P<module>[\w.]+) in (?P<func>[\w.<>]+)$")
MAX_EXCERPT = 2000


def carried(incident: Incident) -> dict[str, Any]:
    """What a Fix it request carries of ``incident``; ``kind`` and ``frame`` are "" when the
    source does not say them (an alert, an error line without a traceback)."""
    kind = frame = ""
    signature = incident.summary
    named = _EXCEPTION.match(incident.summary.strip())
    if incident.source == "log" and named:
        # The log watcher's summary of a traceback: its last line, then (innermost frame).
        kind = named["type"]
        where = _WHERE.search(incident.summary)
        frame = where["frame"] if where else ""
    elif incident.source == "sentry" and named:
        kind = named["type"]
        culprit = _CULPRIT.match(incident.details.strip())
        if culprit:
            frame = f"{culprit['module'].replace('.', '/')}.py:{culprit['func']}"
    if kind:
        signature = f"{kind} at {frame}" if frame else kind
    return {
        "id": incident.id,
        "fingerprint": incident.fingerprint,
        "source": incident.source,
        "signature": signature,
        "kind": kind,
        "frame": frame,
        "excerpt": incident.details[-MAX_EXCERPT:],
    }


def came_back(
    settings: Settings, conn: redis.Redis, failure: dict[str, Any] | None, since: float
) -> Callable[[], list[str]]:
    """For a watch window: the fixed incident's signature seen again since ``since`` (never,
    for an update that fixes no incident)."""
    book = IncidentBook(settings, conn)

    def seen() -> list[str]:
        if not failure:
            return []
        incident = book.current(str(failure.get("fingerprint", ""))) or book.get(
            str(failure.get("id", ""))
        )
        if incident is None or incident.last_seen < since:
            return []
        return [f"incident {incident.id}'s signature came back: {failure.get('signature', '')}"]

    return seen


def settle(
    settings: Settings, conn: redis.Redis, failure: dict[str, Any], request_id: str, since: float
) -> str:
    """The hold check of a fix live since ``since``: the incident is held when its signature
    stayed quiet through the watch window and MOLT_FIX_HOLD after it; returns the outcome."""
    book = IncidentBook(settings, conn)
    incident = book.get(str(failure.get("id", "")))
    if incident is None:
        return "unknown"
    # Resolved, then back after its cooldown, the signature is a new incident of its own.
    now = book.current(incident.fingerprint)
    seen = now.last_seen if now is not None and now.id != incident.id else 0.0
    return book.hold(incident, request_id, since, seen=seen)
