"""Progress of a running validation phase, for the status message people watch.

``TestProgress`` reads the test command's output as it comes: pytest's progress lines
(``..F..  [ 45%]`` with ``-q``, ``path::name PASSED  [ 45%]`` with ``-v``, and the same under
xdist) give the share of tests done and the failures so far. ``Ticker`` calls a report every
MOLT_PROGRESS_INTERVAL seconds while the phase runs, so a long phase refreshes its status
message a few times a minute instead of showing how long it ran when it started.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

import structlog

log = structlog.get_logger(__name__)

#: ``-q``: a run of result marks, then the share done; pytest writes the share at a line's end.
_MARKS_LINE = re.compile(r"^([.FEsxX]+)\s*\[\s*(\d{1,3})%\]\s*$")
#: ``-v`` (and xdist's ``[gw0] [ 45%] PASSED path::name``): one test and its outcome.
_VERBOSE_LINE = re.compile(
    r"\b(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b.*\[\s*(\d{1,3})%\]"
    r"|\[\s*(\d{1,3})%\]\s+(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b"
)
_MARKS = re.compile(r"^[.FEsxX]+$")
_COLOUR = re.compile(r"\x1b\[[0-9;]*m")
_FAILED_MARKS = frozenset("FE")
_FAILED_WORDS = frozenset({"FAILED", "ERROR"})


class TestProgress:
    """What a running test command has shown so far; fed from the thread that reads its
    output, read by the ticker. Share and failures stay None until pytest's progress
    lines show up (another runner shows only how long it has run)."""

    __test__ = False  # not a pytest test class

    def __init__(self) -> None:
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._partial = ""
        self._marks = 0  # result marks seen on finished ``-q`` lines
        self._failed = 0
        self._share: int | None = None
        self._marks_at_share = 0  # the marks that the last share stood for

    def feed(self, chunk: bytes) -> None:
        with self._lock:
            text = self._partial + _COLOUR.sub("", chunk.decode(errors="replace"))
            *lines, self._partial = text.replace("\r", "\n").split("\n")
            for line in lines:
                self._line(line.strip())

    def _line(self, line: str) -> None:
        marks = _MARKS_LINE.match(line)
        if marks:
            self._marks += len(marks.group(1))
            self._failed += sum(mark in _FAILED_MARKS for mark in marks.group(1))
            self._shown(int(marks.group(2)))
            return
        verbose = _VERBOSE_LINE.search(line)
        if verbose:
            word = verbose.group(1) or verbose.group(4)
            self._marks += 1
            self._failed += word in _FAILED_WORDS
            self._shown(int(verbose.group(2) or verbose.group(3)))

    def _shown(self, share: int) -> None:
        self._share = min(share, 100)
        self._marks_at_share = self._marks

    def snapshot(self) -> dict[str, Any]:
        """Seconds since the phase began, and when known the share of tests done (an
        estimate between pytest's lines, from the marks of the line being written) and
        the failures so far."""
        with self._lock:
            seen: dict[str, Any] = {"seconds": round(time.monotonic() - self.started, 1)}
            if self._share is None:
                return seen
            partial = self._partial.strip()
            pending = partial if _MARKS.match(partial) else ""
            share = self._share
            if pending and self._marks_at_share:
                estimate = share * (self._marks + len(pending)) / self._marks_at_share
                share = max(share, min(99, int(estimate)))
            failed = self._failed + sum(mark in _FAILED_MARKS for mark in pending)
            return seen | {"share": share, "failed": failed}


class Ticker:
    """Calls ``report`` every ``interval`` seconds in a thread of its own, from entering the
    ``with`` block until leaving it; leaving waits for a report under way, so none comes
    after the block. A report that raises is logged, and the next one is still made."""

    def __init__(self, interval: float, report: Callable[[], None]) -> None:
        self.interval = interval
        self.report = report
        self.reports = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="molt-progress", daemon=True)

    def __enter__(self) -> Ticker:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.report()
                self.reports += 1
            except Exception as exc:
                log.warning("progress refresh failed", error=str(exc))
