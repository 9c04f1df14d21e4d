"""Pull requests: the one Molt opens for a proposed change (MOLT_CHANGE_DELIVERY=pull-request),
what it follows on it, and the head commit a ``/molt deploy`` on any pull request deploys.

Opening is done once per request: the branch's pull request is looked for before one is
made, and again after an error that may hide a success. The request's ``result`` then names
it, and ``molt:github:pull:<repo>#<number>`` names the request, so a merge, a close or a push
seen by the webhook or the poller finds what it is about. Its checks and reviews are summed up
on the request ("PR #41: 3/4 checks passed, 1 approval").
"""

from __future__ import annotations

import re
from typing import Any

import redis
import structlog
from github import Github, GithubException

from bot.github import comments
from bot.github.client import Writer
from bot.rendering import render
from pipeline import keyspace, usage
from pipeline.config import Settings
from pipeline.requests.store import Request, RequestStore

log = structlog.get_logger(__name__)
FOLLOW_TTL = 90 * 86400
_GITHUB_REMOTE = re.compile(r"[:/](?P<repo>[\w.-]+/[\w.-]+?)(?:\.git)?/?$")


def repo_for(settings: Settings, remote: str) -> str | None:
    """The watched repository a target's remote is, or the only one watched."""
    watched = {r.lower(): r for r in settings.github.repos}
    found = _GITHUB_REMOTE.search(remote or "")
    if found and found.group("repo").lower() in watched:
        return watched[found.group("repo").lower()]
    return settings.github.repos[0] if len(settings.github.repos) == 1 else None


def fence(text: str) -> str:
    """A code fence longer than any run of backticks in ``text``, so it cannot be closed."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


class Pulls:
    def __init__(
        self, settings: Settings, client: Github, writer: Writer, store: RequestStore
    ) -> None:
        self.settings = settings
        self.client = client
        self.writer = writer
        self.store = store
        self.conn: redis.Redis = store.conn

    # -- opening -----------------------------------------------------------------

    def open(self, request: Request) -> bool:
        """Open the pull request of a proposed request, once; true if the request changed."""
        result = dict(request.result or {})
        if result.get("pull_request") or not result.get("branch"):
            return False
        repo_name = repo_for(self.settings, str(result.get("remote", "")))
        if repo_name is None:
            log.warning("no watched repository for the proposal", request_id=request.id)
            return False
        repo = self.client.get_repo(repo_name)
        branch = str(result["branch"])
        owner = repo_name.split("/", 1)[0]
        base = str((request.snapshot or {}).get("branch") or "") or repo.default_branch
        title, body = self._text(request)

        def find() -> Any:
            found = repo.get_pulls(state="all", head=f"{owner}:{branch}")
            return next(iter(found), None)

        pull = find() or self.writer.create(
            lambda: repo.create_pull(base=base, head=branch, title=title, body=body), find
        )
        result["pull_request"] = {
            "repo": repo_name,
            "number": pull.number,
            "url": pull.html_url,
            "commit": str(result.get("to_commit", "")),
            "branch": branch,
        }
        self.store.update(request.id, result=result)
        self.conn.set(keyspace.github_pull(repo_name, pull.number), request.id, ex=FOLLOW_TTL)
        self.conn.sadd(keyspace.GITHUB_FOLLOWING, f"{repo_name}#{pull.number}")
        log.info("pull request opened", request_id=request.id, number=pull.number)
        return True

    def _text(self, request: Request) -> tuple[str, str]:
        context = request.context() | {
            "fence": fence(request.text),
            "usage": usage.model_use(self.conn, request.id, request.result or {}),
            "conversation": _conversation(request),
        }
        message = render("pull_request", context)
        body = comments.document(message, request.id, "pull_request")
        return " ".join(message.title.split())[:250], body

    # -- following ---------------------------------------------------------------

    def followed(self, repo: str, number: int) -> Request | None:
        """The proposed request whose pull request this is, or None."""
        raw = self.conn.get(keyspace.github_pull(repo, number))
        if not raw:
            return None
        return self.store.get(raw.decode() if isinstance(raw, bytes) else str(raw))

    def stop_following(self, repo: str, number: int) -> None:
        self.conn.srem(keyspace.GITHUB_FOLLOWING, f"{repo}#{number}")

    def summary(self, repo_name: str, number: int) -> tuple[str, dict[str, Any]]:
        """ "PR #41: 3/4 checks passed, 1 approval", and the pull request as GitHub has it."""
        repo = self.client.get_repo(repo_name)
        pull = repo.get_pull(number)
        passed, total, failing = checks_of(repo, pull.head.sha)
        approvals = sum(1 for r in pull.get_reviews() if r.state == "APPROVED")
        parts = [f"PR #{number}: {passed}/{total} checks passed" if total else f"PR #{number}"]
        if failing:
            parts.append(f"failing: {', '.join(failing)}")
        parts.append(f"{approvals} approval{'s' if approvals != 1 else ''}")
        state = {
            "merged": bool(pull.merged),
            "state": pull.state,
            "head_sha": pull.head.sha,
            "merge_commit_sha": pull.merge_commit_sha or "",
            "merged_by": pull.merged_by.login if pull.merged_by else "",
        }
        return ", ".join(parts), state

    def show_summary(self, request: Request, summary: str) -> None:
        """The summary on the request's message, when it says something new."""
        result = dict(request.result or {})
        pull = dict(result.get("pull_request") or {})
        if pull.get("status") == summary:
            return
        pull["status"] = summary
        self.store.update(request.id, result=result | {"pull_request": pull})
        self.store.notify(request.id, "proposed", actor="github", action="proposal_status", data={})

    # -- any pull request ----------------------------------------------------------

    def head(self, repo_name: str, number: int) -> tuple[str, list[str]]:
        """A pull request's head commit and, with MOLT_REQUIRE_CHECKS, the checks that have
        not passed on it (each with where it stands)."""
        repo = self.client.get_repo(repo_name)
        pull = repo.get_pull(number)
        if not self.settings.require_checks:
            return pull.head.sha, []
        _, _, waiting = checks_of(repo, pull.head.sha)
        return pull.head.sha, waiting


def checks_of(repo: Any, sha: str) -> tuple[int, int, list[str]]:
    """(passed, total, the rest as "name (state)") of a commit's check runs and statuses."""
    commit = repo.get_commit(sha)
    seen: list[tuple[str, str]] = []
    for run in commit.get_check_runs():
        seen.append((run.name, run.conclusion or run.status))
    try:
        combined = commit.get_combined_status()
        seen += [(s.context, s.state) for s in combined.statuses]
    except GithubException as exc:
        if exc.status != 404:
            raise
    passed = sum(1 for _, outcome in seen if outcome in ("success", "neutral", "skipped"))
    rest = [
        f"{name} ({outcome})"
        for name, outcome in seen
        if outcome not in ("success", "neutral", "skipped")
    ]
    return passed, len(seen), rest


def _conversation(request: Request) -> str:
    """Where the request was asked, for people reading the pull request."""
    origin = request.origin
    if origin.platform == "github" and "#" in origin.channel:
        return origin.channel
    if origin.channel:
        return f"{origin.platform} {origin.channel}"
    return origin.platform
