"""Molt's messages into GitHub: one status comment per request, posted once and edited in
place (``message_ref`` on the request); one short new comment at each milestone, so watchers
are notified; a ``molt:*`` label saying where the request is; and, with
MOLT_GITHUB_DEPLOYMENTS, a GitHub Deployment of a deployed commit with its statuses.

Keys (kept ``REF_TTL``):
  molt:github:status:<repo>:<comment id>   the request whose status comment that is (for ticks)
  molt:github:issue:<repo>#<number>        the issue's newest request (for ``/molt approve``)
  molt:github:deployment:<request>:<try>   the Deployment of that attempt
  molt:github:incident:<incident id>       the issue opened for an incident (``repo#number``),
                                           where its rollback's status is shown too
"""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import redis
import structlog
from github import Github, GithubException
from github.Issue import Issue
from github.IssueComment import IssueComment

from bot import people
from bot.base import MessageRefs
from bot.github import comments
from bot.github.client import Writer
from bot.messages import Message
from pipeline import keyspace
from pipeline.config import Settings
from pipeline.incidents.oncall import raised_for
from pipeline.requests.store import Origin, Request, RequestStore

log = structlog.get_logger(__name__)
REF_TTL = 90 * 86400

#: Where a request stands, as the one ``molt:*`` label on its issue, with its colour.
STATE_LABELS = {
    "molt:planning": "fbca04",
    "molt:plan-ready": "0075ca",
    "molt:running": "1d76db",
    "molt:succeeded": "0e8a16",
    "molt:failed": "d73a4a",
    "molt:refused": "b60205",
}
#: The label each message puts on the issue (a message not listed leaves it as it is).
LABEL_FOR = {
    "processing": "molt:planning",
    "planning": "molt:planning",
    "needs_info": "molt:planning",
    "plan_ready": "molt:plan-ready",
    "queued": "molt:running",
    "starting": "molt:running",
    "working": "molt:running",
    "restarting": "molt:running",
    "watching": "molt:running",
    "success": "molt:succeeded",
    "failure": "molt:failed",
    "rejected": "molt:failed",
    "expired": "molt:failed",
    "cancelled": "molt:failed",
    "refused": "molt:refused",
    "blocked": "molt:refused",
    "proposed": "molt:succeeded",
}
#: Messages that also get a short new comment, so the issue's watchers are notified.
MILESTONES = frozenset({"plan_ready", "needs_info", "success", "failure"})
#: A deployment's status for each message of a deploy.
DEPLOYMENT_STATES = {
    "queued": "queued",
    "starting": "in_progress",
    "working": "in_progress",
    "restarting": "in_progress",
    "success": "success",
    "failure": "failure",
}


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def where(channel: str) -> tuple[str, int]:
    """``owner/name#12`` as (repository, number)."""
    repo, _, number = channel.rpartition("#")
    return repo, int(number)


