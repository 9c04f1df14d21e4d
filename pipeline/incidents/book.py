"""Incidents: production errors as records of their own, grouped, counted and audited.

A ``Signal`` (pipeline/incidents/alerts.py: an alert, a log signature, a failed idle health probe)
is taken by ``take`` in the bot process, never in the HTTP process. Occurrences of one
fingerprint feed one incident while it is open, and for MOLT_INCIDENT_COOLDOWN after it
was last seen; a counted signal (log signatures, the generic webhook) opens one only
once seen MOLT_INCIDENT_THRESHOLD times in its window. A resolved notice closes the
incident and never starts anything. Opening is the only moment an incident may act
(pipeline/suspects.py), at most once per target per cooldown.

Keys: ``molt:incident:<id>`` is the hash of one incident (JSON for ``actions``); the
target's keys (pipeline/keyspace.py) index them, map each fingerprint to its current
incident, keep the sliding windows and the target's last automatic action. Every change
is an audit entry, and an event on the one stream (``molt:events``) whose
``request_id`` is the incident's id and whose state starts with ``incident``.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from pipeline import audit, events, keyspace, metrics
from pipeline.config import Settings
from pipeline.incidents.alerts import RESOLVED, Signal
from pipeline.keyspace import TargetKeys

MOLT = "molt"
OPEN = "open"
#: Outcomes: open; resolved (closed, nothing known yet about whether it stays so); held
#: (resolved within MOLT_RESOLVE_WINDOW after Molt acted); did not hold (fired again).
RESOLVED_OUTCOME = "resolved"
DID_NOT_HOLD = "did not hold"
#: A fix whose incident's signature stayed quiet for its watch window and MOLT_FIX_HOLD.
HELD = "held"
#: What counts as Molt acting on an incident (whether it held is recorded).
ACTS = ("rollback", "fix")
#: How long a delivery key is remembered, so a redelivery is seen as one.
DELIVERY_TTL = 86400
#: Writers in one process (the alert reader, the log watcher) open incidents one at a time.
_TAKING = threading.Lock()


@dataclass
class Incident:
    id: str
    fingerprint: str
    source: str
    target: str  # the target's id
    summary: str
    details: str = ""
    severity: str = ""
    first_seen: float = 0.0
    last_seen: float = 0.0
    count: int = 1
    status: str = OPEN  # open | resolved
    outcome: str = OPEN
    resolved_at: float = 0.0
    opened_at: float = 0.0  # when it opened, or last fired again after it was resolved
    suspect: str = ""  # the codename (or request id) of the update suspected
    actions: list[dict[str, Any]] = field(default_factory=list)

    def to_hash(self) -> dict[Any, Any]:
        raw = asdict(self)
        return {k: json.dumps(v) if k == "actions" else str(v) for k, v in raw.items()}

    @classmethod
    def from_hash(cls, raw: Mapping[Any, Any]) -> Incident:
        typed: dict[str, Any] = dict(raw)
        for name in ("first_seen", "last_seen", "resolved_at", "opened_at"):
            typed[name] = float(raw.get(name) or 0)
        typed["count"] = int(raw.get("count") or 0)
        typed["actions"] = json.loads(raw.get("actions") or "[]")
        return cls(**{k: v for k, v in typed.items() if k in cls.__dataclass_fields__})

    def context(self) -> dict[str, Any]:
        """What templates see of an incident."""
        return asdict(self) | {"incident_id": self.id}


@dataclass(frozen=True)
class Taken:
    """What taking a signal did: the incident it fed or opened (None: below the threshold,
    a duplicate, or a resolved notice for nothing open)."""

    incident: Incident | None = None
    opened: bool = False
    resolved: bool = False
    again: bool = False  # a resolved incident fired again within its cooldown


class IncidentBook:
    """The incidents of one target."""

    def __init__(self, settings: Settings, conn: redis.Redis) -> None:
        self.settings = settings
        self.conn = conn
        self.keys = TargetKeys(settings.target_id)

    def get(self, incident_id: str) -> Incident | None:
        raw = self.conn.hgetall(keyspace.incident(incident_id))
        return Incident.from_hash(raw) if raw else None

    def recent(self, count: int = 20) -> list[Incident]:
        ids = self.conn.zrevrange(self.keys.incidents, 0, count - 1)
        return [i for i in (self.get(str(x)) for x in ids) if i]

    def opened_since(self, since: float) -> list[Incident]:
        """Incidents first seen at ``since`` or later, or firing again since then."""
        return [i for i in self.recent(50) if i.status == OPEN and i.opened_at >= since]

    def current(self, fingerprint: str) -> Incident | None:
        incident_id = self.conn.hget(self.keys.current_incidents, fingerprint)
        return self.get(str(incident_id)) if incident_id else None

    def take(self, signal: Signal) -> Taken:
        """Feed, open or close the incident of ``signal``'s fingerprint."""
        with _TAKING:
            if signal.status == RESOLVED:
                return self._resolve(signal)
            if signal.source == "log":
                self._note_signature(signal)
            return self._fire(signal)

    def _note_signature(self, signal: Signal) -> None:
        first = {"at": signal.at or time.time(), "summary": signal.summary[:200]}
        self.conn.hsetnx(self.keys.signatures, signal.fingerprint, json.dumps(first))

    def new_signatures(self, since: float) -> list[str]:
        """Error signatures of the target's log first seen at ``since`` or later, however
        often: for Molt itself a new process must add none in its watch window."""
        found = (json.loads(raw) for raw in self.conn.hvals(self.keys.signatures))
        return [str(f["summary"]) for f in found if float(f["at"]) >= since]

    def _fire(self, signal: Signal) -> Taken:
        now = signal.at or time.time()
        current = self.current(signal.fingerprint)
        if current is not None and self._still_current(current, now):
            return self._feed(current, now)
        if signal.counted and not self._over_threshold(signal.fingerprint, now):
            return Taken()
        return Taken(self._open(signal, now), opened=True)

    def _still_current(self, incident: Incident, now: float) -> bool:
        if incident.status == OPEN:
            return True
        return now - incident.resolved_at < self.settings.incident_cooldown

    def _over_threshold(self, fingerprint: str, now: float) -> bool:
        """Count one occurrence in the fingerprint's sliding window; true once it reaches
        MOLT_INCIDENT_THRESHOLD."""
        wanted, window = self.settings.incident_threshold_limit
        key = self.keys.occurrences(fingerprint)
        with self.conn.pipeline() as pipe:
            pipe.zadd(key, {f"{now:.6f}:{secrets.token_hex(2)}": now})
            pipe.zremrangebyscore(key, "-inf", now - window)
            pipe.zcard(key)
            pipe.expire(key, int(window) + 1)
            seen = int(pipe.execute()[2])
        if seen >= wanted:
            self.conn.delete(key)
            return True
        return False

    def _open(self, signal: Signal, now: float) -> Incident:
        count = self.settings.incident_threshold_limit[0] if signal.counted else 1
        incident = Incident(
            id=f"i{secrets.token_hex(4)}",
            fingerprint=signal.fingerprint,
            source=signal.source,
            target=self.settings.target_id,
            summary=signal.summary,
            details=signal.details,
            severity=signal.severity,
            first_seen=now,
            last_seen=now,
            opened_at=now,
            count=count,
        )
        self._save(incident)
        self.conn.zadd(self.keys.incidents, {incident.id: now})
        self.conn.hset(self.keys.current_incidents, signal.fingerprint, incident.id)
        self.record(
            incident, "incident_opened", f"incident {incident.id} opened: {incident.summary}"
        )
        metrics.incident_opened(self.settings.target_name, incident.source)
        return incident

    def _feed(self, incident: Incident, now: float) -> Taken:
        again = incident.status != OPEN
        incident.count += 1
        incident.last_seen = now
        if again:
            incident.status = OPEN
            incident.opened_at = now
            incident.outcome = DID_NOT_HOLD if incident.actions else OPEN
            incident.actions.append({"at": now, "action": "again", "by": MOLT})
            self._save(incident)
            self.record(incident, "incident_again", f"incident {incident.id} fired again")
        else:
            self.conn.hset(
                keyspace.incident(incident.id), mapping={"count": incident.count, "last_seen": now}
            )
        return Taken(incident, again=again)

    def _resolve(self, signal: Signal) -> Taken:
        incident = self.current(signal.fingerprint)
        if incident is None or incident.status != OPEN:
            audit.append(
                self.conn,
                actor=MOLT,
                action="resolved_notice_ignored",
                detail={"fingerprint": signal.fingerprint, "source": signal.source},
            )
            return Taken()
        now = signal.at or time.time()
        incident.status = RESOLVED
        if incident.outcome != DID_NOT_HOLD:  # once it fired again, what Molt did failed
            incident.outcome = RESOLVED_OUTCOME
        incident.resolved_at = now
        self._save(incident)
        self.record(incident, "incident_resolved", f"incident {incident.id} resolved")
        return Taken(incident, resolved=True)

    def act(self, incident: Incident, action: str, detail: dict[str, Any]) -> None:
        """Note what was done about ``incident`` (a rollback planned, nothing), audited."""
        incident.actions.append({"at": time.time(), "action": action, "by": MOLT, **detail})
        self._save(incident)
        metrics.incident_action(self.settings.target_name, action)
        audit.append(
            self.conn,
            actor=MOLT,
            action=f"incident_{action}",
            request_id=incident.id,
            detail=detail,
        )

    def claim_action(self, incident: Incident) -> str | None:
        """Take the target's one automatic action per MOLT_INCIDENT_COOLDOWN for ``incident``;
        returns None when taken, else the incident that took it."""
        ttl = max(1, int(self.settings.incident_cooldown))
        if self.conn.set(self.keys.acted, incident.id, nx=True, ex=ttl):
            return None
        return str(self.conn.get(self.keys.acted) or "another incident")

    def take_over(self, incident: Incident, acting: str) -> bool:
        """``incident`` takes the cooldown's place from incident ``acting``, for the time the
        cooldown has left (it offered a person a rollback within it); False if another
        incident took it first or the cooldown ended."""
        with self.conn.pipeline() as pipe:
            try:
                pipe.watch(self.keys.acted)
                left = int(pipe.pttl(self.keys.acted))
                if pipe.get(self.keys.acted) != acting or left <= 0:
                    return False
                pipe.multi()
                pipe.set(self.keys.acted, incident.id, px=left)
                pipe.execute()
            except redis.WatchError:
                return False
        return True

    def acted_at(self, incident_id: str) -> float | None:
        """When incident ``incident_id`` last acted (its rollback planned), or None."""
        incident = self.get(incident_id)
        done = [a["at"] for a in incident.actions if a.get("action") in ACTS] if incident else []
        return float(max(done)) if done else None

    def acted(self) -> str | None:
        """The incident that took the target's automatic action in this cooldown, or None."""
        taken = self.conn.get(self.keys.acted)
        return str(taken) if taken is not None else None

    def failed_attempts(self, fingerprint: str) -> list[str]:
        """What Molt did about this fingerprint that did not hold, oldest first."""
        attempts = []
        for incident in reversed(self.recent(200)):
            if incident.fingerprint != fingerprint or incident.outcome != DID_NOT_HOLD:
                continue
            done = [a for a in incident.actions if a.get("action") in ACTS]
            attempts += [f"{a['action']} {a.get('request_id', '')} ({incident.id})" for a in done]
        return attempts

    def hold(self, incident: Incident, request_id: str, since: float, seen: float = 0.0) -> str:
        """A fix's hold check: ``incident`` held (resolved, outcome held) when its signature
        was not seen since ``since``, when the fix went live (``seen``: when a later
        incident of its fingerprint last saw it); else it did not hold."""
        last = max(incident.last_seen, seen)
        quiet = last < since and incident.outcome != DID_NOT_HOLD
        hold = self.settings.fix_hold
        if quiet:
            incident.status, incident.outcome = RESOLVED, HELD
            incident.resolved_at = incident.resolved_at or time.time()
            message = (
                f"incident {incident.id} held: its signature stayed quiet through the watch "
                f"window of fix {request_id} and {hold:g} s after it (MOLT_FIX_HOLD)"
            )
        else:
            incident.outcome = DID_NOT_HOLD
            message = (
                f"incident {incident.id} did not hold: its signature came back after fix "
                f"{request_id} went live"
            )
        self.act(incident, "held" if quiet else "not_held", {"request_id": request_id})
        self.record(incident, "incident_held" if quiet else "incident_not_held", message)
        return incident.outcome

    def trip_breaker(self, why: str) -> None:
        """Turn automatic actions off for the target until an operator says ``resume``."""
        self.conn.set(self.keys.breaker, why)
        audit.append(self.conn, actor=MOLT, action="circuit_breaker", detail={"why": why})

    def breaker(self) -> str | None:
        """Why automatic actions are off for the target, or None."""
        why = self.conn.get(self.keys.breaker)
        return str(why) if why is not None else None

    def _save(self, incident: Incident) -> None:
        self.conn.hset(keyspace.incident(incident.id), mapping=incident.to_hash())

    def record(
        self, incident: Incident, action: str, message: str, data: dict[str, Any] | None = None
    ) -> None:
        """An audit entry and an event for the incident channel, in one transaction."""
        with audit.writing(), self.conn.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(keyspace.AUDIT_HEAD)
                    head = audit.read_head(pipe)
                    pipe.multi()
                    detail = {"fingerprint": incident.fingerprint, "message": message}
                    audit.stage(
                        pipe, head, actor=MOLT, action=action, request_id=incident.id, detail=detail
                    )
                    events.stage(
                        pipe,
                        events.Event(
                            request_id=incident.id,
                            state=action,
                            template="incident",
                            data=incident.context() | {"message": message, **(data or {})},
                            at=time.time(),
                        ),
                    )
                    pipe.execute()
                    return
                except redis.WatchError:
                    continue


