"""Hostile HTTP input against the bot's real HTTP server (every front end's route, real
Redis): credentials in bytes no text compare takes, JSON nested past any stack, payloads of
the wrong shape, bodies that never arrive or never end, paths that redirect, and junk in
numbers. Everything is refused with a 4xx that says why, within the body's time limit, and
anyone's junk leaves a count in the audit rather than an entry per request."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from prometheus_client import REGISTRY
from pydantic import SecretStr

from bot.alerts import AlertEndpoints
from bot.base import HttpRoute
from bot.github.platform import WEBHOOK, WEBHOOK_LIMIT
from bot.github.webhook import Webhook
from bot.refusals import ACTION
from bot.server import BODY_SECONDS, HttpServer
from bot.slack.adapter import Slack
from bot.slack.platform import EVENTS, EVENTS_LIMIT
from pipeline import audit, keyspace
from pipeline.config import Settings
from pipeline.incidents.alerts import UnreadableAlert, from_sentry
from pipeline.requests.store import RequestStore
from tests.fakes.alerts import signature
from tests.fakes.github import issue_comment_payload, issues_payload
from tests.fakes.github import sign as github_sign
from tests.fakes.slack import BOT_TOKEN, SIGNING_SECRET

TOKEN = "am-token-123"
SENTRY_SECRET = "sentry-client-secret"
HOOK_SECRET = "generic-hook-secret"
GITHUB_SECRET = "github-hook-secret"
REPO = "acme/service"
JUNK = b"\xe9\xff\xfe"
NESTED = b"[" * 100_000
#: An answer that takes longer than this is no answer (the body's limit is BODY_SECONDS).
DEADLINE = BODY_SECONDS + 25
ROUTES = ("/slack/events", "/github/webhook", "/alerts/alertmanager", "/alerts/sentry")


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def error(self) -> str:
        return str(json.loads(self.body or b"{}").get("error", ""))


@pytest.fixture
def server(settings: Settings, conn: redis.Redis) -> Iterator[HttpServer]:
    with _serving(settings, conn) as http:
        yield http


@pytest.fixture
def impatient(settings: Settings, conn: redis.Redis) -> Iterator[HttpServer]:
    """The server giving a body 1 s instead of BODY_SECONDS: a test of what it answers
    when the time is up waits no longer than it takes."""
    with _serving(settings, conn, body_seconds=1.0) as http:
        yield http


@contextlib.contextmanager
def _serving(
    settings: Settings, conn: redis.Redis, body_seconds: float = BODY_SECONDS
) -> Iterator[HttpServer]:
    hostile = settings.model_copy(
        update={
            "alert_token": SecretStr(TOKEN),
            "sentry_secret": SecretStr(SENTRY_SECRET),
            "alert_secret": SecretStr(HOOK_SECRET),
            "slack": settings.slack.model_copy(
                update={
                    "bot_token": SecretStr(BOT_TOKEN),
                    "signing_secret": SecretStr(SIGNING_SECRET),
                    "api_url": "http://127.0.0.1:9/api/",  # never called: nothing gets that far
                }
            ),
        }
    )
    slack = Slack(hostile, RequestStore(conn))
    hook = Webhook(conn, GITHUB_SECRET, [REPO])
    http = HttpServer(
        "127.0.0.1",
        0,
        conn,
        hostile,
        "test",
        front_routes=[
            HttpRoute("slack", EVENTS, slack.endpoint, EVENTS_LIMIT),
            HttpRoute("github", WEBHOOK, hook.serve, WEBHOOK_LIMIT),
        ],
        alert_routes=AlertEndpoints(hostile, conn).routes(),
        body_seconds=body_seconds,
    )
    http.start()
    try:
        yield http
    finally:
        http.stop()


def send(
    server: HttpServer,
    path: str,
    body: bytes = b"",
    headers: dict[str, bytes | str] | None = None,
    *,
    declared: int | None = None,
    host: str = "127.0.0.1",
    method: str = "POST",
    chunks: list[bytes] | None = None,
) -> Answer:
    """Write one request byte for byte on a connection of its own (``declared`` is the
    Content-Length it claims; ``chunks``, a chunked body) and read the answer."""
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: " + host.encode()]
    for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
        lines.append(
            name.encode() + b": " + (value if isinstance(value, bytes) else value.encode())
        )
    if chunks is None:
        lines.append(b"Content-Length: %d" % (len(body) if declared is None else declared))
    else:
        lines.append(b"Transfer-Encoding: chunked")
        body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE) as sock:
        with contextlib.suppress(OSError):  # answered and closed before it took it all
            sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        received = b""
        while b"\r\n\r\n" not in received or len(received) < _length(received):
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    head, _, rest = received.partition(b"\r\n\r\n")
    status_line, *fields = head.decode("latin-1").split("\r\n")
    found = dict(f.split(": ", 1) for f in fields if ": " in f)
    return Answer(int(status_line.split(" ")[1]), {k.lower(): v for k, v in found.items()}, rest)


def _length(received: bytes) -> int:
    head, _, _ = received.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(head) + 4 + int(line.split(b":")[1])
    return 0


def _credential(path: str, value: bytes) -> dict[str, bytes | str]:
    """``value`` in the header that carries ``path``'s credential."""
    return {
        "/slack/events": {
            "X-Slack-Request-Timestamp": str(int(time.time())),
            "X-Slack-Signature": value,
        },
        "/github/webhook": {"X-GitHub-Event": "issues", "X-Hub-Signature-256": value},
        "/alerts/alertmanager": {"Authorization": b"Bearer " + value},
        "/alerts/sentry": {"Sentry-Hook-Resource": "issue", "Sentry-Hook-Signature": value},
        "/alerts/webhook": {"X-Molt-Signature": value},
    }[path]


