"""The console's progress: a refresh of a status message is one line, rewritten in place on
a terminal and at most one a minute in a script's log; the block is shown once."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import redis

from bot.console import Console
from bot.rendering import render
from pipeline.config import Settings
from pipeline.requests.store import Origin, RequestStore
from pipeline.service import watching

ALICE = Origin("console", "alice", "console", "alice")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _refreshes(console: Console, conn: redis.Redis) -> None:
    """An update waiting for the pre-flight tests, then watched, as its job reports them."""
    request = RequestStore(conn).create(ALICE, "deploy main", "deploy", "main")
    base = {"request_id": request.id, "codename": "dapper-puffin", "state": "running"}
    waiting = base | {"phase": "preflight", "message": "waiting for the pre-flight test run"}
    console.deliver(request, render("working", waiting))
    for seconds in range(15, 15 * 8, 15):
        console.deliver(request, render("working", waiting | {"progress": {"seconds": seconds}}))
    watched = base | {"state": "watching", "message": "live; watching its health for 60 s"}
    console.deliver(request, render("watching", watched))
    for probe in range(1, 12):
        summary = f"watched {probe * 5} s of 60 s: {probe}/{probe} probes healthy"
        console.deliver(request, render("watching", watched | {"watch": summary}))


def test_piped_each_status_block_is_shown_once_and_progress_at_most_a_minute_apart(
    conn: redis.Redis,
) -> None:
    out = io.StringIO()
    _refreshes(Console("alice", RequestStore(conn), out), conn)
    shown = out.getvalue()
    assert shown.count("waiting for the pre-flight tests") == 1
    assert shown.count("Watching dapper-puffin") == 1
    assert "⏳" not in shown  # all within the first minute of each block


def test_on_a_terminal_progress_rewrites_one_line_in_place(conn: redis.Redis) -> None:
    out = Terminal()
    _refreshes(Console("alice", RequestStore(conn), out), conn)
    shown = out.getvalue()
    assert shown.count("Watching dapper-puffin") == 1
    assert shown.count("\r\x1b[2K") == 7 + 11
    assert "preflight running for 1 min 45 s" in shown
    assert shown.rstrip().endswith("watched 55 s of 60 s: 11/11 probes healthy")


@pytest.mark.slow
def test_the_watch_says_how_long_it_has_watched_so_far(
    settings: Settings, conn: redis.Redis, tmp_path: Path
) -> None:
    window = settings.model_copy(
        update={"watch_seconds": 1.0, "watch_interval": 0.4, "health_command": "true"}
    )
    seen: list[str] = []
    report = watching.watch(
        window, conn, "0" * 40, tmp_path / "watch.log", shown=lambda r: seen.append(r.summary())
    )
    assert seen[0].startswith("watched 0 s of 1 s:")
    assert report.summary().startswith("watched 1 s: 3/3 probes healthy")
