"""A rollout's cost: a three-step rollout's wall time against the sum of its three updates
run alone (target: at most 1.1 times).

One service's origin, cloned as the live checkouts of seven targets of one molt.toml:
``web-staging``, ``web-1..3`` (the rollout ``web``, soak 0) and ``alone-1..3``. The bot runs
in this process with each target's jobs on a thread of its own, registered as its worker
(tests/integration/inprocess.py), on one embedded Redis; the commit deployed adds a check
that sleeps ``--seconds``, so that each update's phases take about as long as a real
service's tests. First ``deploy web-staging main`` (the gate), then ``deploy alone-N main``
→ Approve → ✅ Live for each ``alone`` target in turn (request to live, summed), then
``deploy web main`` → Approve → ✅ Rolled out (request to the end). Then the rollout's gate
(``rollouts.check_gate``: the update of the commit on ``web-staging``, its soak, the stage's
incidents), as plan time and the approval check it, timed ``--gate-calls`` times.

    python bench/rollout.py [--seconds 2] [--runs 1] [--gate-calls 200]
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for ``bench``, ``tests``

from bench.harness import clean_environment, median, table
from pipeline import store
from pipeline.config import load_settings
from pipeline.requests.store import RequestStore
from pipeline.update import rollouts
from tests.integration.inprocess import InProcessBot
from tests.support import ServiceRepo

TARGET_RATIO = 1.1
STEPS = ("web-1", "web-2", "web-3")
ALONE = ("alone-1", "alone-2", "alone-3")


def _config(lives: dict[str, Path]) -> str:
    tables = [
        f'[targets.{name}]\ndir = "{live}"\ntest_command = "python service_tests.py"\n'
        for name, live in lives.items()
    ]
    steps = ", ".join(f'"{s}"' for s in STEPS)
    rollout = f'[rollouts.web]\nfrom = "web-staging"\nsoak = "0s"\nsteps = [{steps}]\n'
    return "\n".join([*tables, rollout])


def _timed(bot: InProcessBot, command: str, done: str) -> float:
    """Seconds from asking ``command`` to ``done`` shown, approving the plan when it comes."""
    started = time.monotonic()
    since = bot.type(command)
    planned = bot.transcript.wait_for(r"press approve (r[0-9a-f]+)", since=since, timeout=600)
    bot.type(f"press approve {planned.group(1)}")
    bot.transcript.wait_for(done, since=since, timeout=900)
    return time.monotonic() - started


def _gate_seconds(bot: InProcessBot, calls: int) -> list[float]:
    """Seconds each check of the rollout's gate took, for the commit it rolled out."""
    settings, conn = bot.settings, bot.conn
    [done] = [r for r in RequestStore(conn).recent(20) if r.command == "rollout"]
    commit = str((done.plan or {})["target_commit"])
    timed = []
    for _ in range(calls):
        began = time.perf_counter()
        assert rollouts.check_gate(settings, conn, settings.rollout("web"), commit)
        timed.append(time.perf_counter() - began)
    return timed


def run(seconds: float, gate_calls: int = 200) -> tuple[list[float], float, list[float]]:
    root = Path(tempfile.mkdtemp(prefix="molt-bench-rollout-"))
    redis_dir = root / "redis"
    bot = None
    try:
        clean_environment(root)
        service = ServiceRepo.create(root / "web")
        lives = {"web-staging": service.live}
        for name in (*STEPS, *ALONE):
            lives[name] = root / name
            subprocess.run(
                ["git", "clone", "-q", str(service.origin), str(lives[name])], check=True
            )
        slow = f"import time\n\n\ndef test_takes_a_while():\n    time.sleep({seconds})\n"
        service.commit({"checks/test_slow.py": slow}, "v2: a check that takes a while")
        (root / "molt.toml").write_text(_config(lives))
        sock = store.ensure_embedded(redis_dir)
        os.environ.update(
            {
                "MOLT_CONFIG": str(root / "molt.toml"),
                "REDIS_URL": f"unix://{sock}",
                "MOLT_DATA_DIR": str(root / "data"),
                "MOLT_RESTART_COMMAND": "true",
                "MOLT_HEALTH_COMMAND": "python health.py",
                "MOLT_SANDBOX": "off",
                "MOLT_WATCH_SECONDS": "0",
                "MOLT_HTTP_PORT": "0",
                "MOLT_WORKERS": "0",
                "MOLT_CONSOLE_USER": "bench",
                "MOLT_AUTHORISED_USERS": "console:bench",
                "MOLT_LOG_LEVEL": "info",
            }
        )
        bot = InProcessBot(load_settings(), console=True).start()
        _timed(bot, "deploy web-staging main", r"✅ Live: .*web-staging")
        alone = [_timed(bot, f"deploy {name} main", rf"✅ Live: .*{name}") for name in ALONE]
        rollout = _timed(bot, "deploy web main", r"✅ Rolled out: ")
        return alone, rollout, _gate_seconds(bot, gate_calls)
    finally:
        if bot is not None:
            bot.stop()
        store.stop_embedded(redis_dir)
        shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="a check's sleep")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--gate-calls", type=int, default=200)
    args = parser.parse_args()
    rows, ratios, gates = [], [], []
    for number in range(args.runs):
        alone, rollout, gate = run(args.seconds, args.gate_calls)
        gates.extend(gate)
        ratio = rollout / sum(alone)
        ratios.append(ratio)
        shown = " + ".join(f"{a:.1f}" for a in alone)
        rows.append([number + 1, f"{shown} = {sum(alone):.1f}", f"{rollout:.1f}", f"{ratio:.2f}"])
    print(table(["run", "3 updates alone (s)", "rollout of 3 (s)", "ratio"], rows))
    verdict = "met" if median(ratios) <= TARGET_RATIO else "MISSED"
    print(f"median ratio {median(ratios):.2f} (target ≤ {TARGET_RATIO}: {verdict})")
    ordered = sorted(gates)
    print(
        f"gate check ({len(ordered)} calls): median {median(ordered) * 1e3:.2f} ms, "
        f"p90 {ordered[int(len(ordered) * 0.9)] * 1e3:.2f} ms, max {ordered[-1] * 1e3:.2f} ms"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