def _signed(path: str, body: bytes, resource: str = "issue") -> dict[str, bytes | str]:
    if path == "/github/webhook":
        return {
            "X-GitHub-Event": resource,
            "X-GitHub-Delivery": f"d-{time.monotonic_ns()}",
            "X-Hub-Signature-256": github_sign(body, GITHUB_SECRET),
        }
    if path == "/alerts/alertmanager":
        return {"Authorization": f"Bearer {TOKEN}"}
    if path == "/alerts/sentry":
        sig = signature(SENTRY_SECRET, body)
        return {"Sentry-Hook-Resource": resource, "Sentry-Hook-Signature": sig}
    return {"X-Molt-Signature": "sha256=" + signature(HOOK_SECRET, body)}


def _nothing_taken(conn: redis.Redis) -> None:
    assert conn.xlen(keyspace.ALERTS) == 0
    assert conn.zcard(keyspace.REQUESTS) == 0


# -- credentials and bodies -------------------------------------------------------------------


@pytest.mark.parametrize("path", [*ROUTES, "/alerts/webhook"])
def test_non_ascii_bytes_in_a_credential_header_are_refused_with_401(
    server: HttpServer, conn: redis.Redis, path: str
) -> None:
    answer = send(server, path, b'{"alerts": []}', _credential(path, JUNK))
    assert answer.status == 401
    _nothing_taken(conn)


@pytest.mark.parametrize(
    "path", ["/github/webhook", "/alerts/alertmanager", "/alerts/sentry", "/alerts/webhook"]
)
def test_correctly_signed_json_nested_past_any_stack_is_refused_with_400(
    server: HttpServer, conn: redis.Redis, path: str
) -> None:
    answer = send(server, path, NESTED, _signed(path, NESTED))
    assert answer.status == 400
    assert "recursion limit" in answer.error
    _nothing_taken(conn)


@pytest.mark.parametrize("projects", [5, {"x": 1}])
def test_a_signed_sentry_metric_alert_of_the_wrong_shape_is_refused_naming_the_field(
    server: HttpServer, conn: redis.Redis, projects: Any
) -> None:
    payload = {
        "action": "critical",
        "data": {
            "metric_alert": {"id": "7", "alert_rule": {"projects": projects}},
            "description_title": "error rate",
        },
    }
    body = json.dumps(payload).encode()
    answer = send(server, "/alerts/sentry", body, _signed("/alerts/sentry", body, "metric_alert"))
    assert answer.status == 400
    assert "data.metric_alert.alert_rule.projects" in answer.error
    _nothing_taken(conn)


def test_each_alert_source_names_the_field_that_does_not_fit() -> None:
    with pytest.raises(UnreadableAlert, match=r"data\.issue\.title"):
        from_sentry(
            "issue", b'{"action": "created", "data": {"issue": {"id": "1", "title": []}}}', {}, []
        )
    with pytest.raises(UnreadableAlert, match=r"data\.event"):
        from_sentry("event_alert", b'{"data": {"event": "x"}}', {}, [])


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        (
            "/alerts/alertmanager",
            {"alerts": [{"labels": {"alertname": 5}}]},
            "alerts.0.labels.alertname",
        ),
        ("/alerts/alertmanager", {"alerts": "all"}, "alerts"),
        ("/alerts/webhook", {"fingerprint": "disk", "summary": {"x": 1}}, "summary"),
        ("/alerts/webhook", {"fingerprint": "disk", "status": "exploded"}, "status"),
    ],
)
def test_signed_alerts_of_the_wrong_shape_are_refused_naming_the_field(
    server: HttpServer, conn: redis.Redis, path: str, body: dict[str, Any], field: str
) -> None:
    raw = json.dumps(body).encode()
    answer = send(server, path, raw, _signed(path, raw))
    assert answer.status == 400
    assert f"{field}:" in answer.error
    _nothing_taken(conn)


