"""Requests and the one place their state changes.

Keys:
  molt:request:<id>       hash of one request (JSON for the nested fields)
  molt:requests           sorted set of request ids by creation time
  molt:requests:active    set of the ids not in a terminal state
"""

from __future__ import annotations

import itertools
import json
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import redis

from pipeline import audit, events, keyspace, metrics
from pipeline.exceptions import IllegalTransition, UnknownRequest
from pipeline.requests.states import TERMINAL, RequestState, can_move, template_for

_JSON_FIELDS = ("plan", "snapshot", "result", "message_ref", "answers", "incident")
#: What the plan was last shown with (its plan_ready event's data): a plan shown again
#: keeps what it does not change, such as its approval at once on a Retry.
_PLAN_SHOWN = "plan_shown"
#: Commands planned as a deploy of a commit; any other is a change described in words.
DEPLOY_COMMANDS = frozenset({"deploy", "rollback"})
T = TypeVar("T")


@dataclass(frozen=True)
class Origin:
    """Where a request came from, and so where its messages go."""

    platform: str  # console | slack | discord | github
    user: str  # the platform's id for the requester
    channel: str = ""
    user_name: str = ""
    #: Role ids the platform reports for the user (Discord), matched as ``<platform>-role:<id>``.
    roles: tuple[str, ...] = ()

    @property
    def principal(self) -> str:
        """The ``platform:id`` form used in MOLT_AUTHORISED_USERS and the audit."""
        return f"{self.platform}:{self.user}"

    @property
    def identities(self) -> frozenset[str]:
        """Every entry of the user lists that can match this person."""
        return frozenset({self.principal, *(f"{self.platform}-role:{r}" for r in self.roles)})


@dataclass
class Request:
    id: str
    origin: Origin
    text: str
    command: str  # "deploy", "rollback" (a deploy of an update's rollback point) or "change"
    argument: str
    state: RequestState = RequestState.RECEIVED
    phase: str = ""
    message: str = ""
    attempt: int = 1
    created_at: float = 0.0
    updated_at: float = 0.0
    codename: str = ""
    update_dir: str = ""
    approver: str = ""
    plan_ready_at: float = 0.0
    plan: dict[str, Any] | None = None
    snapshot: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    message_ref: dict[str, Any] | None = None
    answers: list[str] = field(default_factory=list)
    #: The target (``Settings.target_name``) the request updates.
    target: str = ""
    #: Why an operator deploys into a freeze window (``--break-glass``); "" for any other.
    break_glass: str = ""
    #: The production failure a Fix it request must reproduce in a test first (its
    #: incident, signature, exception type, innermost frame, log excerpt), or None.
    incident: dict[str, Any] | None = None

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    @property
    def requester(self) -> str:
        return self.origin.principal

    @property
    def deploys(self) -> bool:
        """Planned as a deploy of a commit (``deploy``, ``rollback``), not a change in words."""
        return self.command in DEPLOY_COMMANDS

    def to_hash(self) -> dict[Any, Any]:
        raw = asdict(self)
        origin = raw.pop("origin")
        origin["roles"] = ",".join(origin["roles"])
        out: dict[Any, Any] = {f"origin_{k}": str(v) for k, v in origin.items()}
        for key, value in raw.items():
            if key in _JSON_FIELDS:
                out[key] = json.dumps(value, sort_keys=True)
            else:
                out[key] = str(value.value if isinstance(value, RequestState) else value)
        return out

    @classmethod
    def from_hash(cls, raw: Mapping[Any, Any]) -> Request:
        origin = Origin(
            platform=raw["origin_platform"],
            user=raw["origin_user"],
            channel=raw.get("origin_channel", ""),
            user_name=raw.get("origin_user_name", ""),
            roles=tuple(r for r in raw.get("origin_roles", "").split(",") if r),
        )
        loaded: dict[str, Any] = {k: json.loads(raw[k]) for k in _JSON_FIELDS if k in raw}
        return cls(
            id=raw["id"],
            origin=origin,
            text=raw.get("text", ""),
            command=raw.get("command", ""),
            argument=raw.get("argument", ""),
            state=RequestState(raw["state"]),
            phase=raw.get("phase", ""),
            message=raw.get("message", ""),
            attempt=int(raw.get("attempt", 1)),
            created_at=float(raw.get("created_at", 0)),
            updated_at=float(raw.get("updated_at", 0)),
            codename=raw.get("codename", ""),
            update_dir=raw.get("update_dir", ""),
            approver=raw.get("approver", ""),
            plan_ready_at=float(raw.get("plan_ready_at", 0)),
            target=raw.get("target", ""),
            break_glass=raw.get("break_glass", ""),
            **{k: v for k, v in loaded.items() if v is not None or k != "answers"},
        )

    @property
    def rollback_of(self) -> str:
        """The update a rollback undoes: Molt writes a rollback's text itself, as
        ``rollback <codename>…`` (pipeline/intake/control.py, pipeline/incidents/oncall.py)."""
        if self.command != "rollback":
            return ""
        words = self.text.split()
        return words[1] if len(words) > 1 else ""

    def context(self) -> dict[str, Any]:
        """What templates see of a request."""
        return {
            "request_id": self.id,
            "requester": self.origin.user_name or self.origin.user,
            "requester_id": self.requester,
            "platform": self.origin.platform,
            "text": self.text,
            "command": self.command,
            "argument": self.argument,
            "state": self.state.value,
            "phase": self.phase,
            "message": self.message,
            "attempt": self.attempt,
            "codename": self.codename,
            "update_dir": self.update_dir,
            "approver": self.approver,
            "target_name": self.target,  # a fleet's target; messages name it
            "rollback_of": self.rollback_of,
            "break_glass": self.break_glass,
            "plan": self.plan or {},
            "result": self.result or {},
        }


