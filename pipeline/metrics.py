"""Molt's Prometheus metrics: every one is named here, recorded by whichever process sees
it happen, and served together at /metrics (bot/server.py).

Each process (the bot, its HTTP server, every worker and work horse) writes its samples
to files of its own in ``MOLT_DATA_DIR/metrics``: prometheus_client's multiprocess mode,
chosen by ``PROMETHEUS_MULTIPROC_DIR`` when prometheus_client is first imported. So
``prepare`` sets that variable before anything here imports it (metrics are built on
first use), and a process that re-executes itself keeps it through its environment and
keeps writing the same files (the same pid). Files of processes that are gone are
folded into one archive file per kind by ``tidy`` (counters and histograms never go
back), and their live gauges dropped with ``mark_process_dead``.

What is true of Redis at scrape time (queue lengths, lock holders, undelivered events)
is read when /metrics is asked, as ``Readings``, not recorded.

Label values are bounded: platform, kind, state, phase, target, cause, check, task,
front end, HTTP route and status; never a request id, a codename, a path or text.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import os
import re
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline import processes

ENV = "PROMETHEUS_MULTIPROC_DIR"
#: From a tenth of a second (a snapshot) to an hour (a long test suite); few, since every
#: bucket is a series per target and phase.
DURATION_BUCKETS = (0.1, 0.5, 1, 5, 10, 30, 60, 300, 600, 1800, 3600)
#: Acks are answered in milliseconds; Slack gives up at 3 s.
ACK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
#: From an event appended to a message shown: sub-second normally, minutes when a
#: platform is down.
LAG_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)
TOKEN_KINDS = {
    "input_tokens": "input",
    "output_tokens": "output",
    "cache_read_input_tokens": "cache_read",
    "cache_creation_input_tokens": "cache_write",
}
#: A label value that is not one of a few short words (a check's name) is shown as this.
OTHER = "other"
_WORD = re.compile(r"^[a-z0-9][a-z0-9 :_.-]{0,39}$")
_ARCHIVE = "archive"


def prepare(data_dir: Path) -> Path:
    """Point prometheus_client at ``data_dir``/metrics; called by every ``molt`` command
    before anything records a metric. Children (the HTTP server, workers, horses, a
    process re-executed on new code) inherit the variable."""
    folder = Path(data_dir).resolve() / "metrics"
    folder.mkdir(parents=True, exist_ok=True)
    os.environ[ENV] = str(folder)
    return folder


def word(value: str) -> str:
    """A label value kept bounded: short stable words pass, anything else is ``other``."""
    value = (value or "").strip().lower()
    return value if _WORD.match(value) else OTHER


def _m() -> Any:
    """The metrics, built on first use (after ``prepare``), once whichever of a process's
    threads gets here first; one namespace for all."""
    global _BUILT
    if _BUILT is None:
        with _BUILDING:
            if _BUILT is None:
                _BUILT = _build()
    return _BUILT


_BUILT: Any = None
_BUILDING = threading.Lock()


def _build() -> Any:
    from prometheus_client import Counter, Gauge, Histogram

    class Names:
        requests = Counter(
            "molt_requests",
            "Requests that reached a final state, by platform, kind and state",
            ["platform", "kind", "state"],
        )
        refusals = Counter("molt_refusals", "Refusals by the check that refused", ["check"])
        update_seconds = Histogram(
            "molt_update_seconds",
            "Seconds from an update's start to its end, by target and outcome",
            ["target", "outcome"],
            buckets=DURATION_BUCKETS,
        )
        phase_seconds = Histogram(
            "molt_phase_seconds",
            "Seconds an update spent in each phase, by target and phase",
            ["target", "phase"],
            buckets=DURATION_BUCKETS,
        )
        check_seconds = Histogram(
            "molt_check_seconds",
            "Seconds of each validation check, by target, phase, check and outcome",
            ["target", "phase", "check", "outcome"],
            buckets=DURATION_BUCKETS,
        )
        rollbacks = Counter(
            "molt_rollbacks",
            "Updates rolled back, by target, the phase that failed and the cause",
            ["target", "phase", "cause"],
        )
        restarts = Counter("molt_restarts", "Service restarts by updates", ["target"])
        restart_window = Histogram(
            "molt_restart_window_seconds",
            "Seconds from asking for a restart until the service reported healthy",
            ["target"],
            buckets=DURATION_BUCKETS,
        )
        ack_seconds = Histogram(
            "molt_ack_seconds",
            "Seconds the HTTP front took to acknowledge input, by front end",
            ["front"],
            buckets=ACK_BUCKETS,
        )
        delivery_seconds = Histogram(
            "molt_event_delivery_seconds",
            "Seconds from an event's append to its message shown, by platform",
            ["platform"],
            buckets=LAG_BUCKETS,
        )
        delivery_lag = Gauge(
            "molt_event_delivery_lag_seconds",
            "Lag of the last event shown, by platform",
            ["platform"],
            multiprocess_mode="mostrecent",
        )
        dropped = Counter(
            "molt_events_dropped", "Events given up after every delivery attempt failed"
        )
        tokens = Counter("molt_llm_tokens", "Model tokens by kind and task", ["kind", "task"])
        calls = Counter("molt_llm_calls", "Model calls by task", ["task"])
        release = Gauge(
            "molt_release_live",
            "Number of the signed release live on each target",
            ["target"],
            multiprocess_mode="mostrecent",
        )
        audit_verified = Gauge(
            "molt_audit_verified_entries",
            "Entries of the audit chain at its last verification",
            multiprocess_mode="mostrecent",
        )
        incidents = Counter(
            "molt_incidents", "Incidents opened, by target and source", ["target", "source"]
        )
        incident_actions = Counter(
            "molt_incident_actions",
            "What Molt did about incidents, by target and action",
            ["target", "action"],
        )
        http_refusals = Counter(
            "molt_http_refusals",
            "HTTP requests refused before any work, by route and status (401, 413, …)",
            ["route", "status"],
        )
        rollout_steps = Counter(
            "molt_rollout_steps",
            "Steps of rollouts that ended, by rollout and outcome "
            "(succeeded, failed, rolled_back, not_run)",
            ["rollout", "outcome"],
        )
        rollout_seconds = Histogram(
            "molt_rollout_seconds",
            "Seconds from a rollout's approval to its end, by rollout and outcome",
            ["rollout", "outcome"],
            buckets=DURATION_BUCKETS,
        )
        audit_ok = Gauge(
            "molt_audit_chain_ok",
            "1 if the audit chain held at its last verification, else 0",
            multiprocess_mode="mostrecent",
        )

    return Names


# -- recording, one call per thing seen -----------------------------------------------


def request_finished(platform: str, kind: str, state: str) -> None:
    _m().requests.labels(word(platform), word(kind), state).inc()


def rollout_step(rollout: str, outcome: str) -> None:
    _m().rollout_steps.labels(word(rollout), outcome).inc()


def rollout_finished(rollout: str, outcome: str, seconds: float) -> None:
    _m().rollout_seconds.labels(word(rollout), outcome).observe(seconds)


def refused(check: str) -> None:
    _m().refusals.labels(word(check)).inc()


def checks_done(target: str, phase: str, checks: Iterable[Any]) -> None:
    """A validation phase's checks (``name``, ``ok``, ``seconds``)."""
    for found in checks:
        outcome = "passed" if found.ok else "failed"
        _m().check_seconds.labels(target, word(phase), word(found.name), outcome).observe(
            found.seconds
        )


