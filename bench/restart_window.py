"""How long Molt cannot answer while it restarts onto new code, and how long the boot guard
takes to bring the old release back when a new one cannot start.

Each set-up is a temporary copy of this repository (a bare origin and a live clone), and
``molt run --no-console`` started from the live clone (embedded Redis, one worker, a fixed
HTTP port), optionally under a supervisor that starts it again when it exits non-zero (as
systemd's ``Restart=on-failure`` does). Updates are submitted and approved through pipeline
calls, and /healthz is polled every 10 ms from this process.

- restart window: a trivial commit upstream, deployed: the time between the last healthy
  answer of the old process and the first healthy answer of the new one.
- boot-guard rollback: a commit whose ``bot/app.py`` exits at import, deployed: the time
  from the failed start being detected to the old release answering healthy again, in three
  set-ups: no supervisor (the worker sees Molt exit and nothing start it again, rolls back
  and relaunches it); a supervisor (the worker sees the crash loop, rolls back, and the boot
  guard in the starting process re-executes onto the old release); a supervisor whose
  worker died with Molt (the boot guard alone: it waits out the dead worker's lock, rolls
  back and re-executes). "Detected" is the audit entry of the update entering its
  ``rollback`` phase, written by whoever rolls back (the worker, or the guard once the dead
  worker's lock expired). Each also gives the whole outage: from the last answer of the
  old process before it restarted onto the broken release to the old release answering.

    python bench/restart_window.py [--runs 5] [--only window|plain|supervised|guard]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for ``bench``

from bench.harness import BenchFailure, clean_environment, median, table
from bench.repo import GIT_ENV
from pipeline import audit, store
from pipeline.config import Settings, load_settings
from pipeline.intake import approval
from pipeline.intake import flow as intake
from pipeline.queue.targets import Target
from pipeline.requests.store import Origin, Request, RequestStore

ROOT = Path(__file__).resolve().parent.parent
ALICE = Origin("console", "alice", "console", "alice")
TEST_COMMAND = "python -c \"import bot.cli, pipeline.update.jobs; print('1 passed')\""
POLL = 0.010
SUPERVISOR = """
import signal, subprocess, sys, time
child = None
stopping = False
def stop(*_):
    global stopping
    stopping = True
    if child is not None and child.poll() is None:
        child.terminate()
signal.signal(signal.SIGTERM, stop)
while not stopping:
    child = subprocess.Popen([sys.executable, "-m", "bot.cli", "run", "--no-console"])
    if child.wait() == 0 or stopping:
        break
    time.sleep(0.2)