class RequestStore:
    """Reads requests and changes their state, auditing every change."""

    def __init__(self, conn: redis.Redis) -> None:
        self.conn = conn

    def create(
        self,
        origin: Origin,
        text: str,
        command: str,
        argument: str,
        target: str = "",
        break_glass: str = "",
        incident: dict[str, Any] | None = None,
    ) -> Request:
        now = time.time()
        request = Request(
            id=f"r{secrets.token_hex(4)}",
            origin=origin,
            text=text,
            command=command,
            argument=argument,
            created_at=now,
            updated_at=now,
            target=target,
            break_glass=break_glass,
            incident=incident,
        )
        detail = {"text": text, "command": command, "platform": origin.platform}
        if target:
            detail["target"] = target

        def write(pipe: Any) -> Request:
            head = audit.read_head(pipe)
            pipe.multi()
            pipe.hset(keyspace.request(request.id), mapping=request.to_hash())
            pipe.zadd(keyspace.REQUESTS, {request.id: now})
            pipe.sadd(keyspace.ACTIVE_REQUESTS, request.id)
            audit.stage(
                pipe,
                head,
                actor=origin.principal,
                action="received",
                request_id=request.id,
                detail=detail,
            )
            return request

        return self._atomically((), write)

    def _atomically(self, keys: tuple[str, ...], write: Callable[[Any], T]) -> T:
        """Run ``write`` in one WATCH/MULTI transaction on ``keys`` and the audit chain's head.

        ``write`` reads what it needs, calls ``multi()`` and queues its writes; a conflict
        with another writer runs it again.
        """
        with audit.writing():
            for attempt in itertools.count():
                with self.conn.pipeline() as pipe:
                    try:
                        pipe.watch(*keys, keyspace.AUDIT_HEAD)
                        result = write(pipe)
                        pipe.execute()
                        return result
                    except redis.WatchError:
                        audit.pause_after_conflict(attempt)
        raise AssertionError("unreachable")

    def get(self, request_id: str) -> Request:
        raw = self.conn.hgetall(keyspace.request(request_id))
        if not raw:
            raise UnknownRequest(request_id)
        return Request.from_hash(raw)

    def find(self, token: str) -> Request | None:
        """A request by id or by the codename of its update."""
        token = token.strip()
        if not token:
            return None
        if self.conn.exists(keyspace.request(token)):
            return self.get(token)
        for request in self.recent(200):
            if request.codename == token:
                return request
        return None

    def recent(self, count: int = 20) -> list[Request]:
        ids = self.conn.zrevrange(keyspace.REQUESTS, 0, count - 1)
        return [r for r in (self._maybe(str(i)) for i in ids) if r]

    def active(self) -> list[Request]:
        ids = sorted(str(i) for i in self.conn.smembers(keyspace.ACTIVE_REQUESTS))
        found = [r for r in (self._maybe(i) for i in ids) if r]
        return sorted(found, key=lambda r: r.created_at)

    def _maybe(self, request_id: str) -> Request | None:
        try:
            return self.get(request_id)
        except UnknownRequest:
            return None

    def update(self, request_id: str, **fields: Any) -> None:
        """Bookkeeping that is not a state change (where a message was posted)."""
        mapping: dict[Any, Any] = {
            k: json.dumps(v, sort_keys=True) if k in _JSON_FIELDS else str(v)
            for k, v in fields.items()
        }
        self.conn.hset(keyspace.request(request_id), mapping=mapping)

    def transition(
        self,
        request_id: str,
        to: RequestState,
        *,
        actor: str,
        message: str = "",
        phase: str | None = None,
        data: dict[str, Any] | None = None,
        fields: dict[str, Any] | None = None,
        allowed_from: frozenset[RequestState] | None = None,
    ) -> Request:
        """Move a request to ``to``: check, write, audit and emit in one transaction.

        ``allowed_from`` narrows the legal starting states, so that two clicks
        racing each other cannot both succeed.
        """
        key = keyspace.request(request_id)

        def write(pipe: Any) -> Request:
            raw = pipe.hgetall(key)
            if not raw:
                raise UnknownRequest(request_id)
            request = Request.from_hash(raw)
            current = request.state
            legal = can_move(current, to) and (allowed_from is None or current in allowed_from)
            if not legal:
                raise IllegalTransition(request_id, current.value, to.value)
            head = audit.read_head(pipe)
            now = time.time()
            request.state = to
            request.updated_at = now
            request.message = message
            if phase is not None:
                request.phase = phase
            for name, value in (fields or {}).items():
                setattr(request, name, value)
            pipe.multi()
            pipe.hset(key, mapping=request.to_hash())
            if to in TERMINAL:
                pipe.srem(keyspace.ACTIVE_REQUESTS, request_id)
            else:
                pipe.sadd(keyspace.ACTIVE_REQUESTS, request_id)
            detail = {"from": current.value, "to": to.value, "message": message}
            if request.phase:
                detail["phase"] = request.phase
            if request.codename:
                detail["codename"] = request.codename
            if request.target:
                detail["target"] = request.target
            audit.stage(
                pipe, head, actor=actor, action=to.value, request_id=request_id, detail=detail
            )
            event = events.Event(
                request_id=request_id,
                state=to.value,
                template=template_for(to, request.phase),
                data={"message": message, "phase": request.phase, **(data or {})},
                at=now,
            )
            events.stage(pipe, event)
            if event.template == "plan_ready":
                pipe.hset(key, _PLAN_SHOWN, json.dumps(event.data))
            return request

        moved = self._atomically((key,), write)
        if to in TERMINAL:
            metrics.request_finished(moved.origin.platform, moved.command, to.value)
        return moved

    def refresh(self, request_id: str, data: dict[str, Any]) -> None:
        """A progress refresh of the request's status message while a step runs: an event
        for its conversation, and neither a state change nor an audit entry (a long phase
        would otherwise grow the audit trail by a line every few seconds, saying nothing)."""
        request = self.get(request_id)
        if request.terminal:
            return
        events.emit(
            self.conn,
            events.Event(
                request_id=request_id,
                state=request.state.value,
                template=template_for(request.state, request.phase),
                data={"message": request.message, "phase": request.phase, **data},
                at=time.time(),
            ),
        )

    def notify(
        self,
        request_id: str,
        template: str,
        *,
        actor: str,
        action: str,
        audience: str = "",
        data: dict[str, Any] | None = None,
        only_in: RequestState | None = None,
        again: bool = False,
    ) -> bool:
        """An audited message that does not change the request's state. With ``only_in``,
        only while the request is in that state, checked in the same transaction as the
        writes: a plan shown again from another thread never reappears, buttons and all,
        after its request moved on. With ``again``, the plan as it was last shown, updated
        by ``data``: shown again as an approver's Retry approves it, it is still shown
        approved. Whether it was sent."""
        key = keyspace.request(request_id)

        def write(pipe: Any) -> bool:
            raw = pipe.hgetall(key)
            request = Request.from_hash(raw) if raw else None
            if only_in is not None and (request is None or request.state is not only_in):
                return False
            shown = json.loads(raw.get(_PLAN_SHOWN) or "{}") if again and raw else {}
            said = shown | (data or {})
            head = audit.read_head(pipe)
            pipe.multi()
            audit.stage(pipe, head, actor=actor, action=action, request_id=request_id, detail=data)
            event = events.Event(
                request_id=request_id,
                state=request.state.value if request else "",
                template=template,
                audience=audience,
                data=said,
                at=time.time(),
            )
            events.stage(pipe, event)
            if template == "plan_ready" and request is not None:
                pipe.hset(key, _PLAN_SHOWN, json.dumps(said))
            return True

        return self._atomically((key,), write)
