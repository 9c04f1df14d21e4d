"""What the pipeline benchmarks share: a generated target, embedded Redis and a real worker.

A ``Rig`` is one fresh set-up in a temporary directory: the generated service
(``bench.repo``), an embedded Redis started through ``pipeline.store.connect``,
and ``python -m bot.cli worker`` configured through the same settings as
environment variables. ``rig()`` tears all of it down, whatever happens.

The scripts that use it are run as ``python bench/<name>.py`` and put the
repository root on ``sys.path`` themselves, so ``bench`` imports as a package.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from rq import Queue

from bench.repo import GIT_ENV, TEST_COMMAND, generate_repo, git
from pipeline import audit, store
from pipeline.config import Settings, load_settings
from pipeline.intake import approval
from pipeline.intake import flow as intake
from pipeline.queue import queueing
from pipeline.queue.workers import count_workers
from pipeline.requests.states import RequestState as S
from pipeline.requests.store import Origin, Request, RequestStore

ROOT = Path(__file__).resolve().parent.parent
BENCH = Origin("console", "bench")
PRINCIPAL = BENCH.principal
POLL_SECONDS = 0.005
_LEAKY_PREFIXES = ("MOLT_", "SLACK_", "DISCORD_", "GITHUB_", "ANTHROPIC_")
_LEAKY_NAMES = ("REDIS_URL", "GIT_DIR", "GIT_WORK_TREE", "PYTHONPATH")


class BenchFailure(Exception):
    """A run ended somewhere it should not have; the message says where."""


def clean_environment(tmp: Path) -> None:
    """Keep this machine's Molt settings and credentials out of the bench (and its worker)."""
    for name in list(os.environ):
        if name.startswith(_LEAKY_PREFIXES) or name in _LEAKY_NAMES:
            del os.environ[name]
    os.environ["MOLT_CONFIG"] = str(tmp / "no-molt.toml")
    os.environ.update(GIT_ENV)