class Delivery:
    def __init__(
        self, settings: Settings, client: Github, writer: Writer, store: RequestStore
    ) -> None:
        self.settings = settings
        self.client = client
        self.writer = writer
        self.store = store
        self.conn: redis.Redis = store.conn
        #: Without a webhook nobody can be seen ticking a box: answers are comments then.
        secret = settings.github.webhook_secret
        self.boxes = bool(secret and secret.get_secret_value())
        self.login = ""
        self._refs = MessageRefs()
        self._labelled: set[str] = set()

    def issue(self, channel: str) -> Issue:
        repo, number = where(channel)
        return self.client.get_repo(repo).get_issue(number)

    # -- a request's conversation ----------------------------------------------

    def deliver(self, request: Request, message: Message) -> None:
        if message.private:
            self.reply(request.origin, message)
            return
        issue = self.issue(self._conversation(request))
        ref, posted = self._status(request, message, issue)
        label = LABEL_FOR.get(message.template)
        if label and ref.get("label") != label:
            self._label(issue, label)
            ref = ref | {"label": label}
            self._remember(request, ref)
        if message.template in MILESTONES and not posted:
            self._milestone(request, message, issue, ref)
        if self.settings.github.deployments and request.deploys:
            self._deployment(request, message)

    def _status(
        self, request: Request, message: Message, issue: Issue
    ) -> tuple[dict[str, Any], bool]:
        """Edit the status comment, or post it; returns where it is and whether it was posted."""
        body = comments.status(message, boxes=self.boxes)
        ref = dict(request.message_ref or self._refs.get(request.id) or {})
        if ref.get("comment"):
            comment = issue.get_comment(int(ref["comment"]))
            try:
                self.writer.write(lambda: comment.edit(body))
                return ref, False
            except GithubException as exc:
                if exc.status != 404:
                    raise
                log.info("status comment gone; posting a new one", request_id=request.id)
        made = self._create(issue, body, request.id, "status")
        channel = self._conversation(request)
        repo, _ = where(channel)
        ref = {
            "channel": channel,
            "comment": str(made.id),
            "url": str(made.html_url or ""),
            "label": ref.get("label", ""),
        }
        self._remember(request, ref)
        self.conn.set(keyspace.github_status(repo, made.id), request.id, ex=REF_TTL)
        self.conn.set(keyspace.github_issue(channel), request.id, ex=REF_TTL)
        return ref, True

    def _remember(self, request: Request, ref: dict[str, Any]) -> None:
        self._refs.remember(request.id, ref)
        self.store.update(request.id, message_ref=ref)

    def _create(self, issue: Issue, body: str, request_id: str, kind: str) -> IssueComment:
        """Post a comment exactly once: after an error, look for it before posting again."""
        since = datetime.now(UTC) - timedelta(minutes=2)
        wanted = comments.marker(request_id, kind)

        def find() -> IssueComment | None:
            for found in issue.get_comments(since=since):
                if wanted in (found.body or "") and (
                    not self.login or found.user.login == self.login
                ):
                    return found
            return None

        return self.writer.create(lambda: issue.create_comment(body), find)

    def _once(self, issue: Issue, body: str, request_id: str, kind: str) -> None:
        """A comment posted once per (request, kind) even when the delivery that posts it is
        tried again after a later step failed (a label, a deployment)."""
        key = keyspace.github_posted(request_id, kind)
        if self.conn.exists(key):
            return
        made = self._create(issue, body, request_id, kind)
        self.conn.set(key, str(made.id), ex=REF_TTL)

    def _milestone(
        self, request: Request, message: Message, issue: Issue, ref: dict[str, Any]
    ) -> None:
        kind = f"milestone:{message.template}:{request.attempt}"
        body = comments.milestone(message, str(ref.get("url", "")), kind)
        self._once(issue, body, request.id, kind)

    def _label(self, issue: Issue, label: str) -> None:
        """Put ``label`` on the issue and take any other ``molt:*`` state label off."""
        repo = issue.url.split("/repos/", 1)[-1].rsplit("/issues/", 1)[0]
        self.ensure_labels(repo)
        url = f"{issue.url}/labels"

        def add() -> Any:
            return issue.requester.requestJsonAndCheck("POST", url, input={"labels": [label]})[1]

        on = self.writer.create(add, lambda: None)  # adding a label twice changes nothing
        names = [str(x.get("name", "")) for x in on or [] if isinstance(x, dict)]
        for stale in names:
            if stale in STATE_LABELS and stale != label:
                try:
                    self.writer.write(partial(issue.remove_from_labels, stale))
                except GithubException as exc:
                    if exc.status != 404:
                        raise

    def ensure_labels(self, repo: str) -> None:
        """Create the state labels a repository lacks, with their colours, once per process."""
        if repo.lower() in self._labelled:
            return
        found = self.client.get_repo(repo)
        have = {label.name for label in found.get_labels()}
        for name, colour in STATE_LABELS.items():
            if name in have:
                continue
            try:
                self.writer.create(
                    partial(found.create_label, name, colour, "Molt: " + name[5:]),
                    lambda: None,
                )
            except GithubException as exc:
                if exc.status != 422:  # already made, by us or someone else
                    raise
        self._labelled.add(repo.lower())

    # -- GitHub Deployments -----------------------------------------------------

    def _deployment(self, request: Request, message: Message) -> None:
        state = DEPLOYMENT_STATES.get(message.template)
        plan = request.plan or {}
        commit = str(plan.get("target_commit") or "")
        if state is None or not commit:
            return
        key = keyspace.github_deployment(request.id, request.attempt)
        repo, _ = where(self._conversation(request))
        found = self.client.get_repo(repo)
        deployment_id = _text(self.conn.get(key))
        if deployment_id == "none":
            return
        if deployment_id is None:
            try:
                made = self.writer.create(
                    lambda: found.create_deployment(
                        ref=commit,
                        environment=self.settings.github.environment,
                        description=f"Molt {request.codename or request.id}"[:140],
                        auto_merge=False,
                        required_contexts=[],
                        production_environment=self.settings.github.environment == "production",
                    ),
                    lambda: None,
                )
            except GithubException as exc:
                log.warning("no github deployment", request_id=request.id, status=exc.status)
                self.conn.set(key, "none", ex=REF_TTL)
                return
            deployment_id = str(made.id)
            self.conn.set(key, deployment_id, ex=REF_TTL)
        log_dir = request.update_dir or ""
        status: dict[str, Any] = {
            "state": state,
            "description": (request.message or message.title)[:140],
            "environment": self.settings.github.environment,
            "auto_inactive": True,
        }
        if log_dir.startswith(("http://", "https://")):
            status["log_url"] = log_dir
        elif state == "failure" and log_dir:
            status["description"] = f"{status['description']} (logs: {log_dir})"[:140]
        url = f"{found.url}/deployments/{deployment_id}/statuses"
        self.writer.create(
            lambda: found.requester.requestJsonAndCheck("POST", url, input=status), lambda: None
        )

    def _conversation(self, request: Request) -> str:
        """The issue a request lives on: its own, or for a rollback Molt raised for an
        incident, the issue opened for that incident (``announce``)."""
        channel = request.origin.channel
        incident = raised_for(request)
        if "#" in channel or not incident:
            return channel
        opened = _text(self.conn.get(keyspace.github_incident(incident)))
        if not opened:  # the incident's own message opens it, just before: try again
            raise LookupError(f"no issue opened yet for incident {incident}")
        return opened

    # -- an incident ------------------------------------------------------------------

    def announce(self, repo: str, message: Message, thread: str) -> None:
        """An incident's news: the first opens an issue in ``repo``, the rest are comments
        on it. Each is posted once, however often it is tried."""
        key = keyspace.github_incident(thread)
        opened = _text(self.conn.get(key))
        kind = f"incident:{message.template}:{_digest(message.title + message.text)}"
        # The incident's own marker, not a status comment's: no request's status is this.
        shown = comments.status(message, boxes=False).split("\n\n", 1)[-1]
        body = f"{comments.marker(thread, kind)}\n{shown}"
        if opened:
            self._create(self.issue(opened), body, thread, kind)
            return
        found = self.client.get_repo(repo)
        title = " ".join(people.unmarked(message.title).split())[:200] or f"Incident {thread}"
        since = datetime.now(UTC) - timedelta(minutes=10)
        wanted = comments.marker(thread, kind)

        def find() -> Issue | None:
            for issue in found.get_issues(state="all", since=since):
                if wanted in (issue.body or ""):
                    return issue
            return None

        made = self.writer.create(lambda: found.create_issue(title=title, body=body), find)
        self.conn.set(key, f"{repo}#{made.number}", ex=REF_TTL)

    # -- one person ---------------------------------------------------------------

    def reply(self, origin: Origin, message: Message) -> None:
        """A comment on the issue the person wrote on, mentioning them."""
        if "#" not in origin.channel:
            log.warning("no issue to answer on", user=origin.user)
            return
        issue = self.issue(origin.channel)
        kind = f"reply:{time.time_ns()}"
        self._create(issue, comments.reply(message, origin.user, kind), message.request_id, kind)


def _text(value: Any) -> str | None:
    return value.decode() if isinstance(value, bytes) else value
