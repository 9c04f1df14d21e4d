"""Two targets of a fleet updated at once against one alone: the wall time ratio.

Each run builds two generated services (bench/repo.py, small) as targets ``a`` and ``b``
of one molt.toml, with equal test commands that take ``--seconds`` (a sleep, then the
service's quick tests), one embedded Redis shared through REDIS_URL, and one real worker
per target (``python -m bot.cli worker --target a``) in a directory of its own. It times
approve → succeeded of ``deploy main`` on ``a`` alone, then of ``deploy main`` on both
approved together (first approval → last success). Updates of different targets run in
parallel, so the ratio stays near 1 (the issue's target: ≤ 1.2 with 20 s test commands).

    python bench/fleet.py [--runs 2] [--seconds 5] [--files 200]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for ``bench``

from bench.harness import BENCH, PRINCIPAL, ROOT, BenchFailure, clean_environment, median, table
from bench.repo import TEST_COMMAND, generate_repo, push_change
from pipeline import approval, intake, store, workers
from pipeline.config import Settings, load_settings
from pipeline.requests import RequestStore
from pipeline.states import RequestState as S

NAMES = ("a", "b")
TARGET_RATIO = 1.2


@dataclass
class Fleet:
    root: Path
    settings: Settings
    env: dict[str, str]
    procs: list[subprocess.Popen[bytes]]

    def view(self, name: str) -> Settings:
        return self.settings.for_target(name)


@contextlib.contextmanager
def fleet(seconds: float, files: int) -> Iterator[Fleet]:
    """Two targets, their workers and a shared embedded Redis; all gone afterwards."""
    root = Path(tempfile.mkdtemp(prefix="molt-bench-fleet-"))
    redis_dir = root / "redis"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        clean_environment(root)
        tables = []
        for name in NAMES:
            _, live, _ = generate_repo(root / name, files, 20, megabytes=2.0, seed=ord(name))
            tables.append(
                f'[targets.{name}]\ndir = "{live}"\n'
                f'test_command = "sleep {seconds}; {TEST_COMMAND}"\n'
            )
        config = root / "molt.toml"
        config.write_text("\n".join(tables))
        sock = store.ensure_embedded(redis_dir)
        env = {
            "MOLT_CONFIG": str(config),
            "REDIS_URL": f"unix://{sock}",
            "MOLT_RESTART_COMMAND": "true",
            "MOLT_AUTHORISED_USERS": PRINCIPAL,
            "MOLT_CONSOLE_USER": PRINCIPAL.split(":", 1)[1],
            "MOLT_LOG_LEVEL": "info",
        }
        os.environ.update(env)
        settings = load_settings(data_dir=root / "bot")
        for name in NAMES:
            procs.append(_worker(root, env, name))
        yield Fleet(root, settings, env, procs)
    finally:
        for proc in procs:
            _stop(proc)
        store.stop_embedded(redis_dir)
        shutil.rmtree(root, ignore_errors=True)


def _worker(root: Path, env: dict[str, str], name: str) -> subprocess.Popen[bytes]:
    """``molt worker --target <name>`` on its own "host": a directory and data dir."""
    host = root / f"host-{name}"
    host.mkdir()
    with open(host / "worker.log", "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "bot.cli", "worker", "--target", name],
            cwd=host,
            env={
                **os.environ,
                **env,
                "MOLT_DATA_DIR": str(host / "data"),
                "PYTHONPATH": str(ROOT),
                "PYTHONUNBUFFERED": "1",
            },
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(15)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _wait_for_workers(the_fleet: Fleet, conn: redis.Redis, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    for name in NAMES:
        while not workers.serving(the_fleet.view(name), conn):
            if time.monotonic() > deadline:
                raise BenchFailure(f"no worker for {name} registered within {timeout:.0f} s")
            time.sleep(0.05)


def _planned(the_fleet: Fleet, conn: redis.Redis, name: str) -> str:
    """``deploy main`` on the target, planned by its worker; the request's id."""
    request = intake.submit(the_fleet.view(name), conn, BENCH, "deploy", "main", "deploy main")
    deadline = time.monotonic() + 300
    while request.state in (S.PREFLIGHT, S.PLANNING) and time.monotonic() < deadline:
        time.sleep(0.01)
        request = RequestStore(conn).get(request.id)
    if request.state is not S.PLAN_READY:
        raise BenchFailure(f"planning on {name} ended {request.state.value}: {request.message}")
    return request.id


def _updated(the_fleet: Fleet, conn: redis.Redis, names: tuple[str, ...]) -> float:
    """Plan ``deploy main`` on each target, approve them together; seconds to the last end."""
    planned = {name: _planned(the_fleet, conn, name) for name in names}
    requests = RequestStore(conn)
    began = time.monotonic()
    for name, request_id in planned.items():
        decision = approval.approve(the_fleet.view(name), conn, request_id, BENCH)
        if not decision:
            raise BenchFailure(f"approval on {name} refused: {decision.reason}")
    waiting = set(planned.values())
    while waiting:
        for request_id in list(waiting):
            request = requests.get(request_id)
            if request.terminal:
                if request.state is not S.SUCCEEDED:
                    ended = f"{request.state.value}: {request.message}"
                    raise BenchFailure(f"{request_id} ended {ended}")
                waiting.discard(request_id)
        if time.monotonic() - began > 600:
            raise BenchFailure("the updates did not end within 600 s")
        time.sleep(0.01)
    return time.monotonic() - began


def run(seconds: float, files: int, seed: int) -> tuple[float, float]:
    with fleet(seconds, files) as the_fleet:
        conn = store.connect(the_fleet.settings)
        _wait_for_workers(the_fleet, conn)
        alone = _updated(the_fleet, conn, ("a",))
        push_change(the_fleet.root / "a", 20, seed=seed + 10)
        together = _updated(the_fleet, conn, NAMES)
        conn.close()
    return alone, together


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each test run")
    parser.add_argument("--files", type=int, default=200, help="files in each generated target")
    args = parser.parse_args()
    rows = []
    for number in range(1, args.runs + 1):
        alone, together = run(args.seconds, args.files, number)
        rows.append((number, alone, together, together / alone))
    print(
        f"fleet: two targets, test commands of {args.seconds:.0f} s + quick tests, "
        f"{args.files} files each; approve → succeeded (s)"
    )
    print(table(("run", "one alone", "two at once", "ratio"), rows, digits=2))
    ratio = median([row[3] for row in rows])
    print(f"median ratio {ratio:.2f} (target ≤ {TARGET_RATIO}: parallel, not serial)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
