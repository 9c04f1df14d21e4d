"""``molt recover``: putting back an installation Molt cannot run from.

``molt recover`` is for when Molt itself is down or broken: it returns the live
checkout to the snapshot of an update that was left half-done (the one way back,
pipeline/service/rollback.py ``return_to``), makes the requests in Redis consistent
(ending stuck ones with a message, releasing a lock whose holder is gone), and restores
molt.toml from the backup ``molt run`` keeps (pipeline/update/backups.py). Each step
reports what it did; ``ok`` is false where it could not fix something.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import redis
import structlog
from rq.job import Job, JobStatus

from pipeline import audit, keyspace
from pipeline.config import Settings
from pipeline.exceptions import GitError, IllegalTransition, UnknownRequest, UpdateFailed
from pipeline.git import Git
from pipeline.intake import control
from pipeline.keyspace import TargetKeys
from pipeline.queue import queueing, workers
from pipeline.queue.targets import Target, of_target
from pipeline.requests.states import UNDER_WAY
from pipeline.requests.states import RequestState as S
from pipeline.requests.store import Request, RequestStore
from pipeline.service import restart
from pipeline.service.rollback import RESTARTED_PHASES, return_to, stop_left
from pipeline.service.snapshots import Snapshot

log = structlog.get_logger(__name__)
_INTAKE = (S.RECEIVED, S.PREFLIGHT, S.PLANNING)
#: An approved request is queued within moments; one older than this was dropped.
_APPROVED_GRACE = 60.0
_JOB_ALIVE = (JobStatus.QUEUED, JobStatus.STARTED, JobStatus.DEFERRED, JobStatus.SCHEDULED)


@dataclass
class Step:
    """One step of ``molt recover``: what it found and did, and whether all is well now."""

    name: str
    lines: list[str] = field(default_factory=list)
    ok: bool = True

    def say(self, line: str) -> None:
        self.lines.append(line)

    def fail(self, line: str) -> None:
        self.lines.append(line)
        self.ok = False

    def check(self, name: str, ok: bool, seconds: float, detail: str = "") -> None:
        """A step of the way back (pipeline/service/rollback.py ``Report``)."""
        if ok:
            self.say(detail)
        else:
            self.fail(f"{name} failed: {detail}")


def recover(settings: Settings, conn: redis.Redis, actor: str) -> list[Step]:
    """The release and requests steps of ``molt recover`` (the config step comes first,
    before the settings can load: ``restore_config``)."""
    audit.append(conn, actor=actor, action="recover")
    store = RequestStore(conn)
    lock = Target(settings, conn).lock
    requests = Step("requests")
    holder = lock.holder()
    if holder is not None and holder.gone():
        lock.release_gone(holder)
        requests.say(
            f"released the update lock of {holder.codename or holder.request_id}: "
            f"its holder {holder.holder} is gone"
        )
        holder = None
    live = holder.request_id if holder else ""
    abandoned = [
        r
        for r in store.active()
        if r.state in UNDER_WAY and r.id != live and of_target(settings, r)
    ]
    release, outcome = _return_to_snapshot(settings, conn, abandoned)
    _settle_requests(settings, conn, requests, live, outcome)
    return [release, requests]


def _where(git: Git) -> str:
    head, branch = git.head(), git.branch()
    return f"{head[:7]} on {branch}" if branch else f"{head[:7]} (detached)"


def _return_to_snapshot(
    settings: Settings, conn: redis.Redis, abandoned: list[Request]
) -> tuple[Step, str]:
    """The last known good release: the snapshot the newest half-done update took before it
    touched the live checkout. Returns the step, and what happened to the checkout (for the
    messages of the requests ended)."""
    step = Step("release")
    for request in abandoned:  # it runs in the checkout about to be restored
        killed = stop_left(settings, conn, request.id)
        if killed:
            step.say(f"update {request.codename or request.id} stopped half-done: {killed}")
    live = Git(settings.target_dir)
    with_snapshot = [r for r in abandoned if r.snapshot]
    try:
        where = _where(live)
        dirty = live.dirty()
    except GitError as exc:
        step.fail(f"cannot read the live checkout {settings.target_dir}: {exc}")
        return step, "the live checkout could not be read"
    if not with_snapshot:
        if dirty:
            shown = ", ".join(line[3:] for line in dirty[:5])
            step.fail(
                f"no update was left half-done, but the live checkout at {where} has "
                f"uncommitted changes ({shown}): left alone; commit or discard them "
                "(pre-flight blocks every update until then)"
            )
        else:
            step.say(f"no update was left half-done; the live checkout stays at {where}")
        if settings.manages_itself:
            step.say(_last_good_release(settings, conn, live.head()))
        return step, "the live checkout was left as it was"
    newest = max(with_snapshot, key=lambda r: r.updated_at)
    snapshot = Snapshot.from_dict(newest.snapshot or {})
    name = newest.codename or newest.id
    lock = Target(settings, conn).lock
    taken = lock.try_lock(newest.id, newest.codename)
    if not taken.ours:
        step.fail(f"update {taken.codename or taken.request_id} started meanwhile: left alone")
        return step, "the live checkout was left as it was"
    try:
        at_snapshot = live.head() == snapshot.commit and live.branch() == snapshot.branch
        if at_snapshot and not dirty:
            returned = f"the live checkout is at {where}, the snapshot of update {name}, already"
        else:
            returned = (
                f"returned the live checkout from {where} to {_at(snapshot)}: the snapshot "
                f"update {name} took before it stopped half-done in {newest.phase or 'its run'}"
            )
        restarted = newest.state in (S.RESTARTING, S.WATCHING) or newest.phase in RESTARTED_PHASES
        return_to(
            settings,
            conn,
            snapshot,
            f"molt recover: update {name} stopped half-done",
            step,
            request_id=newest.id,
            bring_back=(lambda _: _restart_after(settings, conn, newest, snapshot))
            if restarted
            else None,
            live=live,
            returned=returned,
        )
    except UpdateFailed:  # the step says which part failed
        return step, f"returning the live checkout to {snapshot.short} failed"
    finally:
        lock.release(newest.id)
    return step, f"the live checkout was returned to its snapshot {snapshot.short}"


def _at(snapshot: Snapshot) -> str:
    """Where the live checkout is once it is back on ``snapshot`` (as ``_where`` says it)."""
    on = f"on {snapshot.branch}" if snapshot.branch else "(detached)"
    return f"{snapshot.short} {on}"


def _last_good_release(settings: Settings, conn: redis.Redis, head: str) -> str:
    """For Molt itself: the newest signed release that started healthy (the boot guard
    records them), and whether the checkout is on it. Going back to it is the boot guard's
    job: it signs the return as a rollback release when this release fails to start."""
    good = Target(settings, conn).boots.last_good(exclude="")
    if good is None:
        return "no signed release of Molt has reported healthy yet"
    if good.target_commit == head:
        return f"that is {good.describe()}, the last release of Molt that started healthy"
    return (
        f"the last release of Molt that started healthy is {good.describe()} at {good.short}; "
        "if this one does not start, the boot guard returns there (MOLT_CRASH_LOOP)"
    )


def _restart_after(settings: Settings, conn: redis.Redis, request: Request, to: Snapshot) -> str:
    """The service had been restarted onto the update: restart it on the snapshot."""
    if settings.restart_command:
        log_path = Path(request.update_dir or settings.updates_dir) / "restart.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        summary = restart.restart(settings, conn, to.commit, log_path)
        return f"restarted the service on {to.short}: {summary}"
    if settings.manages_itself:
        return f"Molt had restarted onto the update: start it again (`molt run`) on {to.short}"
    return (
        "the service had been restarted onto the update and no MOLT_RESTART_COMMAND is set: "
        f"restart it yourself on {to.short}"
    )


def _settle_requests(
    settings: Settings, conn: redis.Redis, step: Step, live: str, outcome: str
) -> None:
    """Make the requests in Redis consistent: the active set holds only unfinished
    requests, the waiting line only queued ones, and nothing waits for a job or a
    process that is gone."""
    store = RequestStore(conn)
    dropped = []
    for request_id in sorted(str(i) for i in conn.smembers(keyspace.ACTIVE_REQUESTS)):
        try:
            found: Request | None = store.get(request_id)
        except UnknownRequest:
            found = None
        if found is None or found.terminal:
            conn.srem(keyspace.ACTIVE_REQUESTS, request_id)
            dropped.append(f"{request_id} ({found.state.value if found else 'unknown'})")
    if dropped:
        step.say(f"removed finished requests from the active set: {', '.join(dropped)}")
    line = Target(settings, conn).line
    for request_id in line.ids():
        found = store.find(request_id)
        if found is None or found.state is not S.QUEUED:
            line.leave(request_id)
            shown = found.state.value if found else "unknown"
            step.say(f"removed {request_id} ({shown}) from the waiting line")
    served = _serve_the_line(settings, conn, step)
    bot = restart.bot_info(conn)
    bot_alive = bot is not None and bot.alive
    ended = 0
    for request in store.active():
        if not of_target(settings, request):  # in a fleet, another target's host recovers it
            continue
        why = _stuck(settings, conn, request, live, bot_alive, outcome, served)
        if not why:
            continue
        try:
            store.transition(
                request.id,
                S.FAILED,
                actor="molt:recover",
                message=f"ended by molt recover: {why}",
                phase=request.phase or request.state.value,
            )
        except IllegalTransition as exc:
            step.fail(f"could not end {request.id}: {exc}")
            continue
        line.leave(request.id)
        ended += 1
        step.say(f"ended {request.codename or request.id} ({request.state.value}): {why}")
    if not live and control.stop_requested(settings, conn):
        conn.delete(TargetKeys(settings.target_id).stop)
        step.say("dropped an emergency stop no update is left to obey")
    left = store.active()
    waiting_people = sum(1 for r in left if r.state in control.PENDING)
    summary = f"{len(left)} open request(s) left"
    if waiting_people:
        summary += f", {waiting_people} waiting for a person"
    if not ended and not dropped and step.ok:
        summary = f"consistent: {summary}"
    step.say(summary)


def _stuck(
    settings: Settings,
    conn: redis.Redis,
    request: Request,
    live: str,
    bot_alive: bool,
    outcome: str,
    served: bool,
) -> str:
    """Why ``request`` can no longer move on by itself; "" if it can (or waits for a person).
    ``served``: a worker job is there to take the waiting line's next turn."""
    age = time.time() - request.updated_at
    if request.state in UNDER_WAY:
        if request.id == live:
            return ""
        phase = request.phase or request.state.value
        return f"its update stopped during {phase} and no worker runs it any more; {outcome}"
    if request.state is S.QUEUED:
        if request.id == live:  # its turn was just taken
            return ""
        if Target(settings, conn).line.position(request.id) is None:
            return "it was queued but had left the waiting line"
        if not served:
            return "it was queued but no worker job was waiting to run it"
        return ""
    if request.state is S.APPROVED:
        if bot_alive and age < _APPROVED_GRACE:
            return ""
        return "it was approved but never queued"
    if request.state in _INTAKE:
        window = 2 * settings.phase_timeout + settings.llm_timeout
        if bot_alive and age < window:
            return ""
        return "Molt stopped before its plan was ready"
    return ""


def _line_has_job(settings: Settings) -> bool:
    """A job is queued, being taken or started to take the line's next turn (any job runs
    the head)."""
    queue = queueing.rq_queue(settings)
    try:
        ids = [
            *queue.get_job_ids(),
            *queue.intermediate_queue.get_job_ids(),
            *queue.started_job_registry.get_job_ids(),
        ]
        jobs = Job.fetch_many(ids, connection=queue.connection)
        return any(job is not None and job.get_status() in _JOB_ALIVE for job in jobs)
    finally:
        queue.connection.close()


def _serve_the_line(settings: Settings, conn: redis.Redis, step: Step) -> bool:
    """Whether a worker job is there for the waiting line's next turn; a line with none
    gets one when a worker runs to take it (with no worker, its requests are ended: nothing
    would ever run them)."""
    if _line_has_job(settings):
        return True
    head = Target(settings, conn).line.head()
    request = RequestStore(conn).find(head) if head else None
    if request is None or request.state is not S.QUEUED or not workers.count_workers(settings):
        return False
    job = queueing.add_job(settings, request, again=True)
    step.say(f"the waiting line had no job to run it: added {job}")
    return True
