"""Molt with GitHub configured against the fake GitHub, and what it takes to act in an issue
the way a person does: shared by the GitHub and pull request tests. ``start_github_bot``
runs the bot in the test's process (tests/integration/inprocess.py); ``start_github_molt``
starts ``molt run`` with its processes, for the end-to-end test."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from pipeline import keyspace, store
from pipeline.config import load_settings
from pipeline.requests.store import RequestStore
from tests.fakes.github import (
    TOKEN,
    FakeGitHub,
    deliver,
    issue_comment_payload,
    issues_payload,
)
from tests.integration.inprocess import StartBot
from tests.support import UP, Molt

REPO = "acme/api"
SECRET = "molt-test-webhook-secret"
V2 = {"app.py": "def greet():\n    return 'hello'\n\n\nVERSION = 2\n"}


class GitHubBot:
    """The running Molt, the fake GitHub, and what it takes to act in an issue."""

    def __init__(
        self, github: FakeGitHub, port: int, conn: redis.Redis, said: Callable[[], str]
    ) -> None:
        self.github = github
        self.port = port
        self.conn = conn
        self.store = RequestStore(conn)
        self._said = said
        # Introduced: Molt knows its own login (its comments are never requests) and made its
        # labels in the repository.
        self.wait_until("Molt's labels made", lambda: "molt:failed" in github.repo_labels(REPO))

    @property
    def hook(self) -> str:
        return f"http://127.0.0.1:{self.port}/github/webhook"

    def send(self, event: str, payload: dict[str, Any], **kwargs: Any) -> int:
        status, _ = deliver(self.hook, event, payload, SECRET, **kwargs)
        return status

    def open_issue(self, title: str, body: str = "", user: str = "alice") -> dict[str, Any]:
        issue = self.github.open_issue(REPO, title, body, user, labels=["molt"])
        assert self.send("issues", issues_payload("opened", REPO, issue, user)) == 200
        return issue

    def comment(self, number: int, body: str, user: str = "alice", send: bool = True) -> int:
        made = self.github.add_comment(REPO, number, body, user)
        if send:
            issue = self.github.issue(REPO, number)
            payload = issue_comment_payload("created", REPO, issue, made, user)
            assert self.send("issue_comment", payload) == 200
        return int(made["id"])

    def tick(self, number: int, box: str, user: str) -> None:
        """``user`` ticks the ``box`` of the status comment, as GitHub's page does it."""
        status = self.status_comment(number)
        ticked = status["body"].replace(f"- [ ] {box}", f"- [x] {box}")
        old, edited = self.github.edit_comment(REPO, int(status["id"]), ticked)
        issue = self.github.issue(REPO, number)
        payload = issue_comment_payload(
            "edited", REPO, issue, edited, user, changes={"body": {"from": old}}
        )
        assert self.send("issue_comment", payload) == 200

    def status_comments(self, number: int) -> list[dict[str, Any]]:
        """Molt's status comments on ``number``, one per request, oldest first."""
        return [c for c in self.github.comments(REPO, number) if '"kind": "status"' in c["body"]]

    def status_comment(self, number: int) -> dict[str, Any]:
        """The newest request's status comment on ``number``."""
        found = self.status_comments(number)
        assert found, [c["body"][:80] for c in self.github.comments(REPO, number)]
        return found[-1]

    def wait_until(
        self, what: str, check: Callable[[], bool], timeout: float = 60, number: int = 1
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if check():
                    return
            except AssertionError:
                pass
            time.sleep(0.05)
        try:
            said = [c["body"][:400] for c in self.github.comments(REPO, number)]
        except Exception:  # no such issue (yet)
            said = []
        bodies = json.dumps(said, indent=1)
        raise AssertionError(f"{what}: not within {timeout} s\n{bodies}\n{self._said()[-3000:]}")

    def shows(self, number: int, text: str, timeout: float = 60) -> dict[str, Any]:
        """Wait until the status comment on ``number`` says ``text``."""
        self.wait_until(
            f"status comment saying {text!r}",
            lambda: text in self.status_comment(number)["body"],
            timeout,
            number,
        )
        return self.status_comment(number)

    def said(self, number: int, text: str, timeout: float = 30) -> dict[str, Any]:
        """Wait for any comment on ``number`` saying ``text``."""
        self.wait_until(
            f"a comment saying {text!r}",
            lambda: any(text in c["body"] for c in self.github.comments(REPO, number)),
            timeout,
            number,
        )
        return next(c for c in self.github.comments(REPO, number) if text in c["body"])

    def requests(self) -> list[Any]:
        return self.store.recent(50)

    def settled(self, polls: int = 0) -> None:
        """Wait until the poller has listed the repository's comments ``polls`` more times
        and the inbox has handed on everything GitHub said: whatever would be taken twice
        has been by then."""

        def listed() -> int:
            return len(self.github.calls_to("GET", f"/repos/{REPO}/issues/comments"))

        wanted = listed() + polls
        self.wait_until(f"{polls} more polls", lambda: listed() >= wanted)
        self.wait_until("the inbox handed on", self._inbox_read)

    def _inbox_read(self) -> bool:
        last = self.conn.xinfo_stream(keyspace.GITHUB_INBOX)["last-generated-id"]
        groups = self.conn.xinfo_groups(keyspace.GITHUB_INBOX)
        return all(g["pending"] == 0 and g["last-delivered-id"] == last for g in groups)


@pytest.fixture
def github() -> Iterator[FakeGitHub]:
    with FakeGitHub() as fake:
        fake.add_repo(
            REPO,
            {"alice": "write", "bob": "admin", "mallory": "read", "dave": "write"},
        )
        fake.add_repo("evil/elsewhere", {"alice": "write"})
        yield fake


def github_env(github: FakeGitHub, **env: str) -> dict[str, str]:
    """Molt's settings for the fake GitHub, its repository and its people."""
    return {
        "GITHUB_TOKEN": TOKEN,
        "GITHUB_API_URL": github.url,
        "GITHUB_WEBHOOK_SECRET": SECRET,
        "MOLT_GITHUB_REPOS": REPO,
        "MOLT_GITHUB_POLL": "0",
        "MOLT_GITHUB_WRITE_INTERVAL": "0.02",
        "MOLT_AUTHORISED_USERS": "github:alice,github:mallory,github:dave",
        "MOLT_APPROVERS": "github:alice,github:bob,github:mallory",
        **env,
    }


@pytest.fixture
def start_github_bot(github: FakeGitHub, start_bot: StartBot) -> Callable[..., GitHubBot]:
    """Molt's bot with GitHub, in this process (stopped before the fake GitHub is)."""

    def start(**env: str) -> GitHubBot:
        bot = start_bot(**github_env(github, **env))
        return GitHubBot(github, bot.port, bot.conn, lambda: bot.output)

    return start


@pytest.fixture
def start_github_molt(
    github: FakeGitHub, start_molt: Callable[..., Molt], data_dir: Path
) -> Callable[..., GitHubBot]:
    """``molt run`` with GitHub: the bot, its HTTP process and its worker."""

    def start(**env: str) -> GitHubBot:
        molt = start_molt("run", "--no-console", **github_env(github, **env))
        port = int(molt.wait_for(UP).group(1))
        conn = store.connect(load_settings(data_dir=data_dir))
        return GitHubBot(github, port, conn, lambda: molt.output)

    return start


@pytest.fixture
def github_bot(start_github_bot: Callable[..., GitHubBot]) -> GitHubBot:
    return start_github_bot()
