"""Observability figures: the /metrics scrape with 10,000 recorded requests and 3 workers,
the status page's server time, and what metrics add to an update.

Set-up, in a temporary directory: an embedded Redis holding ``--requests`` requests (one
full update among them, the rest refused) and ``--releases`` signed releases of this
checkout; 3 worker processes that each recorded a third of the requests' updates through
pipeline/metrics.py and stay alive (files of their own), and ``--horses`` short-lived
processes whose files were folded into the archive, as a worker's finished jobs are. The
bot's real HTTP server (bot/server.py, MOLT_UI on) is started in this process:

- ``/metrics``: time in the server (``exposition``) and over HTTP, median and p95;
- the status page ``/`` and ``/requests/<id>``: server time (render) and over HTTP; the
  first index walks the whole audit chain, later ones only what was added;
- an update's metrics: the calls one update makes, timed in a process in multiprocess
  mode, and folding one finished job's files, against the pipeline overhead of a real
  deploy (bench/overhead.py's figure; skip it with ``--no-deploy``).

Targets: scrape ≤ 50 ms, status page ≤ 50 ms, metrics ≤ 1 % of an update's overhead.

    python bench/metrics.py [--runs 5] [--requests 10000] [--no-deploy]
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for ``bench``

from bench.harness import clean_environment, median, table
from pipeline import metrics

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ("api", "web", "molt")
PLATFORMS = ("console", "slack", "discord", "github")
PHASES = ("snapshot", "sandbox", "phase 1", "apply", "phase 2", "restart", "verify", "watch")
TOKEN = "bench-ui-token"


class _Check:
    def __init__(self, name: str, ok: bool, seconds: float) -> None:
        self.name, self.ok, self.seconds = name, ok, seconds


CHECKS = [_Check("byte-compile", True, 0.2), _Check("tests", True, 12.0)]


def one_update(index: int) -> None:
    """The metrics one update records: its phases, checks, restart, release, outcome,
    the messages shown for it, and model use for a change in words."""
    target = TARGETS[index % len(TARGETS)]
    platform = PLATFORMS[index % len(PLATFORMS)]
    clock = metrics.PhaseClock(target)
    failed = index % 10 == 0
    for phase in PHASES[: 3 if failed else None]:
        clock.enter(phase)
        if phase in ("phase 1", "phase 2"):
            metrics.checks_done(target, phase, CHECKS)
    if failed:
        clock.end("failed")
        metrics.rolled_back(target, "phase 1", "tests: 1 failed")
    else:
        with metrics.restart_window(target):
            pass
        metrics.release_live(target, index)
        clock.end("succeeded")
    metrics.request_finished(platform, "change" if index % 3 == 0 else "deploy", "succeeded")
    if index % 3 == 0:
        metrics.model_used("plan", {"input_tokens": 900, "output_tokens": 300, "calls": 1})
    for _ in range(8):
        metrics.delivered(platform, time.time())
    metrics.acked(platform, 0.004)


def _record(count: int, start: int, stay: bool) -> None:
    """A worker's process: record ``count`` updates, then wait for a line on stdin."""
    for index in range(start, start + count):
        one_update(index)
    print("recorded", flush=True)
    if stay:
        sys.stdin.readline()


