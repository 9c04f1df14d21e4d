"""The watch window after every restart: an update is not done when it booted once.

After restart and verify, the update stays in ``watching`` for MOLT_WATCH_SECONDS: the
health command runs every MOLT_WATCH_INTERVAL seconds (for Molt itself, /healthz of the
new process on the new version), and the incidents opened on the target since the
restart are looked at, and with each probe the service's metrics are read from Prometheus
(pipeline/service/metricwatch.py). MOLT_WATCH_FAILURES failed probes, one incident, or a
required query out of bounds end the watch with ``UpdateFailed("watch", …)`` naming what was
seen, and the job rolls the update back through the one failure path
(pipeline/service/rollback.py). A quiet window ends in a summary for the success message:
"watched 60 s: 12/12 probes healthy, 0 new errors; 3/3 queries within bounds".
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis

from pipeline.config import Settings
from pipeline.exceptions import UpdateFailed
from pipeline.sandbox.validation import run_command
from pipeline.service import restart
from pipeline.service.metricwatch import MetricWatch

#: The longest a single probe may take, however long the interval.
PROBE_TIMEOUT = 10.0


@dataclass
class WatchReport:
    """What the window saw so far."""

    seconds: float  # the window
    watched: float = 0.0  # how much of it has passed
    probes: int = 0
    healthy: int = 0
    failures: list[str] = field(default_factory=list)
    incidents: list[str] = field(default_factory=list)
    metrics: MetricWatch | None = None  # the service's metrics, when queries are set

    def summary(self) -> str:
        watched = min(self.watched, self.seconds)
        shown = f"{watched:.0f} s" + (f" of {self.seconds:g} s" if watched < self.seconds else "")
        if not self.probes:
            seen = f"watched {shown}: no health command to probe, {len(self.incidents)} new errors"
        else:
            seen = (
                f"watched {shown}: {self.healthy}/{self.probes} probes healthy, "
                f"{len(self.incidents)} new errors"
            )
        return seen + (f"; {self.metrics.summary()}" if self.metrics else "")


def _probe_schedule(settings: Settings) -> int:
    """How many probes fit in the window: one at its start, then one per interval."""
    return max(1, math.ceil(settings.watch_seconds / settings.watch_interval))


def probe(settings: Settings, conn: redis.Redis, expect: str, log_path: Path) -> str | None:
    """One health probe of the restarted service: None when healthy, else what failed;
    "" when there is nothing to probe."""
    timeout = min(PROBE_TIMEOUT, max(1.0, settings.watch_interval))
    if settings.health_command:
        code, output, _ = run_command(
            settings.health_command, settings.target_dir, timeout, log_path
        )
        if code == 0:
            return None
        tail = (output.strip().splitlines() or [""])[-1][:200]
        exit_shown = "timed out" if code is None else f"exit {code}"
        return f"`{settings.health_command}` {exit_shown}" + (f": {tail}" if tail else "")
    if settings.manages_itself and not settings.restart_command:
        info = restart.bot_info(conn)
        health = restart.healthz(info.port, timeout) if info and info.alive else None
        if health and health.get("status") == "ok" and health.get("version") == expect:
            return None
        seen = health.get("version", "")[:7] if health else "no answer"
        return f"/healthz of Molt on {expect[:7]}: {seen or health}"
    return ""


def watch(
    settings: Settings,
    conn: redis.Redis,
    expect: str,
    log_path: Path,
    *,
    guard: Callable[[], None] = lambda: None,
    news: Callable[[], list[str]] = list,
    shown: Callable[[WatchReport], None] = lambda _: None,
    metrics: MetricWatch | None = None,
) -> WatchReport:
    """Watch the restarted service for MOLT_WATCH_SECONDS; raises ``UpdateFailed("watch")``.

    ``guard`` is the update's safe point (an emergency stop ends the watch at once);
    ``news`` lists the incidents opened on the target since the restart; ``shown`` is
    called after each probe with what was seen so far (the status message's refresh);
    ``metrics``, its baseline taken before the restart, is read with every probe.
    """
    report = WatchReport(settings.watch_seconds, metrics=metrics)
    started = time.monotonic()
    deadline = started + settings.watch_seconds
    total = _probe_schedule(settings)
    for index in range(total):
        _sleep_until(started + index * settings.watch_interval, guard)
        failed = probe(settings, conn, expect, log_path)
        if failed != "":
            report.probes += 1
            if failed is None:
                report.healthy += 1
            else:
                report.failures.append(failed)
        if metrics is not None:
            metrics.read()
        _look(report, news, settings)
        report.watched = time.monotonic() - started
        shown(report)
        if failed == "" and metrics is None:  # nothing to probe: only incidents are watched
            break
    _sleep_until(deadline, guard, lambda: _look(report, news, settings))
    _look(report, news, settings)
    report.watched = report.seconds
    return report


def _look(report: WatchReport, news: Callable[[], list[str]], settings: Settings) -> None:
    """End the watch if the probes or the incidents say the update is bad."""
    report.incidents = news()
    if report.incidents:
        raise UpdateFailed(
            "watch",
            f"an incident on the target in the watch window: {report.incidents[0]} "
            f"({report.healthy}/{report.probes} probes healthy)",
        )
    if len(report.failures) >= settings.watch_failures:
        raise UpdateFailed(
            "watch",
            f"{len(report.failures)} of {report.probes} health probes failed in the watch "
            f"window (MOLT_WATCH_FAILURES={settings.watch_failures}): {report.failures[-1]}",
        )


def _sleep_until(
    moment: float, guard: Callable[[], None], meanwhile: Callable[[], None] = lambda: None
) -> None:
    """Wait until ``moment`` (monotonic), at a safe point every quarter second."""
    while True:
        guard()
        left = moment - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(0.25, left))
        meanwhile()
