"""HTTP requests the server refused (401, 400, 404, 408, 413…), kept where an operator looks
without letting anyone's junk fill the audit trail.

Each refusal is counted in ``molt_http_refusals{route, status}`` and logged as one line (no
traceback: a refusal is not a fault). The audit gets a summary: at most one entry a minute,
``http_refused`` with the count of each route and status since the entry before. The first
refusal after a quiet minute is written within moments; what follows waits for the minute to
pass. A refusal of a known person (not authorised, too late) is no HTTP refusal: the desk
audits each of those.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter

import redis
import structlog

from pipeline import audit, metrics

log = structlog.get_logger(__name__)

#: Seconds between two summaries in the audit.
SUMMARY_SECONDS = 60.0
ACTION = "http_refused"


class Refusals:
    """Counts refusals as they happen; a thread of its own writes the audit's summaries."""

    def __init__(self, conn: redis.Redis, every: float = SUMMARY_SECONDS) -> None:
        self.conn = conn
        self.every = every
        self._counts: Counter[tuple[str, int]] = Counter()
        self._since = time.time()
        self._last = -math.inf  # monotonic time of the last summary
        self._lock = threading.Lock()
        self._due = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def note(self, route: str, status: int, answer: str, client: str) -> None:
        """One refusal: counted, logged, and summarised in the audit when its minute comes."""
        metrics.http_refused(route, status)
        log.warning(
            "http request refused", route=route, status=status, answer=answer, client=client
        )
        with self._lock:
            if not self._counts:
                self._since = time.time()
            self._counts[(route, status)] += 1
            if time.monotonic() - self._last >= self.every:
                self._due.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="molt-http-refusals", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread, and write what is counted (a stop does not lose counts)."""
        self._stopping.set()
        self._due.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.summarise(force=True)

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._due.wait(timeout=max(1.0, self.every / 6))
            self._due.clear()
            if not self._stopping.is_set():
                self.summarise()

    def summarise(self, force: bool = False) -> None:
        """Write the counts as one audit entry, if any and if the minute has passed."""
        with self._lock:
            if not self._counts or (not force and time.monotonic() - self._last < self.every):
                return
            counts, since = self._counts, self._since
            self._counts, self._last = Counter(), time.monotonic()
        detail = {
            "counts": {f"{route} {status}": n for (route, status), n in sorted(counts.items())},
            "since": round(since, 3),
        }
        try:
            audit.append(self.conn, actor="http", action=ACTION, detail=detail)
        except redis.RedisError as exc:
            log.warning("http refusals not audited: Redis unreachable", error=str(exc))
            with self._lock:
                self._counts.update(counts)
