"""``molt`` commands an operator runs at a shell, in this process: they act on what Molt
keeps (the audit trail, the config backups) whether or not a bot runs."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline import audit, keyspace, store
from pipeline.config import load_settings
from tests.desk import StartChat, molt, start_chat
from tests.support import ServiceRepo

__all__ = ["start_chat"]  # the fixture these tests use
V2 = {"app.py": "def greet():\n    return 'hello'\n\n\nVERSION = 2\n"}


def test_audit_verify_names_the_first_broken_entry(
    service: ServiceRepo, start_chat: StartChat
) -> None:
    service.commit(V2, "v2")
    chat = start_chat()
    since = chat.send("deploy main")
    chat.wait_for(r"📋 Plan ready", since=since)
    chat.close()
    intact = molt("audit", "verify")
    assert intact.returncode == 0 and "audit chain intact" in intact.stdout
    entry = json.loads(chat.conn.lindex(keyspace.AUDIT, 2) or "{}")
    entry["actor"] = "console:mallory"
    chat.conn.lset(keyspace.AUDIT, 2, json.dumps(entry, sort_keys=True))
    broken = molt("audit", "verify")
    assert broken.returncode == 1
    assert "audit chain broken at entry #2: entry was altered" in broken.stderr


def test_audit_tampering_is_found_by_molt_audit_verify_with_no_bot_running(
    service: ServiceRepo, data_dir: Path, molt_env: dict[str, str]
) -> None:
    settings = load_settings(data_dir=data_dir, target_dir=service.live)
    conn = store.connect(settings)
    for action in ("pause", "resume", "pause"):
        audit.append(conn, actor="console:alice", action=action)
    intact = molt("audit", "verify", env=molt_env)
    assert intact.returncode == 0 and "audit chain intact: 3 entries" in intact.stdout

    entry = json.loads(conn.lindex(keyspace.AUDIT, 1))
    entry["actor"] = "console:mallory"
    conn.lset(keyspace.AUDIT, 1, json.dumps(entry, sort_keys=True))
    broken = molt("audit", "verify", env=molt_env)
    assert broken.returncode == 1
    assert "audit chain broken at entry #1: entry was altered" in broken.stderr


def test_operator_commands_at_a_shell_refuse_others_and_say_when_there_is_nothing_to_do(
    service: ServiceRepo, data_dir: Path, molt_env: dict[str, str]
) -> None:
    stopped = molt("stop", env=molt_env)
    assert stopped.returncode == 0
    assert "Emergency stop: no update was running; 0 queued request(s) cleared." in stopped.stdout
    nothing = molt("rollback", "no-such-update", env=molt_env)
    assert nothing.returncode == 1
    assert "found no successful update 'no-such-update' to roll back" in nothing.stderr

    refused = molt("pause", env={**molt_env, "MOLT_CONSOLE_USER": "mallory"})
    assert refused.returncode == 1
    assert "console:mallory may not pause: only operators may do that" in refused.stderr
    assert "Molt status: paused" not in molt("status", env=molt_env).stdout
    trail = molt("history", env=molt_env)
    assert trail.returncode == 0
    entries = audit.entries(store.connect(load_settings(data_dir=data_dir)))
    audited = [(e["actor"], e["action"]) for e in entries]
    assert audited == [("console:alice", "stop"), ("console:mallory", "operator_refused")]
