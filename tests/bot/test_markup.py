"""Each medium its own rendering of the templates' chat markup: Slack, Discord and GitHub
show ``*bold*`` and ```code``` as such; the shell and the console show plain text (code
quoted once), the status page HTML."""

from __future__ import annotations

from pathlib import Path

import redis

from bot.rendering import as_html, as_text
from bot.ui import StatusPage
from pipeline.config import Settings
from pipeline.requests.states import RequestState as S
from pipeline.requests.store import Origin, RequestStore
from tests.support import run_cli

ALICE = Origin("console", "alice", "console", "alice")


def test_plain_text_drops_the_marks_and_html_turns_them_into_tags() -> None:
    said = "*dapper-puffin* runs ``r1a2b3c`` with `pytest -q` and 2*3*4\n```\nlog\n```\n"
    assert as_text(said) == "dapper-puffin runs `r1a2b3c` with `pytest -q` and 2*3*4\nlog\n"
    assert str(as_html("<b> `x` *y*")) == "&lt;b&gt; <code>x</code> <strong>y</strong>"


def test_molt_history_in_the_shell_shows_no_markup(
    conn: redis.Redis, molt_env: dict[str, str], tmp_path: Path
) -> None:
    asked = RequestStore(conn).create(ALICE, "deploy main", "deploy", "main")
    shown = run_cli(molt_env, tmp_path, "history")
    assert shown.returncode == 0, shown.stderr
    assert f"{asked.id} received `main`" in shown.stdout
    assert "*" not in shown.stdout


def test_the_status_page_shows_code_as_code(settings: Settings, conn: redis.Redis) -> None:
    requests = RequestStore(conn)
    asked = requests.create(ALICE, "deploy main", "deploy", "main")
    requests.transition(asked.id, S.PREFLIGHT, actor="molt", message="running `git status`")
    page = StatusPage(settings, conn).render_request(asked.id)
    assert page is not None
    assert "<code>git status</code>" in page and "`" not in page
