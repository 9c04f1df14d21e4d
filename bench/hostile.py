"""Hostile HTTP input: a battery of bad requests fired at the real bot's HTTP server.

One run starts, on 127.0.0.1, the fake Slack Web API and the fake GitHub REST API
(``tests/fakes/``) in this process and the real bot (``python -m bot.cli run
--no-console``, embedded Redis in a temporary MOLT_DATA_DIR, a small generated target, no
workers) with Slack in HTTP mode, the GitHub webhook and the three alert sources set up.
Every request goes over a socket of its own, written byte for byte (a declared
Content-Length need not match the body, and the connection is held until the server
answers or ``--hold`` seconds pass):

1. ``--unauthenticated`` requests (300) without the right credentials, cycling over
   /slack/events, /github/webhook and /alerts/{alertmanager,sentry,webhook}: none, wrong,
   non-ASCII bytes in the credential header, a body that is not JSON, one nested 100,000
   deep, the path with a trailing slash and ``Host: evil.example``, a declared
   Content-Length of 50,000,000 with 200 bytes sent, one 1,000 bytes above a 100-byte body;
   and unknown paths. Then ``--settle`` seconds (a minute's summary of refusals is
   written) before the audit entries they left are counted.
2. Correctly signed requests that are still wrong, three of each: nested 100,000 deep,
   Sentry ``metric_alert`` fields of the wrong type, an Alertmanager ``alerts`` that is not
   a list, GitHub deliveries with ``"changes": []`` or ``"pull_request": []``.

Meanwhile /healthz is asked every half second. It prints how many answers were 4xx (and
3xx, 5xx, none), the slowest answer, the audit entries the unauthenticated requests wrote
(goal ≤ 10), the tracebacks in the bot's log, /healthz answers that were not 200, requests
created and alert signals taken (both must stay 0), and answers that echo a secret:

    python bench/hostile.py [--unauthenticated 300] [--concurrency 16] [--hold 15]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for ``bench`` and ``tests``

from bench.harness import ROOT, BenchFailure, clean_environment
from bench.repo import TEST_COMMAND, generate_repo
from bench.slack_ack import MOLT_UP, Child, molt_redis
from pipeline import keyspace, store
from tests.fakes.alerts import signature
from tests.fakes.github import TOKEN as GITHUB_TOKEN
from tests.fakes.github import FakeGitHub, issue_comment_payload, issues_payload
from tests.fakes.github import sign as github_sign
from tests.fakes.slack import BOT_TOKEN, SIGNING_SECRET, FakeSlack, sign

ALERT_TOKEN = "bench-alert-token"
SENTRY_SECRET = "bench-sentry-secret"
HOOK_SECRET = "bench-hook-secret"
GITHUB_SECRET = "bench-github-secret"
SECRETS = (ALERT_TOKEN, SENTRY_SECRET, HOOK_SECRET, GITHUB_SECRET, SIGNING_SECRET, BOT_TOKEN)
REPO = "molt-bench/service"
NESTED = b"[" * 100_000
JUNK = b"\xe9\xff\xfe"
ROUTES = (
    "/slack/events",
    "/github/webhook",
    "/alerts/alertmanager",
    "/alerts/sentry",
    "/alerts/webhook",
)
AUDIT_GOAL = 10


@dataclass(frozen=True)
class Case:
    group: str  # unauthenticated | signed
    name: str
    data: bytes  # the request, byte for byte


@dataclass(frozen=True)
class Answer:
    case: Case
    status: int  # 0: no answer within the hold
    seconds: float
    body: bytes


def raw(
    path: str,
    body: bytes,
    headers: Mapping[str, bytes | str] | None = None,
    *,
    declared: int | None = None,
    host: str = "127.0.0.1",
    method: str = "POST",
) -> bytes:
    """An HTTP/1.1 request; ``declared`` is the Content-Length it claims."""
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: " + host.encode()]
    fields: dict[str, bytes | str] = {"Content-Type": "application/json", **(headers or {})}
    for name, value in fields.items():
        lines.append(
            name.encode() + b": " + (value if isinstance(value, bytes) else value.encode())
        )
    lines.append(b"Content-Length: %d" % (len(body) if declared is None else declared))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def _credential(path: str, value: bytes) -> dict[str, bytes | str]:
    """``value`` in the header that carries ``path``'s credential."""
    if path == "/slack/events":
        return {"X-Slack-Request-Timestamp": str(int(time.time())), "X-Slack-Signature": value}
    if path == "/github/webhook":
        return {"X-GitHub-Event": "issues", "X-Hub-Signature-256": value}
    if path == "/alerts/alertmanager":
        return {"Authorization": b"Bearer " + value}
    if path == "/alerts/sentry":
        return {"Sentry-Hook-Resource": "metric_alert", "Sentry-Hook-Signature": value}
    return {"X-Molt-Signature": value}


def _plausible(path: str) -> bytes:
    if path == "/slack/events":
        return b"command=%2Fmolt&text=deploy+main&user_id=U9MALLORY&channel_id=C0DEPLOYS"
    return json.dumps(
        {"alerts": [], "action": "opened", "repository": {"full_name": REPO}}
    ).encode()


