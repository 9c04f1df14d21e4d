"""GitHub: webhook ack latency, labelled issue → plan comment, and GitHub API calls per request.

One run starts, on 127.0.0.1: the fake GitHub REST API (``tests/fakes/github.py``) in this
process, and the real bot (``python -m bot.cli run --no-console``, one embedded worker) with
GitHub configured against it, embedded Redis in a temporary MOLT_DATA_DIR and a generated
target (``bench.repo``, 2,000 files). Then:

- ``--count`` signed ``issue_comment`` deliveries (plain comments, which Molt takes in and
  leaves alone) at ``--concurrency``, one keep-alive connection per thread: ack latency;
- ``--issues`` labelled ``deploy main`` issues, one at a time, each delivered by webhook:
  seconds from the delivery to the status comment saying "Plan ready" (the live commit's
  tests were run at start-up, so pre-flight finds them remembered);
- one deploy approved with ``/molt approve`` to success, and one whose target commit
  breaks the tests to failure: GitHub API calls from the issue to the last comment, by
  method.

Writes keep ``--write-interval`` seconds apart (1, GitHub's ask, by default), which is most
of the time from issue to plan comment.

    python bench/github.py [--count 200] [--concurrency 20] [--issues 10] [--write-interval 1]
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for ``bench`` and ``tests``

from bench.harness import ROOT, BenchFailure, clean_environment, median, table
from bench.repo import TEST_COMMAND, generate_repo, push_change
from pipeline import store
from tests.fakes.github import TOKEN, FakeGitHub, deliver, issue_comment_payload, issues_payload
from tests.fakes.github import sign as sign_body

REPO = "acme/api"
SECRET = "bench-webhook-secret"
TARGET_P99_MS = 100.0
MOLT_UP = "molt is up"


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(share * len(ordered)) - 1)]


class Bench:
    def __init__(self, root: Path, args: argparse.Namespace) -> None:
        self.root = root
        self.args = args
        self.github = FakeGitHub().start()
        self.github.add_repo(REPO, {"alice": "write", "bob": "admin"})
        _, self.live, _ = generate_repo(root / "service", 2000, 50)
        self.data = root / "data"
        self.log = root / "molt.log"
        self.molt: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self) -> None:
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "MOLT_DATA_DIR": str(self.data),
            "MOLT_TARGET_DIR": str(self.live),
            "MOLT_TEST_COMMAND": TEST_COMMAND,
            "MOLT_RESTART_COMMAND": "true",
            "MOLT_HTTP_PORT": "0",
            "MOLT_AUTHORISED_USERS": "github:alice",
            "MOLT_APPROVERS": "github:alice,github:bob",
            "GITHUB_TOKEN": TOKEN,
            "GITHUB_API_URL": self.github.url,
            "GITHUB_WEBHOOK_SECRET": SECRET,
            "MOLT_GITHUB_REPOS": REPO,
            "MOLT_GITHUB_POLL": "0",
            "MOLT_GITHUB_WRITE_INTERVAL": str(self.args.write_interval),
            "MOLT_WATCH_SECONDS": "0",  # an update ends at its restart, as the figures assume
        }
        with open(self.log, "wb") as out:
            self.molt = subprocess.Popen(
                [sys.executable, "-m", "bot.cli", "run", "--no-console"],
                cwd=self.root,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            text = self.log.read_text(errors="replace")
            if MOLT_UP in text and "pre-flight tests at start-up" in text:
                self.port = int(text.split(MOLT_UP, 1)[1].split("port=", 1)[1].split()[0])
                return
            if self.molt.poll() is not None:
                break
            time.sleep(0.05)
        raise BenchFailure(f"molt did not come up:\n{self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.molt is not None and self.molt.poll() is None:
            self.molt.terminate()
            try:
                self.molt.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.molt.pid, 9)
        store.stop_embedded(self.data)
        self.github.stop()

    # -- the figures -------------------------------------------------------------

    def acks(self) -> list[float]:
        """Milliseconds from sending each delivery to its response."""
        issue = self.github.open_issue(REPO, "chatter", "", "alice")
        comment = self.github.add_comment(REPO, int(issue["number"]), "thanks!", "alice")
        body = json.dumps(issue_comment_payload("created", REPO, issue, comment, "alice")).encode()
        headers = {
            "Content-Type": "application/json",
            "X-GitHub-Event": "issue_comment",
            "X-Hub-Signature-256": sign_body(body, SECRET),
        }
        local = threading.local()
        per_thread = self.args.count // self.args.concurrency

        def one(_: int) -> float:
            if not hasattr(local, "conn"):
                local.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            began = time.perf_counter()
            local.conn.request(
                "POST",
                "/github/webhook",
                body,
                headers | {"X-GitHub-Delivery": str(uuid.uuid4())},
            )
            answer = local.conn.getresponse()
            answer.read()
            if answer.status != 200:
                raise BenchFailure(f"delivery answered {answer.status}")
            return (time.perf_counter() - began) * 1000

        with ThreadPoolExecutor(self.args.concurrency) as pool:
            list(pool.map(one, range(self.args.concurrency)))  # warm-up: one per connection
            return list(pool.map(one, range(per_thread * self.args.concurrency)))

    def _status_says(self, number: int, text: str, timeout: float = 300) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for comment in self.github.comments(REPO, number):
                if '"kind": "status"' in comment["body"] and text in comment["body"]:
                    return time.monotonic()
            time.sleep(0.005)
        raise BenchFailure(f"issue {number}: no status comment saying {text!r}")

    def issue_to_plan(self) -> float:
        issue = self.github.open_issue(REPO, "deploy main", "", "alice", labels=["molt"])
        began = time.monotonic()
        status, _ = deliver(
            self._hook, "issues", issues_payload("opened", REPO, issue, "alice"), SECRET
        )
        if status != 200:
            raise BenchFailure(f"the issue's delivery answered {status}")
        return self._status_says(int(issue["number"]), "Plan ready") - began

    @property
    def _hook(self) -> str:
        return f"http://127.0.0.1:{self.port}/github/webhook"

    def calls_for_one(self, outcome: str) -> Counter[str]:
        """GitHub API calls, by method, from a labelled issue to its request's last comment."""
        self.github.reset_calls()
        issue = self.github.open_issue(REPO, "deploy main", "", "alice", labels=["molt"])
        number = int(issue["number"])
        deliver(self._hook, "issues", issues_payload("opened", REPO, issue, "alice"), SECRET)
        self._status_says(number, "Plan ready")
        made = self.github.add_comment(REPO, number, "/molt approve", "bob")
        payload = issue_comment_payload(
            "created", REPO, self.github.issue(REPO, number), made, "bob"
        )
        deliver(self._hook, "issue_comment", payload, SECRET)
        self._status_says(number, "Live" if outcome == "success" else "Failed")
        time.sleep(3 * max(self.args.write_interval, 0.5))  # the milestone and last label
        return Counter(c.method for c in self.github.calls)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--issues", type=int, default=10)
    parser.add_argument("--write-interval", type=float, default=1.0)
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="molt-bench-github-"))
    clean_environment(root)
    bench = Bench(root, args)
    try:
        bench.start()
        acks = bench.acks()
        plans = [bench.issue_to_plan() for _ in range(args.issues)]
        succeeded = bench.calls_for_one("success")
        push_change(root / "service", 5, seed=7, break_live=True)
        failed = bench.calls_for_one("failure")
    finally:
        bench.stop()
        shutil.rmtree(root, ignore_errors=True)
    print(f"webhook acks: {len(acks)} deliveries at concurrency {args.concurrency}")
    rows = [
        ["p50 ms", median(acks)],
        ["p99 ms", _percentile(acks, 0.99)],
        ["max ms", max(acks)],
    ]
    print(table(["ack", "value"], rows, digits=1))
    print(
        f"\nlabelled issue → plan comment, {len(plans)} issues, "
        f"write interval {args.write_interval} s"
    )
    rows = [["median s", median(plans)], ["max s", max(plans)]]
    print(table(["plan", "value"], rows, digits=2))
    print("\nGitHub API calls per request (issue → last comment)")
    methods = sorted(set(succeeded) | set(failed))
    rows = [[m, succeeded.get(m, 0), failed.get(m, 0)] for m in methods]
    rows.append(["all", sum(succeeded.values()), sum(failed.values())])
    print(table(["method", "deploy succeeded", "deploy failed"], rows))
    p99 = _percentile(acks, 0.99)
    verdict = "within" if p99 <= TARGET_P99_MS else "over"
    print(f"\nack p99 {p99:.1f} ms: {verdict} the {TARGET_P99_MS:.0f} ms target")
    return 0


if __name__ == "__main__":
    sys.exit(main())
