"""The replay's cost per case: ``molt incidents replay`` (pipeline/incidents/replay.py) over
cases kept by real diagnoses, with the fake Messages API (tests/fakes/anthropic.py) reached
by the real ``anthropic`` client, embedded Redis, and a generated target (bench/repo.py) of
``--files`` files plus a handlers.py whose quote each diagnosis cites.

Each case is a diagnosis of three model calls (read_file, search, submit_diagnosis), as a
short real one is. The fake answers at once, so the time is Molt's own share per case:
building the tool results (git ls-tree, cat-file, grep at the live commit), the HTTP round
trips, and checking the evidence against the file at that commit. Tokens are the fake's
count (JSON characters / 4): what the model would be sent per case.

    python bench/replay.py [--cases 10] [--files 500]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for ``bench`` and ``tests``

from bench.harness import clean_environment, median, table
from bench.repo import generate_repo, git
from pipeline import keyspace, logs, store
from pipeline.config import load_settings
from pipeline.incidents import cases, diagnosis, replay
from pipeline.incidents.alerts import FIRING, Signal
from pipeline.incidents.book import IncidentBook
from tests.fakes.anthropic import API_KEY, FakeAnthropic, Turn, reply, tool

HANDLERS = "def average(total, count):\n    return total / count\n"
ANSWER = {
    "cause": "average() divides by the number of orders, which is 0 when there are none",
    "files": ["handlers.py"],
    "evidence": [
        {"file": "handlers.py", "line": 2, "quote": "return total / count"},
        {"log": "incident", "quote": "ZeroDivisionError"},
    ],
    "confidence": 0.85,
    "fix": "return 0 from average() when there are no orders",
    "confirm": "the errors stop once the empty order list is handled",
}


def _conversation() -> list[Turn]:
    return [
        reply(tool("read_file", {"path": "handlers.py"})),
        reply(tool("search", {"pattern": "average(", "fixed": True})),
        reply(tool("submit_diagnosis", ANSWER)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=10)
    parser.add_argument("--files", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="molt-bench-replay-") as tmp, FakeAnthropic() as fake:
        root = Path(tmp)
        clean_environment(root)
        logs.configure("warning", [])  # the table alone on stdout
        _, live, _ = generate_repo(root / "repo", files=args.files, change=1, megabytes=2.0)
        (live / "handlers.py").write_text(HANDLERS)
        git(live, "add", "handlers.py")
        git(live, "commit", "-q", "-m", "handlers")
        settings = load_settings(
            data_dir=root / "data",
            target_dir=live,
            anthropic_api_key=API_KEY,
            anthropic_base_url=fake.url,
        )
        conn = store.connect(settings)
        book = IncidentBook(settings, conn)
        try:
            for n in range(args.cases):
                fake.add(*_conversation())
                trace = f"ZeroDivisionError: division by zero (worker {n})"
                signal = Signal("webhook", f"bench:{n}", FIRING, summary="errors", details=trace)
                incident = book.take(signal).incident
                assert incident is not None
                diagnosis.post(settings, conn, book, incident)
                conn.hset(keyspace.incident(incident.id), "outcome", diagnosis.HELD)
            kept = len(cases.since(conn, settings.target_id, 0))
            for _ in range(kept):
                fake.add(*_conversation())
            began = time.monotonic()
            rows = replay.replay(settings, conn, 86400)
            wall = time.monotonic() - began
        finally:
            store.stop_embedded(settings.data_dir)
    print(
        table(
            ["case", "agrees", "evidence", "tokens", "seconds"],
            [
                (
                    r.case,
                    "yes" if r.agrees else "no",
                    "checks out" if r.checks else "dropped",
                    r.tokens,
                    r.seconds,
                )
                for r in rows
            ],
        )
    )
    seconds = [r.seconds for r in rows]
    p90 = statistics.quantiles(seconds, n=10)[-1] if len(seconds) > 1 else seconds[0]
    print(
        f"\n{len(rows)} cases of 3 model calls, target of {args.files} files: "
        f"median {median(seconds) * 1000:.0f} ms a case (p90 {p90 * 1000:.0f} ms), "
        f"{statistics.mean(r.tokens for r in rows):,.0f} tokens a case; "
        f"{wall:.2f} s in all; {sum(bool(r.agrees) for r in rows)}/{len(rows)} agree"
    )


if __name__ == "__main__":
    main()