def unauthenticated(count: int) -> list[Case]:
    """``count`` requests without the right credentials, cycling over the routes."""
    kinds = [
        ("no credentials", lambda p: raw(p, _plausible(p))),
        ("wrong credentials", lambda p: raw(p, _plausible(p), _credential(p, b"sha256=00ff"))),
        ("non-ASCII credentials", lambda p: raw(p, _plausible(p), _credential(p, JUNK))),
        ("not JSON", lambda p: raw(p, b"\x00\xffnot json{")),
        ("nested 100,000 deep", lambda p: raw(p, NESTED)),
        (
            "trailing slash, Host evil.example",
            lambda p: raw(p + "/", _plausible(p), host="evil.example"),
        ),
        ("declares 50,000,000 bytes, sends 200", lambda p: raw(p, b"{" * 200, declared=50_000_000)),
        ("declares 1,100 bytes, sends 100", lambda p: raw(p, b"{" * 100, declared=1_100)),
    ]
    cases: list[Case] = []
    while len(cases) < count:
        for path in ROUTES:
            for name, make in kinds:
                cases.append(Case("unauthenticated", f"{path}: {name}", make(path)))
        cases.append(Case("unauthenticated", "unknown path", raw("/wp-login.php", b"x=1")))
        cases.append(Case("unauthenticated", "unknown path (GET)", raw("/.env", b"", method="GET")))
    return cases[:count]


def signed(rounds: int) -> list[Case]:
    """Requests carrying the right credentials whose bodies are still wrong."""

    def alertmanager(body: bytes) -> bytes:
        return raw("/alerts/alertmanager", body, {"Authorization": f"Bearer {ALERT_TOKEN}"})

    def sentry(resource: str, body: bytes) -> bytes:
        headers = {
            "Sentry-Hook-Resource": resource,
            "Sentry-Hook-Signature": signature(SENTRY_SECRET, body),
        }
        return raw("/alerts/sentry", body, headers)

    def monitor(body: bytes) -> bytes:
        return raw(
            "/alerts/webhook", body, {"X-Molt-Signature": "sha256=" + signature(HOOK_SECRET, body)}
        )

    def github(event: str, body: bytes) -> bytes:
        headers = {
            "X-GitHub-Event": event,
            "X-GitHub-Delivery": f"bench-{time.monotonic_ns()}",
            "X-Hub-Signature-256": github_sign(body, GITHUB_SECRET),
        }
        return raw("/github/webhook", body, headers)

    def slack(body: bytes) -> bytes:
        return raw("/slack/events", body, sign(body, content_type="application/json"))

    def metric_alert(rule: object) -> bytes:
        data = {"metric_alert": {"id": "7", "alert_rule": rule}, "description_title": "errors"}
        return json.dumps({"action": "critical", "data": data}).encode()

    issue = {"number": 7, "title": "t", "body": "", "labels": [], "user": {"login": "mallory"}}
    comment = {"id": 99, "body": "- [x] approve", "user": {"login": "mallory"}}
    edited = issue_comment_payload("edited", REPO, issue, comment, "mallory")
    edited["changes"] = []
    on_pull = issues_payload("opened", REPO, issue | {"pull_request": []}, "mallory")
    pull = {
        "action": "closed",
        "repository": {"full_name": REPO},
        "sender": {"login": "mallory"},
        "pull_request": [],
    }
    kinds = [
        ("alertmanager: nested 100,000 deep", alertmanager(NESTED)),
        ("alertmanager: alerts is not a list", alertmanager(b'{"alerts": "all of them"}')),
        ("sentry: nested 100,000 deep", sentry("issue", NESTED)),
        ('sentry: "projects": 5', sentry("metric_alert", metric_alert({"projects": 5}))),
        (
            'sentry: "projects": {"x": 1}',
            sentry("metric_alert", metric_alert({"projects": {"x": 1}})),
        ),
        ("webhook: nested 100,000 deep", monitor(NESTED)),
        ("github: nested 100,000 deep", github("issues", NESTED)),
        ('github: "changes": []', github("issue_comment", json.dumps(edited).encode())),
        ('github: issue "pull_request": []', github("issues", json.dumps(on_pull).encode())),
        ('github: "pull_request": []', github("pull_request", json.dumps(pull).encode())),
        ("slack: nested 100,000 deep", slack(NESTED)),
    ]
    return [Case("signed", name, data) for _ in range(rounds) for name, data in kinds]


def send(port: int, case: Case, hold: float) -> Answer:
    """Send ``case`` on a socket of its own; the answer's status, or 0 after ``hold`` s."""
    began = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=hold) as sock:
        with contextlib.suppress(OSError):  # answered and closed before it took it all
            sock.sendall(case.data)
        received = b""
        try:
            while b"\r\n\r\n" not in received:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    seconds = time.perf_counter() - began
    head, _, body = received.partition(b"\r\n\r\n")
    parts = head.split(b" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    return Answer(case, status, seconds, head + body)


def fire(port: int, cases: list[Case], concurrency: int, hold: float) -> list[Answer]:
    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(lambda c: send(port, c, hold), cases))


