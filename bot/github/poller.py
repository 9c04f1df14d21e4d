"""The poller: what a webhook missed (GitHub never redelivers by itself), or everything
when there is no webhook at all (no GITHUB_WEBHOOK_SECRET, no public URL).

Every MOLT_GITHUB_POLL seconds, per watched repository: open issues with MOLT_GITHUB_LABEL and
the repository's comments, each updated since the last poll. The lists are asked for with the
ETag of the last answer (``If-None-Match``): while nothing changed GitHub answers 304, which
costs no rate limit. The cursor only moves when something new is seen, so an idle repository
keeps asking the same question and keeps getting 304s. What is found goes to the same inbox
as the webhook's deliveries, where each issue and comment is taken once whoever saw it first.

Keys: ``molt:github:poll:<repo>:<list>`` the cursor (ISO time) of each list.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
import requests
import structlog
from github import Github, GithubException

from bot.github.happenings import Happening, from_comment, from_issue
from pipeline import keyspace
from pipeline.config import Settings

log = structlog.get_logger(__name__)
PAGE = 100


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Labeller:
    login: str
    bot: bool


class Poller:
    def __init__(
        self,
        settings: Settings,
        client: Github,
        conn: redis.Redis,
        found: Callable[[Happening], None],
        follow: Callable[[Callable[[Happening], None]], None] | None = None,
    ) -> None:
        self.settings = settings
        #: What else is polled each time (the pull requests Molt follows).
        self.follow = follow
        self.client = client
        self.conn = conn
        self.found = found
        self._etags: dict[str, str] = {}
        #: Requests sent and how many GitHub answered 304, for bench/github.py.
        self.asked = 0
        self.unchanged = 0

    def run(self, stopping: threading.Event) -> None:
        while not stopping.is_set():
            try:
                self.poll()
            except Exception:
                log.exception("github poll")
            stopping.wait(self.settings.github.poll)

    def poll(self) -> None:
        for repo in self.settings.github.repos:
            try:
                self._issues(repo)
                self._comments(repo)
            except (GithubException, requests.RequestException) as exc:
                log.warning("github poll failed", repo=repo, error=str(exc)[:200])
        if self.follow is not None:
            self.follow(self.found)

    def _issues(self, repo: str) -> None:
        params = {"labels": self.settings.github.label, "state": "open"}
        for issue in self._since(repo, "issues", f"/repos/{repo}/issues", params):
            happening = from_issue(repo, issue)
            if self.conn.exists(keyspace.github_taken(happening.key)):
                continue  # a request already: no need to ask who labelled it
            labeller = self._labeller(repo, happening.number)
            if labeller:
                self.found(replace(happening, login=labeller.login, bot=labeller.bot))

    def _labeller(self, repo: str, number: int) -> Labeller | None:
        """Who put MOLT_GITHUB_LABEL on the issue last (the request is theirs, as the webhook's
        ``sender`` would say), from the issue's events; None if GitHub does not say."""
        label = self.settings.github.label.lower()
        events = self.client.get_repo(repo).get_issue(number).get_events()
        found = None
        for event in events:
            if event.event == "labeled" and event.label and event.label.name.lower() == label:
                found = event.actor
        if found is None:
            log.warning("nobody is seen labelling the issue", repo=repo, number=number)
            return None
        return Labeller(found.login, found.type == "Bot" or found.login.endswith("[bot]"))

    def _comments(self, repo: str) -> None:
        key = keyspace.github_poll(repo, "comments")
        since = self._cursor(key)
        for comment in self._since(repo, "comments", f"/repos/{repo}/issues/comments", {}):
            # Comments edited since, but made before, were seen when they were new.
            if str(comment.get("created_at", "")) >= since and comment.get("issue_url"):
                self.found(from_comment(repo, comment))

    def _cursor(self, key: str) -> str:
        known = self.conn.get(key)
        if known:
            return known.decode() if isinstance(known, bytes) else str(known)
        # The first poll looks back one interval: what happened while Molt was starting.
        start = datetime.now(UTC) - timedelta(seconds=max(self.settings.github.poll, 60))
        self.conn.set(key, _iso(start))
        return _iso(start)

    def _since(
        self, repo: str, listing: str, url: str, params: dict[str, str]
    ) -> list[dict[str, Any]]:
        """One page of ``url`` updated since the cursor, oldest first; [] when unchanged."""
        key = keyspace.github_poll(repo, listing)
        since = self._cursor(key)
        query = params | {"since": since, "sort": "updated", "direction": "asc"}
        query["per_page"] = str(PAGE)
        asked = url + "?" + "&".join(f"{k}={v}" for k, v in sorted(query.items()))
        etag = self._etags.get(asked, "")
        self.asked += 1
        status, answered, body = self.client.requester.requestJson(
            "GET", url, parameters=query, headers={"If-None-Match": etag} if etag else {}
        )
        if status == 304:
            self.unchanged += 1
            return []
        items = json.loads(body) if body else None
        if status >= 400 or not isinstance(items, list):
            raise GithubException(status, items, answered)
        tag = {k.lower(): v for k, v in answered.items()}.get("etag")
        if tag:
            if len(self._etags) >= 4 * len(self.settings.github.repos) + 16:
                self._etags.clear()  # old cursors' answers: never asked for again
            self._etags[asked] = tag
        found = [i for i in items if isinstance(i, dict)]
        newest = max((str(i.get("updated_at", "")) for i in found), default="")
        if newest > since:
            self.conn.set(key, newest)
        return found
