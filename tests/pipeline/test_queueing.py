"""The waiting line is the order of work: approvals that arrive at the same instant, retries,
stops and clears never leave a request queued with a free worker and nothing running.
Real Redis, a real RQ worker process (``molt worker``) and real git."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable

import pytest
import redis

from pipeline import audit, store
from pipeline.config import Settings
from pipeline.intake import approval, control
from pipeline.intake import flow as intake
from pipeline.queue import queueing
from pipeline.requests.states import RequestState as S
from pipeline.requests.store import Origin, Request, RequestStore
from pipeline.update import recovery, repair
from tests.support import Molt, ServiceRepo, git

StartMolt = Callable[..., Molt]
ALICE = Origin("console", "alice")
APPROVERS = (
    Origin("console", "bob"),
    Origin("slack", "U2BOB"),
    Origin("console", "bob", user_name="bob again"),
    Origin("slack", "U2BOB", user_name="bob again"),
)
#: How long a round may take before it counts as stuck (a round takes about a second; the
#: rest is room for a loaded machine).
_STUCK_AFTER = 120.0


def _plans(settings: Settings, conn: redis.Redis, count: int) -> list[Request]:
    plans = [
        intake.submit(settings, conn, ALICE, "deploy", "main", "deploy main") for _ in range(count)
    ]
    assert all(p.state is S.PLAN_READY for p in plans), [p.message for p in plans]
    return plans


def _approve_at_once(settings: Settings, plans: list[Request], *, every: bool = True) -> None:
    """Every plan approved by its own approver, from its own thread, released together;
    ``every``: each approval must be allowed (else a full queue may refuse some)."""
    if not plans:
        return
    barrier = threading.Barrier(len(plans))
    decisions: list[object] = []

    def approve(request: Request, who: Origin) -> None:
        conn = store.connect(settings)
        barrier.wait()
        decisions.append(approval.approve(settings, conn, request.id, who))
        conn.close()

    threads = [
        threading.Thread(target=approve, args=(p, APPROVERS[i % len(APPROVERS)]))
        for i, p in enumerate(plans)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(decisions) or not every, decisions


def _settled(conn: redis.Redis, plans: list[Request]) -> list[Request]:
    """Wait until every request is finished; the ones still open if they never are."""
    store_ = RequestStore(conn)
    deadline = time.monotonic() + _STUCK_AFTER
    while True:
        open_ = [r for r in (store_.get(p.id) for p in plans) if not r.terminal]
        if not open_ or time.monotonic() > deadline:
            return open_
        time.sleep(0.05)


@pytest.mark.slow
def test_approvals_in_the_same_instant_never_leave_the_queue_stuck(
    settings: Settings,
    conn: redis.Redis,
    service: ServiceRepo,
    start_molt: StartMolt,
) -> None:
    """Four plans approved at once, one worker, many rounds: each round the head of the line
    runs (and fails at once: the live checkout moved since the plans were made) and the
    others are cleared from the queue, or run and fail in turn if approved after that; no
    round leaves a request queued."""
    base = service.live_head()
    service.commit({"app.py": "def greet():\n    return 'hello'\n\n\nVERSION = 2\n"}, "v2")
    worker = start_molt("worker")
    worker.wait_for(r"Listening on|molt-updates")
    rounds = 20
    for round_ in range(1, rounds + 1):
        plans = _plans(settings, conn, 4)
        git(service.live, "commit", "-q", "--allow-empty", "-m", f"moved by hand {round_}")
        _approve_at_once(settings, plans, every=False)  # one cleared first is told so
        left = _settled(conn, plans)
        print(f"round {round_}/{rounds}: {'stuck: ' + str(len(left)) if left else 'settled'}")
        stuck = [(r.id, r.state.value, r.message) for r in left]
        assert not left, f"round {round_}: {stuck}; the worker said:\n{worker.output[-3000:]}"
        # The head ran and failed at once; the others were cleared from the queue when it
        # failed, or (approved only after that) ran and failed the same way in turn.
        ended = [RequestStore(conn).get(p.id).message for p in plans]
        assert any("moved" in message for message in ended), ended
        assert all("moved" in m or "cleared from the queue" in m for m in ended), ended
        git(service.live, "reset", "-q", "--hard", base)


def _most_running_at_once(conn: redis.Redis) -> int:
    """Replays the audit chain: the most updates that were running at the same time."""
    running: set[str] = set()
    most = 0
    for entry in audit.entries(conn):
        detail = entry.get("detail") or {}
        moved_to, request_id = detail.get("to"), entry.get("request_id")
        if moved_to in ("running", "restarting"):
            running.add(request_id)
        elif moved_to is not None:
            running.discard(request_id)
        most = max(most, len(running))
    return most


@pytest.mark.slow
def test_random_interleavings_of_approvals_retries_stops_clears_and_workers(
    settings: Settings, conn: redis.Redis, service: ServiceRepo, start_molt: StartMolt
) -> None:
    """Seeded and bounded: approvals (some in the same instant), retries, emergency stops,
    clears, new upstream commits and workers starting, in a random order; in the end every
    request is finished, and no two updates of the target ever ran at once."""
    chance = random.Random(20240611)
    store_ = RequestStore(conn)
    workers: list[Molt] = []
    made: list[str] = []
    version = 1

    def plan() -> None:
        made.append(intake.submit(settings, conn, ALICE, "deploy", "main", "deploy main").id)

    def in_state(state: S) -> list[str]:
        return [i for i in made if store_.get(i).state is state]

    def approve() -> None:
        ready = in_state(S.PLAN_READY)
        chosen = chance.sample(ready, min(len(ready), chance.randint(1, 3)))
        _approve_at_once(settings, [store_.get(i) for i in chosen], every=False)

    def retry() -> None:
        failed = in_state(S.FAILED)
        if failed:
            intake.retry(settings, conn, chance.choice(failed), ALICE)

    def commit() -> None:
        nonlocal version
        version += 1
        service.commit({"app.py": f"def greet():\n    return 'hello'\n\n\nV = {version}\n"}, "v")

    def worker() -> None:
        if len(workers) < 3:
            workers.append(start_molt("worker"))

    actions: list[Callable[[], object]] = [
        plan,
        plan,
        approve,
        approve,
        retry,
        commit,
        worker,
        lambda: control.stop(settings, conn, "console:alice"),
        lambda: queueing.clear(settings, conn, "cleared by an operator"),
    ]
    commit()
    for _ in range(40):
        chance.choice(actions)()
        time.sleep(chance.uniform(0, 0.15))
    if not workers:
        worker()
    _approve_at_once(settings, [store_.get(i) for i in in_state(S.PLAN_READY)], every=False)
    left = _settled(conn, [store_.get(i) for i in made])
    print(f"{len(made)} requests, {len(workers)} workers; left open: {len(left)}")
    assert not left, [(r.id, r.state.value, r.message) for r in left]
    most = _most_running_at_once(conn)
    print(f"most updates running at once: {most}")
    assert most <= 1


@pytest.mark.slow
def test_a_line_whose_job_was_lost_gets_one_again(
    settings: Settings,
    conn: redis.Redis,
    service: ServiceRepo,
    start_molt: StartMolt,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A job lost with its worker (here: its data deleted) leaves a request queued that
    nothing would run: `molt recover`, and the bot's housekeeping, give the line a job."""
    # No job is anywhere to take the turn, so the housekeeping's second look need not wait
    # the seconds a worker that just took a job may take to start it.
    monkeypatch.setattr(recovery, "STALL_GRACE", 0.5)
    for version, way in ((2, "recover"), (3, "housekeeping")):
        service.commit({"app.py": f"def greet():\n    return 'hello'\n\n\nV = {version}\n"}, "v")
        [request] = _plans(settings, conn, 1)
        assert approval.approve(settings, conn, request.id, APPROVERS[0])
        conn.delete(*conn.keys("rq:job:update-*"))  # lost with its worker
        worker = start_molt("worker")
        worker.wait_for(r"Listening on|molt-updates")
        if way == "recover":
            said = "\n".join(repair.recover(settings, conn, actor="console:alice")[1].lines)
        else:
            said = ""
            deadline = time.monotonic() + _STUCK_AFTER
            while not said and time.monotonic() < deadline:
                said = recovery.keep_line_moving(settings, conn)
                time.sleep(0.2)
        assert "the waiting line had no job to run it: added update-" in said, said
        assert not _settled(conn, [request])
        ended = RequestStore(conn).get(request.id)
        assert ended.state is S.SUCCEEDED, f"{way}: {ended.message}"
        worker.stop()