class Health:
    """/healthz every half second, in a thread: the answers that were not 200."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.asked = 0
        self.bad = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import urllib.error
        import urllib.request

        while not self._stop.wait(0.5):
            self.asked += 1
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=5):
                    pass
            except (urllib.error.URLError, OSError):
                self.bad += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def summary(title: str, answers: list[Answer], hold: float, listed: bool = True) -> None:
    by_class = Counter(f"{a.status // 100}xx" if a.status else "none" for a in answers)
    answered = [a for a in answers if a.status]
    slowest = max(answered, key=lambda a: a.seconds) if answered else None
    print(f"\n{title}: {len(answers)} requests")
    print("  " + ", ".join(f"{k}: {by_class[k]}" for k in ("4xx", "3xx", "5xx", "2xx", "none")))
    if len(answered) < len(answers):
        print(
            f"  slowest answer: none within {hold:.0f} s ({len(answers) - len(answered)} requests)"
        )
    elif slowest is not None:
        print(f"  slowest answer: {slowest.seconds:.2f} s ({slowest.status}, {slowest.case.name})")
    if not listed:
        return
    wrong = Counter((a.case.name, a.status) for a in answers if not 400 <= a.status < 500)
    for (name, status), times in sorted(wrong.items()):
        print(f"  not 4xx: {times} x {name} -> {status or 'no answer'}")


def bench(args: argparse.Namespace) -> int:
    root = Path(tempfile.mkdtemp(prefix="molt-hostile-bench-"))
    data = root / "data"
    molt = None
    slack = FakeSlack().start()
    github = FakeGitHub().start()
    github.add_repo(REPO, {"alice": "write"})
    try:
        clean_environment(root)
        _, live, _ = generate_repo(root / "service", files=60, change=5, megabytes=0.5)
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "PYTHONUNBUFFERED": "1",
            "MOLT_DATA_DIR": str(data),
            "MOLT_TARGET_DIR": str(live),
            "MOLT_TEST_COMMAND": TEST_COMMAND,
            "MOLT_RESTART_COMMAND": "true",
            "MOLT_HTTP_PORT": "0",
            "MOLT_WORKERS": "0",
            "MOLT_AUTHORISED_USERS": "slack:U1ALICE,github:alice",
            "MOLT_APPROVERS": "slack:U1ALICE,github:alice",
            "SLACK_BOT_TOKEN": BOT_TOKEN,
            "SLACK_SIGNING_SECRET": SIGNING_SECRET,
            "SLACK_API_URL": slack.url,
            "GITHUB_TOKEN": GITHUB_TOKEN,
            "GITHUB_API_URL": github.url,
            "GITHUB_WEBHOOK_SECRET": GITHUB_SECRET,
            "MOLT_GITHUB_REPOS": REPO,
            "MOLT_GITHUB_POLL": "0",
            "MOLT_ALERT_TOKEN": ALERT_TOKEN,
            "MOLT_SENTRY_SECRET": SENTRY_SECRET,
            "MOLT_ALERT_SECRET": HOOK_SECRET,
            "MOLT_LOG_FORMAT": "console",
        }
        molt = Child("molt", [sys.executable, "-m", "bot.cli", "run", "--no-console"], env, root)
        port = molt.port(MOLT_UP)
        conn = molt_redis(data)
        health = Health(port)
        before = conn.llen(keyspace.AUDIT)
        began = time.monotonic()
        first = fire(port, unauthenticated(args.unauthenticated), args.concurrency, args.hold)
        time.sleep(max(0.0, args.settle - (time.monotonic() - began)))
        written = conn.llen(keyspace.AUDIT) - before
        second = fire(port, signed(3), args.concurrency, args.hold)
        health.stop()
        answers = first + second
        summary("unauthenticated", first, args.hold)
        summary("signed but wrong", second, args.hold)
        summary("the whole battery", answers, args.hold, listed=False)
        echoed = sum(1 for a in answers if any(s.encode() in a.body for s in SECRETS))
        tracebacks = sum(1 for line in molt.lines if "Traceback (most recent call last)" in line)
        print(
            f"\naudit entries written by {len(first)} unauthenticated requests: {written} "
            f"({'within' if written <= AUDIT_GOAL else 'over'} the goal of {AUDIT_GOAL})"
        )
        print(f"tracebacks in the bot's log: {tracebacks}")
        print(f"/healthz: {health.asked - health.bad} of {health.asked} answered 200")
        print(
            f"requests created: {conn.zcard(keyspace.REQUESTS)},"
            f" alert signals taken: {conn.xlen(keyspace.ALERTS)}"
        )
        print(f"answers echoing a secret: {echoed}")
    except BenchFailure as exc:
        print(exc, file=sys.stderr)
        return 1
    finally:
        if molt is not None:
            molt.stop()
        store.stop_embedded(data)
        slack.stop()
        github.stop()
        shutil.rmtree(root, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--unauthenticated", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--hold", type=float, default=15.0, help="seconds to wait for an answer")
    parser.add_argument(
        "--settle", type=float, default=65.0, help="seconds from the first request to counting"
    )
    return bench(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