def _recorder(folder: Path, count: int, start: int, stay: bool) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, "--record", str(count), "--start", str(start)]
        + (["--stay"] if stay else []),
        env={**os.environ, metrics.ENV: str(folder), "PYTHONPATH": str(ROOT)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def _fill_redis(settings: object, conn: object, requests: int, releases: int) -> str:
    """``requests`` requests (one a whole update, the rest refused) and signed releases;
    returns the update's id."""
    from pipeline.releases import signing
    from pipeline.releases.manifests import ReleaseKind
    from pipeline.requests.states import RequestState as S
    from pipeline.requests.store import Origin, RequestStore

    store = RequestStore(conn)  # type: ignore[arg-type]
    who = Origin("console", "bench")
    for index in range(requests - 1):
        made = store.create(who, f"deploy v{index}", "deploy", f"v{index}")
        store.transition(made.id, S.REFUSED, actor="molt", message="not allowed")
    update = store.create(who, "deploy main", "deploy", "main")
    walk = [(S.PREFLIGHT, ""), (S.PLANNING, ""), (S.PLAN_READY, ""), (S.APPROVED, "")]
    walk += [(S.QUEUED, ""), *((S.RUNNING, p) for p in PHASES[:5]), (S.RESTARTING, "restart")]
    for state, phase in walk:
        store.transition(update.id, state, actor="molt", phase=phase)
    checks = [{"name": "tests", "ok": True, "seconds": 12.0, "detail": "40 passed"}]
    store.transition(
        update.id, S.SUCCEEDED, actor="molt", phase="done", fields={"result": {"checks": checks}}
    )
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    for index in range(releases):
        signing.sign_release(
            settings,  # type: ignore[arg-type]
            conn,  # type: ignore[arg-type]
            kind=ReleaseKind.UPDATE,
            commit=head,
            parent=head,
            codename=f"bench-{index}",
        )
    return update.id


def _get(port: int, path: str) -> tuple[float, int, int]:
    """Seconds, status and bytes of one GET over loopback."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    began = time.perf_counter()
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {TOKEN}"})
        reply = conn.getresponse()
        body = reply.read()
        return time.perf_counter() - began, reply.status, len(body)
    finally:
        conn.close()


def _timed(run: object, times: int) -> list[float]:
    out = []
    for _ in range(times):
        began = time.perf_counter()
        run()  # type: ignore[operator]
        out.append(time.perf_counter() - began)
    return out


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="timed repetitions (x10 each)")
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--horses", type=int, default=50)
    parser.add_argument("--releases", type=int, default=20)
    parser.add_argument("--no-deploy", action="store_true", help="skip the real deploy")
    parser.add_argument("--record", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--stay", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.record is not None:
        _record(args.record, args.start, args.stay)
        return 0
    root = Path(tempfile.mkdtemp(prefix="molt-bench-metrics-"))
    try:
        clean_environment(root)
        return _bench(args, root)
    finally:
        from pipeline import store

        store.stop_embedded(root / "data")
        shutil.rmtree(root, ignore_errors=True)


def _bench(args: argparse.Namespace, root: Path) -> int:
    folder = metrics.prepare(root / "data")
    from bot.server import HttpServer
    from pipeline import logs, store
    from pipeline.config import load_settings

    settings = load_settings(data_dir=root / "data", ui=True, ui_token=TOKEN, http_port=0)
    logs.configure("warning", [])
    conn = store.connect(settings)
    began = time.monotonic()
    update_id = _fill_redis(settings, conn, args.requests, args.releases)
    print(
        f"set-up: {args.requests} requests, {args.releases} releases in Redis "
        f"({time.monotonic() - began:.1f} s)"
    )
    share = args.requests // args.workers
    workers = [_recorder(folder, share, i * share, True) for i in range(args.workers)]
    for worker in workers:
        worker.stdout.readline()  # type: ignore[union-attr]
    for index in range(args.horses):
        _recorder(folder, 1, index, False).communicate()
    folded = metrics.tidy()
    files = len(list(folder.glob("*.db")))
    print(
        f"metrics: {args.workers} live workers recorded {share * args.workers} updates; "
        f"{folded} finished processes folded; {files} files"
    )

    server = HttpServer("127.0.0.1", 0, conn, settings, "bench")
    port = server.start()
    try:
        rows = _figures(args, server, port, update_id)
    finally:
        server.stop()
        for worker in workers:
            worker.communicate("\n")
    print(table(["what", "median ms", "p95 ms", "target ms", "bytes"], rows, digits=2))
    _overhead(args, folder)
    return 0


def _figures(args: argparse.Namespace, server: object, port: int, update_id: str) -> list[list]:
    times = args.runs * 10
    from bot.ui import StatusPage

    page = StatusPage(server.settings, server.conn)  # type: ignore[attr-defined]
    cold = _timed(page.render_index, 1)[0]
    scrape = _timed(server._metrics, times)  # type: ignore[attr-defined]
    changed = []
    for index in range(times):  # an update ran since the last scrape: all files added up
        one_update(index)
        changed += _timed(server._metrics, 1)  # type: ignore[attr-defined]
    scraped = [_get(port, "/metrics") for _ in range(times)]
    index = _timed(page.render_index, times)
    shown = [_get(port, "/") for _ in range(times)]
    one = _timed(lambda: page.render_request(update_id), times)
    asked = [_get(port, f"/requests/{update_id}") for _ in range(times)]
    assert all(status == 200 for _, status, _ in scraped + shown + asked)

    def row(what: str, values: list[float], target: float, size: int = 0) -> list:
        return [what, median(values) * 1000, _p95(values) * 1000, target, size]

    return [
        row("/metrics, server", scrape, 50, len(server._metrics()[0])),  # type: ignore[attr-defined]
        row("/metrics, server, after a write", changed, 50),
        row("/metrics, HTTP", [s for s, _, _ in scraped], 50, scraped[0][2]),
        row("/ first (whole chain)", [cold], 50),
        row("/ server", index, 50),
        row("/ HTTP", [s for s, _, _ in shown], 50, shown[0][2]),
        row("/requests/<id> server", one, 50),
        row("/requests/<id> HTTP", [s for s, _, _ in asked], 50, asked[0][2]),
    ]


def _overhead(args: argparse.Namespace, folder: Path) -> None:
    """What one update's metrics cost, against a real update's pipeline overhead."""
    calls = _timed(lambda: one_update(1), 2000)
    batch = 20  # a worker folds its finished horses' files 20 at a time (pipeline/queue/workers.py)
    for index in range(batch):
        _recorder(folder, 1, index, False).communicate()
    fold = _timed(lambda: metrics.tidy(at_least=batch), 1)[0] / batch
    per_update = median(calls) + fold
    print(
        f"one update's metrics calls: median {median(calls) * 1e6:.0f} µs; folding its "
        f"horse's files (in a batch of {batch}): {fold * 1000:.2f} ms; "
        f"in all {per_update * 1000:.2f} ms"
    )
    if args.no_deploy:
        return
    from bench.harness import rig
    from bench.overhead import deploy

    with rig() as the_rig:
        figures = deploy(the_rig, the_rig.target)
    overhead = figures["overhead"]
    print(
        f"a real deploy: wall {figures['wall']:.2f} s, tests {figures['tests']:.2f} s, "
        f"pipeline overhead {overhead:.2f} s; metrics' share of it "
        f"{100 * per_update / overhead:.2f} % (target ≤ 1 %)"
    )


if __name__ == "__main__":
    sys.exit(main())
