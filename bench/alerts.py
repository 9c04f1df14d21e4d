"""Alert webhook ack latency: the real Molt's HTTP process answering Alertmanager and Sentry.

One run starts the real bot (``python -m bot.cli run --no-console``, embedded Redis in a
temporary MOLT_DATA_DIR, a small generated target, no workers) with MOLT_ALERT_TOKEN and
MOLT_SENTRY_SECRET set, then fires ``--count`` deliveries at ``--concurrency`` (a thread
pool, one keep-alive connection per thread): half Alertmanager notifications with a bearer
token, half Sentry ``issue`` deliveries signed with the client secret, each a different
alert (a quarter of them resent, as an HA pair does). It prints p50, p90, p99 and max of
the time to the answer, and non-200 answers. The ack covers verifying, reading,
deduplicating and handing the signals to the bot through Redis; the incidents themselves
are worked on by the bot process. Targets: p99 ≤ 50 ms (Sentry allows 1 s).

    python bench/alerts.py [--runs 3] [--count 500] [--concurrency 20]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for ``bench`` and ``tests``

from bench.harness import ROOT, BenchFailure, clean_environment, median, table
from bench.repo import TEST_COMMAND, generate_repo
from bench.slack_ack import MOLT_UP, Child, percentile
from pipeline import store
from tests.fakes.alerts import alertmanager_alert, alertmanager_payload, sentry_issue, signature

TOKEN = "bench-alert-token"
SECRET = "bench-sentry-secret"
TARGET_P99_MS = 50.0


def delivery(index: int) -> tuple[str, bytes, dict[str, str]]:
    """The ``index``-th delivery: (path, body, headers); every fourth resends the one before."""
    shown = index - 1 if index % 4 == 3 else index
    if shown % 2:
        issue = sentry_issue("created", issue_id=str(10_000 + shown))
        body = json.dumps(issue).encode()
        headers = {
            "Sentry-Hook-Resource": "issue",
            "Sentry-Hook-Signature": signature(SECRET, body),
        }
        return "/alerts/sentry", body, headers
    alert = alertmanager_alert(f"fp{shown:05d}", starts=f"2026-12-02T00:00:{shown % 60:02}Z")
    body = json.dumps(alertmanager_payload([alert])).encode()
    return "/alerts/alertmanager", body, {"Authorization": f"Bearer {TOKEN}"}


def fire(port: int, count: int, concurrency: int, offset: int) -> dict[str, float]:
    per_thread = [list(range(t, count, concurrency)) for t in range(concurrency)]

    def worker(indexes: list[int]) -> list[tuple[float, int]]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        out = []
        try:
            for index in indexes:
                path, body, headers = delivery(offset + index)
                began = time.perf_counter()
                conn.request("POST", path, body, {"Content-Type": "application/json", **headers})
                reply = conn.getresponse()
                reply.read()
                out.append(((time.perf_counter() - began) * 1000, reply.status))
        finally:
            conn.close()
        return out

    began = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = [r for batch in pool.map(worker, per_thread) for r in batch]
    wall = time.perf_counter() - began
    ordered = sorted(ms for ms, _ in results)
    return {
        "p50": percentile(ordered, 0.5),
        "p90": percentile(ordered, 0.9),
        "p99": percentile(ordered, 0.99),
        "max": ordered[-1],
        "req/s": len(results) / wall,
        "non-200": sum(1 for _, status in results if status != 200),
    }


def bench(args: argparse.Namespace) -> int:
    root = Path(tempfile.mkdtemp(prefix="molt-alerts-bench-"))
    data = root / "data"
    molt = None
    figures = []
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
            "MOLT_ALERT_TOKEN": TOKEN,
            "MOLT_SENTRY_SECRET": SECRET,
        }
        molt = Child("molt", [sys.executable, "-m", "bot.cli", "run", "--no-console"], env, root)
        port = molt.port(MOLT_UP)
        fire(port, args.concurrency, args.concurrency, 10**6)  # warm-up, one per connection
        for run in range(args.runs):
            figures.append(fire(port, args.count, args.concurrency, run * args.count))
            print(f"run {run + 1}: p99 {figures[-1]['p99']:.1f} ms", flush=True)
    except BenchFailure as exc:
        print(exc, file=sys.stderr)
        return 1
    finally:
        if molt is not None:
            molt.stop()
        store.stop_embedded(data)
        shutil.rmtree(root, ignore_errors=True)
    keys = ["p50", "p90", "p99", "max", "req/s", "non-200"]
    rows = [[f"run {i + 1}", *(f[k] for k in keys)] for i, f in enumerate(figures)]
    rows.append(["median", *(median([f[k] for f in figures]) for k in keys)])
    print(f"\nalert webhook ack, ms ({args.count} deliveries at concurrency {args.concurrency})")
    print(table(["", *keys], rows, digits=1))
    p99 = median([f["p99"] for f in figures])
    verdict = "within" if p99 <= TARGET_P99_MS else "over"
    print(f"p99 {p99:.1f} ms: {verdict} the {TARGET_P99_MS:.0f} ms target")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=20)
    return bench(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
