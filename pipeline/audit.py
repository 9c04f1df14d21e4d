"""The audit trail: append-only, each entry hash-chained to the one before.

Keys:
  molt:audit              list of JSON entries, oldest first (index = seq)
  molt:audit:head         "<seq> <hash>" of the newest entry
  molt:audit:request:<id> list of the seqs that concern one request

An entry is ``{seq, at, actor, action, request_id, detail, prev, hash}`` where
``hash = sha256(prev + canonical JSON of the other fields)``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import redis

from pipeline import keyspace, metrics

#: Every audited write WATCHes the chain head. Writers in one process take turns, so they do
#: not keep aborting each other's transactions; across processes a conflict is retried after
#: a short random pause.
_WRITING = threading.Lock()

GENESIS = "0" * 64


@contextmanager
def writing() -> Iterator[None]:
    with _WRITING:
        yield


def pause_after_conflict(attempt: int) -> None:
    time.sleep(random.uniform(0, min(0.05, 0.001 * 2**attempt)))


def _digest(entry: dict[str, Any]) -> str:
    body = {k: v for k, v in entry.items() if k != "hash"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256((entry["prev"] + canonical).encode()).hexdigest()


def read_head(conn: redis.Redis) -> tuple[int, str]:
    head = conn.get(keyspace.AUDIT_HEAD)
    if not head:
        return -1, GENESIS
    seq, digest = str(head).split(" ", 1)
    return int(seq), digest


def stage(
    pipe: Any,
    head: tuple[int, str],
    *,
    actor: str,
    action: str,
    request_id: str = "",
    detail: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Queue the writes of one entry on a MULTI pipeline whose head was WATCHed."""
    seq, prev = head
    entry: dict[str, Any] = {
        "seq": seq + 1,
        "at": round(time.time(), 3),
        "actor": actor,
        "action": action,
        "request_id": request_id,
        "detail": detail or {},
        "prev": prev,
    }
    entry["hash"] = _digest(entry)
    pipe.rpush(keyspace.AUDIT, json.dumps(entry, sort_keys=True))
    pipe.set(keyspace.AUDIT_HEAD, f"{entry['seq']} {entry['hash']}")
    if request_id:
        pipe.rpush(keyspace.audit_request(request_id), entry["seq"])
    return entry


def append(
    conn: redis.Redis,
    *,
    actor: str,
    action: str,
    request_id: str = "",
    detail: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Append one entry on its own (state changes audit through RequestStore)."""
    with writing():
        for attempt in itertools.count():
            with conn.pipeline() as pipe:
                try:
                    pipe.watch(keyspace.AUDIT_HEAD)
                    head = read_head(pipe)
                    pipe.multi()
                    entry = stage(
                        pipe, head, actor=actor, action=action, request_id=request_id, detail=detail
                    )
                    pipe.execute()
                    return entry
                except redis.WatchError:
                    pause_after_conflict(attempt)
    raise AssertionError("unreachable")


def entries(conn: redis.Redis, request_id: str | None = None) -> list[dict[str, Any]]:
    if request_id is None:
        return [json.loads(raw) for raw in conn.lrange(keyspace.AUDIT, 0, -1)]
    seqs = [int(s) for s in conn.lrange(keyspace.audit_request(request_id), 0, -1)]
    found = []
    for seq in seqs:
        raw = conn.lindex(keyspace.AUDIT, seq)
        if raw:
            found.append(json.loads(raw))
    return found


@dataclass(frozen=True)
class ChainCheck:
    ok: bool
    checked: int
    broken_at: int | None = None
    reason: str = ""
    head: str = ""  # the hash of the last entry checked


def verify(conn: redis.Redis, after: ChainCheck | None = None) -> ChainCheck:
    """Walk the chain; name the first entry whose hash or link does not hold. With
    ``after`` (an earlier check that held), only the entries added since are walked. The
    answer is kept as ``molt_audit_verified_entries`` and ``molt_audit_chain_ok``."""
    start, prev = (after.checked, after.head) if after and after.ok and after.head else (0, GENESIS)
    check = _walk(conn, start, prev)
    metrics.audit_verified(check.ok, check.checked)
    return check


def _walk(conn: redis.Redis, start: int, prev: str) -> ChainCheck:
    raws = conn.lrange(keyspace.AUDIT, start, -1)
    end = start + len(raws)
    for index, raw in enumerate(raws, start=start):
        try:
            entry = json.loads(raw)
        except ValueError:
            return ChainCheck(False, index, index, "entry is not JSON")
        if entry.get("seq") != index:
            return ChainCheck(False, index, index, f"sequence {entry.get('seq')} out of place")
        if entry.get("prev") != prev:
            return ChainCheck(False, index, index, "link to the previous entry is broken")
        if entry.get("hash") != _digest(entry):
            return ChainCheck(False, index, index, "entry was altered")
        prev = entry["hash"]
    seq, digest = read_head(conn)
    if end and (seq != end - 1 or digest != prev):
        return ChainCheck(False, end, end, "entries were removed from the end")
    return ChainCheck(True, end, head=prev)
