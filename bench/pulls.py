"""Changes through pull requests: approved → pull request opened, and merge → deploy plan.

One run starts the fake GitHub and the fake Messages API (``tests/fakes/``) in this process,
and the real bot (``python -m bot.cli run --no-console``, one embedded worker) with
``MOLT_CHANGE_DELIVERY=pull-request``, managing the small service the tests use
(``tests.support.ServiceRepo``). Each of ``--runs`` rounds asks for a change in words in a
labelled issue, approves it with ``/molt approve`` and times:

- approve → the pull request's ``POST /pulls`` reaching GitHub, and the part of it that is
  neither the model's turns (implement, review) nor the tests (phase 1): Molt's own;
- the merge's webhook delivery → the deploy's status comment saying "Plan ready".

    python bench/pulls.py [--runs 5] [--write-interval 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for ``bench`` and ``tests``

from bench.harness import ROOT, BenchFailure, clean_environment, median, table
from pipeline import store
from pipeline.config import load_settings
from pipeline.requests.store import RequestStore
from tests.conversations import implemented, planned, reviewed
from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.github import (
    TOKEN,
    FakeGitHub,
    deliver,
    issue_comment_payload,
    issues_payload,
    pull_request_payload,
)
from tests.support import ServiceRepo, git

REPO = "acme/api"
SECRET = "bench-webhook-secret"


class Round:
    def __init__(self, root: Path, args: argparse.Namespace) -> None:
        self.github = FakeGitHub().start()
        self.github.add_repo(REPO, {"alice": "write", "bob": "admin"})
        self.model = FakeAnthropic().start()
        self.service = ServiceRepo.create(root / "service")
        self.data = root / "data"
        self.log = root / "molt.log"
        env = {
            **os.environ,
            **self.model.env(),
            "PYTHONPATH": str(ROOT),
            "MOLT_DATA_DIR": str(self.data),
            "MOLT_TARGET_DIR": str(self.service.live),
            "MOLT_TEST_COMMAND": self.service.test_command,
            "MOLT_RESTART_COMMAND": "true",
            "MOLT_HTTP_PORT": "0",
            "MOLT_AUTHORISED_USERS": "github:alice",
            "MOLT_APPROVERS": "github:alice,github:bob",
            "MOLT_CHANGE_DELIVERY": "pull-request",
            "GITHUB_TOKEN": TOKEN,
            "GITHUB_API_URL": self.github.url,
            "GITHUB_WEBHOOK_SECRET": SECRET,
            "MOLT_GITHUB_REPOS": REPO,
            "MOLT_GITHUB_POLL": "0",
            "MOLT_GITHUB_WRITE_INTERVAL": str(args.write_interval),
        }
        with open(self.log, "wb") as out:
            self.molt = subprocess.Popen(
                [sys.executable, "-m", "bot.cli", "run", "--no-console"],
                cwd=root,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.port = self._port()
        self.store = RequestStore(store.connect(load_settings(data_dir=self.data)))

    def _port(self) -> int:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            text = self.log.read_text(errors="replace")
            if "github connected" in text and "molt is up" in text:
                return int(text.split("molt is up", 1)[1].split("port=", 1)[1].split()[0])
            time.sleep(0.05)
        raise BenchFailure(f"molt did not come up:\n{self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.molt.poll() is None:
            self.molt.terminate()
            self.molt.wait(60)
        store.stop_embedded(self.data)
        self.github.stop()
        self.model.stop()

    def _send(self, event: str, payload: dict[str, object]) -> None:
        status, _ = deliver(f"http://127.0.0.1:{self.port}/github/webhook", event, payload, SECRET)
        if status != 200:
            raise BenchFailure(f"{event} delivery answered {status}")

    def _wait(self, number: int, text: str, timeout: float = 120) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            bodies = [c["body"] for c in self.github.comments(REPO, number)]
            if any('"kind": "status"' in b and text in b for b in bodies[-3:]):
                return time.monotonic()
            time.sleep(0.005)
        raise BenchFailure(f"no status comment saying {text!r} on #{number}")

    def once(self) -> tuple[float, float, float]:
        """(approve → PR opened, of which Molt's own, merge → deploy plan) in seconds."""
        self.model.add(planned(), *implemented(), reviewed())
        issue = self.github.open_issue(REPO, "Add a ping function", "", "alice", labels=["molt"])
        number = int(issue["number"])
        self._send("issues", issues_payload("opened", REPO, issue, "alice"))
        self._wait(number, "Plan ready")
        opened_before = len(self.github.calls_to("POST", "/pulls"))
        made = self.github.add_comment(REPO, number, "/molt approve", "bob")
        began = time.time()
        issue = self.github.issue(REPO, number)
        self._send("issue_comment", issue_comment_payload("created", REPO, issue, made, "bob"))
        while len(self.github.calls_to("POST", "/pulls")) == opened_before:
            time.sleep(0.005)
        opened = self.github.calls_to("POST", "/pulls")[-1].at - began
        request = next(r for r in self.store.recent(20) if r.state.value == "proposed")
        spent = sum(
            c["seconds"]
            for c in (request.result or {}).get("checks", [])
            if c["name"] in ("implement", "phase 1: review", "phase 1: tests")
        )
        pull = self.github.pulls(REPO)[-1]
        branch = pull["head"]["ref"]
        work = self.service.work
        git(work, "fetch", "-q", "origin")
        git(work, "merge", "-q", "--no-ff", f"origin/{branch}", "-m", f"Merge {branch}")
        git(work, "push", "-q", "origin", "main")
        merged = self.github.merge_pull(REPO, pull["number"], "bob", self.service.work_head())
        sent = time.monotonic()
        self._send("pull_request", pull_request_payload("closed", REPO, merged, "bob"))
        planned_at = self._wait(number, "Plan ready")
        # Leave the service as it was for the next round: reject the deploy.
        made = self.github.add_comment(REPO, number, "/molt reject", "bob")
        issue = self.github.issue(REPO, number)
        self._send("issue_comment", issue_comment_payload("created", REPO, issue, made, "bob"))
        self._wait(number, "Rejected")
        git(work, "reset", "-q", "--hard", "HEAD~1")
        git(work, "push", "-q", "-f", "origin", "main")
        return opened, opened - spent, planned_at - sent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--write-interval", type=float, default=1.0)
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="molt-bench-pulls-"))
    clean_environment(root)
    bench = Round(root, args)
    try:
        rounds = [bench.once() for _ in range(args.runs)]
    finally:
        bench.stop()
        shutil.rmtree(root, ignore_errors=True)
    rows = [
        ["approve → PR opened", median([r[0] for r in rounds]), max(r[0] for r in rounds)],
        ["  of which Molt's own", median([r[1] for r in rounds]), max(r[1] for r in rounds)],
        ["merge → deploy plan", median([r[2] for r in rounds]), max(r[2] for r in rounds)],
    ]
    print(f"{args.runs} rounds, write interval {args.write_interval} s")
    print(table(["seconds", "median", "max"], rows, digits=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
