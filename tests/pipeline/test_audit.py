"""The audit trail: hash-chained, and tampering is found and named."""

from __future__ import annotations

import json

import redis

from pipeline import audit, keyspace


def _fill(conn: redis.Redis, count: int) -> None:
    for n in range(count):
        audit.append(conn, actor="console:alice", action="pause", request_id=f"r{n % 2}")


def test_an_untouched_chain_verifies(conn: redis.Redis) -> None:
    _fill(conn, 5)
    check = audit.verify(conn)
    assert check.ok and check.checked == 5
    assert [e["seq"] for e in audit.entries(conn, "r1")] == [1, 3]


def test_an_altered_entry_is_named(conn: redis.Redis) -> None:
    _fill(conn, 5)
    entry = json.loads(conn.lindex(keyspace.AUDIT, 2))
    entry["actor"] = "console:mallory"
    conn.lset(keyspace.AUDIT, 2, json.dumps(entry))
    check = audit.verify(conn)
    assert not check.ok and check.broken_at == 2
    assert "altered" in check.reason


def test_a_removed_entry_breaks_the_chain(conn: redis.Redis) -> None:
    _fill(conn, 5)
    conn.lrem(keyspace.AUDIT, 1, conn.lindex(keyspace.AUDIT, 1))
    assert audit.verify(conn).broken_at == 1
    conn.delete(keyspace.AUDIT)
    _fill(conn, 3)
    conn.rpop(keyspace.AUDIT)
    assert not audit.verify(conn).ok