def rolled_back(target: str, phase: str, reason: str) -> None:
    _m().rollbacks.labels(target, word(phase), cause_of(phase, reason)).inc()


def cause_of(phase: str, reason: str) -> str:
    """The class of a failure's reason, from the words Molt itself writes in it."""
    text = reason.lower()
    for cause, marks in (
        ("stop", ("emergency stop",)),
        ("lock", ("update lock was lost",)),
        ("abandoned", ("worker", "abandoned", "did not finish")),
        ("timeout", ("timed out", "within", "still failing after")),
        ("crash loop", ("crash loop",)),
    ):
        if any(mark in text for mark in marks):
            return cause
    if phase in ("phase 1", "phase 2"):
        return "checks"
    if phase in ("restart", "verify", "watch"):
        return "unhealthy"
    return "error"


@contextlib.contextmanager
def restart_window(target: str) -> Iterator[None]:
    """Count a restart and time it until healthy (or until it fails)."""
    began = time.monotonic()
    _m().restarts.labels(target).inc()
    try:
        yield
    finally:
        _m().restart_window.labels(target).observe(time.monotonic() - began)


def acked(front: str, seconds: float) -> None:
    _m().ack_seconds.labels(front).observe(seconds)


def http_refused(route: str, status: int) -> None:
    """A request the HTTP server refused; ``route`` is one of its routes, or ``other``."""
    _m().http_refusals.labels(route, str(status)).inc()