"""


def git(cwd: Path, *args: str) -> str:
    out = subprocess.run(
        ["git", "-C", str(cwd), *args],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **GIT_ENV},
    )
    return out.stdout.strip()


def copy_of_molt(root: Path) -> tuple[Path, Path]:
    """This repository's files as an upstream work copy with a bare origin, and a live clone."""
    work, origin, live = root / "work", root / "origin.git", root / "live"
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard", "-z"],
        capture_output=True,
        check=True,
    ).stdout.decode()
    for rel in filter(None, listed.split("\0")):
        if (ROOT / rel).is_file():
            (work / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, work / rel)
    git(work.parent, "init", "-q", "-b", "main", str(work))
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", "Molt as benchmarked")
    git(root, "clone", "-q", "--bare", str(work), str(origin))
    git(work, "remote", "add", "origin", str(origin))
    git(root, "clone", "-q", str(origin), str(live))
    return work, live


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Poller:
    """GET /healthz every 10 ms; keeps (time, version) of every healthy answer."""

    port: int
    answers: list[tuple[float, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        url = f"http://127.0.0.1:{self.port}/healthz"
        while not self._stop.is_set():
            began = time.time()
            try:
                with urllib.request.urlopen(url, timeout=0.5) as reply:
                    body = json.loads(reply.read())
                if body.get("status") == "ok":
                    self.answers.append((began, str(body.get("version"))))
            except (OSError, ValueError):
                pass
            self._stop.wait(max(0.0, POLL - (time.time() - began)))

    def healthy_on(self, version: str, after: float = 0.0, timeout: float = 120) -> float:
        """When /healthz first answered ok on ``version`` after ``after`` (waiting for it)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            found = [t for t, v in list(self.answers) if v == version and t > after]
            if found:
                return found[0]
            time.sleep(0.02)
        raise BenchFailure(f"/healthz never answered ok on {version[:7]}")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


class Setup:
    """One copy of Molt, running (optionally supervised), and the calls that drive it."""

    def __init__(self, tmp: Path, *, supervised: bool) -> None:
        self.work, self.live = copy_of_molt(tmp / "molt")
        self.port = free_port()
        self.data = tmp / "data"
        self.env = {
            **os.environ,
            "PYTHONPATH": str(self.live),
            "MOLT_DATA_DIR": str(self.data),
            "MOLT_TEST_COMMAND": TEST_COMMAND,
            "MOLT_HTTP_PORT": str(self.port),
            "MOLT_CONSOLE_USER": "alice",
            "MOLT_AUTHORISED_USERS": "console:alice",
            "MOLT_BOOT_TIMEOUT": "60",
            "MOLT_LOCK_TTL": "3",
            "MOLT_CRASH_LOOP": "2/60",
            "MOLT_LOG_LEVEL": "warning",
            "MOLT_WATCH_SECONDS": "0",  # the window measured is the restart's, not the watch's
        }
        self.settings: Settings = load_settings(
            data_dir=self.data,
            target_dir=self.live,
            test_command=TEST_COMMAND,
            authorised_users=["console:alice"],
            console_user="alice",
        )
        self.log = open(tmp / "molt.log", "ab")  # noqa: SIM115 - closed in close()
        argv = (
            [sys.executable, "-c", SUPERVISOR]
            if supervised
            else [sys.executable, "-m", "bot.cli", "run", "--no-console"]
        )
        self.proc = subprocess.Popen(
            argv,
            cwd=self.live,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.poller = Poller(self.port)
        self.poller.healthy_on(git(self.live, "rev-parse", "HEAD"))
        self.conn = store.connect(self.settings)
        self.requests = RequestStore(self.conn)

    def commit(self, path: str, content: str, message: str) -> str:
        (self.work / path).write_text(content)
        git(self.work, "add", "-A")
        git(self.work, "commit", "-q", "-m", message)
        git(self.work, "push", "-q", "origin", "main")
        return git(self.work, "rev-parse", "HEAD")

    def deploy(self) -> Request:
        request = intake.submit(self.settings, self.conn, ALICE, "deploy", "main", "deploy main")
        if request.state.value != "plan_ready":
            raise BenchFailure(f"deploy main: {request.state.value}: {request.message}")
        decision = approval.approve(self.settings, self.conn, request.id, ALICE)
        if not decision:
            raise BenchFailure(f"approve: {decision.reason}")
        return request

    def wait(self, request_id: str, timeout: float = 180) -> Request:
        deadline = time.time() + timeout
        while time.time() < deadline:
            found = self.requests.get(request_id)
            if found.terminal:
                return found
            time.sleep(0.05)
        raise BenchFailure(f"request {request_id} did not end")

    def kill_worker_when_restarting(self, request_id: str) -> None:
        """Kill the update's worker (and its job) once the bot was asked to restart."""
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.conn.llen("molt:control:bot") == 0 and (
                self.requests.get(request_id).state.value == "restarting"
                and self.conn.hget("molt:bot", "beat") is None
            ):
                break
            time.sleep(0.005)
        else:
            raise BenchFailure("the bot was never asked to restart")
        holder = Target(self.settings, self.conn).lock.holder()
        if holder is None:
            raise BenchFailure("no update holds the lock")
        os.killpg(os.getpgid(int(holder.holder.rpartition(":")[2])), signal.SIGKILL)

    def close(self) -> None:
        self.poller.stop()
        try:
            bot = int(self.conn.hget("molt:bot", "pid") or 0)
        except redis.RedisError:
            bot = 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        # A Molt the worker relaunched belongs to no one here.
        if bot and bot != self.proc.pid:
            try:
                os.kill(bot, signal.SIGTERM)
                time.sleep(3)
            except ProcessLookupError:
                pass
        store.stop_embedded(self.data)
        self.log.close()


@contextmanager
def setup(*, supervised: bool) -> Iterator[Setup]:
    tmp = Path(tempfile.mkdtemp(prefix="molt-bench-"))
    clean_environment(tmp)
    found: Setup | None = None
    try:
        found = Setup(tmp, supervised=supervised)
        yield found
    finally:
        if found is not None:
            found.close()
        shutil.rmtree(tmp, ignore_errors=True)


def restart_windows(runs: int) -> list[dict[str, float]]:
    rows = []
    with setup(supervised=False) as s:
        for n in range(runs):
            old = git(s.live, "rev-parse", "HEAD")
            new = s.commit("NOTES.md", f"Run {n}.\n", f"notes {n}")
            request = s.deploy()
            done = s.wait(request.id)
            if done.state.value != "succeeded":
                raise BenchFailure(f"update {n}: {done.state.value}: {done.message}")
            first_new = s.poller.healthy_on(new)
            last_old = max(t for t, v in s.poller.answers if v == old and t < first_new)
            rows.append({"window": first_new - last_old})
    return rows


def rollbacks(runs: int, mode: str) -> list[dict[str, float]]:
    rows = []
    with setup(supervised=mode != "plain") as s:
        good = git(s.live, "rev-parse", "HEAD")
        app = (s.work / "bot" / "app.py").read_text()
        for n in range(runs):
            s.commit("bot/app.py", app + f'\nraise SystemExit("broken release {n}")\n', f"bad {n}")
            request = s.deploy()
            if mode == "guard":
                s.kill_worker_when_restarting(request.id)
            done = s.wait(request.id)
            if done.state.value != "failed":
                raise BenchFailure(f"run {n}: {done.state.value}: {done.message}")
            detected = next(
                float(e["at"])
                for e in audit.entries(s.conn, request.id)
                if e["action"] == "running" and e["detail"].get("phase") == "rollback"
            )
            back = s.poller.healthy_on(good, after=detected)
            if git(s.live, "rev-parse", "HEAD") != good:
                raise BenchFailure(f"run {n}: the live checkout is not back on {good[:7]}")
            last = max(t for t, v in s.poller.answers if v == good and t < detected)
            rows.append({"rollback": back - detected, "outage": back - last})
            print(f"  {mode} {n}: {done.message[:150]}", file=sys.stderr)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--only", choices=("window", "plain", "supervised", "guard"), action="append"
    )
    args = parser.parse_args()
    chosen = args.only or ["window", "plain", "supervised", "guard"]
    results: list[tuple[str, list[float]]] = []
    if "window" in chosen:
        windows = [r["window"] for r in restart_windows(args.runs)]
        results.append(("restart window (last old answer → first new answer)", windows))
    labels = {
        "plain": "boot-guard rollback, no supervisor (worker relaunches)",
        "supervised": "boot-guard rollback, supervisor + worker (crash loop 2/60)",
        "guard": "boot-guard rollback, supervisor, worker died (guard alone)",
    }
    for mode in ("plain", "supervised", "guard"):
        if mode in chosen:
            found = rollbacks(args.runs, mode)
            detected = [r["rollback"] for r in found]
            outage = [r["outage"] for r in found]
            results.append((f"{labels[mode]}: detected → old release answering", detected))
            results.append(("  whole outage: last answer → old release answering", outage))
    rows = [
        (name, median(values), min(values), max(values), len(values)) for name, values in results
    ]
    print(table(["figure (seconds)", "median", "min", "max", "runs"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
