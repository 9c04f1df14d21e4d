"""Replay: each diagnosis is kept as a case; ``molt incidents replay`` (a process of its
own) makes them again through the fake Messages API and prints per case and overall whether
the cause agrees with the one that held, whether the evidence still checks out, the
confidence, tokens and time; it posts and changes nothing."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import redis

from pipeline import events, keyspace
from pipeline.config import Settings
from pipeline.incidents import cases, diagnosis, replay
from pipeline.incidents.book import DID_NOT_HOLD, IncidentBook
from tests.fakes.anthropic import FakeAnthropic, reply, tool
from tests.pipeline.test_diagnosis import ANSWER, TRACE, _opened, fake, llm
from tests.support import ROOT

__all__ = ["fake", "llm"]  # the fixtures these tests use
OTHER = ANSWER | {
    "cause": "the orders cache returns stale totals after a restart",
    "files": ["app.py"],
    "evidence": [{"file": "app.py", "line": 2, "quote": "return 'hello'"}],
    "confidence": 0.5,
}
MADE_UP = ANSWER | {"evidence": [{"file": "handlers.py", "line": 3, "quote": "return 1 / 0"}]}


def _diagnosed(settings: Settings, conn: redis.Redis, fingerprint: str, outcome: str) -> str:
    incident = _opened(settings, conn, fingerprint)
    diagnosis.post(settings, conn, IncidentBook(settings, conn), incident)
    if outcome:
        conn.hset(keyspace.incident(incident.id), "outcome", outcome)
    return incident.id


def test_replay_over_three_stored_cases_prints_its_table(
    llm: Settings,
    conn: redis.Redis,
    fake: FakeAnthropic,
    molt_env: dict[str, str],
) -> None:
    fake.add(
        reply(tool("submit_diagnosis", ANSWER)),
        reply(tool("submit_diagnosis", ANSWER)),
        reply(tool("submit_diagnosis", MADE_UP)),
    )
    held = _diagnosed(llm, conn, "webhook:a", "held")
    failed = _diagnosed(llm, conn, "webhook:b", DID_NOT_HOLD)
    dropped = _diagnosed(llm, conn, "webhook:c", "")
    kept = cases.since(conn, llm.target_id, 0)
    assert [c.incident_id for c in kept] == [held, failed, dropped]
    assert kept[2].diagnosis is None and "return 1 / 0" in kept[2].refused
    posted = conn.xlen(keyspace.EVENTS)

    fake.add(
        reply(tool("read_file", {"path": "handlers.py"})),  # the held case: the same cause
        reply(tool("submit_diagnosis", ANSWER | {"confidence": 0.9})),
        reply(tool("submit_diagnosis", OTHER)),  # the case that did not hold: no reference
        reply(tool("submit_diagnosis", MADE_UP)),  # still made up
    )
    # A process of its own: the command sends its log to stderr, which configures logging
    # for the whole process it runs in.
    said = subprocess.run(
        [sys.executable, "-m", "bot.cli", "incidents", "replay", "--since", "1d"],
        env={**os.environ, **molt_env, **fake.env(), "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert said.returncode == 0, said.stderr
    printed = said.stdout.splitlines()

    assert printed[0].split() == [
        "case", "outcome", "then", "agrees", "evidence", "confidence", "tokens", "time"
    ]  # fmt: skip
    rows = {line.split()[0]: line for line in printed[1:4]}
    assert rows[f"{held}.1"].split()[1:5] == ["held", "yes", "checks", "out"]
    assert rows[f"{failed}.1"].split()[1:7] == ["did", "not", "hold", "—", "checks", "out"]
    assert rows[f"{dropped}.1"].split()[2:4] == ["—", "dropped"]
    assert "0.90" in rows[f"{held}.1"] and "0.50" in rows[f"{failed}.1"]
    assert printed[-1].startswith(
        "3 cases: 1/1 agree with a cause that held; evidence checks out in 2/3; "
        "mean confidence 0.70;"
    )
    assert conn.xlen(keyspace.EVENTS) == posted  # nothing posted
    assert [e for e in _events(conn) if e.state == "incident_diagnosis"][-1].request_id == dropped
    assert fake.left == 0


def _events(conn: redis.Redis) -> list[events.Event]:
    return [events.Event.from_fields(i, f) for i, f in conn.xrange(keyspace.EVENTS)]


def test_causes_agree_on_a_shared_file_and_a_third_of_their_words() -> None:
    recorded = diagnosis.Diagnosis.from_dict(ANSWER)
    reworded = recorded.to_dict() | {"cause": "average divides by count: zero orders"}
    elsewhere = reworded | {"files": ["app.py"], "evidence": []}
    assert replay.agrees(recorded, diagnosis.Diagnosis.from_dict(ANSWER))
    assert replay.agrees(recorded, diagnosis.Diagnosis.from_dict(reworded))
    assert not replay.agrees(recorded, diagnosis.Diagnosis.from_dict(elsewhere))
    assert not replay.agrees(recorded, diagnosis.Diagnosis.from_dict(OTHER))
    assert replay.since_seconds("30d") == 30 * 86400 and replay.since_seconds("12h") == 43200
    with pytest.raises(ValueError, match="expected an age"):
        replay.since_seconds("last week")


def test_a_case_whose_commit_this_host_cannot_read_is_still_replayed(
    llm: Settings, conn: redis.Redis, fake: FakeAnthropic
) -> None:
    """A case diagnosed on another host, or at a commit since gone: its log evidence still
    checks out, the files it names are left out, and the replay goes on."""
    gone = "0" * 40
    materials = diagnosis.Materials("i9", llm.target_id, "webhook", "the prompt", TRACE, gone)
    cases.keep(conn, cases.Case("i9.0", "i9", llm.target_id, time.time(), materials.to_dict()))
    logged = ANSWER | {"evidence": [{"log": "incident", "quote": "division by zero"}]}
    fake.add(reply(tool("submit_diagnosis", logged)))
    [row] = replay.replay(llm, conn, 86400)
    assert row.checks and row.note == ANSWER["cause"]
