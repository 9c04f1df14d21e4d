"""The watch window's added cost per interval: one round of five PromQL queries read from
tests/fakes/prometheus.py (on loopback, in this process's threads) as the window reads them
at every probe (pipeline/service/metricwatch.py ``MetricWatch.read``), with a bearer token.

Each run reads ``--rounds`` rounds; the figures are the median and 90th percentile of a
round's wall time, and the median per query. The fake answers at once, so this is Molt's
own share (a connection, a request, a JSON answer read per query), not Prometheus's.

    python bench/watch_queries.py [--runs 5] [--rounds 200]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for ``bench`` and ``tests``

from bench.harness import median, table
from pipeline.config import load_settings
from pipeline.service.metricwatch import MetricWatch
from tests.fakes.prometheus import FakePrometheus

QUERIES = {
    "error rate": (
        'sum(rate(http_requests_total{code=~"5.."}[1m])) / sum(rate(http_requests_total[1m]))'
    ),
    "p99 latency": "histogram_quantile(0.99, sum by (le) (rate(http_request_seconds_bucket[1m])))",
    "saturation": "max(rate(process_cpu_seconds_total[1m]))",
    "queue depth": "sum(jobs_waiting)",
    "up": "min(up)",
}
TOKEN = "bench-prometheus-token-0123456789"


def one_run(fake: FakePrometheus, rounds: int) -> tuple[float, float]:
    """Median and 90th percentile of a round, in seconds."""
    watched = {
        "queries": [
            {"name": name, "query": query, "max": 1_000_000.0} for name, query in QUERIES.items()
        ]
    }
    settings = load_settings(
        prometheus_url=fake.url,
        prometheus_token=TOKEN,
        watch=watched,
        watch_seconds=60,
        watch_interval=5,
    )
    window = MetricWatch(settings)
    window.take_baseline()
    times = []
    for _ in range(rounds):
        began = time.perf_counter()
        window.read()
        times.append(time.perf_counter() - began)
    assert not window.inconclusive(), window.summary()
    times.sort()
    return median(times), times[int(len(times) * 0.9)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="molt-watchq-") as tmp:
        os.environ["MOLT_CONFIG"] = str(Path(tmp) / "absent.toml")
        rows = []
        with FakePrometheus(token=TOKEN) as fake:
            for index, query in enumerate(QUERIES.values()):
                fake.answer(query, 0.01 * (index + 1))
            for run in range(1, args.runs + 1):
                middle, p90 = one_run(fake, args.rounds)
                rows.append([f"run {run}", middle * 1000, p90 * 1000, middle * 1000 / len(QUERIES)])
                print(f"run {run}: {middle * 1000:.2f} ms a round of {len(QUERIES)}", flush=True)
    rows.append(["median", *(median([r[i] for r in rows]) for i in (1, 2, 3))])
    headers = ["", f"ms a round of {len(QUERIES)} (median)", "p90 ms", "ms a query"]
    print(table(headers, rows, 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
