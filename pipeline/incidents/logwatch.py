"""The log watcher: the service's own log as a source of incidents, no monitoring needed.

It follows the files of MOLT_WATCH_LOG (a path or a glob; for Molt itself its own logs)
across rotation (a file renamed away is read to its end, the new one from its start; a
truncated one from its start again), recognises error lines and Python tracebacks, and
groups them by a signature: the exception type and the innermost frame of the service's
own code, or the error line with its ids, numbers and addresses stripped. Each occurrence
is a counted signal (pipeline/incidents/alerts.py) handed to the bot's incident book through
pipeline/incidents/oncall.py, where MOLT_INCIDENT_THRESHOLD's sliding window decides when the
occurrences of one signature are an incident.

Health when idle: while no update runs, the health command every MOLT_HEALTH_INTERVAL
seconds; MOLT_HEALTH_FAILURES failures in a row are an incident, a pass after them
resolves it.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import redis
import structlog

from pipeline.config import Settings
from pipeline.incidents import oncall
from pipeline.incidents.alerts import FIRING, RESOLVED, Signal
from pipeline.queue.targets import Target
from pipeline.redaction import redact
from pipeline.releases.manifests import running_version
from pipeline.service import watching

log = structlog.get_logger(__name__)
#: How often the files are looked at for new lines and rotation.
POLL_SECONDS = 0.25
#: The most of one file read per look, so a flood cannot starve the rest.
MAX_READ = 4 * 1024 * 1024
_ERROR_LINE = re.compile(
    r"(?-i:\b(ERROR|CRITICAL|FATAL)\b)|level=['\"]?(error|critical)\b|\"level\":\s*\"(error|critical)\"",
    re.IGNORECASE,
)
_TRACEBACK = "Traceback (most recent call last):"
_FRAME = re.compile(r'^\s+File "(?P<path>[^"]+)", line \d+, in (?P<func>\S+)')
_EXCEPTION = re.compile(r"^(?P<type>[A-Za-z_][\w.]*)(:|$)")
#: What varies between occurrences of one problem: stripped from a signature.
_VARYING = [
    (re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", re.I), "<id>"),
    (re.compile(r"\b0x[0-9a-f]+\b", re.I), "<addr>"),
    (re.compile(r"\b[0-9a-f]{12,}\b", re.I), "<hex>"),
    (re.compile(r"\d+(\.\d+)*"), "<n>"),
]
_TIMESTAMP = re.compile(r"^\S*\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d\S*\s*")


def stripped(text: str) -> str:
    """``text`` without what varies between occurrences of one problem."""
    text = _TIMESTAMP.sub("", text.strip())
    for pattern, mark in _VARYING:
        text = pattern.sub(mark, text)
    return " ".join(text.split())[:200]


@dataclass
class Occurrence:
    signature: str
    summary: str
    excerpt: str


@dataclass
class LineReader:
    """Turns lines into occurrences: error lines, and tracebacks once they end."""

    own_code: Path
    _frames: list[tuple[str, str]] = field(default_factory=list)
    _block: list[str] = field(default_factory=list)
    _in_traceback: bool = False

    def feed(self, line: str) -> Occurrence | None:
        if _TRACEBACK in line and "\\n" in line:  # a traceback inside one structured log line
            inner = line[line.index(_TRACEBACK) :].replace('\\"', '"').split("\\n")
            found = [o for o in map(self.feed, (f"{part}\n" for part in inner)) if o]
            return found[-1] if found else None
        if self._in_traceback:
            return self._traceback_line(line)
        if line.rstrip().endswith(_TRACEBACK):
            self._in_traceback, self._frames, self._block = True, [], [line]
            return None
        if _ERROR_LINE.search(line):
            signature = stripped(line)
            return Occurrence(signature, line.strip()[:300], line.strip()[:2000])
        return None

    def _traceback_line(self, line: str) -> Occurrence | None:
        self._block.append(line)
        frame = _FRAME.match(line)
        if frame:
            self._frames.append((frame["path"], frame["func"]))
            return None
        if line.startswith((" ", "\t")) or not line.strip():
            return None
        self._in_traceback = False
        found = _EXCEPTION.match(line.strip())
        kind = found["type"] if found else stripped(line)
        where = self._innermost_own_frame()
        signature = f"{kind} at {where}" if where else kind
        return Occurrence(
            signature,
            f"{line.strip()[:240]} ({where or 'no frame of its own'})",
            "".join(self._block)[-2000:],
        )

    def _innermost_own_frame(self) -> str:
        """The deepest frame in the service's own code: not the standard library nor an
        installed package."""
        for path, func in reversed(self._frames):
            if "site-packages" in path or "/lib/python" in path or path.startswith("<"):
                continue
            shown = Path(path)
            try:
                shown = shown.resolve().relative_to(self.own_code)
            except (ValueError, OSError):
                shown = Path(shown.name)
            return f"{shown}:{func}"
        return ""


class _Followed:
    """One followed file: its open handle, the inode it had when opened."""

    def __init__(self, path: str, handle: IO[str]) -> None:
        self.path = path
        self.handle = handle
        self.inode = os.fstat(handle.fileno()).st_ino
        self.partial = ""

    def read(self) -> list[str]:
        chunk = self.partial + self.handle.read(MAX_READ)
        lines = chunk.split("\n")
        self.partial = lines.pop()
        return [line + "\n" for line in lines]


class LogFollower:
    """Follows every file a glob matches, across rotation and truncation."""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self.files: dict[str, _Followed] = {}
        self._started = False

    def _open(self, path: str, at_end: bool) -> None:
        try:
            handle = open(path, encoding="utf-8", errors="replace")  # noqa: SIM115 - kept open
        except OSError:
            return
        if at_end:
            handle.seek(0, os.SEEK_END)
        self.files[path] = _Followed(path, handle)

    def lines(self) -> Iterable[str]:
        """New lines since the last call; at the first, files already there are read from
        their end (what they held was logged before Molt looked)."""
        for path in sorted(glob.glob(self.pattern)):
            if path not in self.files:
                self._open(path, at_end=not self._started)
        self._started = True
        for path, followed in list(self.files.items()):
            yield from followed.read()
            try:
                now = os.stat(path)
            except OSError:  # rotated away, the new one not there yet
                continue
            if now.st_ino != followed.inode:
                yield from followed.read()  # the rest of the old file, then the new one
                followed.handle.close()
                del self.files[path]
                self._open(path, at_end=False)
                if path in self.files:
                    yield from self.files[path].read()
            elif now.st_size < followed.handle.tell():  # truncated
                followed.handle.seek(0)
                followed.partial = ""

    def close(self) -> None:
        for followed in self.files.values():
            followed.handle.close()
        self.files.clear()


def fingerprint(signature: str) -> str:
    return "log:" + hashlib.sha256(signature.encode()).hexdigest()[:16]


def occurrence_signal(settings: Settings, found: Occurrence, target: str = "") -> Signal:
    known = settings.secrets()
    return Signal(
        source="log",
        target=target,
        fingerprint=fingerprint(found.signature),
        status=FIRING,
        summary=redact(found.summary, known),
        details=redact(found.excerpt, known),
        severity="error",
        counted=True,
        at=time.time(),
    )


class Watchers:
    """The log watcher and the idle health probes: threads of the bot process."""

    def __init__(self, settings: Settings, conn: redis.Redis) -> None:
        self.settings = settings
        self.conn = conn
        self.stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self.hand_over: Callable[[list[Signal]], object] = lambda s: oncall.hand_over(conn, s)

    def start(self) -> None:
        """A follower per target whose log is here (a fleet's targets' logs, each named as
        its own); idle health probes for the one target whose checkout is here."""
        names = self.settings.target_names() if self.settings.fleet else [""]
        for name in names:
            view = self.settings.for_target(name) if name else self.settings
            pattern = view.watched_logs
            if pattern and pattern != "off":
                self._spawn(self._follow, view, pattern, name)
        if self.settings.fleet or not self.settings.health_interval:
            return
        if self.settings.health_command or self.settings.manages_itself:
            self._spawn(self._probe_when_idle)

    def _spawn(self, loop: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=loop, args=args, name="molt-watch", daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        self.stopping.set()
        for thread in self._threads:
            thread.join(timeout=5)

    def _follow(self, view: Settings, pattern: str, target: str) -> None:
        follower = LogFollower(pattern)
        reader = LineReader(view.target_dir)
        try:
            while not self.stopping.wait(POLL_SECONDS):
                found = [o for o in map(reader.feed, follower.lines()) if o is not None]
                if found:
                    signals = [occurrence_signal(view, o, target) for o in found]
                    self._hand(signals)
        finally:
            follower.close()

    def _probe_when_idle(self) -> None:
        failures = 0
        fingerprint = f"health:{self.settings.target_id}"
        log_path = self.settings.data_dir / "health.log"
        while not self.stopping.wait(self.settings.health_interval):
            if Target(self.settings, self.conn).lock.holder() is not None:
                continue  # an update restarts the service; its own checks watch it
            failed = watching.probe(self.settings, self.conn, running_version(), log_path)
            if failed is None and failures >= self.settings.health_failures:
                self._hand([Signal("health", fingerprint, RESOLVED, at=time.time())])
            failures = failures + 1 if failed else 0
            if failures == self.settings.health_failures:
                summary = f"{failures} health checks failed in a row: {failed}"
                self._hand([Signal("health", fingerprint, FIRING, summary=summary, at=time.time())])

    def _hand(self, signals: list[Signal]) -> None:
        try:
            self.hand_over(signals)
        except redis.RedisError as exc:
            log.warning("could not hand over signals", error=str(exc))
