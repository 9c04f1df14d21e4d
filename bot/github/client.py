"""Molt's PyGithub client: how it signs in, how it writes, and whom GitHub lets write.

Writes stay within GitHub's limits: one writer at a time with ``MOLT_GITHUB_WRITE_INTERVAL``
(at least a second, by default) between mutations; a rate limit is waited out (``Retry-After``,
else ``x-ratelimit-reset`` when nothing remains, else a minute). PyGithub's own retry would send
a POST again after a 5xx, yet a comment or label that answered 5xx may have landed: here POSTs
are never retried blindly. ``Writer.create`` looks for what the failed call may have made
before it tries again, so nothing is posted twice.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import requests
import structlog
from github import Auth, Github, GithubException, GithubRetry

from pipeline.config import Settings
from pipeline.exceptions import ConfigError
from pipeline.requests.decisions import ALLOWED, Decision

log = structlog.get_logger(__name__)
T = TypeVar("T")

#: Methods PyGithub may retry by itself: every one that does the same thing twice. Not POST.
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "PATCH", "DELETE"})
#: Attempts of one write, rate limits and server errors included.
WRITE_ATTEMPTS = 5
#: Retries of the question whether a person may write: an answer that errs twice refuses at
#: once (the person may ask again) rather than after a quarter of a minute of backoff.
PERMISSION_RETRIES = 1
#: The longest rate-limit wait Molt sits through before giving the delivery back to the stream.
LONGEST_WAIT = 900.0
#: GitHub's permissions that let a person change the repository ("maintain" reads as "write").
WRITERS = frozenset({"admin", "write"})
#: How long GitHub's answer about a person's permission is trusted.
PERMISSION_TTL = 60.0
CHECK = "github"
#: Answers kept at most (all forgotten at once past that: they are a minute's worth anyway).
KEPT_ANSWERS = 1024


def connect(settings: Settings, *, retries: int = WRITE_ATTEMPTS) -> Github:
    """A client for GITHUB_API_URL with the token or the App's installation token, which
    PyGithub renews before it expires; it retries an idempotent call up to ``retries`` times."""
    auth: Auth.Auth
    if settings.github.token:
        auth = Auth.Token(settings.github.token.get_secret_value())
    elif (
        settings.github.app_id
        and settings.github.app_private_key
        and settings.github.app_installation_id
    ):
        key = settings.github.app_private_key.get_secret_value().replace("\\n", "\n")
        app = Auth.AppAuth(int(settings.github.app_id), key)
        auth = app.get_installation_auth(int(settings.github.app_installation_id))
    else:
        raise ConfigError(
            "GitHub needs GITHUB_TOKEN, or GITHUB_APP_ID, GITHUB_APP_PRIVATE_KEY and "
            "GITHUB_APP_INSTALLATION_ID"
        )
    retry = GithubRetry(total=retries, backoff_factor=0.5, allowed_methods=IDEMPOTENT)
    return Github(
        base_url=settings.github.api_url.rstrip("/"),
        auth=auth,
        timeout=15,
        retry=retry,
        seconds_between_requests=0,
        seconds_between_writes=settings.github.write_interval,
        lazy=True,
    )


def rate_limit_wait(exc: GithubException) -> float | None:
    """Seconds to wait before trying again, when ``exc`` is a rate limit; else None."""
    headers = {k.lower(): v for k, v in (exc.headers or {}).items()}
    message = str((exc.data or {}).get("message", "")) if isinstance(exc.data, dict) else ""
    limited = exc.status == 429 or (
        exc.status == 403 and ("retry-after" in headers or "rate limit" in message.lower())
    )
    if not limited:
        return None
    if str(headers.get("retry-after", "")).isdigit():
        return float(headers["retry-after"])
    if (
        headers.get("x-ratelimit-remaining") == "0"
        and str(headers.get("x-ratelimit-reset", "")).isdigit()
    ):
        return max(1.0, float(headers["x-ratelimit-reset"]) - time.time() + 1)
    return 60.0


class Writer:
    """Every mutation Molt makes in GitHub, one at a time."""

    def __init__(self, sleep: Callable[[float], None] = time.sleep) -> None:
        self._lock = threading.Lock()
        self._sleep = sleep
        #: Mutating calls made, for the figures of bench/github.py.
        self.calls = 0

    def write(self, call: Callable[[], T]) -> T:
        """An idempotent write (an edit, a label set, a delete): PyGithub retries its errors;
        a rate limit is waited out here."""
        return self._attempts(call, None)

    def create(self, call: Callable[[], T], find: Callable[[], T | None]) -> T:
        """A POST that makes something: after an error that may hide a success, ``find``
        looks for what it would have made before it is tried again."""
        return self._attempts(call, find)

    def _attempts(self, call: Callable[[], T], find: Callable[[], T | None] | None) -> T:
        waited = 0.0
        for attempt in range(WRITE_ATTEMPTS):
            try:
                with self._lock:
                    self.calls += 1
                    return call()
            except GithubException as exc:
                wait = rate_limit_wait(exc)
                if wait is not None and waited + wait <= LONGEST_WAIT:
                    log.info("github rate limit; waiting", seconds=wait, status=exc.status)
                    waited += wait
                    self._sleep(wait)
                    continue
                if exc.status < 500 or attempt == WRITE_ATTEMPTS - 1:
                    raise
            except requests.RequestException:
                if attempt == WRITE_ATTEMPTS - 1:
                    raise
            if find is not None:
                made = find()
                if made is not None:
                    return made
            self._sleep(min(8.0, 0.5 * 2**attempt))
        raise AssertionError("unreachable")


@dataclass
class _Answer:
    permission: str
    at: float


class Permissions:
    """GitHub's own answer to "may this person write here?", asked at every request and
    click, and trusted for ``PERMISSION_TTL``. An error asking refuses (fail closed)."""

    def __init__(self, client: Github, ttl: float = PERMISSION_TTL) -> None:
        self.client = client
        self.ttl = ttl
        self._answers: dict[tuple[str, str], _Answer] = {}
        self._lock = threading.Lock()

    def may_write(self, repo: str, login: str) -> Decision:
        key = (repo.lower(), login.lower())
        with self._lock:
            known = self._answers.get(key)
        if known is None or time.monotonic() - known.at > self.ttl:
            try:
                permission = self.client.get_repo(repo).get_collaborator_permission(login)
            except (GithubException, requests.RequestException) as exc:
                status = getattr(exc, "status", None) or type(exc).__name__
                log.warning("github permission unknown", repo=repo, login=login, error=status)
                return Decision(
                    False,
                    f"GitHub could not be asked whether @{login} may write to {repo} "
                    f"({status}), so nothing was done",
                    CHECK,
                )
            known = _Answer(str(permission), time.monotonic())
            with self._lock:
                if len(self._answers) >= KEPT_ANSWERS:
                    self._answers.clear()
                self._answers[key] = known
        if known.permission in WRITERS:
            return ALLOWED
        return Decision(
            False,
            f"@{login} has {known.permission} access to {repo}; Molt takes requests and "
            "clicks only from people with write access",
            CHECK,
        )
