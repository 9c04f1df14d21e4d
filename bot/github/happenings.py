"""What GitHub tells Molt, in one shape whether a webhook delivered it or the poller found it.

A webhook payload and the REST API's issue and comment objects share their fields (PLATFORMS.md),
so both become a ``Happening``: an issue opened or labelled, a comment created, or a comment
edited (a task-list box ticked, which only a webhook can tell, since only its ``sender`` says
who edited). ``key`` names what is acted on, the same for both sources, so that the one that
comes second finds it taken.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from bot.github.payloads import Delivery, PullRequest, User
from pipeline.payloads import Misfit, fitted

#: What Molt acts on, by event: anything else is answered 204 and dropped.
ACTIONS = {
    "issues": frozenset({"opened", "labeled"}),
    "issue_comment": frozenset({"created", "edited"}),
    # The pull requests Molt opened: merged or closed, pushed to, checked, reviewed.
    "pull_request": frozenset({"closed", "synchronize"}),
    "pull_request_review": frozenset({"submitted"}),
    "check_suite": frozenset({"completed"}),
    "status": frozenset({""}),  # a commit status has no action
}
#: Events about a pull request or its head commit rather than an issue.
PULL_EVENTS = frozenset({"pull_request", "pull_request_review", "check_suite", "status"})


@dataclass(frozen=True)
class Happening:
    event: str  # issues | issue_comment
    action: str  # opened | labeled | created | edited
    repo: str  # owner/name
    number: int  # the issue's (or pull request's) number
    login: str  # who did it: the webhook's sender, or the author the API names
    bot: bool = False  # a GitHub App or other bot account
    title: str = ""
    body: str = ""  # the issue's body, or the comment's
    labels: tuple[str, ...] = ()
    label: str = ""  # the label just added (issues.labeled)
    comment_id: int = 0
    previous_body: str = ""  # the comment's body before an edit
    pull_request: bool = False
    source: str = "webhook"  # webhook | poll
    delivery: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """One key per (repository, issue, comment, action), whichever source saw it first.

        An issue becomes a request once however it came ("opened" or "labeled"); a comment is
        acted on once when created. An edit (a box ticked) only ever comes from a webhook.
        """
        if self.event == "issues":
            return f"{self.repo}#{self.number}:0:request"
        if self.event in PULL_EVENTS:
            head = self.extra.get("head_sha", "")
            return (
                f"{self.repo}#{self.number}:pull:{self.event}:{self.action}:{head}:{self.delivery}"
            )
        # A tick by who made it, the body it left and when GitHub says it was made: a delivery
        # replayed under a new id is the same tick; ticking again after an untick is a new one.
        body = hashlib.sha256(self.body.encode()).hexdigest()[:16]
        when = self.extra.get("updated_at") or self.delivery
        edited = f"edited:{self.login.lower()}:{body}:{when}"
        action = edited if self.action == "edited" else self.action
        return f"{self.repo}#{self.number}:{self.comment_id}:{action}"

    @property
    def channel(self) -> str:
        """Where answers go: ``owner/name#number``, the ``Origin.channel`` of GitHub requests."""
        return f"{self.repo}#{self.number}"

    def dumps(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def loads(cls, text: str) -> Happening:
        raw = json.loads(text)
        raw["labels"] = tuple(raw.get("labels") or ())
        return cls(**raw)


def as_object(value: Any) -> dict[str, Any]:
    """A payload's object, or {} for anything else (a field GitHub left out or nulled)."""
    return value if isinstance(value, dict) else {}


def is_bot(user: Any) -> bool:
    """A bot account: an App's ``name[bot]`` login, or the API's ``type: Bot``."""
    if not isinstance(user, dict):
        return False
    return str(user.get("login", "")).endswith("[bot]") or user.get("type") == "Bot"


def _login(user: Any) -> str:
    return str(user.get("login", "")) if isinstance(user, dict) else ""


def _labels(issue: dict[str, Any]) -> tuple[str, ...]:
    labels = issue.get("labels") or []
    return tuple(str(x.get("name", "")) for x in labels if isinstance(x, dict))


def from_webhook(event: str, payload: dict[str, Any], delivery: str) -> Happening | None:
    """The happening a webhook delivery carries, or None when it is not one Molt acts on;
    a payload whose fields do not fit GitHub's shapes raises ``Misfit`` naming the field."""
    got = fitted(payload, Delivery)
    action = got.action or ""
    if action not in ACTIONS.get(event, ()):
        return None
    if event in PULL_EVENTS:
        return _pull_happening(event, action, got, delivery)
    repo, issue, sender = got.repository, got.issue, got.sender
    if repo is None or not repo.full_name or issue is None or sender is None or not sender.login:
        raise Misfit("a delivery without repository.full_name, issue.number or sender.login")
    common: dict[str, Any] = {
        "event": event,
        "action": action,
        "repo": repo.full_name,
        "number": issue.number,
        "login": sender.login,
        "bot": _is_bot(sender),
        "title": issue.title or "",
        "labels": tuple(label.name for label in issue.labels or ()),
        "pull_request": issue.pull_request is not None,
        "delivery": delivery,
    }
    if event == "issues":
        return Happening(
            **common,
            body=issue.body or "",
            label=got.label.name if got.label else "",
        )
    comment = got.comment
    if comment is None:
        raise Misfit("an issue_comment delivery without comment.id")
    change = got.changes.body if got.changes else None
    return Happening(
        **common,
        body=comment.body or "",
        comment_id=comment.id,
        previous_body=(change.previous if change else None) or "",
        extra={"updated_at": comment.updated_at or ""},
    )


def _is_bot(user: User) -> bool:
    return user.login.endswith("[bot]") or user.type == "Bot"


def from_issue(repo: str, issue: dict[str, Any]) -> Happening:
    """A labelled issue the poller found: as if it had been opened with the label."""
    user = issue.get("user") or {}
    return Happening(
        event="issues",
        action="opened",
        repo=repo,
        number=int(issue["number"]),
        login=_login(user),
        bot=is_bot(user),
        title=str(issue.get("title") or ""),
        body=str(issue.get("body") or ""),
        labels=_labels(issue),
        pull_request="pull_request" in issue,
        source="poll",
    )


def from_comment(repo: str, comment: dict[str, Any]) -> Happening:
    """A new comment the poller found (the issue's number is the end of its ``issue_url``)."""
    user = comment.get("user") or {}
    number = int(str(comment.get("issue_url", "")).rstrip("/").rsplit("/", 1)[-1])
    return Happening(
        event="issue_comment",
        action="created",
        repo=repo,
        number=number,
        login=_login(user),
        bot=is_bot(user),
        body=str(comment.get("body") or ""),
        comment_id=int(comment["id"]),
        # The REST comment does not say; its page does (…/pull/12#issuecomment-…).
        pull_request="/pull/" in str(comment.get("html_url", "")),
        source="poll",
    )


def _pull_happening(event: str, action: str, got: Delivery, delivery: str) -> Happening:
    """A pull request event, or one about a commit (a check suite, a status), which names
    the pull requests it belongs to only by their head commit (``number`` 0 then)."""
    repo, sender = got.repository, got.sender
    if repo is None or not repo.full_name or sender is None or not sender.login:
        raise Misfit("a delivery without repository.full_name or sender.login")
    pull = got.pull_request or PullRequest()
    sha = (pull.head.sha if pull.head else None) or got.sha or ""
    if event == "check_suite":
        sha = (got.check_suite.head_sha if got.check_suite else None) or ""
    return Happening(
        event=event,
        action=action,
        repo=repo.full_name,
        number=pull.number,
        login=sender.login,
        bot=_is_bot(sender),
        title=pull.title or "",
        pull_request=True,
        delivery=delivery,
        extra={
            "merged": bool(pull.merged),
            "merge_commit_sha": pull.merge_commit_sha or "",
            "merged_by": pull.merged_by.login if pull.merged_by else "",
            "head_sha": sha,
            "base_ref": (pull.base.ref if pull.base else None) or "",
        },
    )
