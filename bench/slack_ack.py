"""Slack ack latency: the real Molt against a bare Bolt app on the same server stack.

One run of this script starts, on 127.0.0.1:

- a fake Slack Web API (``tests/fakes/slack.py``) in its own process, which
  records when each reply reaches it;
- the real bot, ``python -m bot.cli run --no-console``, with Slack configured
  against the fake, embedded Redis in a temporary MOLT_DATA_DIR, a small
  generated target (``bench.repo``) and no workers;
- a bare Bolt app (``process_before_response=True``, a slash command listener
  that only acks) served by Starlette and uvicorn through
  ``slack_bolt.adapter.starlette.SlackRequestHandler``, in its own process.

Each run fires ``--count`` signed slash commands at ``--concurrency`` (a thread
pool, one keep-alive connection per thread, each request signed with a fresh
timestamp) at each app, after one warm-up request per connection: half
``status`` from an operator, half ``deploy main`` from a user who may not
request (refused with a themed ephemeral reply). Molt must then have posted
one ephemeral reply per command before the next load starts. Besides the
latencies: the CPU time each server process spent per command (Molt's until
its last reply, from /proc) and the Redis transactions (EXEC) per command,
which shows optimistic-lock retries: 1.0 on this mix when none is retried.

Then ``--events`` refused ``deploy main`` commands, one at a time: from the
request's event being appended to the Redis Stream (its ``at``) to the fake
recording the ``chat.postEphemeral``, and from the POST to that reply; the same
for ``status`` (answered directly, without an event).

    python bench/slack_ack.py [--runs 3] [--count 500] [--concurrency 50] [--events 100]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for ``bench`` and ``tests``

import redis

from bench.harness import ROOT, BenchFailure, clean_environment, median, table
from bench.repo import TEST_COMMAND, generate_repo
from pipeline import keyspace, store
from tests.fakes.slack import (
    BOT_TOKEN,
    SIGNING_SECRET,
    FakeSlack,
    SignedRequest,
    SlackCall,
    slash_command,
)

TARGET_P99_MS = 100.0
TARGET_RATIO = 1.2
TARGET_EVENT_MS = 50.0
OPERATOR = {"user_id": "U1ALICE", "user_name": "alice"}
STRANGER = {"user_id": "U9MALLORY", "user_name": "mallory"}
EPHEMERAL = "chat.postEphemeral"
PATH = "/slack/events"
START_TIMEOUT = 60.0
REQUEST_TIMEOUT = 30.0
DRAIN_TIMEOUT = 60.0
REPLY_TIMEOUT = 10.0
FAKE_UP = r"fake slack is up port=(\d+)"
BARE_UP = r"bare bolt is up port=(\d+)"
MOLT_UP = r"molt is up.*\bport\W+(\d+)"  # the console or the JSON log line


# -- the two helper processes: the fake Slack and the bare Bolt app -------------------------------


class BenchSlack(FakeSlack):
    """The fake Slack, plus ``bench.wait``: the bench's way to read what it recorded."""

    def _bench_wait(self, args: dict[str, Any]) -> dict[str, Any]:
        """Wait until ``count`` calls of ``method`` (to ``channel``, if given) are recorded.

        Runs inside ``handle``, which holds the condition; waiting on it lets other calls in.
        """
        method = str(args.get("method") or EPHEMERAL)
        channel = str(args.get("channel") or "")
        wanted = int(args.get("count") or 1)
        deadline = time.monotonic() + min(float(args.get("timeout") or REPLY_TIMEOUT), 120.0)
        while True:
            found = [
                c
                for c in self._calls
                if c.method == method and (not channel or c.args.get("channel") == channel)
            ]
            if len(found) >= wanted:
                return {
                    "ok": True,
                    "count": len(found),
                    "failed": sum(1 for c in found if not c.response.get("ok")),
                    "last_at": max(c.at for c in found),
                    "calls": [_summary(c) for c in found] if channel else [],
                }
            left = deadline - time.monotonic()
            if left <= 0:
                return {"ok": False, "error": "timeout", "count": len(found)}
            self._changed.wait(left)


