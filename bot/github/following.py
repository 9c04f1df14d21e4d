"""Following the pull requests Molt opened: a merge plans the deploy of its merge commit in
the request's own conversation, a close without merging or a push by someone else ends the
follow-up with a message there, and checks and reviews keep the request's summary current.

The webhook's ``pull_request``, ``pull_request_review``, ``check_suite`` and ``status``
deliveries come here, and so does the poller, which asks each followed pull request with
the ETag of its last answer (a 304 while nothing changed costs nothing) and turns what
changed into the same happenings. A merge's deploy is planned off the inbox's thread, since
planning runs the pre-flight checks.

Keys: ``molt:github:pull-sha:<repo>:<sha>`` the followed pull request whose head that is;
``molt:github:pull-seen:<repo>#<n>`` what the poller last saw of it (state, head).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis
import structlog
from github import Github, GithubException

from bot.github.happenings import Happening, as_object
from bot.github.pulls import FOLLOW_TTL, Pulls
from pipeline import keyspace
from pipeline.config import Settings
from pipeline.requests.store import Origin, Request
from pipeline.update import proposals

log = structlog.get_logger(__name__)


class Following:
    def __init__(self, settings: Settings, client: Github, pulls: Pulls) -> None:
        self.settings = settings
        self.client = client
        self.pulls = pulls
        self.conn: redis.Redis = pulls.conn
        self._planning = ThreadPoolExecutor(max_workers=2, thread_name_prefix="molt-merge")
        self._etags: dict[str, str] = {}

    def close(self) -> None:
        self._planning.shutdown(wait=False, cancel_futures=True)

    def opened(self, request: Request) -> None:
        """Remember the head of a pull request just opened, for checks that name only it."""
        pull = (request.result or {}).get("pull_request") or {}
        if pull.get("commit"):
            where = f"{pull['repo']}#{pull['number']}"
            self.conn.set(
                keyspace.github_pull_head(pull["repo"], pull["commit"]), where, ex=FOLLOW_TTL
            )

    # -- what GitHub says --------------------------------------------------------

    def handle(self, happening: Happening) -> None:
        number = happening.number or self._by_head(happening)
        request = self.pulls.followed(happening.repo, number) if number else None
        if request is None:
            return
        extra = happening.extra
        where = f"{happening.repo}#{number}"
        if happening.event == "pull_request" and happening.action == "closed":
            self.pulls.stop_following(happening.repo, number)
            base = str((request.snapshot or {}).get("branch") or "")
            into = str(extra.get("base_ref", ""))
            if extra.get("merged") and base and into and into != base:
                detail = f"{where} was merged into {into}, not {base}, where the service runs."
                proposals.ended(
                    self.conn, request.id, "closed", detail, f"github:{happening.login}"
                )
            elif extra.get("merged"):
                self._merged(
                    request,
                    str(extra.get("merge_commit_sha", "")),
                    str(extra.get("merged_by", "")),
                    where,
                )
            else:
                detail = f"@{happening.login} closed {where} without merging it."
                proposals.ended(
                    self.conn, request.id, "closed", detail, f"github:{happening.login}"
                )
            return
        if happening.event == "pull_request" and happening.action == "synchronize":
            self._pushed(request, str(extra.get("head_sha", "")), happening.login, where)
        self._summarise(request, happening.repo, number)

    def _by_head(self, happening: Happening) -> int:
        raw = self.conn.get(
            keyspace.github_pull_head(happening.repo, str(happening.extra.get("head_sha", "")))
        )
        text = raw.decode() if isinstance(raw, bytes) else str(raw or "")
        return int(text.rpartition("#")[2]) if text else 0

    def _pushed(self, request: Request, head: str, login: str, where: str) -> None:
        ours = str(((request.result or {}).get("pull_request") or {}).get("commit", ""))
        if head and head != ours:
            detail = f"@{login} pushed `{head[:7]}` to {where}: not the change that was approved."
            proposals.ended(self.conn, request.id, "voided", detail, f"github:{login}")

    def _merged(self, request: Request, commit: str, merged_by: str, where: str) -> None:
        who = Origin("github", merged_by, where, merged_by) if merged_by else None
        settings = self.settings.for_target(request.target)

        def plan() -> None:
            try:
                proposals.merged(settings, self.conn, request.id, commit, who, where)
            except Exception:
                log.exception("planning the deploy of a merge", request_id=request.id)

        self._planning.submit(plan)

    def _summarise(self, request: Request, repo: str, number: int) -> None:
        if proposals.state(self.conn, request.id).get("state") != "open":
            return
        try:
            summary, _ = self.pulls.summary(repo, number)
        except GithubException as exc:
            log.warning("pull request unreadable", repo=repo, number=number, status=exc.status)
            return
        self.pulls.show_summary(self.pulls.store.get(request.id), summary)

    # -- polling -----------------------------------------------------------------

    def poll(self, found: Callable[[Happening], None]) -> None:
        """Each followed pull request, asked with its last ETag; what changed, as happenings."""
        for raw in self.conn.smembers(keyspace.GITHUB_FOLLOWING):
            followed = raw.decode() if isinstance(raw, bytes) else str(raw)
            repo, _, number = followed.rpartition("#")
            try:
                now = self._ask(repo, int(number))
            except GithubException as exc:
                log.warning("followed pull request unreadable", pull=followed, status=exc.status)
                continue
            if now is not None:
                self._compare(followed, repo, int(number), now, found)

    def _ours(self, repo: str, number: int) -> str:
        """The commit Molt pushed for the pull request it follows."""
        request = self.pulls.followed(repo, number)
        pull = ((request.result or {}).get("pull_request") or {}) if request else {}
        return str(pull.get("commit", ""))

    def _ask(self, repo: str, number: int) -> dict[str, Any] | None:
        url = f"/repos/{repo}/pulls/{number}"
        etag = self._etags.get(url, "")
        status, headers, body = self.client.requester.requestJson(
            "GET", url, headers={"If-None-Match": etag} if etag else {}
        )
        if status == 304:
            return None
        if status >= 400:
            raise GithubException(status, body, headers)
        tag = {k.lower(): v for k, v in headers.items()}.get("etag")
        if tag:
            self._etags[url] = tag
        data = json.loads(body)
        return data if isinstance(data, dict) else None

    def _compare(
        self,
        followed: str,
        repo: str,
        number: int,
        pull: dict[str, Any],
        found: Callable[[Happening], None],
    ) -> None:
        sha = str(as_object(pull.get("head")).get("sha", ""))
        state = str(pull.get("state", ""))
        before = {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in self.conn.hgetall(keyspace.github_pull_seen(followed)).items()
        }
        self.conn.hset(keyspace.github_pull_seen(followed), mapping={"state": state, "head": sha})
        self.conn.expire(keyspace.github_pull_seen(followed), FOLLOW_TTL)
        merged_by = str(as_object(pull.get("merged_by")).get("login", ""))
        author = str(as_object(pull.get("user")).get("login", ""))
        common: dict[str, Any] = {
            "event": "pull_request",
            "repo": repo,
            "number": number,
            "pull_request": True,
            "source": "poll",
            "extra": {
                "merged": bool(pull.get("merged")),
                "merge_commit_sha": str(pull.get("merge_commit_sha") or ""),
                "merged_by": merged_by,
                "head_sha": sha,
                "base_ref": str(as_object(pull.get("base")).get("ref", "")),
            },
        }
        if state == "closed":
            closer = merged_by or author or "someone"
            found(Happening(action="closed", login=closer, delivery="poll", **common))
        elif sha and sha != self._ours(repo, number) and before.get("head") != sha:
            found(
                Happening(action="synchronize", login="someone", delivery=f"poll:{sha}", **common)
            )
