"""GitHub's REST API on loopback that a real ``github.Github(base_url=fake.url)`` talks to, and
signed webhook deliveries shaped like the ones GitHub sends.

The server answers the calls Molt's GitHub front end makes, at the paths PyGithub uses (a
``base_url`` with no path, so ``/repos/...`` at the root), with the JSON GitHub documents: ids,
``node_id``, ``url`` fields pointing back at the fake (PyGithub follows them), ``user`` objects,
timestamps like ``2026-12-02T01:02:03Z``. Pull requests are issues too (one number space,
comments through the issues API), with heads on branches tests point at commits, reviews,
check runs and commit statuses. Every answer carries the ``x-ratelimit-*`` headers;
every GET answers with an ``ETag``, and a matching ``If-None-Match`` gets a 304 that costs
nothing, as on GitHub. Tests arrange state (repos, collaborators, issues, comments, PRs), inject
failures (an error after a write that landed, secondary and primary rate limits, a broken
permission check) and read back what a person would see on the issue.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import itertools
import json
import re
import threading
import time
import urllib.error
import urllib.request
import uuid
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from tests.fakes.loopback import HttpFake

TOKEN = "ghp_MoltTestToken0000000000000000000000"
LOGIN = "molt-bot"
PUBLIC_API = "https://api.github.com"
WEB = "https://github.com"
DOCS = "https://docs.github.com/rest"
CORE_LIMIT = 5000
#: How GitHub words a secondary rate limit (PyGithub recognises it by these words).
SECONDARY_MESSAGE = (
    "You have exceeded a secondary rate limit and have been temporarily blocked from "
    "content creation. Please retry your request again later."
)
#: Repository roles, and the permission the permission endpoint reports for each.
ROLES = {
    "admin": "admin",
    "maintain": "write",
    "write": "write",
    "triage": "read",
    "read": "read",
    "none": "none",
}
DEPLOYMENT_STATES = ("error", "failure", "inactive", "in_progress", "queued", "pending", "success")
CHECK_STATUSES = ("queued", "in_progress", "completed")
CHECK_CONCLUSIONS = (
    "success",
    "failure",
    "neutral",
    "cancelled",
    "skipped",
    "timed_out",
    "action_required",
)
COMMIT_STATES = ("error", "failure", "pending", "success")
REVIEW_STATES = ("APPROVED", "CHANGES_REQUESTED", "COMMENTED", "DISMISSED", "PENDING")
_MESSAGES = {
    400: "Problems parsing JSON",
    401: "Bad credentials",
    403: "Forbidden",
    404: "Not Found",
    422: "Validation Failed",
    500: "Server Error",
    502: "Server Error",
    503: "Service Unavailable",
}


@dataclass(frozen=True)
class GitHubCall:
    """One request the fake answered, as it arrived (JSON body decoded) and the status sent."""

    method: str
    path: str
    query: dict[str, str]
    status: int
    headers: dict[str, str]
    body: Any
    at: float = field(default_factory=time.time)


@dataclass
class _Failure:
    method: str | None
    path_contains: str
    status: int
    times: int
    land: bool
    headers: dict[str, str]
    body: Any
    reset_after: int | None = None

    def matches(self, method: str, path: str) -> bool:
        wanted = (self.method or "*").upper()
        return wanted in ("*", method) and self.path_contains in path


@dataclass
class _Reply:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


class _Refusal(Exception):
    """An answer other than success, raised from deep in a handler."""

    def __init__(self, status: int, body: Any = None) -> None:
        super().__init__(status)
        self.reply = _Reply(status, _error_body(status) if body is None else body)


@dataclass
class _Deployment:
    json: dict[str, Any]
    auto_merge: bool
    required_contexts: list[str] | None
    statuses: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Pull:
    """What a pull request holds beyond its issue (title, body, state and user live there)."""

    id: int
    head_owner: str
    head_ref: str
    head_sha: str
    base_ref: str
    draft: bool
    maintainer_can_modify: bool = True
    merged_at: str | None = None
    merged_by: str | None = None
    merge_commit_sha: str | None = None
    reviews: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Repo:
    json: dict[str, Any]
    roles: dict[str, str]
    labels: dict[str, dict[str, Any]] = field(default_factory=dict)  # by lower-case name
    issues: dict[int, dict[str, Any]] = field(default_factory=dict)
    comments: dict[int, dict[str, Any]] = field(default_factory=dict)
    comment_issue: dict[int, int] = field(default_factory=dict)
    deployments: dict[int, _Deployment] = field(default_factory=dict)
    pulls: dict[int, _Pull] = field(default_factory=dict)  # by issue number
    branches: dict[str, str] = field(default_factory=dict)  # sha by ref, "owner:ref" for forks
    check_runs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # by sha
    commit_statuses: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # by sha
    events: dict[int, list[dict[str, Any]]] = field(default_factory=dict)  # by issue number
    next_number: int = 1

    @property
    def url(self) -> str:
        return str(self.json["url"])

    @property
    def full_name(self) -> str:
        return str(self.json["full_name"])

    @property
    def owner(self) -> str:
        return str(self.json["owner"]["login"])


Handler = Callable[..., _Reply]
_SEG = r"([^/]+)"
_R = rf"/repos/{_SEG}/{_SEG}"
#: (method, path pattern, handler name); the first full match answers.
_ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    (method, re.compile(pattern), name)
    for method, pattern, name in [
        ("GET", r"/user", "_get_user"),
        ("GET", r"/users/([^/]+)", "_get_named_user"),
        ("GET", r"/rate_limit", "_get_rate_limit"),
        ("GET", r"/orgs/([^/]+)/teams/([^/]+)/memberships/([^/]+)", "_get_team_membership"),
        ("GET", _R, "_get_repo"),
        ("GET", _R + r"/issues", "_list_issues"),
        ("POST", _R + r"/issues", "_create_issue"),
        ("GET", _R + r"/issues/comments", "_list_repo_comments"),
        ("GET", _R + r"/issues/comments/(\d+)", "_get_comment"),
        ("PATCH", _R + r"/issues/comments/(\d+)", "_patch_comment"),
        ("DELETE", _R + r"/issues/comments/(\d+)", "_delete_comment"),
        ("GET", _R + r"/issues/(\d+)", "_get_issue"),
        ("PATCH", _R + r"/issues/(\d+)", "_patch_issue"),
        ("GET", _R + r"/issues/(\d+)/comments", "_list_comments"),
        ("POST", _R + r"/issues/(\d+)/comments", "_create_comment"),
        ("GET", _R + r"/issues/(\d+)/labels", "_list_issue_labels"),
        ("GET", _R + r"/issues/(\d+)/events", "_list_issue_events"),
        ("POST", _R + r"/issues/(\d+)/labels", "_add_labels"),
        ("PUT", _R + r"/issues/(\d+)/labels", "_set_labels"),
        ("DELETE", _R + r"/issues/(\d+)/labels", "_clear_labels"),
        ("DELETE", _R + r"/issues/(\d+)/labels/([^/]+)", "_remove_label"),
        ("GET", _R + r"/labels", "_list_labels"),
        ("POST", _R + r"/labels", "_create_label"),
        ("GET", _R + r"/labels/([^/]+)", "_get_label"),
        ("GET", _R + r"/collaborators/([^/]+)/permission", "_get_permission"),
        ("GET", _R + r"/deployments", "_list_deployments"),
        ("POST", _R + r"/deployments", "_create_deployment"),
        ("GET", _R + r"/deployments/(\d+)", "_get_deployment"),
        ("GET", _R + r"/deployments/(\d+)/statuses", "_list_statuses"),
        ("POST", _R + r"/deployments/(\d+)/statuses", "_create_status"),
        ("GET", _R + r"/pulls", "_list_pulls"),
        ("POST", _R + r"/pulls", "_create_pull"),
        ("GET", _R + r"/pulls/(\d+)", "_get_pull"),
        ("PATCH", _R + r"/pulls/(\d+)", "_patch_pull"),
        ("GET", _R + r"/pulls/(\d+)/reviews", "_list_reviews"),
        ("GET", _R + r"/commits/([^/]+)", "_get_commit"),
        ("GET", _R + r"/commits/([^/]+)/check-runs", "_list_check_runs"),
        ("GET", _R + r"/commits/([^/]+)/status", "_get_combined_status"),
    ]
]


class FakeGitHub(HttpFake):
    """GitHub's REST API on 127.0.0.1, port 0; use as a context manager or start()/stop().

    State helpers need the fake running: the objects they make carry URLs with its port.
    """

    name = "fake GitHub"

    def __init__(
        self,
        token: str = TOKEN,
        login: str = LOGIN,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        self.handler = _Handler
        self.token = token
        self.login = login
        #: Seconds since the epoch; tests may swap it to step time for ``since`` queries.
        self.clock = clock
        #: Requests allowed per hour on the token; at 0 left, GitHub's primary limit answers.
        self.rate_limit = CORE_LIMIT
        self._used = 0
        self._reset = int(clock()) + 3600
        self._calls: list[GitHubCall] = []
        self._repos: dict[str, _Repo] = {}
        self._failures: list[_Failure] = []
        self._permissions_broken: int | None = None
        #: (org, team slug) → login → membership state (active, pending).
        self._teams: dict[tuple[str, str], dict[str, str]] = {}
        self._ids = {
            kind: itertools.count(start)
            for kind, start in [
                ("issue", 2_600_000_001),
                ("comment", 3_400_000_001),
                ("label", 7_100_000_001),
                ("deployment", 1_900_000_001),
                ("status", 4_300_000_001),
                ("pull", 2_100_000_001),
                ("review", 1_500_000_001),
                ("check_run", 2_900_000_001),
                ("commit_status", 4_600_000_001),
            ]
        }
        self._changed = threading.Condition()

    @property
    def url(self) -> str:
        """The ``base_url`` for ``github.Github`` (no /api/v3: PyGithub then asks at the root)."""
        return f"http://127.0.0.1:{self.port}"

    # -- what tests arrange ----------------------------------------------------

    def add_repo(
        self,
        full_name: str,
        collaborators: dict[str, str] | None = None,
        *,
        labels: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """A repository with collaborators by role (admin, maintain, write, triage, read)."""
        roles = dict(collaborators or {})
        for login, role in roles.items():
            if role not in ROLES:
                raise ValueError(f"{login}: role {role!r} is not one of {sorted(ROLES)}")
        with self._changed:
            repo = _Repo(repo_json(full_name, self.url), roles)
            self._repos[full_name.lower()] = repo
            for name, color in (labels or {}).items():
                self._label(repo, name, color)
            return copy.deepcopy(repo.json)

    def add_team(self, org: str, slug: str, members: dict[str, str]) -> None:
        """A team of ``org`` with its members' states (``active``, or ``pending`` while an
        invitation is not yet accepted)."""
        with self._changed:
            self._teams[(org.lower(), slug)] = dict(members)

    def open_issue(
        self,
        repo: str,
        title: str,
        body: str,
        user: str,
        labels: Iterable[str] = (),
        pull_request: bool = False,
        *,
        association: str | None = None,
    ) -> dict[str, Any]:
        """An issue opened by ``user``; with ``pull_request``, a PR as the issues API shows it."""
        with self._changed:
            issue = self._open(self._repo(repo), title, body, user, pull_request, association)
            for name in labels:
                self._put_label(self._repo(repo), issue, name, by=user)
            return copy.deepcopy(issue)

    def add_comment(
        self, repo: str, number: int, body: str, user: str, *, association: str | None = None
    ) -> dict[str, Any]:
        """A comment ``user`` wrote on issue or PR ``number``."""
        with self._changed:
            found = self._repo(repo)
            return copy.deepcopy(self._comment(found, number, body, user, association))

    def add_label(self, repo: str, number: int, name: str, by: str | None = None) -> dict[str, Any]:
        """A person (``by``; the issue's author unless given) labelling issue ``number``
        (the label is made if the repo lacks it)."""
        with self._changed:
            found = self._repo(repo)
            issue = self._find_issue(found, number)
            self._put_label(found, issue, name, by=by or issue["user"]["login"])
            return copy.deepcopy(self._label(found, name))

    def edit_comment(self, repo: str, comment_id: int, new_body: str) -> tuple[str, dict[str, Any]]:
        """A person editing a comment (ticking a task-list box): its old body, the comment now."""
        with self._changed:
            comment = self._find_comment(self._repo(repo), comment_id)
            old = str(comment["body"])
            comment["body"] = new_body
            comment["updated_at"] = self._now()
            return old, copy.deepcopy(comment)

    def set_branch(self, repo: str, branch: str, sha: str) -> None:
        """Where ``branch`` (or a fork's ``owner:branch``) points; a PR opened from it takes it."""
        with self._changed:
            self._repo(repo).branches[branch] = sha

    def open_pull(
        self,
        repo: str,
        title: str,
        body: str,
        user: str,
        head: str,
        base: str = "main",
        head_sha: str | None = None,
        draft: bool = False,
    ) -> dict[str, Any]:
        """A pull request ``user`` opened from ``head`` (``branch`` or ``owner:branch``); it is
        also issue ``number``, in the issues list and taking issue comments."""
        with self._changed:
            found = self._repo(repo)
            try:
                number = self._open_pull(found, title, body, user, head, base, head_sha, draft)
            except _Refusal as refusal:
                raise ValueError(_refusal_text(refusal)) from None
            return self._pull_json(found, number)

    def push_to_pull(self, repo: str, number: int, head_sha: str) -> dict[str, Any]:
        """A push to the PR's branch: its head (and the branch) now at ``head_sha``."""
        with self._changed:
            found = self._repo(repo)
            pull = self._find_pull(found, number)
            if found.issues[int(number)]["state"] != "open":
                raise ValueError(f"pull request #{number} is not open")
            pull.head_sha = head_sha
            found.branches[_branch_key(found, pull.head_owner, pull.head_ref)] = head_sha
            found.issues[int(number)]["updated_at"] = self._now()
            return self._pull_json(found, number)

    def merge_pull(self, repo: str, number: int, by: str, merge_commit_sha: str) -> dict[str, Any]:
        """``by`` merging an open PR: closed, merged, and its base branch at the merge commit."""
        with self._changed:
            found = self._repo(repo)
            pull, issue = self._find_pull(found, number), found.issues[int(number)]
            if issue["state"] != "open":
                raise ValueError(f"pull request #{number} is not open")
            self._close(issue, by)
            pull.merged_at, pull.merged_by = issue["closed_at"], by
            pull.merge_commit_sha = merge_commit_sha
            issue["pull_request"]["merged_at"] = pull.merged_at
            found.branches[pull.base_ref] = merge_commit_sha
            return self._pull_json(found, number)

    def close_pull(self, repo: str, number: int, by: str) -> dict[str, Any]:
        """``by`` closing a PR without merging it."""
        with self._changed:
            found = self._repo(repo)
            self._find_pull(found, number)
            self._close(found.issues[int(number)], by)
            return self._pull_json(found, number)

    def add_review(
        self, repo: str, number: int, user: str, state: str = "APPROVED", *, body: str = ""
    ) -> dict[str, Any]:
        """A review ``user`` submitted on the PR's head commit as it is now."""
        if state not in REVIEW_STATES:
            raise ValueError(f"review state {state!r} is not one of {REVIEW_STATES}")
        with self._changed:
            found = self._repo(repo)
            pull = self._find_pull(found, number)
            review_id, url = next(self._ids["review"]), f"{found.url}/pulls/{number}"
            web = f"{found.issues[int(number)]['html_url']}#pullrequestreview-{review_id}"
            review = {
                "id": review_id,
                "node_id": f"PRR_kwDOMolt{review_id}",
                "user": self._user(user),
                "body": body,
                "state": state,
                "html_url": web,
                "pull_request_url": url,
                "author_association": self._association(found, user),
                "_links": {"html": {"href": web}, "pull_request": {"href": url}},
                "submitted_at": self._now(),
                "commit_id": pull.head_sha,
            }
            pull.reviews.append(review)
            return copy.deepcopy(review)

    def set_check_runs(self, repo: str, sha: str, runs: Iterable[dict[str, Any]]) -> None:
        """Check runs on ``sha`` by ``name``, ``status`` and ``conclusion``; a run of a name
        already there replaces it (a re-run), the others stay."""
        with self._changed:
            found = self._repo(repo)
            made = [self._check_run(found, sha, run) for run in runs]
            names = {run["name"] for run in made}
            kept = [run for run in found.check_runs.get(sha, []) if run["name"] not in names]
            found.check_runs[sha] = kept + made

    def set_statuses(self, repo: str, sha: str, statuses: Iterable[dict[str, Any]]) -> None:
        """Commit statuses on ``sha`` by ``context`` and ``state``, newer than those there: the
        combined status counts the newest of each context."""
        with self._changed:
            found = self._repo(repo)
            made = [self._commit_status(found, sha, status) for status in statuses]
            found.commit_statuses.setdefault(sha, []).extend(made)

    def fail_next(
        self,
        method: str | None,
        path_contains: str,
        status: int,
        *,
        times: int = 1,
        land: bool = False,
        headers: dict[str, str] | None = None,
        body: Any = None,
    ) -> None:
        """Answer the next ``times`` matching requests with ``status``; with ``land`` the
        request takes effect first (a comment is created) and the error is answered after."""
        failure = _Failure(
            method,
            path_contains,
            status,
            times,
            land,
            {k.lower(): v for k, v in (headers or {}).items()},
            _error_body(status) if body is None else body,
        )
        with self._changed:
            self._failures.append(failure)

    def rate_limit_next(
        self,
        method: str | None,
        path_contains: str,
        *,
        kind: str = "secondary",
        retry_after: int = 1,
    ) -> None:
        """GitHub's own shapes: ``secondary`` (403 + Retry-After), ``primary`` (403, none
        remaining, reset in ``retry_after`` s) or ``429`` (429 + Retry-After)."""
        if kind == "primary":
            message = f"API rate limit exceeded for user ID {_stable_id(self.login)}."
            body = _error_body(403, message)
            failure = _Failure(method, path_contains, 403, 1, False, {}, body, retry_after)
            with self._changed:
                self._failures.append(failure)
            return
        if kind not in ("secondary", "429"):
            raise ValueError(f"kind {kind!r} is not secondary, primary or 429")
        status = 403 if kind == "secondary" else 429
        body = {
            "message": SECONDARY_MESSAGE,
            "documentation_url": f"{DOCS}/overview/rate-limits-for-the-rest-api"
            "#about-secondary-rate-limits",
        }
        self.fail_next(
            method, path_contains, status, headers={"retry-after": str(retry_after)}, body=body
        )

    def break_permissions(self, status: int = 500) -> None:
        """The permission endpoint answers ``status`` until mended (a bot must fail closed)."""
        with self._changed:
            self._permissions_broken = status

    def mend_permissions(self) -> None:
        with self._changed:
            self._permissions_broken = None

    def reset_calls(self) -> None:
        with self._changed:
            self._calls.clear()

    # -- what tests look at ----------------------------------------------------

    @property
    def calls(self) -> list[GitHubCall]:
        with self._changed:
            return list(self._calls)

    def calls_to(
        self, method: str | None = None, path_contains: str | None = None
    ) -> list[GitHubCall]:
        return [
            c
            for c in self.calls
            if (method is None or c.method == method.upper())
            and (path_contains is None or path_contains in c.path)
        ]

    def wait_for(self, predicate: Callable[[GitHubCall], bool], timeout: float = 5.0) -> GitHubCall:
        """The first recorded call matching ``predicate``, waiting up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for call in self._calls:
                    if predicate(call):
                        return call
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = ", ".join(f"{c.method} {c.path}" for c in self._calls) or "none"
                    raise TimeoutError(f"no matching GitHub call within {timeout} s ({seen})")
                self._changed.wait(left)

    def issue(self, repo: str, number: int) -> dict[str, Any]:
        with self._changed:
            return copy.deepcopy(self._find_issue(self._repo(repo), number))

    def comments(self, repo: str, number: int) -> list[dict[str, Any]]:
        """The comments on issue ``number`` as they stand now, oldest first."""
        with self._changed:
            found = self._repo(repo)
            self._find_issue(found, number)
            ids = sorted(i for i, n in found.comment_issue.items() if n == number)
            return [copy.deepcopy(found.comments[i]) for i in ids]

    def labels_on(self, repo: str, number: int) -> list[str]:
        with self._changed:
            return [label["name"] for label in self._find_issue(self._repo(repo), number)["labels"]]

    def repo_labels(self, repo: str) -> dict[str, str]:
        with self._changed:
            return {label["name"]: label["color"] for label in self._repo(repo).labels.values()}

    def deployments(self, repo: str) -> list[dict[str, Any]]:
        """Deployments oldest first, each with ``auto_merge``, ``required_contexts`` as asked
        and its ``statuses`` oldest first (the API lists both newest first)."""
        with self._changed:
            return [
                {
                    **copy.deepcopy(d.json),
                    "auto_merge": d.auto_merge,
                    "required_contexts": copy.deepcopy(d.required_contexts),
                    "statuses": copy.deepcopy(d.statuses),
                }
                for _, d in sorted(self._repo(repo).deployments.items())
            ]

    def pulls(self, repo: str) -> list[dict[str, Any]]:
        """Every pull request, oldest first, as ``GET /pulls/{n}`` shows it."""
        with self._changed:
            found = self._repo(repo)
            return [self._pull_json(found, number) for number in sorted(found.pulls)]

    def pull(self, repo: str, number: int) -> dict[str, Any]:
        with self._changed:
            found = self._repo(repo)
            self._find_pull(found, number)
            return self._pull_json(found, number)

    # -- one request -----------------------------------------------------------

    def handle(
        self, method: str, target: str, headers: dict[str, str], raw: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        """Answer one request: (status, headers, body bytes), and record it."""
        split = urlsplit(target)
        path = split.path.rstrip("/") or "/"
        query = dict(parse_qsl(split.query, keep_blank_values=True))
        body, readable = _decode(raw)
        with self._changed:
            reply = self._answer(method, path, query, headers, body, readable)
            data = b"" if reply.body is None else json.dumps(reply.body).encode()
            out = {"x-github-media-type": "github.v3; format=json"}
            if method == "GET" and reply.status == 200:
                out["etag"] = 'W/"' + hashlib.sha256(data).hexdigest() + '"'
                if _etag_matches(headers.get("if-none-match", ""), out["etag"]):
                    reply, data = _Reply(304), b""
            charged = reply.status not in (304, 401) and path != "/rate_limit"
            out.update(self._rate_headers(charge=charged))
            out.update(reply.headers)
            self._calls.append(
                GitHubCall(method, path, query, reply.status, headers, body, self.clock())
            )
            self._changed.notify_all()
        return reply.status, out, data

    def _answer(
        self,
        method: str,
        path: str,
        query: dict[str, str],
        headers: dict[str, str],
        body: Any,
        readable: bool,
    ) -> _Reply:
        if not self._authorised(headers.get("authorization", "")):
            return _Reply(401, _error_body(401))
        self._roll_window()
        if self._used >= self.rate_limit and path != "/rate_limit":
            message = f"API rate limit exceeded for user ID {_stable_id(self.login)}."
            return _Reply(403, _error_body(403, message))
        failure = self._take_failure(method, path)
        if failure is not None and not failure.land:
            return self._failure_reply(failure)
        if not readable and method in ("POST", "PATCH", "PUT"):
            reply = _Reply(400, _error_body(400))
        else:
            reply = self._route(method, path, query, body)
        return reply if failure is None else self._failure_reply(failure)

    def _route(self, method: str, path: str, query: dict[str, str], body: Any) -> _Reply:
        for verb, pattern, name in _ROUTES:
            match = pattern.fullmatch(path)
            if match is None or verb != method:
                continue
            handler: Handler = getattr(self, name)
            try:
                return handler(*[unquote(g) for g in match.groups()], query=query, body=body)
            except _Refusal as refusal:
                return refusal.reply
        return _Reply(404, _error_body(404))

    def _authorised(self, authorization: str) -> bool:
        scheme, _, presented = authorization.partition(" ")
        if scheme.lower() not in ("token", "bearer"):
            return False
        return hmac.compare_digest(presented.strip().encode(), self.token.encode())

    def _take_failure(self, method: str, path: str) -> _Failure | None:
        for failure in self._failures:
            if failure.matches(method, path):
                failure.times -= 1
                if failure.times <= 0:
                    self._failures.remove(failure)
                return failure
        return None

    def _failure_reply(self, failure: _Failure) -> _Reply:
        headers = dict(failure.headers)
        if failure.reset_after is not None:
            headers["x-ratelimit-remaining"] = "0"
            headers["x-ratelimit-used"] = str(self.rate_limit)
            headers["x-ratelimit-reset"] = str(int(self.clock()) + failure.reset_after)
        return _Reply(failure.status, copy.deepcopy(failure.body), headers)

    def _roll_window(self) -> None:
        if self.clock() >= self._reset:
            self._used = 0
            self._reset = int(self.clock()) + 3600

    def _rate_headers(self, *, charge: bool) -> dict[str, str]:
        """The counters GitHub sends on every answer; a 304 or a 401 leaves them as they were."""
        self._roll_window()
        if charge:
            self._used += 1
        return {
            "x-ratelimit-limit": str(self.rate_limit),
            "x-ratelimit-remaining": str(max(self.rate_limit - self._used, 0)),
            "x-ratelimit-reset": str(self._reset),
            "x-ratelimit-used": str(self._used),
            "x-ratelimit-resource": "core",
            "x-github-request-id": uuid.uuid4().hex[:20].upper(),
        }

    # -- state, shared by the helpers and the API ------------------------------

    def _now(self) -> str:
        return _stamp(self.clock())

    def _repo(self, full_name: str) -> _Repo:
        try:
            return self._repos[full_name.lower()]
        except KeyError:
            raise LookupError(f"no repository {full_name} on the fake GitHub") from None

    def _api_repo(self, owner: str, name: str) -> _Repo:
        repo = self._repos.get(f"{owner}/{name}".lower())
        if repo is None:
            raise _Refusal(404)
        return repo

    def _find_issue(self, repo: _Repo, number: int) -> dict[str, Any]:
        issue = repo.issues.get(int(number))
        if issue is None:
            raise _Refusal(404)
        return issue

    def _find_comment(self, repo: _Repo, comment_id: int) -> dict[str, Any]:
        comment = repo.comments.get(int(comment_id))
        if comment is None:
            raise _Refusal(404)
        return comment

    def _association(self, repo: _Repo, login: str) -> str:
        if login.lower() == repo.json["owner"]["login"].lower():
            return "OWNER"
        return "COLLABORATOR" if repo.roles.get(login, "none") != "none" else "NONE"

    def _user(self, login: str) -> dict[str, Any]:
        return user_json(login, self.url)

    def _open(
        self,
        repo: _Repo,
        title: str,
        body: str | None,
        login: str,
        pull_request: bool,
        association: str | None,
    ) -> dict[str, Any]:
        number, repo.next_number = repo.next_number, repo.next_number + 1
        issue_id, now = next(self._ids["issue"]), self._now()
        url = f"{repo.url}/issues/{number}"
        web = f"{WEB}/{repo.full_name}/{'pull' if pull_request else 'issues'}/{number}"
        issue: dict[str, Any] = {
            "url": url,
            "repository_url": repo.url,
            "labels_url": url + "/labels{/name}",
            "comments_url": url + "/comments",
            "events_url": url + "/events",
            "html_url": web,
            "id": issue_id,
            "node_id": f"{'PR' if pull_request else 'I'}_kwDOMolt{issue_id}",
            "number": number,
            "title": title,
            "user": self._user(login),
            "labels": [],
            "state": "open",
            "locked": False,
            "assignee": None,
            "assignees": [],
            "milestone": None,
            "comments": 0,
            "created_at": now,
            "updated_at": now,
            "closed_at": None,
            "author_association": association or self._association(repo, login),
            "active_lock_reason": None,
            "body": body,
            "state_reason": None,
        }
        if pull_request:
            issue["draft"] = False
            issue["pull_request"] = {
                "url": f"{repo.url}/pulls/{number}",
                "html_url": web,
                "diff_url": web + ".diff",
                "patch_url": web + ".patch",
                "merged_at": None,
            }
        repo.issues[number] = issue
        return issue

    def _comment(
        self, repo: _Repo, number: int, body: str, login: str, association: str | None
    ) -> dict[str, Any]:
        issue = self._find_issue(repo, number)
        comment_id, now = next(self._ids["comment"]), self._now()
        comment = {
            "url": f"{repo.url}/issues/comments/{comment_id}",
            "html_url": f"{issue['html_url']}#issuecomment-{comment_id}",
            "issue_url": issue["url"],
            "id": comment_id,
            "node_id": f"IC_kwDOMolt{comment_id}",
            "user": self._user(login),
            "created_at": now,
            "updated_at": now,
            "author_association": association or self._association(repo, login),
            "body": body,
            "performed_via_github_app": None,
        }
        repo.comments[comment_id] = comment
        repo.comment_issue[comment_id] = int(number)
        issue["comments"] += 1
        issue["updated_at"] = now
        return comment

    def _label(
        self, repo: _Repo, name: str, color: str = "ededed", description: str | None = None
    ) -> dict[str, Any]:
        """The repository's label ``name``, made on first use as GitHub does when labelling."""
        label = repo.labels.get(name.lower())
        if label is None:
            label_id = next(self._ids["label"])
            label = {
                "id": label_id,
                "node_id": f"LA_kwDOMolt{label_id}",
                "url": f"{repo.url}/labels/{quote(name, safe='')}",
                "name": name,
                "color": color.removeprefix("#"),
                "default": False,
                "description": description,
            }
            repo.labels[name.lower()] = label
        return label

    def _put_label(
        self, repo: _Repo, issue: dict[str, Any], name: str, by: str | None = None
    ) -> None:
        """Label ``issue``, recording the ``labeled`` event GitHub keeps (who, which label)."""
        if all(label["name"].lower() != name.lower() for label in issue["labels"]):
            label = copy.deepcopy(self._label(repo, name))
            issue["labels"].append(label)
            issue["updated_at"] = self._now()
            actor = by or self.login
            events = repo.events.setdefault(int(issue["number"]), [])
            events.append(
                {
                    "id": _stable_id(f"event:{issue['id']}:{len(events)}"),
                    "event": "labeled",
                    "actor": user_json(actor, self.url),
                    "label": {"name": label["name"], "color": label["color"]},
                    "created_at": issue["updated_at"],
                    "url": f"{repo.url}/issues/events/{len(events)}",
                }
            )

    def _page(self, items: list[dict[str, Any]], path: str, query: dict[str, str]) -> _Reply:
        """One page of ``items`` with GitHub's ``Link`` header to the others."""
        per_page = min(max(_int(query.get("per_page"), 30), 1), 100)
        page = max(_int(query.get("page"), 1), 1)
        last = max((len(items) + per_page - 1) // per_page, 1)
        links = []
        for rel, number in [("prev", page - 1), ("next", page + 1), ("first", 1), ("last", last)]:
            if 1 <= number <= last and number != page:
                links.append(
                    f'<{self.url}{path}?{urlencode({**query, "page": number})}>; rel="{rel}"'
                )
        headers = {"link": ", ".join(links)} if links else {}
        return _Reply(200, items[(page - 1) * per_page : page * per_page], headers)

    # -- the API: users, repository --------------------------------------------

    def _get_user(self, *, query: dict[str, str], body: Any) -> _Reply:
        return _Reply(
            200, {**self._user(self.login), "name": self.login}, {"x-oauth-scopes": "repo"}
        )

    def _get_named_user(self, login: str, *, query: dict[str, str], body: Any) -> _Reply:
        return _Reply(200, self._user(login))

    def _get_rate_limit(self, *, query: dict[str, str], body: Any) -> _Reply:
        core = {
            "limit": self.rate_limit,
            "used": self._used,
            "remaining": max(self.rate_limit - self._used, 0),
            "reset": self._reset,
        }
        return _Reply(200, {"resources": {"core": core}, "rate": core})

    def _get_repo(self, owner: str, name: str, *, query: dict[str, str], body: Any) -> _Reply:
        return _Reply(200, copy.deepcopy(self._api_repo(owner, name).json))

    def _get_permission(
        self, owner: str, name: str, login: str, *, query: dict[str, str], body: Any
    ) -> _Reply:
        repo = self._api_repo(owner, name)
        if self._permissions_broken is not None:
            return _Reply(self._permissions_broken, _error_body(self._permissions_broken))
        role = repo.roles.get(login, "none")
        permission = ROLES[role]
        permissions = {
            "admin": role == "admin",
            "maintain": role in ("admin", "maintain"),
            "push": permission in ("admin", "write"),
            "triage": permission != "none" and role != "read",
            "pull": permission != "none",
        }
        user = {**self._user(login), "permissions": permissions, "role_name": role}
        return _Reply(200, {"permission": permission, "role_name": role, "user": user})

    def _get_team_membership(
        self, org: str, slug: str, login: str, *, query: dict[str, str], body: Any
    ) -> _Reply:
        """200 with the membership's role and state; 404 for no membership or no team."""
        team = self._teams.get((org.lower(), slug))
        state = (team or {}).get(login)
        if state is None:
            return _Reply(404, _error_body(404))
        team_path = f"/organizations/{_stable_id(org)}/team/{_stable_id(slug)}"
        url = f"{self.url}{team_path}/memberships/{login}"
        return _Reply(200, {"url": url, "role": "member", "state": state})

    # -- the API: issues -------------------------------------------------------

    def _list_issues(self, owner: str, name: str, *, query: dict[str, str], body: Any) -> _Reply:
        repo = self._api_repo(owner, name)
        state = query.get("state", "open")
        wanted = {n.strip().lower() for n in query.get("labels", "").split(",") if n.strip()}
        since = _since(query)
        found = []
        for issue in repo.issues.values():
            names = {label["name"].lower() for label in issue["labels"]}
            if state != "all" and issue["state"] != state:
                continue
            if not wanted <= names or (since and _parse_time(issue["updated_at"]) < since):
                continue
            if query.get("creator") and issue["user"]["login"] != query["creator"]:
                continue
            found.append(issue)
        sort = query.get("sort", "created")
        if sort not in ("created", "updated", "comments"):
            raise _Refusal(422, _error_body(422, f"sort {sort!r} is not valid"))
        key = "comments" if sort == "comments" else f"{sort}_at"
        found.sort(key=lambda i: (i[key], i["number"]), reverse=query.get("direction") != "asc")
        return self._page(copy.deepcopy(found), f"/repos/{owner}/{name}/issues", query)

    def _create_issue(self, owner: str, name: str, *, query: dict[str, str], body: Any) -> _Reply:
        repo = self._api_repo(owner, name)
        fields = _object(body)
        if not isinstance(fields.get("title"), str) or not fields["title"]:
            raise _Refusal(422, _error_body(422, "title wasn't supplied"))
        issue = self._open(repo, fields["title"], fields.get("body"), self.login, False, None)
        for label in fields.get("labels") or []:
            self._put_label(repo, issue, _label_name(label))
        return _Reply(201, copy.deepcopy(issue))

    def _get_issue(
        self, owner: str, name: str, number: str, *, query: dict[str, str], body: Any
    ) -> _Reply:
        return _Reply(
            200, copy.deepcopy(self._find_issue(self._api_repo(owner, name), int(number)))
        )

    def _patch_issue(
        self, owner: str, name: str, number: str, *, query: dict[str, str], body: Any
    ) -> _Reply:
        repo = self._api_repo(owner, name)
        issue, fields = self._find_issue(repo, int(number)), _object(body)
        if fields.get("state") not in (None, "open", "closed"):
            raise _Refusal(422, _error_body(422, "state must be open or closed"))
        for key in ("title", "body"):
            if key in fields:
                issue[key] = fields[key]
        if fields.get("state") and fields["state"] != issue["state"]:
            issue["state"] = fields["state"]
            closed = fields["state"] == "closed"
            issue["closed_at"] = self._now() if closed else None
            issue["state_reason"] = (
                fields.get("state_reason", "completed") if closed else "reopened"
            )
        if "labels" in fields:
            issue["labels"] = []
            for label in fields["labels"] or []:
                self._put_label(repo, issue, _label_name(label))
        issue["updated_at"] = self._now()
        return _Reply(200, copy.deepcopy(issue))

    # -- the API: comments -----------------------------------------------------

    def _list_comments(
        self, owner: str, name: str, number: str, *, query: dict[str, str], body: Any
    ) -> _Reply:
        repo = self._api_repo(owner, name)
        self._find_issue(repo, int(number))
        since = _since(query)
        found = [
            c
            for i, c in sorted(repo.comments.items())
            if repo.comment_issue[i] == int(number)
            and (since is None or _parse_time(c["updated_at"]) >= since)
        ]
        path = f"/repos/{owner}/{name}/issues/{number}/comments"
        return self._page(copy.deepcopy(found), path, query)

    def _list_repo_comments(
        self, owner: str, name: str, *, query: dict[str, str], body: Any
    ) -> _Reply:
        """Every comment in the repository; ascending unless ``direction=desc`` with a sort."""
        repo = self._api_repo(owner, name)
        since = _since(query)
        found = [
            c
            for c in repo.comments.values()
            if since is None or _parse_time(c["updated_at"]) >= since
        ]
        sort = query.get("sort", "created")
        if sort not in ("created", "updated"):
            raise _Refusal(422, _error_body(422, f"sort {sort!r} is not valid"))
        descending = "sort" in query and query.get("direction") == "desc"
        found.sort(key=lambda c: (c[f"{sort}_at"], c["id"]), reverse=descending)
        return self._page(copy.deepcopy(found), f"/repos/{owner}/{name}/issues/comments", query)

    def _create_comment(
        self, owner: str, name: str, number: str, *, query: dict[str, str], body: Any
    ) -> _Reply:
        repo = self._api_repo(owner, name)
        text = _object(body).get("body")
        if not isinstance(text, str) or not text:
            raise _Refusal(422, _error_body(422, "body wasn't supplied"))
        comment = self._comment(repo, int(number), text, self.login, None)
        return _Reply(201, copy.deepcopy(comment), {"location": comment["url"]})

    def _get_comment(
        self, owner: str, name: str, comment_id: str, *, query: dict[str, str], body: Any
    ) -> _Reply:
        repo = self._api_repo(owner, name)
        return _Reply(200, copy.deepcopy(self._find_comment(repo, int(comment_id))))

    def _patch_comment(
        self, owner: str, name: str, comment_id: str, *, query: dict[str, str], body: Any
    ) -> _Reply:
        comment = self._find_comment(self._api_repo(owner, name), int(comment_id))
        text = _object(body).get("body")
        if not isinstance(text, str) or not text:
            raise _Refusal(422, _error_body(422, "body wasn't supplied"))
        comment["body"] = text
        comment["updated_at"] = self._now()
        return _Reply(200, copy.deepcopy(comment))

    def _delete_comment(
        self, owner: str, name: str, comment_id: str, *, query: dict[str, str], body: Any
    ) -> _Reply:
        repo = self._api_repo(owner, name)
        self._find_comment(repo, int(comment_id))
        del repo.comments[int(comment_id)]
        number = repo.comment_issue.pop(int(comment_id))
        repo.issues[number]["comments"] -= 1
        return _Reply(204)

    # -- the API: labels -------------------------------------------------------

    def _issue_labels(self, owner: str, name: str, number: str) -> tuple[_Repo, dict[str, Any]]:
        repo = self._api_repo(owner, name)
        return repo, self._find_issue(repo, int(number))

    def _list_issue_labels(
        self, owner: str, name: str, number: str, *, query: dict[str, str], body: Any
    ) -> _Reply:
        _, issue = self._issue_labels(owner, name, number)
        return self._page(
            copy.deepcopy(issue["labels"]), f"/repos/{owner}/{name}/issues/{number}/labels", query
        )

    def _list_issue_events(
        self, owner: str, name: str, number: str, *, query: dict[str, str], body: Any
    ) -> _Reply:
        repo, issue = self._issue_labels(owner, name, number)
        events = copy.deepcopy(repo.events.get(int(issue["number"]), []))
        return self._page(events, f"/repos/{owner}/{name}/issues/{number}/events", query)

    def _add_labels(
        self, owner: str, name: str, number: str, *, query: dict[str, str], body: Any
    ) -> _Reply:
        """Adds to what is there and answers every label now on the issue."""
        repo, issue = self._issue_labels(owner, name, number)
        for label in _label_names(body):
            self._put_label(repo, issue, label)
        return _Reply(200, copy.deepcopy(issue["labels"]))

    def _set_labels(
        self, owner: str, name: str, number: str, *, query: dict[str, str], body: Any
    ) -> _Reply:
        repo, issue = self._issue_labels(owner, name, number)
        names = _label_names(body)
        issue["labels"] = []
        for label in names:
            self._put_label(repo, issue, label)
        issue["updated_at"] = self._now()
        return _Reply(200, copy.deepcopy(issue["labels"]))

    def _clear_labels(
        self, owner: str, name: str, number: str, *, query: dict[str, str], body: Any
    ) -> _Reply:
        _, issue = self._issue_labels(owner, name, number)
        issue["labels"] = []
        issue["updated_at"] = self._now()
        return _Reply(204)

    def _remove_label(
        self, owner: str, name: str, number: str, label: str, *, query: dict[str, str], body: Any
    ) -> _Reply:
        _, issue = self._issue_labels(owner, name, number)
        kept = [one for one in issue["labels"] if one["name"].lower() != label.lower()]
        if len(kept) == len(issue["labels"]):
            raise _Refusal(404, _error_body(404, "Label does not exist"))
        issue["labels"] = kept
        issue["updated_at"] = self._now()
        return _Reply(200, copy.deepcopy(kept))

    def _list_labels(self, owner: str, name: str, *, query: dict[str, str], body: Any) -> _Reply:
        labels = list(self._api_repo(owner, name).labels.values())
        return self._page(copy.deepcopy(labels), f"/repos/{owner}/{name}/labels", query)

    def _get_label(
        self, owner: str, name: str, label: str, *, query: dict[str, str], body: Any
    ) -> _Reply:
        found = self._api_repo(owner, name).labels.get(label.lower())
        if found is None:
            raise _Refusal(404)
        return _Reply(200, copy.deepcopy(found))

    def _create_label(self, owner: str, name: str, *, query: dict[str, str], body: Any) -> _Reply:
        repo, fields = self._api_repo(owner, name), _object(body)
        label = fields.get("name")
        if not isinstance(label, str) or not label:
            raise _Refusal(422, _validation("Label", "missing_field", "name"))
        if label.lower() in repo.labels:
            raise _Refusal(422, _validation("Label", "already_exists", "name"))
        color = str(fields.get("color") or "ededed").removeprefix("#")
        if not re.fullmatch(r"[0-9a-fA-F]{6}", color):
            raise _Refusal(422, _validation("Label", "invalid", "color"))
        made = self._label(repo, label, color, fields.get("description"))
        return _Reply(201, copy.deepcopy(made))

    # -- the API: deployments --------------------------------------------------

    def _find_deployment(self, repo: _Repo, deployment_id: str) -> _Deployment:
        found = repo.deployments.get(int(deployment_id))
        if found is None:
            raise _Refusal(404)
        return found

    def _create_deployment(
        self, owner: str, name: str, *, query: dict[str, str], body: Any
    ) -> _Reply:
        repo, fields = self._api_repo(owner, name), _object(body)
        ref = fields.get("ref")
        if not isinstance(ref, str) or not ref:
            raise _Refusal(422, _validation("Deployment", "missing_field", "ref"))
        deployment_id, now = next(self._ids["deployment"]), self._now()
        environment = str(fields.get("environment") or "production")
        url = f"{repo.url}/deployments/{deployment_id}"
        deployment = {
            "url": url,
            "id": deployment_id,
            "node_id": f"DE_kwDOMolt{deployment_id}",
            "task": fields.get("task", "deploy"),
            "original_environment": environment,
            "environment": environment,
            "description": fields.get("description"),
            "created_at": now,
            "updated_at": now,
            "statuses_url": url + "/statuses",
            "repository_url": repo.url,
            "creator": self._user(self.login),
            "sha": ref,
            "ref": ref,
            "payload": fields.get("payload") or {},
            "transient_environment": bool(fields.get("transient_environment", False)),
            "production_environment": bool(
                fields.get("production_environment", environment == "production")
            ),
            "performed_via_github_app": None,
        }
        repo.deployments[deployment_id] = _Deployment(
            deployment, bool(fields.get("auto_merge", True)), fields.get("required_contexts")
        )
        return _Reply(201, copy.deepcopy(deployment))

    def _list_deployments(
        self, owner: str, name: str, *, query: dict[str, str], body: Any
    ) -> _Reply:
        repo = self._api_repo(owner, name)
        found = [
            d.json
            for _, d in sorted(repo.deployments.items(), reverse=True)
            if all(
                d.json[key] == query[key]
                for key in ("sha", "ref", "task", "environment")
                if key in query
            )
        ]
        return self._page(copy.deepcopy(found), f"/repos/{owner}/{name}/deployments", query)

    def _get_deployment(
        self, owner: str, name: str, deployment_id: str, *, query: dict[str, str], body: Any
    ) -> _Reply:
        found = self._find_deployment(self._api_repo(owner, name), deployment_id)
        return _Reply(200, copy.deepcopy(found.json))

    def _list_statuses(
        self, owner: str, name: str, deployment_id: str, *, query: dict[str, str], body: Any
    ) -> _Reply:
        found = self._find_deployment(self._api_repo(owner, name), deployment_id)
        path = f"/repos/{owner}/{name}/deployments/{deployment_id}/statuses"
        return self._page(copy.deepcopy(found.statuses[::-1]), path, query)

    def _create_status(
        self, owner: str, name: str, deployment_id: str, *, query: dict[str, str], body: Any
    ) -> _Reply:
        """A status; a ``success`` adds ``inactive`` to the earlier deployments of the same
        environment, unless ``auto_inactive`` is false."""
        repo, fields = self._api_repo(owner, name), _object(body)
        deployment = self._find_deployment(repo, deployment_id)
        state = fields.get("state")
        if state not in DEPLOYMENT_STATES:
            raise _Refusal(422, _validation("DeploymentStatus", "invalid", "state"))
        if fields.get("environment"):
            deployment.json["environment"] = str(fields["environment"])
        status = self._status(deployment, repo, state, fields)
        if state == "success" and fields.get("auto_inactive", True) is not False:
            for earlier_id, earlier in sorted(repo.deployments.items()):
                if earlier_id >= deployment.json["id"]:
                    break
                same = earlier.json["environment"] == deployment.json["environment"]
                last = earlier.statuses[-1]["state"] if earlier.statuses else None
                if same and last != "inactive":
                    self._status(earlier, repo, "inactive", {})
        return _Reply(201, copy.deepcopy(status))

    def _status(
        self, deployment: _Deployment, repo: _Repo, state: str, fields: dict[str, Any]
    ) -> dict[str, Any]:
        status_id, now = next(self._ids["status"]), self._now()
        log_url = str(fields.get("log_url") or fields.get("target_url") or "")
        status = {
            "url": f"{deployment.json['url']}/statuses/{status_id}",
            "id": status_id,
            "node_id": f"DES_kwDOMolt{status_id}",
            "state": state,
            "creator": self._user(self.login),
            "description": str(fields.get("description") or ""),
            "environment": deployment.json["environment"],
            "target_url": log_url,
            "log_url": log_url,
            "environment_url": str(fields.get("environment_url") or ""),
            "created_at": now,
            "updated_at": now,
            "deployment_url": deployment.json["url"],
            "repository_url": repo.url,
            "performed_via_github_app": None,
        }
        deployment.statuses.append(status)
        deployment.json["updated_at"] = now
        return status

    # -- pull requests, checks and statuses: state -----------------------------

    def _find_pull(self, repo: _Repo, number: int | str) -> _Pull:
        pull = repo.pulls.get(int(number))
        if pull is None:
            raise _Refusal(404)
        return pull

    def _open_pull(
        self,
        repo: _Repo,
        title: str,
        body: str | None,
        login: str,
        head: str,
        base: str,
        head_sha: str | None,
        draft: bool,
    ) -> int:
        """A PR and its issue; refused as GitHub refuses a second open PR for a head and base."""
        owner, _, ref = head.rpartition(":")
        owner = owner or repo.owner
        if owner.lower() == repo.owner.lower() and ref == base:
            raise _Refusal(422, _custom("PullRequest", f"No commits between {base} and {ref}"))
        self._refuse_twin(repo, owner, ref, base)
        label, key = f"{owner}:{ref}", _branch_key(repo, owner, ref)
        sha = head_sha or repo.branches.get(key) or _fake_sha(f"{repo.full_name}:{label}")
        repo.branches[key] = sha
        issue = self._open(repo, title, body, login, True, None)
        issue["draft"] = draft
        pull = _Pull(next(self._ids["pull"]), owner, ref, sha, base, draft)
        repo.pulls[issue["number"]] = pull
        return int(issue["number"])

    def _refuse_twin(self, repo: _Repo, owner: str, ref: str, base: str) -> None:
        """GitHub allows one open PR per head and base."""
        label = f"{owner}:{ref}"
        for number, other in repo.pulls.items():
            same = f"{other.head_owner}:{other.head_ref}".lower() == label.lower()
            if same and other.base_ref == base and repo.issues[number]["state"] == "open":
                raise _Refusal(
                    422, _custom("PullRequest", f"A pull request already exists for {label}.")
                )

    def _close(self, issue: dict[str, Any], by: str | None) -> None:
        issue["state"], issue["state_reason"] = "closed", "completed"
        issue["closed_at"] = issue["updated_at"] = self._now()
        issue["closed_by"] = self._user(by or self.login)

    def _branch_sha(self, repo: _Repo, ref: str) -> str:
        return repo.branches.get(ref) or _fake_sha(f"{repo.full_name}:{repo.owner}:{ref}")

    def _resolve_ref(self, repo: _Repo, ref: str) -> str:
        """The commit a ref names: a branch the repo knows, the default branch, or a sha."""
        if ref in repo.branches or ref == repo.json["default_branch"]:
            return self._branch_sha(repo, ref)
        if re.fullmatch(r"[0-9a-f]{7,40}", ref):
            return ref
        raise _Refusal(422, _error_body(422, f"No commit found for SHA: {ref}"))

    def _pull_end(self, repo: _Repo, owner: str, ref: str, sha: str) -> dict[str, Any]:
        """``head`` or ``base``: a fork's head names the fork's repository."""
        same = owner.lower() == repo.owner.lower()
        where = repo.json if same else repo_json(f"{owner}/{repo.json['name']}", self.url)
        return {
            "label": f"{owner}:{ref}",
            "ref": ref,
            "sha": sha,
            "user": self._user(owner),
            "repo": copy.deepcopy(where),
        }

    def _pull_json(self, repo: _Repo, number: int, *, full: bool = True) -> dict[str, Any]:
        """GitHub's pull request; the list leaves out what only ``GET /pulls/{n}`` says."""
        issue, pull = repo.issues[int(number)], repo.pulls[int(number)]
        url, web = f"{repo.url}/pulls/{number}", issue["html_url"]
        shown = ("state", "locked", "title", "user", "body", "labels", "milestone")
        shown += ("active_lock_reason", "created_at", "updated_at", "closed_at")
        shown += ("assignee", "assignees", "author_association")
        statuses = f"{repo.url}/statuses/{pull.head_sha}"
        data: dict[str, Any] = {
            "url": url,
            "id": pull.id,
            "node_id": f"PR_kwDOMolt{pull.id}",
            "html_url": web,
            "diff_url": web + ".diff",
            "patch_url": web + ".patch",
            "issue_url": issue["url"],
            "commits_url": url + "/commits",
            "review_comments_url": url + "/comments",
            "review_comment_url": f"{repo.url}/pulls/comments{{/number}}",
            "comments_url": issue["comments_url"],
            "statuses_url": statuses,
            "number": int(number),
            **{key: copy.deepcopy(issue[key]) for key in shown},
            "merged_at": pull.merged_at,
            "merge_commit_sha": pull.merge_commit_sha,
            "requested_reviewers": [],
            "requested_teams": [],
            "head": self._pull_end(repo, pull.head_owner, pull.head_ref, pull.head_sha),
            "base": self._pull_end(
                repo, repo.owner, pull.base_ref, self._branch_sha(repo, pull.base_ref)
            ),
            "_links": {
                "self": {"href": url},
                "html": {"href": web},
                "issue": {"href": issue["url"]},
                "comments": {"href": issue["comments_url"]},
                "commits": {"href": url + "/commits"},
                "statuses": {"href": statuses},
            },
            "auto_merge": None,
            "draft": pull.draft,
        }
        if full:
            data.update(self._pull_detail(issue, pull))
        return data

    def _pull_detail(self, issue: dict[str, Any], pull: _Pull) -> dict[str, Any]:
        """Merge state and counts: mergeable while open, ``null`` once closed as on GitHub."""
        is_open = issue["state"] == "open"
        return {
            "merged": pull.merged_at is not None,
            "mergeable": True if is_open else None,
            "rebaseable": True if is_open else None,
            "mergeable_state": ("draft" if pull.draft else "clean") if is_open else "unknown",
            "merged_by": self._user(pull.merged_by) if pull.merged_by else None,
            "comments": issue["comments"],
            "review_comments": 0,
            "maintainer_can_modify": pull.maintainer_can_modify,
            "commits": 1,
            "additions": 1,
            "deletions": 0,
            "changed_files": 1,
        }

    def _check_run(self, repo: _Repo, sha: str, run: dict[str, Any]) -> dict[str, Any]:
        status, conclusion = run.get("status", "completed"), run.get("conclusion")
        if status not in CHECK_STATUSES:
            raise ValueError(f"check run status {status!r} is not one of {CHECK_STATUSES}")
        if (status == "completed") != (conclusion is not None) or (
            conclusion is not None and conclusion not in CHECK_CONCLUSIONS
        ):
            raise ValueError(f"check run conclusion {conclusion!r} does not fit {status!r}")
        run_id, now = next(self._ids["check_run"]), self._now()
        web = f"{WEB}/{repo.full_name}/runs/{run_id}"
        return {
            "id": run_id,
            "head_sha": sha,
            "node_id": f"CR_kwDOMolt{run_id}",
            "external_id": "",
            "url": f"{repo.url}/check-runs/{run_id}",
            "html_url": web,
            "details_url": web,
            "status": status,
            "conclusion": conclusion,
            "started_at": now,
            "completed_at": now if status == "completed" else None,
            "output": {
                "title": run.get("title"),
                "summary": run.get("summary"),
                "text": None,
                "annotations_count": 0,
                "annotations_url": f"{repo.url}/check-runs/{run_id}/annotations",
            },
            "name": str(run["name"]),
            "check_suite": {"id": _stable_id("suite:" + sha)},
            "app": _app_json(),
            "pull_requests": [],
        }

    def _commit_status(self, repo: _Repo, sha: str, status: dict[str, Any]) -> dict[str, Any]:
        state = status.get("state")
        if state not in COMMIT_STATES:
            raise ValueError(f"commit status state {state!r} is not one of {COMMIT_STATES}")
        status_id, now = next(self._ids["commit_status"]), self._now()
        creator = self._user(str(status.get("creator") or "ci-bot"))
        return {
            "url": f"{repo.url}/statuses/{sha}",
            "avatar_url": creator["avatar_url"],
            "id": status_id,
            "node_id": f"SC_kwDOMolt{status_id}",
            "state": state,
            "description": status.get("description"),
            "target_url": status.get("target_url"),
            "context": str(status.get("context") or "default"),
            "created_at": now,
            "updated_at": now,
            "creator": creator,
        }

    # -- the API: pull requests ------------------------------------------------

    def _create_pull(self, owner: str, name: str, *, query: dict[str, str], body: Any) -> _Reply:
        repo, fields = self._api_repo(owner, name), _object(body)
        for key in ("head", "base", "title"):
            if not isinstance(fields.get(key), str) or not fields[key]:
                raise _Refusal(422, _validation("PullRequest", "missing_field", key))
        number = self._open_pull(
            repo,
            fields["title"],
            fields.get("body"),
            self.login,
            fields["head"],
            fields["base"],
            None,
            bool(fields.get("draft", False)),
        )
        repo.pulls[number].maintainer_can_modify = bool(fields.get("maintainer_can_modify", True))
        pull = self._pull_json(repo, number)
        return _Reply(201, pull, {"location": pull["url"]})

    def _list_pulls(self, owner: str, name: str, *, query: dict[str, str], body: Any) -> _Reply:
        """``state``, ``head`` (``owner:branch``), ``base``; newest first unless sorted else."""
        repo = self._api_repo(owner, name)
        state, sort = query.get("state", "open"), query.get("sort", "created")
        if state not in ("open", "closed", "all"):
            raise _Refusal(422, _validation("PullRequest", "invalid", "state"))
        keys = {"created": "created_at", "updated": "updated_at"}
        keys |= {"popularity": "comments", "long-running": "created_at"}
        if sort not in keys:
            raise _Refusal(422, _validation("PullRequest", "invalid", "sort"))
        found = []
        for number in repo.pulls:
            pull = self._pull_json(repo, number, full=False)
            if state != "all" and pull["state"] != state:
                continue
            if query.get("head") and pull["head"]["label"].lower() != query["head"].lower():
                continue
            if query.get("base") and pull["base"]["ref"] != query["base"]:
                continue
            found.append(pull)
        default = "desc" if sort == "created" else "asc"
        descending = query.get("direction", default) == "desc"

        def order(pull: dict[str, Any]) -> tuple[Any, int]:
            number = pull["number"]
            key = repo.issues[number]["comments"] if sort == "popularity" else pull[keys[sort]]
            return key, number

        found.sort(key=order, reverse=descending)
        return self._page(found, f"/repos/{owner}/{name}/pulls", query)

    def _get_pull(
        self, owner: str, name: str, number: str, *, query: dict[str, str], body: Any
    ) -> _Reply:
        repo = self._api_repo(owner, name)
        self._find_pull(repo, number)
        return _Reply(200, self._pull_json(repo, int(number)))

    def _patch_pull(
        self, owner: str, name: str, number: str, *, query: dict[str, str], body: Any
    ) -> _Reply:
        """Title, body, base, state: a merged PR stays closed, a reopened one must be alone."""
        repo, fields = self._api_repo(owner, name), _object(body)
        pull, issue = self._find_pull(repo, number), repo.issues[int(number)]
        if fields.get("state") not in (None, "open", "closed"):
            raise _Refusal(422, _validation("PullRequest", "invalid", "state"))
        if fields.get("state") == "open" and issue["state"] == "closed":
            if pull.merged_at is not None:
                raise _Refusal(
                    422,
                    _custom(
                        "PullRequest", "state cannot be changed. The pull request has been merged."
                    ),
                )
            self._refuse_twin(repo, pull.head_owner, pull.head_ref, pull.base_ref)
            issue["state"], issue["state_reason"], issue["closed_at"] = "open", "reopened", None
        elif fields.get("state") == "closed" and issue["state"] == "open":
            self._close(issue, self.login)
        for key in ("title", "body"):
            if key in fields:
                issue[key] = fields[key]
        if isinstance(fields.get("base"), str) and fields["base"]:
            pull.base_ref = fields["base"]
        if "maintainer_can_modify" in fields:
            pull.maintainer_can_modify = bool(fields["maintainer_can_modify"])
        issue["updated_at"] = self._now()
        return _Reply(200, self._pull_json(repo, int(number)))

    def _list_reviews(
        self, owner: str, name: str, number: str, *, query: dict[str, str], body: Any
    ) -> _Reply:
        """Reviews oldest first, as GitHub lists them."""
        pull = self._find_pull(self._api_repo(owner, name), number)
        path = f"/repos/{owner}/{name}/pulls/{number}/reviews"
        return self._page(copy.deepcopy(pull.reviews), path, query)

    # -- the API: commits, check runs, statuses --------------------------------

    def _get_commit(
        self, owner: str, name: str, ref: str, *, query: dict[str, str], body: Any
    ) -> _Reply:
        repo = self._api_repo(owner, name)
        sha = self._resolve_ref(repo, ref)
        person = {"name": "Molt Test", "email": "test@molt.example", "date": self._now()}
        return _Reply(
            200,
            {
                "sha": sha,
                "node_id": f"C_kwDOMolt{sha[:12]}",
                "url": f"{repo.url}/commits/{sha}",
                "html_url": f"{WEB}/{repo.full_name}/commit/{sha}",
                "commit": {"message": f"Commit {sha[:7]}", "author": person, "committer": person},
                "parents": [],
                "files": [],
                "stats": {"total": 0, "additions": 0, "deletions": 0},
            },
        )

    def _list_check_runs(
        self, owner: str, name: str, ref: str, *, query: dict[str, str], body: Any
    ) -> _Reply:
        """``{"total_count", "check_runs"}``, filtered by ``check_name`` and ``status``."""
        repo = self._api_repo(owner, name)
        runs = [
            run
            for run in repo.check_runs.get(self._resolve_ref(repo, ref), [])
            if query.get("check_name", run["name"]) == run["name"]
            and query.get("status", run["status"]) == run["status"]
        ]
        path = f"/repos/{owner}/{name}/commits/{quote(ref, safe='')}/check-runs"
        page = self._page(copy.deepcopy(runs), path, query)
        page.body = {"total_count": len(runs), "check_runs": page.body}
        return page

    def _get_combined_status(
        self, owner: str, name: str, ref: str, *, query: dict[str, str], body: Any
    ) -> _Reply:
        """The newest status of each context; failure if any failed or errored, pending if any
        is pending or there are none, else success."""
        repo = self._api_repo(owner, name)
        sha = self._resolve_ref(repo, ref)
        newest: dict[str, dict[str, Any]] = {}
        for status in repo.commit_statuses.get(sha, []):
            newest.pop(status["context"], None)
            newest[status["context"]] = status
        states = {status["state"] for status in newest.values()}
        if states & {"failure", "error"}:
            state = "failure"
        else:
            state = "pending" if not states or "pending" in states else "success"
        combined = {
            "state": state,
            "statuses": copy.deepcopy(list(newest.values())),
            "sha": sha,
            "total_count": len(newest),
            "repository": copy.deepcopy(repo.json),
            "commit_url": f"{repo.url}/commits/{sha}",
            "url": f"{repo.url}/commits/{sha}/status",
        }
        return _Reply(200, combined)


class _Handler(BaseHTTPRequestHandler):
    owner: FakeGitHub
    server_version = "GitHub.com"

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, out, data = self.owner.handle(self.command, self.path, headers, raw)
        self.send_response(status)
        for name, value in out.items():
            self.send_header(name, value)
        if status not in (204, 304):
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if status not in (204, 304):
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the calls are recorded on the fake instead."""


# -- small pieces --------------------------------------------------------------


def _stamp(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _since(query: dict[str, str]) -> datetime | None:
    """``since``: only what was updated at or after it."""
    if not query.get("since"):
        return None
    try:
        return _parse_time(query["since"])
    except ValueError:
        raise _Refusal(
            422, _error_body(422, f"since {query['since']!r} is not a timestamp")
        ) from None


def _int(text: str | None, default: int) -> int:
    try:
        return int(text) if text else default
    except ValueError:
        return default


def _decode(raw: bytes) -> tuple[Any, bool]:
    """The JSON body and whether it could be read (no body reads as None)."""
    if not raw:
        return None, True
    try:
        return json.loads(raw), True
    except ValueError:
        return raw.decode("utf-8", errors="replace"), False


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _Refusal(400, _error_body(400))
    return body


def _label_name(label: Any) -> str:
    return str(label["name"]) if isinstance(label, dict) else str(label)


def _label_names(body: Any) -> list[str]:
    """A bare list (PyGithub sends one) or ``{"labels": [...]}`` of names or ``{name}`` objects."""
    labels = body.get("labels") if isinstance(body, dict) else body
    if not isinstance(labels, list):
        raise _Refusal(422, _error_body(422, "labels must be a list"))
    return [_label_name(label) for label in labels]


def _etag_matches(if_none_match: str, etag: str) -> bool:
    """Weak comparison, as for GET: ``W/`` prefixes do not count; ``*`` matches anything."""
    presented = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",") if tag.strip()}
    return "*" in presented or etag.removeprefix("W/") in presented


def _error_body(status: int, message: str | None = None) -> dict[str, Any]:
    if message is None:
        message = _MESSAGES.get(status) or HTTPStatus(status).phrase
    return {"message": message, "documentation_url": DOCS, "status": str(status)}


def _validation(resource: str, code: str, field_name: str) -> dict[str, Any]:
    errors = [{"resource": resource, "code": code, "field": field_name}]
    return {**_error_body(422), "errors": errors}


def _custom(resource: str, message: str) -> dict[str, Any]:
    """A 422 whose reason GitHub words itself, as for a second PR from the same branch."""
    errors = [{"resource": resource, "code": "custom", "message": message}]
    return {**_error_body(422), "errors": errors}


def _refusal_text(refusal: _Refusal) -> str:
    body = refusal.reply.body if isinstance(refusal.reply.body, dict) else {}
    errors = body.get("errors") or [body]
    return str(errors[0].get("message") or body.get("message"))


def _branch_key(repo: _Repo, owner: str, ref: str) -> str:
    """A branch of the repository by its name, a fork's as ``owner:ref``."""
    return ref if owner.lower() == repo.owner.lower() else f"{owner}:{ref}"


def _fake_sha(text: str) -> str:
    """A stable commit sha for a branch nobody set."""
    return hashlib.sha1(text.encode()).hexdigest()


def _stable_id(text: str) -> int:
    """The same id for the same name in the API and in webhook payloads."""
    return zlib.crc32(text.encode()) % 900_000_000 + 100_000_000


# -- objects shaped like GitHub's, for the API and for webhook payloads -------------


def user_json(login: str, api: str = PUBLIC_API) -> dict[str, Any]:
    """A user; logins ending in ``[bot]`` are apps' bots, ``type: "Bot"``."""
    bot = login.endswith("[bot]")
    user_id = _stable_id("user:" + login.lower())
    web = f"{WEB}/apps/{login.removesuffix('[bot]')}" if bot else f"{WEB}/{login}"
    return {
        "login": login,
        "id": user_id,
        "node_id": f"{'BOT' if bot else 'U'}_kgDOMolt{user_id}",
        "avatar_url": f"https://avatars.githubusercontent.com/u/{user_id}?v=4",
        "url": f"{api}/users/{quote(login)}",
        "html_url": web,
        "type": "Bot" if bot else "User",
        "site_admin": False,
    }


def repo_json(full_name: str, api: str = PUBLIC_API) -> dict[str, Any]:
    owner, _, name = full_name.partition("/")
    repo_id = _stable_id("repo:" + full_name.lower())
    url = f"{api}/repos/{full_name}"
    return {
        "id": repo_id,
        "node_id": f"R_kgDOMolt{repo_id}",
        "name": name,
        "full_name": full_name,
        "private": False,
        "owner": user_json(owner, api),
        "html_url": f"{WEB}/{full_name}",
        "description": None,
        "fork": False,
        "url": url,
        "issues_url": url + "/issues{/number}",
        "issue_comment_url": url + "/issues/comments{/number}",
        "labels_url": url + "/labels{/name}",
        "collaborators_url": url + "/collaborators{/collaborator}",
        "deployments_url": url + "/deployments",
        "created_at": "2026-01-05T09:00:00Z",
        "updated_at": "2026-01-05T09:00:00Z",
        "pushed_at": "2026-01-05T09:00:00Z",
        "default_branch": "main",
        "visibility": "public",
        "has_issues": True,
        "archived": False,
    }


def _repository(repo: str | dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(repo) if isinstance(repo, dict) else repo_json(repo)


def _sender(sender: str | dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(sender) if isinstance(sender, dict) else user_json(sender)


def issues_payload(
    action: str,
    repo: str | dict[str, Any],
    issue: dict[str, Any],
    sender: str | dict[str, Any],
    *,
    label: str | dict[str, Any] | None = None,
    changes: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An ``issues`` event (opened, edited, labeled, unlabeled, closed…); ``label`` on
    labeled/unlabeled, ``changes={"body": {"from": old}}`` on edited."""
    payload: dict[str, Any] = {
        "action": action,
        "issue": copy.deepcopy(issue),
        "repository": _repository(repo),
        "sender": _sender(sender),
    }
    if label is not None:
        if isinstance(label, str):
            on_issue = [one for one in issue.get("labels", []) if one["name"] == label]
            label = on_issue[0] if on_issue else _payload_label(payload["repository"], label)
        payload["label"] = copy.deepcopy(label)
    if changes is not None:
        payload["changes"] = copy.deepcopy(changes)
    return payload


def _payload_label(repository: dict[str, Any], name: str) -> dict[str, Any]:
    label_id = _stable_id("label:" + name.lower())
    return {
        "id": label_id,
        "node_id": f"LA_kwDOMolt{label_id}",
        "url": f"{repository['url']}/labels/{quote(name, safe='')}",
        "name": name,
        "color": "ededed",
        "default": False,
        "description": None,
    }


def issue_comment_payload(
    action: str,
    repo: str | dict[str, Any],
    issue: dict[str, Any],
    comment: dict[str, Any],
    sender: str | dict[str, Any],
    *,
    changes: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An ``issue_comment`` event (created, edited, deleted); on edited GitHub sends
    ``changes={"body": {"from": old}}``. A PR's comments come with ``issue.pull_request``."""
    payload: dict[str, Any] = {
        "action": action,
        "issue": copy.deepcopy(issue),
        "comment": copy.deepcopy(comment),
        "repository": _repository(repo),
        "sender": _sender(sender),
    }
    if changes is not None:
        payload["changes"] = copy.deepcopy(changes)
    return payload


def _app_json() -> dict[str, Any]:
    """The CI app that posts check runs and suites."""
    return {
        "id": 15368,
        "slug": "github-actions",
        "node_id": "MDM6QXBwMTUzNjg=",
        "owner": user_json("github"),
        "name": "GitHub Actions",
        "description": "Automate your workflow from idea to production",
        "external_url": "https://help.github.com/en/actions",
        "html_url": f"{WEB}/apps/github-actions",
        "created_at": "2018-07-30T09:30:17Z",
        "updated_at": "2024-04-10T20:33:16Z",
        "permissions": {"checks": "write", "statuses": "write"},
        "events": ["check_run", "check_suite"],
    }


def pull_request_payload(
    action: str,
    repo: str | dict[str, Any],
    pull: dict[str, Any],
    sender: str | dict[str, Any],
    *,
    before: str | None = None,
) -> dict[str, Any]:
    """A ``pull_request`` event (opened, closed, reopened, synchronize…); on synchronize
    ``before`` is the old head and ``after`` the pull's head now."""
    payload: dict[str, Any] = {
        "action": action,
        "number": pull["number"],
        "pull_request": copy.deepcopy(pull),
        "repository": _repository(repo),
        "sender": _sender(sender),
    }
    if action == "synchronize":
        if before is None:
            raise ValueError("a synchronize event needs the head sha from before the push")
        payload["before"], payload["after"] = before, pull["head"]["sha"]
    return payload


def pull_request_review_payload(
    action: str,
    repo: str | dict[str, Any],
    pull: dict[str, Any],
    review: dict[str, Any],
    sender: str | dict[str, Any],
) -> dict[str, Any]:
    """A ``pull_request_review`` event (submitted, edited, dismissed)."""
    return {
        "action": action,
        "review": copy.deepcopy(review),
        "pull_request": copy.deepcopy(pull),
        "repository": _repository(repo),
        "sender": _sender(sender),
    }


def check_suite_payload(
    action: str,
    repo: str | dict[str, Any],
    sha: str,
    conclusion: str | None,
    sender: str | dict[str, Any],
    *,
    head_branch: str | None = None,
) -> dict[str, Any]:
    """A ``check_suite`` event (completed, requested, rerequested); no ``conclusion`` is a
    suite still queued."""
    repository = _repository(repo)
    suite_id = _stable_id("suite:" + sha)
    url = f"{repository['url']}/check-suites/{suite_id}"
    person = {"name": "Molt Test", "email": "test@molt.example"}
    suite = {
        "id": suite_id,
        "node_id": f"CS_kwDOMolt{suite_id}",
        "head_branch": head_branch,
        "head_sha": sha,
        "status": "queued" if conclusion is None else "completed",
        "conclusion": conclusion,
        "url": url,
        "before": None,
        "after": sha,
        "pull_requests": [],
        "app": _app_json(),
        "created_at": "2026-01-05T09:00:00Z",
        "updated_at": "2026-01-05T09:00:00Z",
        "rerequestable": True,
        "runs_rerequestable": True,
        "latest_check_runs_count": 1,
        "check_runs_url": url + "/check-runs",
        "head_commit": {
            "id": sha,
            "tree_id": _fake_sha("tree:" + sha),
            "message": f"Commit {sha[:7]}",
            "timestamp": "2026-01-05T09:00:00Z",
            "author": person,
            "committer": person,
        },
    }
    return {
        "action": action,
        "check_suite": suite,
        "repository": repository,
        "sender": _sender(sender),
    }


def status_payload(
    repo: str | dict[str, Any],
    sha: str,
    state: str,
    context: str,
    sender: str | dict[str, Any],
    *,
    description: str | None = None,
    target_url: str | None = None,
) -> dict[str, Any]:
    """A ``status`` event: one commit status; GitHub sends it with no ``action``."""
    repository = _repository(repo)
    commit_url = f"{repository['url']}/commits/{sha}"
    person = {"name": "Molt Test", "email": "test@molt.example", "date": "2026-01-05T09:00:00Z"}
    return {
        "id": _stable_id(f"status:{sha}:{context}:{state}"),
        "sha": sha,
        "name": repository["full_name"],
        "target_url": target_url,
        "context": context,
        "description": description,
        "state": state,
        "commit": {
            "sha": sha,
            "node_id": f"C_kwDOMolt{sha[:12]}",
            "commit": {"message": f"Commit {sha[:7]}", "author": person, "committer": person},
            "url": commit_url,
            "html_url": f"{repository['html_url']}/commit/{sha}",
            "parents": [],
        },
        "branches": [],
        "created_at": "2026-01-05T09:00:00Z",
        "updated_at": "2026-01-05T09:00:00Z",
        "repository": repository,
        "sender": _sender(sender),
    }


HOOK_ID = 501_234_567


def ping_payload(repo: str | dict[str, Any]) -> dict[str, Any]:
    """What GitHub sends when a webhook is made."""
    repository = _repository(repo)
    hook_url = f"{PUBLIC_API}/repos/{repository['full_name']}/hooks/{HOOK_ID}"
    return {
        "zen": "Keep it logically awesome.",
        "hook_id": HOOK_ID,
        "hook": {
            "type": "Repository",
            "id": HOOK_ID,
            "name": "web",
            "active": True,
            "events": ["issue_comment", "issues"],
            "config": {
                "content_type": "json",
                "insecure_ssl": "0",
                "url": "https://molt.example/github",
            },
            "updated_at": "2026-01-05T09:00:00Z",
            "created_at": "2026-01-05T09:00:00Z",
            "url": hook_url,
            "test_url": hook_url + "/test",
            "ping_url": hook_url + "/pings",
            "deliveries_url": hook_url + "/deliveries",
            "last_response": {"code": None, "status": "unused", "message": None},
        },
        "repository": repository,
        "sender": copy.deepcopy(repository["owner"]),
    }


def sign(body: bytes, secret: str) -> str:
    """``X-Hub-Signature-256``: ``sha256=`` and the HMAC-SHA256 hex of the raw body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def deliver(
    url: str,
    event: str,
    payload: dict[str, Any] | None,
    secret: str | None,
    *,
    delivery: str | None = None,
    signature: str | None = None,
    raw: bytes | None = None,
    timeout: float = 10.0,
) -> tuple[int, bytes]:
    """POST a webhook the way GitHub does; the status and body, 4xx and 5xx included.

    ``raw`` sends those bytes instead of ``payload``; ``signature`` replaces the computed one
    (``""`` leaves the header out, as does no ``secret``); ``delivery`` is kept on redelivery.
    """
    body = raw if raw is not None else json.dumps(payload, separators=(",", ":")).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "GitHub-Hookshot/9f4a7c2",
        "Accept": "*/*",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
        "X-GitHub-Hook-ID": str(HOOK_ID),
        "X-GitHub-Hook-Installation-Target-Type": "repository",
    }
    repository = (payload or {}).get("repository")
    if isinstance(repository, dict) and "id" in repository:
        headers["X-GitHub-Hook-Installation-Target-ID"] = str(repository["id"])
    if signature is None and secret:
        signature = sign(body, secret)
        headers["X-Hub-Signature"] = (
            "sha1=" + hmac.new(secret.encode(), body, hashlib.sha1).hexdigest()
        )
    if signature:
        headers["X-Hub-Signature-256"] = signature
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return int(answer.status), answer.read()
    except urllib.error.HTTPError as refused:
        with refused:
            return int(refused.code), refused.read()
