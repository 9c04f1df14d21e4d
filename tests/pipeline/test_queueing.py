"""The waiting line is the order of work: approvals that arrive at the same instant, retries,
stops and clears never leave a request queued with a free worker and nothing running.
Real Redis, a real RQ worker process (``molt worker``) and real git."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import redis

from pipeline import approval, intake, store
from pipeline.config import Settings
from pipeline.requests import Origin, Request, RequestStore
from pipeline.states import RequestState as S
from tests.support import Molt, ServiceRepo, git

StartMolt = Callable[..., Molt]
ALICE = Origin("console", "alice")
APPROVERS = (
    Origin("console", "bob"),
    Origin("slack", "U2BOB"),
    Origin("console", "bob", user_name="bob again"),
    Origin("slack", "U2BOB", user_name="bob again"),
)
#: How long a round may take before it counts as stuck (a round takes about a second).
_STUCK_AFTER = 30.0


def _plans(settings: Settings, conn: redis.Redis, count: int) -> list[Request]:
    plans = [
        intake.submit(settings, conn, ALICE, "deploy", "main", "deploy main") for _ in range(count)
    ]
    assert all(p.state is S.PLAN_READY for p in plans), [p.message for p in plans]
    return plans


def _approve_at_once(settings: Settings, plans: list[Request]) -> None:
    """Every plan approved by its own approver, from its own thread, released together."""
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
    assert all(decisions), decisions


def _settled(conn: redis.Redis, plans: list[Request]) -> list[Request]:
    """Wait until every request is finished; the ones still open if they never are."""
    store_ = RequestStore(conn)
    deadline = time.monotonic() + _STUCK_AFTER
    while True:
        open_ = [r for r in (store_.get(p.id) for p in plans) if not r.terminal]
        if not open_ or time.monotonic() > deadline:
            return open_
        time.sleep(0.05)


def test_approvals_in_the_same_instant_never_leave_the_queue_stuck(
    settings: Settings,
    conn: redis.Redis,
    service: ServiceRepo,
    start_molt: StartMolt,
) -> None:
    """Four plans approved at once, one worker, many rounds: each round the head of the line
    runs (and fails at once: the live checkout moved since the plans were made) and the
    others are cleared from the queue; no round leaves a request queued."""
    base = service.live_head()
    service.commit({"app.py": "def greet():\n    return 'hello'\n\n\nVERSION = 2\n"}, "v2")
    worker = start_molt("worker")
    worker.wait_for(r"Listening on|molt-updates")
    rounds = 20
    for round_ in range(1, rounds + 1):
        plans = _plans(settings, conn, 4)
        git(service.live, "commit", "-q", "--allow-empty", "-m", f"moved by hand {round_}")
        _approve_at_once(settings, plans)
        left = _settled(conn, plans)
        print(f"round {round_}/{rounds}: {'stuck: ' + str(len(left)) if left else 'settled'}")
        stuck = [(r.id, r.state.value, r.message) for r in left]
        assert not left, f"round {round_}: {stuck}; the worker said:\n{worker.output[-3000:]}"
        ran = [p for p in plans if "moved" in RequestStore(conn).get(p.id).message]
        assert len(ran) == 1  # the head; the others were cleared when it failed
        git(service.live, "reset", "-q", "--hard", base)