def _issue() -> dict[str, Any]:
    return {"number": 7, "title": "t", "body": "", "labels": [], "user": {"login": "alice"}}


@pytest.mark.parametrize(
    ("event", "payload", "field"),
    [
        (
            "issue_comment",
            issue_comment_payload(
                "edited", REPO, _issue(), {"id": 9, "body": "- [x] approve"}, "alice"
            )
            | {"changes": []},
            "changes",
        ),
        (
            "issues",
            issues_payload("opened", REPO, _issue() | {"pull_request": []}, "alice"),
            "issue.pull_request",
        ),
        (
            "pull_request",
            {
                "action": "closed",
                "repository": {"full_name": REPO},
                "sender": {"login": "alice"},
                "pull_request": [],
            },
            "pull_request",
        ),
    ],
)
def test_signed_github_deliveries_with_a_field_of_the_wrong_type_are_refused_naming_it(
    server: HttpServer, conn: redis.Redis, event: str, payload: dict[str, Any], field: str
) -> None:
    """Not taken as if the field were absent."""
    body = json.dumps(payload).encode()
    answer = send(server, "/github/webhook", body, _signed("/github/webhook", body, event))
    assert answer.status == 400
    assert f"{field}:" in answer.error
    assert conn.xlen("molt:github:inbox") == 0


# -- sizes and time -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", [*ROUTES, "/healthz"])
def test_a_declared_length_over_the_routes_limit_is_refused_before_the_body_is_read(
    server: HttpServer, path: str
) -> None:
    answer = send(server, path, b"{" * 200, declared=50_000_000)
    assert answer.status == 413


def test_a_chunked_body_is_read_no_further_than_the_limit(server: HttpServer) -> None:
    chunks = [b" " * 100_000] * 12  # 1.2 MB with no length declared
    answer = send(
        server,
        "/alerts/alertmanager",
        headers=_credential("/alerts/alertmanager", b"x"),
        chunks=chunks,
    )
    assert answer.status == 413


@pytest.mark.slow
def test_a_body_that_does_not_arrive_is_given_up_on_every_route(impatient: HttpServer) -> None:
    """A body 1,000 bytes short, the connection held: each route answers 408, none hangs."""
    paths = [*ROUTES, "/alerts/webhook", "/nowhere"]
    with ThreadPoolExecutor(len(paths)) as pool:
        answers = list(pool.map(lambda p: send(impatient, p, b"{" * 100, declared=1_100), paths))
    assert [a.status for a in answers] == [408] * len(paths)


# -- paths --------------------------------------------------------------------------------------


def test_a_path_with_a_trailing_slash_is_not_found_and_never_redirected(
    server: HttpServer,
) -> None:
    answer = send(server, "/alerts/alertmanager/", b"{}", host="evil.example")
    assert answer.status == 404
    assert "location" not in answer.headers
    assert send(server, "/wp-login.php", b"x=1").status == 404


# -- junk in numbers, not in the audit ------------------------------------------------------------


def _refused(route: str, status: int) -> float:
    labels = {"route": route, "status": str(status)}
    return REGISTRY.get_sample_value("molt_http_refusals_total", labels) or 0.0


def _summaries(conn: redis.Redis) -> list[dict[str, Any]]:
    return [e for e in audit.entries(conn) if e["action"] == ACTION]


def test_unauthenticated_junk_is_counted_and_summarised_once_a_minute_without_tracebacks(
    server: HttpServer, conn: redis.Redis, capfd: pytest.CaptureFixture[str]
) -> None:
    before = {(p, s): _refused(p, s) for p in ROUTES for s in (400, 401)}
    junk = [
        (path, body, headers)
        for path in ROUTES
        for body, headers in [
            (b'{"alerts": []}', {}),
            (b'{"alerts": []}', _credential(path, b"sha256=00")),
            (b'{"alerts": []}', _credential(path, JUNK)),
            (NESTED, {}),
            (b"\x00\xffnot json", {}),
        ]
    ] * 3
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda j: send(server, *j).status, junk))
    assert all(status in (400, 401) for status in statuses), statuses
    counted = sum(_refused(p, s) - before[(p, s)] for p, s in before)
    assert counted == len(junk)
    deadline = time.monotonic() + 20
    while not _summaries(conn) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(_summaries(conn)) == 1  # the first at once; the rest wait for the minute
    server.stop()
    summaries = _summaries(conn)
    assert len(summaries) == 2  # what was counted since is written when the server stops
    assert sum(n for s in summaries for n in s["detail"]["counts"].values()) == len(junk)
    assert "/alerts/sentry 401" in summaries[1]["detail"]["counts"]
    assert len(audit.entries(conn)) == 2
    assert "Traceback" not in capfd.readouterr().err
    _nothing_taken(conn)