def delivered(platform: str, appended_at: float) -> None:
    lag = max(0.0, time.time() - appended_at)
    _m().delivery_seconds.labels(word(platform)).observe(lag)
    _m().delivery_lag.labels(word(platform)).set(lag)


def dropped() -> None:
    _m().dropped.inc()


def model_used(task: str, usage: dict[str, int]) -> None:
    for name, kind in TOKEN_KINDS.items():
        if usage.get(name):
            _m().tokens.labels(kind, word(task)).inc(usage[name])
    if usage.get("calls"):
        _m().calls.labels(word(task)).inc(usage["calls"])


def release_live(target: str, release: int) -> None:
    _m().release.labels(target).set(release)


def incident_opened(target: str, source: str) -> None:
    _m().incidents.labels(target, word(source)).inc()


def incident_action(target: str, action: str) -> None:
    _m().incident_actions.labels(target, word(action)).inc()


def audit_verified(ok: bool, entries: int) -> None:
    _m().audit_verified.set(entries)
    _m().audit_ok.set(1 if ok else 0)


class PhaseClock:
    """Times an update's phases as it enters them: each phase's seconds go to
    ``molt_phase_seconds`` when the next begins, the whole to ``molt_update_seconds``."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.started = time.monotonic()
        self.phase = ""
        self.since = self.started

    def enter(self, phase: str) -> None:
        now = time.monotonic()
        if self.phase and phase != self.phase:
            _m().phase_seconds.labels(self.target, word(self.phase)).observe(now - self.since)
        if phase != self.phase:
            self.phase, self.since = phase, now

    def end(self, outcome: str) -> None:
        self.enter("")
        _m().update_seconds.labels(self.target, outcome).observe(time.monotonic() - self.started)


# -- scrape time ------------------------------------------------------------------------


@dataclass
class Readings:
    """What /metrics reads from Redis when it is asked, rather than recorded."""

    queue_length: dict[str, int] = field(default_factory=dict)  # target → waiting
    #: target → the phase of the update holding its lock ("" when free)
    lock_phase: dict[str, str] = field(default_factory=dict)
    undelivered: int = 0
    active: dict[str, int] = field(default_factory=dict)  # state → requests in it
    incidents_open: dict[str, int] = field(default_factory=dict)  # target → open incidents
    uptime: float = 0.0


def exposition(readings: Readings) -> tuple[bytes, str]:
    """The text format of every process's samples, added up, and of ``readings``."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from prometheus_client.core import GaugeMetricFamily

    class Scraped:
        def collect(self) -> Iterator[Any]:
            queue = GaugeMetricFamily(
                "molt_queue_length", "Approved requests waiting, by target", labels=["target"]
            )
            lock = GaugeMetricFamily(
                "molt_update_lock_held",
                "1 while an update holds a target's lock, labelled with its phase",
                labels=["target", "phase"],
            )
            for target, length in sorted(readings.queue_length.items()):
                queue.add_metric([target], length)
            for target, phase in sorted(readings.lock_phase.items()):
                lock.add_metric([target, word(phase) if phase else ""], 1 if phase else 0)
            active = GaugeMetricFamily(
                "molt_requests_active", "Requests not yet finished, by state", labels=["state"]
            )
            for state, count in sorted(readings.active.items()):
                active.add_metric([state], count)
            incidents = GaugeMetricFamily(
                "molt_incidents_open", "Incidents open, by target", labels=["target"]
            )
            for target, count in sorted(readings.incidents_open.items()):
                incidents.add_metric([target], count)
            yield incidents
            yield queue
            yield lock
            yield active
            yield GaugeMetricFamily(
                "molt_events_undelivered",
                "Events appended but not yet shown",
                value=readings.undelivered,
            )
            yield GaugeMetricFamily(
                "molt_events_pending",
                "The same as molt_events_undelivered (the earlier name)",
                value=readings.undelivered,
            )
            yield GaugeMetricFamily(
                "molt_uptime_seconds", "Seconds the HTTP server has run", value=readings.uptime
            )

    registry = CollectorRegistry()
    folder = os.environ.get(ENV)
    if folder:
        registry.register(Scraped())
        body = _Files(Path(folder)).text() + generate_latest(registry)
    else:  # not prepared (a library use, a unit test): this process's own samples
        from prometheus_client import REGISTRY

        registry.register(Scraped())
        body = generate_latest(REGISTRY) + generate_latest(registry)
    return body, str(CONTENT_TYPE_LATEST)


