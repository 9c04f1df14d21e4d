"""A target: one service Molt manages, with everything Molt keeps for it in Redis.

``Target`` joins the target's settings to a Redis connection and hands out what lives
under its keys (pipeline/keyspace.py names them): the update lock and waiting line,
the test records, update durations and flaky tests, and the boot records. Code that needs one of
them asks the target instead of spelling a key.
"""

from __future__ import annotations

from functools import cached_property

import redis

from pipeline.config import Settings
from pipeline.keyspace import TargetKeys
from pipeline.queue.locking import UpdateLock, WaitingLine
from pipeline.releases.boots import BootRecords
from pipeline.requests.store import Request, RequestStore
from pipeline.sandbox.records import Durations, FlakyTests, TestRecords, run_identity


def of_target(settings: Settings, request: Request) -> bool:
    """Whether the request updates the target ``settings`` are the view of (in a fleet,
    where requests of every target share one store)."""
    return not settings.fleet or request.target == settings.target_name


def test_run(settings: Settings) -> str:
    """What a test run of the target runs, as its records name it (pipeline/sandbox/records.py)."""
    env = ",".join(sorted(settings.test_env))
    return run_identity(settings.test_command, settings.sandbox, settings.test_network, env)


def with_test_limit(settings: Settings, conn: redis.Redis) -> Settings:
    """``settings`` whose MOLT_PHASE_TIMEOUT is the phases' time limit for this target: the
    larger of the setting and three times the last passing run of its test command."""
    limit = Target(settings, conn).tests.limit(settings.phase_timeout).seconds
    if limit == settings.phase_timeout:
        return settings
    return settings.model_copy(update={"phase_timeout": limit})


class Target:
    def __init__(self, settings: Settings, conn: redis.Redis) -> None:
        self.settings = settings
        self.conn = conn
        self.keys = TargetKeys(settings.target_id)

    @property
    def id(self) -> str:
        return self.settings.target_id

    @cached_property
    def store(self) -> RequestStore:
        return RequestStore(self.conn)

    @cached_property
    def lock(self) -> UpdateLock:
        return UpdateLock(self.conn, self.keys.lock, self.settings.lock_ttl)

    @cached_property
    def line(self) -> WaitingLine:
        return WaitingLine(self.conn, self.keys.queue)

    @cached_property
    def tests(self) -> TestRecords:
        return TestRecords(self.conn, self.keys, test_run(self.settings))

    @cached_property
    def durations(self) -> Durations:
        return Durations(self.conn, self.keys.durations)

    @cached_property
    def flaky(self) -> FlakyTests:
        return FlakyTests(self.conn, self.keys.flaky)

    @cached_property
    def boots(self) -> BootRecords:
        return BootRecords(self.settings, self.conn, self.keys)
