"""How long Molt takes to stop as a supervisor stops it, and that it leaves nothing running.

Each run starts the real bot (``python -m bot.cli run --no-console``, embedded Redis in a
fresh MOLT_DATA_DIR, a small generated target, ``--workers`` workers) and waits until it is
up and its workers run. Then, as supervisord and ``docker stop`` do, SIGTERM to the bot's
process group and SIGKILL to the group ``--grace`` seconds (10) later if it still runs.
Molt's processes are found from the outside, in /proc: every process whose environment
names the data directory (the bot, its HTTP process, workers and the watchdog inherit it)
or that runs in it (the redis-server, an update's test command). Printed: the time from the
SIGTERM until the bot exited, until the redis-server was gone, and until every process was
gone; and whether the SIGKILL was needed. ``--kill`` sends SIGKILL instead of SIGTERM (the
server's watchdog alone stops it then; use ``--workers 0``, as workers run in sessions of
their own and outlive a killed bot by design). ``--load N`` keeps N busy loops running
meanwhile, for a busy machine. ``--during-update`` stops it while its worker runs phase 1
of an update whose tests take 30 s (submitted and approved through pipeline calls, with a
Redis client that is not one of the server's users): the bot gives the worker its
warm-shutdown grace, then RQ kills the work horse.

    python bench/stop.py [--runs 5] [--workers 1] [--load 0] [--kill] [--during-update]
                         [--grace 10]
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for ``bench``

from bench.harness import ROOT, BenchFailure, clean_environment, median, table
from bench.repo import GIT_ENV, TEST_COMMAND, generate_repo
from bench.slack_ack import MOLT_UP, Child
from pipeline import store
from pipeline.config import load_settings
from pipeline.intake import approval
from pipeline.intake import flow as intake
from pipeline.requests.store import Origin, RequestStore

#: How long an update's tests take with ``--during-update``.
SLOW_TESTS = 30
POLL = 0.005
ALICE = Origin("console", "alice", "console", "alice")


def processes_of(data: Path) -> dict[int, str]:
    """Live processes whose environment names ``data`` as MOLT_DATA_DIR, or that run in it
    (the redis-server writes its title over its environment; an update's test command runs
    in a worktree there, with an environment of its own): pid → command."""
    marker = f"MOLT_DATA_DIR={data}".encode()
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            named = marker in (proc / "environ").read_bytes().split(b"\0")
            cwd = Path(os.readlink(proc / "cwd"))
            if not named and cwd != data and data not in cwd.parents:
                continue
            state = (proc / "stat").read_text().rpartition(")")[2].split()[0]
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except (OSError, IndexError):
            continue
        if state != "Z":
            found[int(proc.name)] = command
    return found


@contextlib.contextmanager
def busy_loops(count: int) -> Iterator[None]:
    loops = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True)
        for _ in range(count)
    ]
    try:
        yield
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()


def slow_tests_upstream(service: Path) -> None:
    """A commit whose quick tests take ``SLOW_TESTS`` seconds, pushed: deploying it keeps
    phase 1 busy."""
    work = service / "work"
    tests = work / "quick_tests.py"
    tests.write_text(f"import time\n\ntime.sleep({SLOW_TESTS})\n" + tests.read_text())
    for args in (["add", "-A"], ["commit", "-q", "-m", "slow tests"], ["push", "-q"]):
        subprocess.run(["git", "-C", str(work), *args], check=True, env={**os.environ, **GIT_ENV})


def update_running(data: Path, live: Path) -> None:
    """Deploy main and wait until its phase 1 runs; the client is not a user of the server."""
    settings = load_settings(
        data_dir=data,
        redis_url=f"unix://{store.socket_path(data)}",
        target_dir=live,
        test_command=TEST_COMMAND,
        authorised_users=["console:alice"],
        approvers=["console:alice"],
        console_user="alice",
    )
    conn = store.connect(settings)
    try:
        request = intake.submit(settings, conn, ALICE, "deploy", "main", "deploy main")
        if request.state.value != "plan_ready":
            raise BenchFailure(f"deploy main: {request.state.value}: {request.message}")
        decision = approval.approve(settings, conn, request.id, ALICE)
        if not decision:
            raise BenchFailure(f"approve: {decision.reason}")
        deadline = time.monotonic() + 120
        while "quick_tests.py" not in " ".join(processes_of(data).values()):
            state = RequestStore(conn).get(request.id).state.value
            if time.monotonic() > deadline or state in ("failed", "succeeded"):
                raise BenchFailure(f"phase 1 did not start: {state}")
            time.sleep(0.05)
    finally:
        conn.close()


def one_stop(root: Path, live: Path, run: int, args: argparse.Namespace) -> dict[str, float]:
    data = root / f"data-{run}"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
        "MOLT_DATA_DIR": str(data),
        "MOLT_TARGET_DIR": str(live),
        "MOLT_TEST_COMMAND": TEST_COMMAND,
        "MOLT_RESTART_COMMAND": "true",
        "MOLT_HTTP_PORT": "0",
        "MOLT_WORKERS": str(args.workers),
        "MOLT_LOG_FORMAT": "console",
        "MOLT_AUTHORISED_USERS": "console:alice",
        "MOLT_APPROVERS": "console:alice",
        "MOLT_WATCH_SECONDS": "0",
    }
    molt = Child("molt", [sys.executable, "-m", "bot.cli", "run", "--no-console"], env, root)
    try:
        molt.port(MOLT_UP)
        deadline = time.monotonic() + 60
        while sum("bot.cli worker" in c for c in processes_of(data).values()) < args.workers:
            if time.monotonic() > deadline:
                raise BenchFailure(f"the workers did not start:\n{molt.tail()}")
            time.sleep(0.05)
        time.sleep(1.0)  # settled: the worker listening, the start-up's pre-flight run going
        if args.during_update:
            update_running(data, live)
        running = processes_of(data)
        if not any("redis-server" in c for c in running.values()):
            raise BenchFailure("no embedded redis-server runs")
        began = time.monotonic()
        os.killpg(molt.proc.pid, signal.SIGKILL if args.kill else signal.SIGTERM)
        figures: dict[str, float] = {"SIGKILL needed": 0.0}
        while True:
            now = time.monotonic() - began
            left = processes_of(data)
            if "bot" not in figures and molt.proc.poll() is not None:
                figures["bot"] = now
            if "redis-server" not in figures and not any(
                "redis-server" in c for c in left.values()
            ):
                figures["redis-server"] = now
            if not left:
                figures.setdefault("bot", now)
                figures["all"] = now
                return figures
            if now > args.grace and not figures["SIGKILL needed"]:
                figures["SIGKILL needed"] = 1.0
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(molt.proc.pid, signal.SIGKILL)
            if now > args.grace + 4 * SLOW_TESTS + 60:
                raise BenchFailure(
                    "still running long after SIGKILL:\n"
                    + "\n".join(f"{pid} {c}" for pid, c in left.items())
                )
            time.sleep(POLL)
    finally:
        molt.stop(timeout=1)
        for pid in processes_of(data):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def bench(args: argparse.Namespace) -> int:
    root = Path(tempfile.mkdtemp(prefix="molt-stop-bench-"))
    figures = []
    try:
        clean_environment(root)
        _, live, _ = generate_repo(root / "service", files=60, change=5, megabytes=0.5)
        if args.during_update:
            slow_tests_upstream(root / "service")
        with busy_loops(args.load):
            for run in range(args.runs):
                figures.append(one_stop(root, live, run, args))
                print(f"run {run + 1}: all gone {figures[-1]['all']:.2f} s", flush=True)
    except BenchFailure as exc:
        print(exc, file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(root, ignore_errors=True)
    keys = ["bot", "redis-server", "all", "SIGKILL needed"]
    rows = [[f"run {i + 1}", *(f[k] for k in keys)] for i, f in enumerate(figures)]
    rows.append(["median", *(median([f[k] for f in figures]) for k in keys)])
    signal_name = "SIGKILL" if args.kill else "SIGTERM"
    print(
        f"\n{signal_name} to the bot's process group → gone, s "
        f"({args.workers} worker(s), {args.load} busy loop(s), {os.cpu_count()} cores"
        f"{', during an update' if args.during_update else ''})"
    )
    print(table(["", *keys], rows, digits=2))
    print(f"slowest: every process gone after {max(f['all'] for f in figures):.2f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--load", type=int, default=0, help="busy loops running meanwhile")
    parser.add_argument("--kill", action="store_true", help="SIGKILL instead of SIGTERM")
    parser.add_argument(
        "--grace",
        type=float,
        default=10.0,
        help="seconds before SIGKILL (supervisord's stopwaitsecs and docker stop: 10)",
    )
    parser.add_argument("--during-update", action="store_true", help="while phase 1 runs")
    return bench(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
