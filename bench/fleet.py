"""A fleet's figures: two targets updated at once against one alone, many targets on a few
workers, and the cost of planning on a target's worker instead of in the process asking.

1. *Parallel*: two generated services (bench/repo.py, small) as targets ``a`` and ``b`` of
   one molt.toml, with equal test commands that take ``--seconds`` (a sleep, then the
   service's quick tests), one embedded Redis shared through REDIS_URL, and one real
   worker per target (``python -m bot.cli worker --target a``) in a directory of its own.
   Approve → succeeded of ``deploy main`` on ``a`` alone, then on both approved together
   (first approval → last success): the ratio stays near 1 (target ≤ 1.2 with 20 s tests).
2. *Planning hop*: request → plan of ``deploy main`` on ``a`` through its worker (a job on
   its queue, the plan seen in Redis) against the same planning run in this process, both
   with the tests at that commit already remembered (median of ``--plans``; target ≤ 50 ms).
3. *Many*: ``--many`` targets with one trivial update each on ``--many-workers`` workers
   (``--all``): updates per minute, Redis commands per update (INFO commandstats), and
   this process's CPU time per update (it plays the bot: submits, approves, watches).

    python bench/fleet.py [--runs 2] [--seconds 5] [--files 200] [--plans 5] [--many 20]
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
from pipeline import store
from pipeline.config import Settings, load_settings
from pipeline.intake import approval
from pipeline.intake import flow as intake
from pipeline.queue import workers
from pipeline.requests.states import RequestState as S
from pipeline.requests.store import RequestStore

NAMES = ("a", "b")
TARGET_RATIO = 1.2
TARGET_HOP_MS = 50


@dataclass
class Fleet:
    root: Path
    settings: Settings
    env: dict[str, str]
    procs: list[subprocess.Popen[bytes]]

    def view(self, name: str) -> Settings:
        return self.settings.for_target(name)


@contextlib.contextmanager
def fleet(
    seconds: float, files: int, names: tuple[str, ...] = NAMES, serving: int = 0
) -> Iterator[Fleet]:
    """Targets ``names``, a shared embedded Redis, and a worker per target (or ``serving``
    workers of every target); all gone afterwards."""
    root = Path(tempfile.mkdtemp(prefix="molt-bench-fleet-"))
    redis_dir = root / "redis"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        clean_environment(root)
        tables = []
        sleep = f"sleep {seconds}; " if seconds else ""
        for number, name in enumerate(names):
            _, live, _ = generate_repo(root / name, files, 20, megabytes=2.0, seed=number)
            tables.append(
                f'[targets.{name}]\ndir = "{live}"\ntest_command = "{sleep}{TEST_COMMAND}"\n'
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
        for host in range(serving) if serving else names:
            procs.append(_worker(root, env, str(host) if serving else host, every=bool(serving)))
        yield Fleet(root, settings, env, procs)
    finally:
        for proc in procs:
            _stop(proc)
        store.stop_embedded(redis_dir)
        shutil.rmtree(root, ignore_errors=True)


def _worker(
    root: Path, env: dict[str, str], name: str, *, every: bool = False
) -> subprocess.Popen[bytes]:
    """``molt worker --target <name>`` (or ``--all``) on its own "host": a directory and data
    dir."""
    host = root / f"host-{name}"
    host.mkdir()
    serves = ["--all"] if every else ["--target", name]
    with open(host / "worker.log", "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "bot.cli", "worker", *serves],
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


def _wait_for_workers(
    the_fleet: Fleet, conn: redis.Redis, names: tuple[str, ...] = NAMES, timeout: float = 60
) -> None:
    deadline = time.monotonic() + timeout
    for name in names:
        while not workers.serving(the_fleet.view(name), conn):
            if time.monotonic() > deadline:
                raise BenchFailure(f"no worker for {name} registered within {timeout:.0f} s")
            time.sleep(0.05)


def _planned(the_fleet: Fleet, conn: redis.Redis, name: str) -> str:
    """``deploy main`` on the target, planned by its worker; the request's id."""
    return _plan(the_fleet.view(name), conn)[0]


