"""A fleet's request never waits for a worker that is not there: a worker that stops leaves
the registry at once, so intake blocks at once; a job nobody took within MOLT_WORKER_WAIT
(its worker killed, or gone between intake's look and the job) ends its request, saying
when a worker was last seen; a worker that is there, even busy, is waited for."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
import redis

from bot.desk import Desk
from pipeline.config import Settings, load_settings
from pipeline.intake import approval
from pipeline.queue import queueing, workers
from pipeline.queue.targets import Target
from pipeline.requests.states import RequestState as S
from pipeline.requests.store import Origin, Request, RequestStore
from pipeline.update import recovery
from pipeline.update.worker import run_worker
from tests.bot.test_desk import Replies
from tests.support import ServiceRepo

WES = Origin("console", "wes", "console")


@pytest.fixture
def fleet(settings: Settings, service: ServiceRepo) -> Settings:
    both = {"dir": str(service.live), "test_command": service.test_command}
    return load_settings(
        data_dir=settings.data_dir,
        authorised_users=["console:wes"],
        targets={"api": both, "web": both | {"approvers": ["console:wes"]}},
    )


@pytest.fixture
def web(fleet: Settings) -> Settings:
    return fleet.for_target("web")


@pytest.fixture
def desk(fleet: Settings, conn: redis.Redis) -> Iterator[Desk]:
    desk = Desk(fleet, conn, {"console": Replies()})
    yield desk
    desk.close()


@pytest.fixture
def worker(fleet: Settings, web: Settings) -> Iterator[workers.Beat]:
    """A worker of web's registration, beating until the test stops it."""
    beat = workers.Beat(fleet, "web-worker", [web])
    beat.start()
    yield beat
    beat.stop()


def _ask(desk: Desk, conn: redis.Redis, text: str) -> Request:
    desk.say(WES, text).result(timeout=60)
    [request] = RequestStore(conn).recent(1)
    return request


def _until(found: Callable[[], list[str]]) -> list[str]:
    """What ``found`` returns once it returns something (a generous deadline)."""
    deadline = time.monotonic() + 30
    while not (seen := found()):
        assert time.monotonic() < deadline, "nothing happened"
        time.sleep(0.1)
    return seen


def test_a_worker_that_stopped_is_gone_at_once_and_a_request_is_blocked_saying_when_it_was_seen(
    fleet: Settings, web: Settings, conn: redis.Redis, desk: Desk
) -> None:
    run_worker(fleet, burst=True, targets=["web"])  # it served web, then stopped
    assert workers.last_seen(web, conn) is not None  # seen a moment ago, and gone
    request = _ask(desk, conn, "deploy web main")
    assert request.state is S.BLOCKED
    assert request.message.startswith("no worker for web is running (last seen ")
    assert "`molt worker --target web` on the host that holds its checkout" in request.message
    assert queueing.untaken(web, "") == []  # nothing was left on web's queue


def test_an_intake_job_nobody_took_ends_the_request_blocked_after_the_worker_wait(
    web: Settings, conn: redis.Redis, desk: Desk, worker: workers.Beat
) -> None:
    request = _ask(desk, conn, "deploy web main")
    assert request.state is S.PREFLIGHT  # its job waits on web's queue for the worker
    [job] = queueing.untaken(web, queueing.INTAKE_JOB)
    worker.stop()  # and the worker stops before it takes it
    patient = web.model_copy(update={"worker_wait": 600.0})
    assert recovery.end_unserved(patient, conn) == []  # gone a moment ago: it may come back
    short = web.model_copy(update={"worker_wait": 0.5})
    assert _until(lambda: recovery.end_unserved(short, conn)) == [request.id]
    blocked = RequestStore(conn).get(request.id)
    assert blocked.state is S.BLOCKED
    assert blocked.message.startswith("no worker for web took it in 0.5 s (last seen ")
    assert job not in queueing.untaken(web, "")  # a worker that comes later runs nothing


def test_an_update_nobody_took_fails_after_the_worker_wait_and_leaves_the_line(
    web: Settings, conn: redis.Redis, worker: workers.Beat
) -> None:
    store = RequestStore(conn)
    request = store.create(WES, "deploy web main", "deploy", "main", target="web")
    for state in (S.PREFLIGHT, S.PLANNING):
        store.transition(request.id, state, actor="molt")
    plan = {"kind": "deploy", "risk": {"level": "low"}, "files": []}
    store.transition(
        request.id, S.PLAN_READY, actor="molt", fields={"plan": plan, "plan_ready_at": time.time()}
    )
    decision = approval.approve(web, conn, request.id, WES)
    assert decision.allowed, decision.reason
    assert store.get(request.id).state is S.QUEUED
    assert queueing.untaken(web, queueing.UPDATE_JOB)
    worker.stop()  # killed or stopped before it took the update
    short = web.model_copy(update={"worker_wait": 0.5})
    assert _until(lambda: recovery.end_unserved(short, conn)) == [request.id]
    failed = store.get(request.id)
    assert (failed.state, failed.phase) == (S.FAILED, "queued")
    assert failed.message.startswith("no worker for web took it in 0.5 s (last seen ")
    assert Target(web, conn).line.ids() == []
    assert queueing.untaken(web, "") == []


def test_a_worker_that_is_there_is_waited_for_however_long_it_is_busy(
    web: Settings, conn: redis.Redis, desk: Desk, worker: workers.Beat
) -> None:
    request = _ask(desk, conn, "deploy web main")
    short = web.model_copy(update={"worker_wait": 0.1})
    time.sleep(0.5)  # longer than the wait: a worker that beats takes its jobs in turn
    assert recovery.end_unserved(short, conn) == []
    assert RequestStore(conn).get(request.id).state is S.PREFLIGHT
    assert len(queueing.untaken(web, queueing.INTAKE_JOB)) == 1