def serve(host: str, port: int) -> Any:
    """Serve this host's samples at ``http://host:port/metrics`` from a thread (a fleet's
    worker on a host without the bot); returns the server, or None when another process
    on this host serves the same files already (several workers: the first serves)."""
    from prometheus_client import start_http_server
    from prometheus_client.registry import CollectorRegistry

    folder = os.environ.get(ENV)
    registry = CollectorRegistry()
    if folder:
        registry.register(_Files(Path(folder)))
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError:
        return None
    return server


# -- files of processes that are gone ------------------------------------------------


class _Files:
    """Every process's files added up, read while no dead process's file is being folded.

    Between updates nothing writes, so when no file's bytes changed since the last scrape
    the last text is the answer (``_LAST``); a change adds up the files again."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def collect(self) -> Iterator[Any]:
        from prometheus_client.multiprocess import MultiProcessCollector

        with _folder_lock(self.folder, fcntl.LOCK_SH):
            found = list(MultiProcessCollector(None, path=str(self.folder)).collect())
        yield from found

    def text(self) -> bytes:
        from prometheus_client import generate_latest

        with _folder_lock(self.folder, fcntl.LOCK_SH):
            files = {}
            for path in sorted(glob.glob(os.path.join(self.folder, "*.db"))):
                with contextlib.suppress(FileNotFoundError):
                    files[path] = Path(path).read_bytes()
        digest = hashlib.blake2b(digest_size=16)
        for path, data in files.items():
            digest.update(path.encode() + hashlib.blake2b(data, digest_size=16).digest())
        last = _LAST.get(str(self.folder))
        if last is None or last[0] != digest.hexdigest():
            text = generate_latest(_Fixed(_merge(files)))
            last = _LAST[str(self.folder)] = (digest.hexdigest(), text)
        return last[1]


def _merge(files: dict[str, bytes]) -> Iterable[Any]:
    """What prometheus_client's MultiProcessCollector.merge does, with each file's samples
    parsed once and kept while its bytes stay the same (a scrape after one worker wrote
    reads that worker's file only)."""
    from prometheus_client.metrics_core import Metric
    from prometheus_client.multiprocess import MultiProcessCollector

    found: dict[str, Any] = {}
    metric: Any
    for path, data in files.items():
        parts = os.path.basename(path)[:-3].split("_")
        typ = parts[0]
        for name, sample, labels_key, help_text, value, stamp in _parsed(path, data):
            metric = found.get(name)
            if metric is None:
                metric = found[name] = Metric(name, help_text, typ)
            # As MultiProcessCollector._read_metrics: labels as sorted pairs until added up.
            if typ == "gauge":
                metric._multiprocess_mode = parts[1]
                metric.add_sample(sample, (*labels_key, ("pid", parts[2])), value, stamp)
            else:
                metric.add_sample(sample, labels_key, value)
    return MultiProcessCollector._accumulate_metrics(found, True)


def _parsed(path: str, data: bytes) -> list[tuple[Any, ...]]:
    """A file's samples as (metric, sample, labels, help, value, timestamp), kept by path
    while its bytes are the same."""
    import json

    from prometheus_client.mmap_dict import _read_all_values

    key = hashlib.blake2b(data, digest_size=16).digest()
    kept = _PARSED.get(path)
    if kept is not None and kept[0] == key:
        return kept[1]
    rows = []
    for raw, value, stamp, _ in _read_all_values(data=data):
        metric, sample, labels, help_text = json.loads(raw)
        rows.append((metric, sample, tuple(sorted(labels.items())), help_text, value, stamp))
    _PARSED[path] = (key, rows)
    return rows


#: path → (digest of its bytes, its samples)
_PARSED: dict[str, tuple[bytes, list[tuple[Any, ...]]]] = {}


class _Fixed:
    """Metrics already collected, as a registry ``generate_latest`` can read."""

    def __init__(self, found: Iterable[Any]) -> None:
        self.found = list(found)

    def collect(self) -> Iterator[Any]:
        yield from self.found


#: folder → (digest of its files, their text) at the last scrape
_LAST: dict[str, tuple[str, bytes]] = {}


@contextlib.contextmanager
def _folder_lock(folder: Path, mode: int) -> Iterator[None]:
    """Scrapes share the folder; folding files into the archive takes it alone, so that
    no scrape sees a sample twice or not at all."""
    with open(folder / ".lock", "a+") as handle:
        fcntl.flock(handle, mode)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def tidy(at_least: int = 1) -> int:
    """Fold the files of processes that are gone into the archive, once at least
    ``at_least`` of them are gone (a worker after each job folds its horses in batches);
    returns how many processes were folded."""
    folder = os.environ.get(ENV)
    if not folder:
        return 0
    from prometheus_client import multiprocess

    dead: dict[str, list[Path]] = {}  # kind → files
    pids: set[int] = set()
    for path in Path(folder).glob("*.db"):
        kind, _, ends = path.name[:-3].rpartition("_")
        if ends.isdigit() and not processes.alive(int(ends)):
            dead.setdefault(kind, []).append(path)
            pids.add(int(ends))
    if len(pids) < max(1, at_least):
        return 0
    with _folder_lock(Path(folder), fcntl.LOCK_EX):
        for gone in pids:
            multiprocess.mark_process_dead(gone, folder)
        for kind, paths in dead.items():
            _fold(kind, [p for p in paths if p.exists()], Path(folder))
    return len(pids)


def _fold(kind: str, paths: list[Path], folder: Path) -> None:
    """Add dead processes' files to the archive of their kind, then remove them."""
    from prometheus_client.mmap_dict import MmapedDict

    if not paths:
        return
    mode = kind.partition("_")[2]  # counter, histogram, gauge_mostrecent, …
    archive = MmapedDict(str(folder / f"{kind}_{_ARCHIVE}.db"))
    try:
        for path in paths:
            for key, value, stamp, _ in MmapedDict.read_all_values_from_file(str(path)):
                old, old_stamp = archive.read_value(key)
                if mode in ("mostrecent", "livemostrecent"):
                    if stamp >= old_stamp:
                        archive.write_value(key, value, stamp)
                elif mode in ("max", "livemax"):
                    archive.write_value(key, max(old, value), stamp)
                elif mode in ("min", "livemin"):
                    archive.write_value(key, min(old, value) if old_stamp else value, stamp)
                else:  # counters, histograms, summaries and summed gauges add up
                    archive.write_value(key, old + value, max(stamp, old_stamp))
    finally:
        archive.close()
    for path in paths:
        path.unlink()