def _plan(settings: Settings, conn: redis.Redis, poll: float = 0.01) -> tuple[str, float]:
    """``deploy main`` up to its plan (here, or on the target's worker in a fleet): the
    request's id, and the seconds from asking to the plan being ready."""
    began = time.monotonic()
    request = intake.submit(settings, conn, BENCH, "deploy", "main", "deploy main")
    deadline = began + 300
    while request.state in (S.PREFLIGHT, S.PLANNING) and time.monotonic() < deadline:
        time.sleep(poll)
        request = RequestStore(conn).get(request.id)
    seconds = time.monotonic() - began
    if request.state is not S.PLAN_READY:
        shown = f"{request.state.value}: {request.message}"
        raise BenchFailure(f"planning on {settings.target_name} ended {shown}")
    return request.id, seconds


def _updated(the_fleet: Fleet, conn: redis.Redis, names: tuple[str, ...]) -> float:
    """Plan ``deploy main`` on each target, approve them together; seconds to the last end."""
    planned = {name: _planned(the_fleet, conn, name) for name in names}
    return _approved(the_fleet, conn, planned)


def _approved(
    the_fleet: Fleet, conn: redis.Redis, planned: dict[str, str], poll: float = 0.01
) -> float:
    """Approve each target's planned request at once; seconds until the last succeeded
    (looked at every ``poll`` seconds)."""
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
        time.sleep(poll)
    return time.monotonic() - began


def planning_hop(files: int, plans: int) -> tuple[float, float]:
    """Median seconds to a plan on target a's worker, and in this process."""
    with fleet(0, files, ("a",)) as the_fleet:
        conn = store.connect(the_fleet.settings)
        _wait_for_workers(the_fleet, conn, ("a",))
        view = the_fleet.view("a")
        fleet_config = os.environ["MOLT_CONFIG"]
        os.environ["MOLT_CONFIG"] = str(the_fleet.root / "one-target.toml")  # no such file
        here = load_settings(
            data_dir=the_fleet.root / "bot",
            target_dir=view.target_dir,
            test_command=view.test_command,
        )
        os.environ["MOLT_CONFIG"] = fleet_config
        timed: dict[str, list[float]] = {"worker": [], "here": []}
        for where, settings in (("worker", view), ("here", here)):
            _plan(settings, conn, poll=0.001)  # the first runs the tests at the commit
            timed[where] = [_plan(settings, conn, poll=0.001)[1] for _ in range(plans)]
        conn.close()
    return median(timed["worker"]), median(timed["here"])


def many(targets: int, serving: int, files: int) -> dict[str, float]:
    """One trivial update on each of ``targets`` targets, run by ``serving`` workers."""
    names = tuple(f"t{n:02d}" for n in range(targets))
    with fleet(0, files, names, serving) as the_fleet:
        conn = store.connect(the_fleet.settings)
        _wait_for_workers(the_fleet, conn, names)
        planned = {name: _planned(the_fleet, conn, name) for name in names}
        commands = _commands(conn)
        cpu = time.process_time()
        wall = _approved(the_fleet, conn, planned, poll=0.25)  # few commands of its own
        cpu = time.process_time() - cpu
        commands = _commands(conn) - commands
        conn.close()
    return {
        "per_minute": targets / wall * 60,
        "commands": commands / targets,
        "cpu_ms": cpu / targets * 1000,
        "wall": wall,
    }


def _commands(conn: redis.Redis) -> int:
    """Commands the Redis server has processed so far."""
    return int(conn.info("stats")["total_commands_processed"])


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
    parser.add_argument("--plans", type=int, default=5, help="plans timed each way (hop)")
    parser.add_argument("--many", type=int, default=20, help="targets of the many run")
    parser.add_argument("--many-workers", type=int, default=4)
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
    remote, local = planning_hop(args.files, args.plans)
    print(
        f"\nrequest → plan (tests remembered), median of {args.plans}: on the target's worker "
        f"{remote * 1000:.0f} ms, in this process {local * 1000:.0f} ms; the hop costs "
        f"{(remote - local) * 1000:.0f} ms (target ≤ {TARGET_HOP_MS} ms)"
    )
    if args.many:
        found = many(args.many, args.many_workers, min(args.files, 50))
        print(
            f"\n{args.many} targets, one trivial update each, on {args.many_workers} workers: "
            f"{found['per_minute']:.0f} updates/min ({found['wall']:.1f} s), "
            f"{found['commands']:.0f} Redis commands per update, "
            f"{found['cpu_ms']:.0f} ms of this process's CPU per update (approve and watch)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