#: How long a resolved incident must stay quiet after Molt acted on it to have held.
HELD_AFTER = 86400


def outcome(settings: Settings, incident: Incident, now: float) -> str:
    """Whether what Molt did held: resolved within MOLT_RESOLVE_WINDOW of its action and
    quiet for a day since ("held"; "holding" until then), fired again ("did not hold"),
    or neither (open, resolved, or resolved late)."""
    if incident.outcome == HELD:  # a fix's hold check said so
        return HELD
    if incident.status == OPEN or incident.outcome == DID_NOT_HOLD:
        return incident.outcome if incident.outcome == DID_NOT_HOLD else OPEN
    acted = [a["at"] for a in incident.actions if a.get("action") in ACTS]
    if not acted:
        return RESOLVED_OUTCOME
    if incident.resolved_at - acted[0] > settings.resolve_window:
        return "resolved late"
    return "held" if now - incident.resolved_at >= HELD_AFTER else "holding"


def listing(settings: Settings, conn: redis.Redis, count: int = 20) -> dict[str, Any]:
    """Open and recent incidents with their outcomes, and how often Molt's actions held on
    this target: what ``incidents`` shows."""
    now = time.time()
    shown = []
    for incident in IncidentBook(settings, conn).recent(count):
        shown.append(incident.context() | {"outcome": outcome(settings, incident, now)})
    held = sum(1 for i in shown if i["outcome"] == "held")
    failed = sum(1 for i in shown if i["outcome"] == DID_NOT_HOLD)
    rate = f"{held}/{held + failed} held" if held + failed else ""
    breaker = IncidentBook(settings, conn).breaker()
    return {"incidents": shown, "success_rate": rate, "breaker": breaker or ""}


def is_incident_event(event: events.Event) -> bool:
    """Events of incidents travel the one stream; their state says so."""
    return event.state.startswith("incident")