@dataclass
class Rig:
    """One generated target with its own Redis and worker."""

    root: Path
    live: Path
    target: str
    base: str
    settings: Settings
    conn: redis.Redis
    worker: subprocess.Popen[bytes] | None = None
    worker_log: Path = field(default_factory=Path)
    _rq_queue: Queue | None = None

    @property
    def env(self) -> dict[str, str]:
        """The worker's environment: the same settings, spelt as variables."""
        s = self.settings
        return {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "PYTHONUNBUFFERED": "1",
            "MOLT_DATA_DIR": str(s.data_dir),
            "MOLT_TARGET_DIR": str(s.target_dir),
            "MOLT_TEST_COMMAND": s.test_command,
            "MOLT_RESTART_COMMAND": s.restart_command or "",
            "MOLT_AUTHORISED_USERS": ",".join(s.authorised_users),
            "MOLT_APPROVERS": ",".join(s.approvers),
            "MOLT_CONSOLE_USER": s.console_user,
            "MOLT_LOG_LEVEL": "info",
            # No watch window after the restart: the figures are the pipeline's own steps.
            "MOLT_WATCH_SECONDS": str(s.watch_seconds),
        }

    def start_worker(self, timeout: float = 60.0) -> float:
        """Start ``python -m bot.cli worker`` and wait until it is registered; returns seconds."""
        began = time.monotonic()
        self.worker_log = self.root / "worker.log"
        with open(self.worker_log, "wb") as log:
            self.worker = subprocess.Popen(
                [sys.executable, "-m", "bot.cli", "worker"],
                cwd=self.root,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        while count_workers(self.settings) < 1:
            if self.worker.poll() is not None:
                raise BenchFailure(f"the worker exited with {self.worker.returncode}")
            if time.monotonic() - began > timeout:
                raise BenchFailure(f"the worker did not register within {timeout:.0f} s")
            time.sleep(0.02)
        return time.monotonic() - began

    def stop_worker(self) -> None:
        proc = self.worker
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # warm shutdown: it is idle by now
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # a work horse left behind, if any
        self.worker = None

    def worker_tail(self, lines: int = 30) -> str:
        try:
            text = self.worker_log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def submit(self) -> tuple[Request, float]:
        """``deploy main`` up to plan_ready; returns the request and the seconds it took."""
        began = time.monotonic()
        request = intake.submit(
            self.settings,
            self.conn,
            BENCH,
            "deploy",
            "main",
            "deploy main",
        )
        seconds = time.monotonic() - began
        if request.state is not S.PLAN_READY:
            raise BenchFailure(f"planning ended {request.state.value}: {request.message}")
        return request, seconds

    def job_failure(self, request_id: str) -> str:
        """The error of the request's RQ job if it crashed (the request then never ends)."""
        if self._rq_queue is None:
            self._rq_queue = queueing.rq_queue(self.settings)
        registry = self._rq_queue.failed_job_registry
        for job_id in registry.get_job_ids():
            if job_id.startswith(f"update-{request_id}-"):
                job = registry.job_class.fetch(job_id, connection=registry.connection)
                result = job.latest_result()
                lines = (result.exc_string if result and result.exc_string else "").splitlines()
                return lines[-1] if lines else "unknown error"
        return ""

    def approve_and_wait(self, request_id: str, timeout: float = 120.0) -> Approved:
        """Approve, then poll the request every 5 ms until it is terminal."""
        requests = RequestStore(self.conn)
        started_at = time.time()
        began = time.monotonic()
        decision = approval.approve(self.settings, self.conn, request_id, BENCH)
        approved = time.monotonic()
        if not decision:
            raise BenchFailure(f"approval refused: {decision.reason}")
        polls = 0
        while True:
            request = requests.get(request_id)
            if request.terminal:
                ended = time.monotonic()
                break
            if self.worker is not None and self.worker.poll() is not None:
                raise BenchFailure(f"the worker died ({self.worker.returncode}) during the update")
            polls += 1
            if polls % 50 == 0:  # every quarter second or so: did the job itself crash?
                crashed = self.job_failure(request_id)
                if crashed:
                    raise BenchFailure(
                        f"the worker's job crashed ({crashed}) with the request still "
                        f"{request.state.value} ({request.phase}): {request.message}"
                    )
            if time.monotonic() - began > timeout:
                raise BenchFailure(
                    f"still {request.state.value} ({request.phase}) after {timeout:.0f} s: "
                    f"{request.message}"
                )
            time.sleep(POLL_SECONDS)
        return Approved(request, ended - began, approved - began, started_at)

    def trail(self, request_id: str) -> list[dict[str, Any]]:
        """The request's audit entries, oldest first."""
        return audit.entries(self.conn, request_id)

    def live_state(self) -> tuple[str, str]:
        """(HEAD, porcelain status) of the live checkout."""
        status = git(self.live, "status", "--porcelain", "--untracked-files=all")
        return git(self.live, "rev-parse", "HEAD"), status


@dataclass(frozen=True)
class Approved:
    request: Request
    wall: float  # approve() called → terminal state seen
    approve_call: float  # approve() itself: checks, transition, enqueue
    started_at: float  # time.time() when approve() was called, to compare with the audit


@contextlib.contextmanager
def rig(
    *, break_live: bool = False, seed: int = 0, files: int = 2000, change: int = 50
) -> Iterator[Rig]:
    """A fresh target, Redis and worker in a temporary directory; all gone afterwards."""
    root = Path(tempfile.mkdtemp(prefix="molt-bench-"))
    data = root / "data"
    started = False
    the_rig: Rig | None = None
    try:
        clean_environment(root)
        _, live, target = generate_repo(
            root / "service", files, change, break_live=break_live, seed=seed
        )
        os.sync()  # so writing back the generated files does not compete with what is timed
        settings = load_settings(
            data_dir=data,
            target_dir=live,
            test_command=TEST_COMMAND,
            restart_command="true",
            health_command=None,
            authorised_users=[PRINCIPAL],
            approvers=[PRINCIPAL],
            console_user=PRINCIPAL.split(":", 1)[1],
            watch_seconds=0,
        )
        started = True
        conn = store.connect(settings)
        base = git(live, "rev-parse", "HEAD")
        the_rig = Rig(root, live, target, base, settings, conn)
        the_rig.start_worker()
        yield the_rig
    except BaseException:
        if the_rig is not None and the_rig.worker_tail():
            print(f"--- worker log (last lines) ---\n{the_rig.worker_tail()}", file=sys.stderr)
        raise
    finally:
        if the_rig is not None:
            the_rig.stop_worker()
            the_rig.conn.close()
        if started:
            store.stop_embedded(data)
        shutil.rmtree(root, ignore_errors=True)


# -- reading the results ------------------------------------------------------------------------


def entry_at(trail: Iterable[dict[str, Any]], action: str, phase: str | None = None) -> float:
    """``at`` of the first audit entry with this action (and phase); NaN if there is none."""
    for entry in trail:
        if entry.get("action") != action:
            continue
        if phase is not None and entry.get("detail", {}).get("phase") != phase:
            continue
        return float(entry["at"])
    return float("nan")


def check_seconds(checks: Iterable[dict[str, Any]], name: str) -> float:
    """Seconds of the named check; NaN if it did not run."""
    for check in checks:
        if check.get("name") == name:
            return float(check.get("seconds", 0.0))
    return float("nan")


def median(values: Sequence[float]) -> float:
    kept = [v for v in values if v == v]  # drop NaN
    return statistics.median(kept) if kept else float("nan")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 3) -> str:
    """A plain text table: numbers to ``digits`` decimals, right-aligned; text left-aligned."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "-" if value != value else f"{value:.{digits}f}"
        return str(value)

    cells = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    numeric = [all(isinstance(row[i], (int, float)) for row in rows) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    out += [line(r) for r in cells]
    return "\n".join(out)
