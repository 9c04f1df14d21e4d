"""Log-watcher cost: how many lines a second it keeps up with on one core, and its CPU share
while the service logs 1,000 lines a second.

Throughput: ``--lines`` lines (one in 50 an error line, one in 200 a traceback of five
lines) are appended to a log file, then the follower and the line reader of
pipeline/incidents/logwatch.py read them as the watcher does; lines per second of that thread's CPU
time. Load: a writer appends 1,000 lines a second for ``--seconds`` while the watcher's
loop (a look every 0.25 s) follows the file; its CPU seconds per wall second. Signals are
counted, not handed over, so Redis is not part of the figure.

    python bench/logwatch.py [--runs 3] [--lines 200000] [--seconds 10]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for ``bench``

from bench.harness import median, table
from pipeline.incidents.logwatch import POLL_SECONDS, LineReader, LogFollower

TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/srv/app/handlers.py", line 41, in handle\n'
    "    return orders[order_id]\n"
    '  File "/usr/lib/python3.12/site-packages/lib/core.py", line 9, in get\n'
    "KeyError: 'order-{n}'\n"
)


def line(n: int) -> str:
    if n % 200 == 0:
        return TRACEBACK.format(n=n)
    if n % 50 == 0:
        return f"2026-12-02 00:00:00 ERROR payment {n} failed for user {n * 7}\n"
    return f"2026-12-02 00:00:00 INFO GET /orders/{n} 200 in {n % 97} ms\n"


def throughput(root: Path, count: int) -> tuple[float, int]:
    log = root / "service.log"
    log.write_text("")
    follower = LogFollower(str(log))
    reader = LineReader(root)
    list(follower.lines())  # opened at its end, as at start-up
    with log.open("a") as out:
        out.writelines(line(n) for n in range(count))
    began = time.thread_time()
    found = read = 0
    while read < count:
        batch = list(follower.lines())
        if not batch:
            break
        read += len(batch)
        found += sum(1 for text in batch if reader.feed(text) is not None)
    seconds = time.thread_time() - began
    follower.close()
    return read / seconds, found


def under_load(root: Path, seconds: float, rate: int = 1000) -> float:
    log = root / "loaded.log"
    log.write_text("")
    stop = threading.Event()
    used: list[float] = []

    def watch() -> None:
        follower = LogFollower(str(log))
        reader = LineReader(root)
        began = time.thread_time()
        while not stop.wait(POLL_SECONDS):
            for text in follower.lines():
                reader.feed(text)
        used.append(time.thread_time() - began)
        follower.close()

    watcher = threading.Thread(target=watch)
    watcher.start()
    began = time.monotonic()
    with log.open("a", buffering=1) as out:
        for n in range(int(seconds * rate)):
            out.write(line(n))
            pause = began + (n + 1) / rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)
    wall = time.monotonic() - began
    stop.set()
    watcher.join()
    return used[0] / wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="molt-logwatch-") as tmp:
        for run in range(1, args.runs + 1):
            rate, found = throughput(Path(tmp), args.lines)
            share = under_load(Path(tmp), args.seconds)
            rows.append([f"run {run}", rate, found, share * 100])
            print(f"run {run}: {rate:,.0f} lines/s, {share:.1%} CPU at 1,000 lines/s", flush=True)
    rows.append(["median", *(median([r[i] for r in rows]) for i in (1, 2, 3))])
    print(table(["", "lines/s (one core)", "occurrences", "CPU % at 1,000 lines/s"], rows, 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
