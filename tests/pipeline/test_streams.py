"""The stream reader every consumer in Molt uses, on the real Redis: what a stopped reader
had taken comes first at the next start, a lost group is made again, a failing handler's
entry is dropped or held by the caller's choice, and stop ends the loop."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

import pytest
import redis

from pipeline.streams import COUNT, OnFault, StreamReader

STREAM = "molt:test:stream"
GROUP = "readers"
#: A generous deadline for the reader's thread to get somewhere, on a loaded machine.
DEADLINE = 60.0


def _until(check: Callable[[], bool]) -> None:
    end = time.monotonic() + DEADLINE
    while not check():
        assert time.monotonic() < end, "the reader never got there"
        time.sleep(0.02)


def _put(conn: redis.Redis, *names: str) -> list[str]:
    return [str(conn.xadd(STREAM, {"name": name})) for name in names]


def _pending(conn: redis.Redis) -> int:
    return int(conn.xpending(STREAM, GROUP)["pending"])  # type: ignore[index]


class Log:
    """A handler that writes down what it was handed, and what it finished."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.done: list[str] = []

    def __call__(self, entry_id: str, fields: dict[str, str]) -> Any:
        self.seen.append(fields["name"])
        self.done.append(fields["name"])


@pytest.fixture
def readers(conn: redis.Redis) -> Iterator[Callable[..., StreamReader]]:
    made: list[StreamReader] = []

    def make(handle: Any, **options: Any) -> StreamReader:
        reader = StreamReader(conn, STREAM, GROUP, "bot", handle, **options)
        made.append(reader)
        return reader

    yield make
    for reader in made:
        reader.stop()


def test_what_a_stopped_reader_had_taken_comes_before_anything_new(
    conn: redis.Redis, readers: Callable[..., StreamReader]
) -> None:
    first = Log()
    reader = readers(first)

    def stop_after_two(entry_id: str, fields: dict[str, str]) -> None:
        first(entry_id, fields)
        if len(first.done) == 2:
            reader.stopping.set()  # the bot stops in the middle of a batch

    reader.handle = stop_after_two
    _put(conn, "one", "two", "three", "four")
    reader.start()
    _until(lambda: not reader._thread.is_alive())
    assert first.done == ["one", "two"]
    assert _pending(conn) == 2  # taken, not finished

    _put(conn, "five")
    second = Log()
    readers(second).start()
    _until(lambda: len(second.done) == 3)
    assert second.done == ["three", "four", "five"]
    _until(lambda: _pending(conn) == 0)


def test_more_pending_entries_than_one_read_are_all_taken(
    conn: redis.Redis, readers: Callable[..., StreamReader]
) -> None:
    names = [f"n{i}" for i in range(COUNT + 20)]
    _put(conn, *names)
    conn.xgroup_create(STREAM, GROUP, id="0")
    conn.xreadgroup(GROUP, "bot", {STREAM: ">"}, count=len(names))  # a reader that died
    log = Log()
    readers(log).start()
    _until(lambda: len(log.done) == len(names))
    assert log.done == names


def test_entries_put_before_the_first_reader_are_read(
    conn: redis.Redis, readers: Callable[..., StreamReader]
) -> None:
    _put(conn, "early")
    log = Log()
    readers(log).start()
    _until(lambda: log.done == ["early"])


@pytest.mark.parametrize("loss", ["stream deleted", "group destroyed"])
def test_a_lost_group_is_made_again_and_reading_goes_on(
    conn: redis.Redis, readers: Callable[..., StreamReader], loss: str
) -> None:
    log = Log()
    readers(log).start()
    _put(conn, "before")
    _until(lambda: log.done == ["before"])

    if loss == "stream deleted":  # what a Redis restart without persistence leaves
        conn.delete(STREAM)
    else:
        conn.xgroup_destroy(STREAM, GROUP)
    _put(conn, "after")
    _until(lambda: "after" in log.done)
    assert GROUP in [g["name"] for g in conn.xinfo_groups(STREAM)]
    _put(conn, "later")
    _until(lambda: "later" in log.done)


def test_a_failing_entry_is_dropped_and_the_next_one_taken(
    conn: redis.Redis, readers: Callable[..., StreamReader]
) -> None:
    log = Log()

    def fail_on_bad(entry_id: str, fields: dict[str, str]) -> None:
        if fields["name"] == "bad":
            log.seen.append("bad")
            raise ValueError("unreadable")
        log(entry_id, fields)

    readers(fail_on_bad).start()
    _put(conn, "good", "bad", "next")
    _until(lambda: log.done == ["good", "next"])
    _until(lambda: _pending(conn) == 0)
    assert log.seen == ["good", "bad", "next"]  # tried once, never again


def test_a_failing_entry_is_retried_and_holds_those_after_it(
    conn: redis.Redis, readers: Callable[..., StreamReader]
) -> None:
    log = Log()
    failures = {"flaky": 2}

    def fail_twice(entry_id: str, fields: dict[str, str]) -> None:
        log.seen.append(fields["name"])
        if failures.get(fields["name"], 0) > 0:
            failures[fields["name"]] -= 1
            raise ConnectionError("the platform did not answer")
        log.done.append(fields["name"])

    readers(fail_twice, on_fault=OnFault.RETRY).start()
    _put(conn, "first", "flaky", "after")
    _until(lambda: log.done == ["first", "flaky", "after"])
    assert log.seen == ["first", "flaky", "flaky", "flaky", "after"]
    _until(lambda: _pending(conn) == 0)


def test_work_handed_on_is_acknowledged_when_it_ends(
    conn: redis.Redis, readers: Callable[..., StreamReader]
) -> None:
    work: list[Future[None]] = []

    def hand_on(entry_id: str, fields: dict[str, str]) -> Future[None]:
        work.append(Future())
        return work[-1]

    readers(hand_on).start()
    _put(conn, "slow")
    _until(lambda: len(work) == 1)
    assert _pending(conn) == 1  # handed on, not yet done: a restart would take it again
    work[0].set_result(None)
    _until(lambda: _pending(conn) == 0)


def test_stop_ends_the_loop_and_leaves_the_rest_pending(
    conn: redis.Redis, readers: Callable[..., StreamReader]
) -> None:
    idle = readers(Log())
    idle.start()
    idle.stop(timeout=DEADLINE)
    assert not idle._thread.is_alive()

    conn.delete(STREAM)
    entered = threading.Event()
    release = threading.Event()
    log = Log()

    def slow(entry_id: str, fields: dict[str, str]) -> None:
        entered.set()
        release.wait(DEADLINE)
        log(entry_id, fields)

    busy = readers(slow)
    _put(conn, "one", "two", "three")
    busy.start()
    assert entered.wait(DEADLINE)
    busy.stopping.set()
    release.set()
    busy.stop(timeout=DEADLINE)
    assert not busy._thread.is_alive()
    assert log.done == ["one"]
    assert _pending(conn) == 2