def _summary(call: SlackCall) -> dict[str, Any]:
    payload = (call.args.get("metadata") or {}).get("event_payload") or {}
    return {
        "at": call.at,
        "ok": bool(call.response.get("ok")),
        "template": payload.get("template", ""),
        "request_id": payload.get("request_id", ""),
    }


def serve_fake() -> int:
    """The fake Slack until stdin closes (the bench ended, however it ended)."""
    with BenchSlack() as fake:
        print(f"fake slack is up port={fake.port}", flush=True)
        sys.stdin.read()
    return 0


def serve_bare(slack_url: str) -> int:
    """A Bolt app whose slash command only acks, served as Molt serves, until stdin closes."""
    import asyncio
    import logging

    import uvicorn
    from slack_bolt import Ack, App
    from slack_bolt.adapter.starlette import SlackRequestHandler
    from slack_sdk import WebClient
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    logging.basicConfig(level=logging.WARNING)
    app = App(
        signing_secret=SIGNING_SECRET,
        client=WebClient(token=BOT_TOKEN, base_url=slack_url),
        process_before_response=True,
        token_verification_enabled=False,
    )

    @app.command("/molt")
    def _only_ack(ack: Ack) -> None:
        ack()

    handler = SlackRequestHandler(app)

    async def endpoint(request: Request) -> Response:
        return await handler.handle(request)

    config = uvicorn.Config(  # as bot/server.py configures it
        Starlette(routes=[Route(PATH, endpoint, methods=["POST"])]),
        host="127.0.0.1",
        port=0,
        log_level="warning",
        access_log=False,
        lifespan="off",
        backlog=2048,
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            print("the bare app did not start", flush=True)
            return 1
        time.sleep(0.01)
    port = next(s.getsockname()[1] for srv in server.servers for s in srv.sockets)
    print(f"bare bolt is up port={port}", flush=True)
    sys.stdin.read()
    server.should_exit = True
    thread.join(timeout=10)
    return 0


# -- child processes ----------------------------------------------------------------------------


class Child:
    """A process whose output (stdout and stderr) is read line by line; stdin keeps it alive."""

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str], cwd: Path) -> None:
        self.name = name
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self.proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, name=f"read-{name}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._changed:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def port(self, pattern: str, timeout: float = START_TIMEOUT) -> int:
        """The port in the first line matching ``pattern`` (one group), waiting for it."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    found = regex.search(line)
                    if found:
                        return int(found.group(1))
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise BenchFailure(f"{self.name} did not start:\n{self.tail()}")
                self._changed.wait(min(left, 0.2))

    def tail(self, count: int = 30) -> str:
        with self._changed:
            return "\n".join(self.lines[-count:])

    def stop(self, timeout: float = 20.0) -> None:
        """Close stdin, SIGTERM, then SIGKILL the process group if it lingers."""
        proc = self.proc
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        self._reader.join(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()


def _bench_argv(*args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), *args]


# -- talking to the fake ------------------------------------------------------------------------


def fake_wait(url: str, **args: Any) -> dict[str, Any]:
    """Call the fake's ``bench.wait``; raises if it timed out."""
    timeout = float(args.get("timeout", REPLY_TIMEOUT))
    request = urllib.request.Request(
        url + "bench.wait",
        data=json.dumps(args).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {BOT_TOKEN}"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=timeout + 5) as reply:
        answer: dict[str, Any] = json.loads(reply.read())
    if not answer.get("ok"):
        raise BenchFailure(f"the fake Slack saw {answer.get('count')} {args}: {answer}")
    return answer


# -- load ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    """One batch: per-request latency (s) and HTTP status (0 for a failed connection)."""

    latencies: list[float]
    statuses: list[int]
    wall: float

    def figures(self) -> dict[str, float]:
        ms = sorted(x * 1000 for x in self.latencies)
        return {
            "p50": percentile(ms, 0.50),
            "p90": percentile(ms, 0.90),
            "p99": percentile(ms, 0.99),
            "max": ms[-1] if ms else float("nan"),
            "rps": len(ms) / self.wall if self.wall > 0 else float("nan"),
            "non200": float(sum(1 for s in self.statuses if s != 200)),
        }


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence."""
    if not ordered:
        return float("nan")
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def command(index: int, channel: str = "C0DEPLOYS") -> SignedRequest:
    """Even: ``status`` from an operator; odd: ``deploy main`` from a stranger (refused)."""
    if index % 2 == 0:
        return slash_command("status", channel_id=channel, **OPERATOR)
    return slash_command("deploy main", channel_id=channel, **STRANGER)


def post(conn: http.client.HTTPConnection, signed: SignedRequest) -> tuple[float, int]:
    """POST one signed request on a keep-alive connection: (seconds, status)."""
    began = time.perf_counter()
    try:
        conn.request("POST", PATH, body=signed.body, headers=signed.headers)
        reply = conn.getresponse()
        reply.read()
        status = reply.status
    except (OSError, http.client.HTTPException):
        conn.close()  # reopened by the next request
        status = 0
    return time.perf_counter() - began, status


def fire(port: int, count: int, concurrency: int, make: Callable[[int], SignedRequest]) -> Load:
    """``count`` requests over ``concurrency`` threads, after one warm-up request per thread."""
    local = threading.local()
    opened: list[http.client.HTTPConnection] = []
    lock = threading.Lock()
    ready = threading.Barrier(concurrency)

    def connection() -> http.client.HTTPConnection:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT)
            local.conn = conn
            with lock:
                opened.append(conn)
        return conn

    def warm(index: int) -> int:
        ready.wait(REQUEST_TIMEOUT)  # every thread of the pool takes one: one connection each
        return post(connection(), make(index))[1]

    def one(index: int) -> tuple[float, int]:
        signed = make(index)  # signed now: a fresh timestamp, outside the timing
        return post(connection(), signed)

    try:
        with ThreadPoolExecutor(concurrency, thread_name_prefix="load") as pool:
            warmed = list(pool.map(warm, range(concurrency)))
            if any(s != 200 for s in warmed):
                raise BenchFailure(f"warm-up answers: {sorted(set(warmed))}")
            began = time.perf_counter()
            results = list(pool.map(one, range(count)))
            wall = time.perf_counter() - began
    finally:
        for conn in opened:
            conn.close()
    return Load([r[0] for r in results], [r[1] for r in results], wall)


# -- the set-up ---------------------------------------------------------------------------------


@dataclass
class Setup:
    """What is running: where the fake Slack, Molt and the bare app listen."""

    data: Path
    slack_url: str
    molt: Child
    molt_port: int
    bare: Child
    bare_port: int
    sent_to_molt: int = 0


def molt_env(data: Path, live: Path, slack_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
        "MOLT_DATA_DIR": str(data),
        "MOLT_TARGET_DIR": str(live),
        "MOLT_TEST_COMMAND": TEST_COMMAND,
        "MOLT_RESTART_COMMAND": "true",
        "MOLT_HTTP_PORT": "0",
        "MOLT_WORKERS": "0",
        "MOLT_AUTHORISED_USERS": f"slack:{OPERATOR['user_id']}",
        "MOLT_APPROVERS": f"slack:{OPERATOR['user_id']}",
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_API_URL": slack_url,
    }


def molt_load(setup: Setup, count: int, concurrency: int) -> dict[str, float]:
    """A load on Molt until every reply is posted: its figures, with Molt's CPU and EXECs."""
    commands = count + concurrency  # the warm-up requests are commands too
    started, cpu, execs = time.time(), cpu_seconds(setup.molt.proc.pid), redis_execs(setup.data)
    load = fire(setup.molt_port, count, concurrency, command)
    setup.sent_to_molt += commands
    done = fake_wait(
        setup.slack_url, method=EPHEMERAL, count=setup.sent_to_molt, timeout=DRAIN_TIMEOUT
    )
    if done["failed"]:
        raise BenchFailure(f"{done['failed']} ephemeral replies were refused by the fake Slack")
    return load.figures() | {
        "cpu": (cpu_seconds(setup.molt.proc.pid) - cpu) * 1000 / commands,
        "exec": (redis_execs(setup.data) - execs) / commands,
        "replies": float(done["last_at"]) - started,
    }


def held_load(setup: Setup, count: int, concurrency: int) -> dict[str, float]:
    """The same load with the bot process stopped (SIGSTOP) until the acks are in: the ack
    path alone, without Molt's own post-ack work competing for the two cores."""
    commands = count + concurrency
    os.kill(setup.molt.proc.pid, signal.SIGSTOP)
    try:
        load = fire(setup.molt_port, count, concurrency, command)
    finally:
        os.kill(setup.molt.proc.pid, signal.SIGCONT)
    setup.sent_to_molt += commands
    fake_wait(setup.slack_url, method=EPHEMERAL, count=setup.sent_to_molt, timeout=DRAIN_TIMEOUT)
    return load.figures()


def bare_load(setup: Setup, count: int, concurrency: int) -> dict[str, float]:
    """The same load on the bare app: its figures, with its CPU."""
    cpu = cpu_seconds(setup.bare.proc.pid)
    load = fire(setup.bare_port, count, concurrency, command)
    spent = cpu_seconds(setup.bare.proc.pid) - cpu
    return load.figures() | {
        "cpu": spent * 1000 / (count + concurrency),
        "exec": math.nan,
        "replies": math.nan,
    }


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far (Linux /proc); NaN elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return math.nan


def molt_redis(data: Path) -> redis.Redis:
    """A client of Molt's embedded Redis (never starts one)."""
    return redis.Redis(
        unix_socket_path=str(store.socket_path(data)), decode_responses=True, socket_timeout=10
    )


def redis_execs(data: Path) -> float:
    """EXEC calls Molt's Redis has served: transactions, committed or aborted by WATCH."""
    conn = molt_redis(data)
    try:
        stats: dict[str, Any] = conn.info("commandstats")
        return float(stats.get("cmdstat_exec", {}).get("calls", 0))
    finally:
        conn.close()


def one_at_a_time(setup: Setup, count: int) -> dict[str, list[float]]:
    """Sequential commands to Molt and the bare app: ack, reply and event-to-reply times (ms)."""
    out: dict[str, list[float]] = {
        k: [] for k in ("ack", "status_reply", "deploy_reply", "event", "bare_ack")
    }
    replies: list[tuple[str, str, float]] = []  # (request id, template, reply at)
    molt = http.client.HTTPConnection("127.0.0.1", setup.molt_port, timeout=REQUEST_TIMEOUT)
    bare = http.client.HTTPConnection("127.0.0.1", setup.bare_port, timeout=REQUEST_TIMEOUT)
    try:
        for index in range(2 * count):
            channel = f"C0SEQ{index:05d}"
            signed = command(index, channel)
            sent_at = time.time()
            seconds, status = post(molt, signed)
            if status != 200:
                raise BenchFailure(f"Molt answered {status} to a sequential command")
            setup.sent_to_molt += 1
            out["ack"].append(seconds * 1000)
            [call] = fake_wait(setup.slack_url, method=EPHEMERAL, channel=channel)["calls"]
            kind = "status_reply" if index % 2 == 0 else "deploy_reply"
            out[kind].append((float(call["at"]) - sent_at) * 1000)
            if index % 2:
                replies.append((call["request_id"], call["template"], float(call["at"])))
            seconds, status = post(bare, command(index, channel))
            if status != 200:
                raise BenchFailure(f"the bare app answered {status} to a sequential command")
            out["bare_ack"].append(seconds * 1000)
    finally:
        molt.close()
        bare.close()
    appended = stream_times(setup.data)
    for request_id, template, reply_at in replies:
        at = appended.get((request_id, template))
        if at is None:
            raise BenchFailure(f"no {template!r} event for {request_id} in {keyspace.EVENTS}")
        out["event"].append((reply_at - at) * 1000)
    return out


def stream_times(data: Path) -> dict[tuple[str, str], float]:
    """``at`` of each (request id, template) event in Molt's stream (the first one)."""
    conn = molt_redis(data)
    try:
        found: dict[tuple[str, str], float] = {}
        for _id, raw in conn.xrange(keyspace.EVENTS):
            key = (raw.get("request_id", ""), raw.get("template", ""))
            found.setdefault(key, float(raw.get("at") or 0))
        return found
    finally:
        conn.close()


# -- report -------------------------------------------------------------------------------------

KEYS = ("p50", "p90", "p99", "max", "rps", "non200", "cpu", "exec", "replies")
HEADERS = ("p50", "p90", "p99", "max", "req/s", "non-200", "cpu/cmd", "EXEC/cmd", "replies s")


def _cell(key: str, value: float) -> float | int:
    return int(value) if key == "non200" and value == value else value


def _rows(label: str, figures: list[dict[str, float]]) -> list[list[Any]]:
    rows: list[list[Any]] = [
        [f"{label} {n}", *(_cell(k, f[k]) for k in KEYS)] for n, f in enumerate(figures, 1)
    ]
    rows.append([f"{label} median", *(_cell(k, median([f[k] for f in figures])) for k in KEYS)])
    return rows


def report(
    args: argparse.Namespace,
    molt: list[dict[str, float]],
    bare: list[dict[str, float]],
    seq: dict[str, list[float]],
) -> None:
    print()
    print(
        f"acks: {args.count} signed slash commands a run at concurrency {args.concurrency}, "
        "after one warm-up request per connection;\n"
        "half `status` from an operator, half `deploy main` refused. Latency in ms; "
        "req/s = requests / load wall time;\n"
        "cpu/cmd = ms of CPU the server process spent per command (Molt's until its last "
        "reply);\n"
        "EXEC/cmd = Redis transactions per command, aborted ones included (1.0 when none "
        "is retried);\n"
        "replies s = load start → Molt's last ephemeral reply posted"
    )
    rows = _rows("molt", molt) + _rows("bare", bare)
    print(table(["run", *HEADERS], rows, digits=1))

    seq_ms = {k: sorted(v) for k, v in seq.items()}
    print()
    print(f"one at a time ({args.events} of each; ms): p50, p90, max")
    labels = {
        "ack": "molt ack (status and deploy)",
        "bare_ack": "bare ack",
        "status_reply": "molt status: POST → ephemeral posted",
        "deploy_reply": "molt refused deploy: POST → ephemeral posted",
        "event": "molt refused deploy: event appended → ephemeral posted",
    }
    rows = [
        [label, percentile(seq_ms[k], 0.5), percentile(seq_ms[k], 0.9), seq_ms[k][-1]]
        for k, label in labels.items()
    ]
    print(table(["what", "p50", "p90", "max"], rows, digits=1))

    p99 = median([f["p99"] for f in molt])
    bare_p99 = median([f["p99"] for f in bare])
    ratio = p99 / bare_p99 if bare_p99 > 0 else float("nan")
    event_p50 = percentile(seq_ms["event"], 0.5)
    non200 = sum(f["non200"] for f in molt)
    print()
    print(
        f"target: Molt ack p99 ≤ {TARGET_P99_MS:.0f} ms — median p99 {p99:.1f} ms "
        f"({'within' if p99 <= TARGET_P99_MS else 'ABOVE'} target); non-200 answers: {non200:.0f}"
    )
    print(
        f"target: Molt p99 within {TARGET_RATIO}x the bare app's — {p99:.1f} / {bare_p99:.1f} ms "
        f"= {ratio:.2f}x ({'within' if ratio <= TARGET_RATIO else 'ABOVE'} target)"
    )
    print(
        f"target: event → Slack message p50 < {TARGET_EVENT_MS:.0f} ms — {event_p50:.1f} ms "
        f"({'within' if event_p50 < TARGET_EVENT_MS else 'ABOVE'} target)"
    )


# -- main ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def running(extra_env: dict[str, str] | None = None) -> Iterator[Setup]:
    """The fake Slack, the bare app and Molt, up; all stopped and removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="molt-slack-bench-"))
    data = root / "data"
    children: list[Child] = []
    try:
        clean_environment(root)
        _, live, _ = generate_repo(root / "service", files=60, change=5, megabytes=0.5)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        fake = Child("fake slack", _bench_argv("--serve", "fake"), env, root)
        children.append(fake)
        slack_url = f"http://127.0.0.1:{fake.port(FAKE_UP)}/api/"
        bare_argv = _bench_argv("--serve", "bare", "--slack-url", slack_url)
        bare = Child("bare bolt", bare_argv, env, root)
        children.append(bare)
        molt = Child(
            "molt",
            [sys.executable, "-m", "bot.cli", "run", "--no-console"],
            {**molt_env(data, live, slack_url), **(extra_env or {})},
            root,
        )
        children.append(molt)
        setup = Setup(data, slack_url, molt, molt.port(MOLT_UP), bare, bare.port(BARE_UP))
        fake_wait(slack_url, method="auth.test")  # Molt's own warm-up call has been answered
        yield setup
    except BenchFailure:
        for child in children:
            print(f"--- {child.name} (last lines) ---\n{child.tail()}", file=sys.stderr)
        raise
    finally:
        for child in reversed(children):  # Molt first: it stops its embedded Redis itself
            child.stop()
        store.stop_embedded(data)
        shutil.rmtree(root, ignore_errors=True)


def bench(args: argparse.Namespace) -> int:
    """Start everything, run the loads and the sequential commands, print the figures."""
    molt_figures: list[dict[str, float]] = []
    bare_figures: list[dict[str, float]] = []
    held_figures: list[dict[str, float]] = []
    try:
        with running() as setup:
            print(
                f"molt on port {setup.molt_port}, bare Bolt app on port {setup.bare_port}, "
                f"fake Slack at {setup.slack_url}",
                flush=True,
            )
            for run in range(1, args.runs + 1):
                order = ("molt", "bare") if run % 2 else ("bare", "molt")
                for which in order:
                    if which == "molt":
                        molt_figures.append(molt_load(setup, args.count, args.concurrency))
                    else:
                        bare_figures.append(bare_load(setup, args.count, args.concurrency))
                held_figures.append(held_load(setup, args.count, args.concurrency))
                m, b = molt_figures[-1], bare_figures[-1]
                print(
                    f"run {run}: molt p99 {m['p99']:.1f} ms, {m['rps']:.0f} req/s; "
                    f"bare p99 {b['p99']:.1f} ms, {b['rps']:.0f} req/s",
                    flush=True,
                )
            seq = one_at_a_time(setup, args.events)
    except BenchFailure as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    report(args, molt_figures, bare_figures, seq)
    held = statistics.median(f["p99"] for f in held_figures)
    bare = statistics.median(f["p99"] for f in bare_figures)
    print(
        f"ack path alone (bot process held during the load): median p99 {held:.1f} ms, "
        f"{held / bare:.2f}x the bare app's"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="loads on each app")
    parser.add_argument("--count", type=int, default=500, help="requests per load")
    parser.add_argument("--concurrency", type=int, default=50, help="threads (connections)")
    parser.add_argument("--events", type=int, default=100, help="sequential commands of each kind")
    parser.add_argument("--serve", choices=("fake", "bare"), help=argparse.SUPPRESS)
    parser.add_argument("--slack-url", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve == "fake":
        return serve_fake()
    if args.serve == "bare":
        return serve_bare(args.slack_url)
    if min(args.runs, args.count, args.concurrency, args.events) < 1:
        parser.error("--runs, --count, --concurrency and --events must be at least 1")
    return bench(args)


if __name__ == "__main__":
    sys.exit(main())
