"""Finishing what a dead worker left half-done, and ``molt recover``.

A job heartbeats its update lock. When a request is running but nobody holds
its lock any more (the worker was killed, or lost Redis for longer than the
lock's TTL), the request is rolled back to its snapshot and failed with a
message, exactly as if the job had failed by itself (``recover_abandoned``,
run by the bot's housekeeping and before each update starts). A test command the dead
worker left running is killed first (pipeline/service/rollback.py).

The waiting line runs as long as a job is on the RQ queue to take its next turn
(pipeline/queue/queueing.py). A job can be lost with its worker (killed while it waited, or
timed out); ``keep_line_moving``, run by the bot's housekeeping, gives a line that waits
with the lock free and no job a job again.

In a fleet a request waits for a worker of its target (its pre-flight and planning, its
turn in the line). When no worker has been there to take it for MOLT_WORKER_WAIT (stopped,
killed with -9, never started), ``end_unserved``, run by the bot's housekeeping, ends it
saying so, and takes its jobs off the queue: a worker that comes back later runs none.

``molt recover`` is for when Molt itself is down or broken: it returns the live
checkout to the snapshot of an update that was left half-done, makes the
requests in Redis consistent (ending stuck ones with a message, releasing a lock
whose holder is gone), and restores molt.toml from the backup ``molt run``
keeps. Each step reports what it did; ``ok`` is false where it could not fix
something.

Files:
  MOLT_DATA_DIR/config-backup/<config name>.<UTC time>   the last KEEP_BACKUPS versions
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
import tomllib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import redis
import structlog
from rq.job import Job, JobStatus

from pipeline import audit, codenames, metrics
from pipeline.config import Settings, config_file, load_settings
from pipeline.exceptions import (
    ConfigError,
    GitError,
    IllegalTransition,
    UnknownRequest,
    UpdateFailed,
)
from pipeline.git import Git
from pipeline.intake import control
from pipeline.keyspace import TargetKeys
from pipeline.processes import RunningCommand, alive
from pipeline.queue import queueing, workers
from pipeline.queue.locking import Holder
from pipeline.queue.targets import Target, of_target
from pipeline.releases import signing as releases
from pipeline.requests.states import UNDER_WAY
from pipeline.requests.states import RequestState as S
from pipeline.requests.store import ACTIVE, Request, RequestStore
from pipeline.service import restart, snapshots
from pipeline.service.rollback import RESTARTED_PHASES, Trail, undo
from pipeline.service.snapshots import Snapshot

log = structlog.get_logger(__name__)
KEEP_BACKUPS = 10
BACKUP_DIR = "config-backup"
_STAMP = re.compile(r"\.\d{8}T\d{12}Z$")
_INTAKE = (S.RECEIVED, S.PREFLIGHT, S.PLANNING)
#: An approved request is queued within moments; one older than this was dropped.
_APPROVED_GRACE = 60.0
_JOB_ALIVE = (JobStatus.QUEUED, JobStatus.STARTED, JobStatus.DEFERRED, JobStatus.SCHEDULED)
#: What a fleet's request waits for a worker of its target in, and how it ends when none
#: comes (``end_unserved``): pre-flight blocked, planning and the waiting line failed.
_FOR_A_WORKER = (S.PREFLIGHT, S.PLANNING, S.QUEUED)
_UNSERVED_ENDS = {
    S.PREFLIGHT: (S.BLOCKED, None),
    S.PLANNING: (S.FAILED, "planning"),
    S.QUEUED: (S.FAILED, "queued"),
}
#: How long a line waits with the lock free and no job before it gets one (a job a worker
#: just took needs a moment to take its turn).
_STALL_GRACE = 3.0


def recover_abandoned(settings: Settings, conn: redis.Redis) -> list[str]:
    """Roll back every running request of the target whose job is gone; returns their ids.
    In a fleet only a worker of the request's own target does this: the rollback runs on
    the host that holds its checkout."""
    store = RequestStore(conn)
    lock = Target(settings, conn).lock
    recovered = []
    for request in store.active():
        if request.state not in UNDER_WAY or not of_target(settings, request):
            continue
        if lock.holder() is not None:
            continue
        if not lock.try_lock(request.id, request.codename).ours:
            continue
        try:
            current = store.get(request.id)
            if current.state not in UNDER_WAY:
                continue
            log.warning("recovering abandoned update", request_id=request.id, phase=current.phase)
            restarted = current.state is not S.RUNNING or current.phase in RESTARTED_PHASES
            trail = Trail.left_by(settings, current, since=current.updated_at, restarted=restarted)
            phase = current.phase or "update"
            failure = UpdateFailed(
                phase,
                f"the worker running this update stopped during {phase} "
                "(killed, crashed or cut off from Redis)",
            )
            undo(settings, conn, request.id, failure, trail)
            recovered.append(request.id)
        finally:
            lock.release(request.id)
    return recovered


def keep_line_moving(settings: Settings, conn: redis.Redis) -> str:
    """Give a waiting line that nothing runs a job again: its head waits, the lock is free,
    updates are not paused, and no job is on the RQ queue, twice ``_STALL_GRACE`` apart.
    Returns what it did, "" if nothing."""
    target = Target(settings, conn)
    head = target.line.head()
    stalled = (
        head is not None
        and target.lock.holder() is None
        and not control.is_paused(settings, conn)
        and queueing.jobs_queued(settings) == 0
    )
    seen = json.loads(conn.get(target.keys.stalled) or "{}")
    if not stalled or seen.get("head") != head:
        if stalled:
            conn.set(target.keys.stalled, json.dumps({"head": head, "since": time.time()}))
        else:
            conn.delete(target.keys.stalled)
        return ""
    if time.time() - float(seen["since"]) < _STALL_GRACE:
        return ""
    conn.delete(target.keys.stalled)
    assert head is not None
    done = _give_job(settings, conn, head)
    log.warning("the waiting line had stalled", detail=done)
    return done


def _give_job(settings: Settings, conn: redis.Redis, head: str) -> str:
    """What the head of a line nothing runs needs: a job, the rest of its queueing, or to
    leave the line it no longer waits in."""
    request = RequestStore(conn).find(head)
    name = request.codename or request.id if request else head
    if request is None or request.state not in (S.QUEUED, S.APPROVED):
        Target(settings, conn).line.leave(head)
        return f"removed {name} from the waiting line: it no longer waited"
    if request.state is S.APPROVED:  # queueing it stopped half-way
        try:
            queueing.enqueue(settings, conn, head)
        except IllegalTransition:
            return ""
        return f"finished queueing {name}: it had joined the waiting line and stopped there"
    job = queueing.add_job(settings, request, again=True)
    return f"the waiting line had no job to run it: added {job} for {name}, at its head"


def end_unserved(settings: Settings, conn: redis.Redis) -> list[str]:
    """End the requests of a fleet's target that wait for a worker, once none has been
    there to take their job for MOLT_WORKER_WAIT: pre-flight blocked, planning and the
    waiting line failed (with Retry), each saying when a worker was last seen. Returns
    the ids of the requests it ended."""
    if not settings.fleet or workers.live(settings, conn):
        return []
    wait = settings.worker_wait
    ago = workers.last_seen(settings, conn)
    if ago is not None and ago < wait:
        return []
    store = RequestStore(conn)
    now = time.time()
    ended = [
        request.id
        for request in store.active()
        if request.state in _FOR_A_WORKER
        and of_target(settings, request)
        and now - request.updated_at >= wait
        and _end_unserved(settings, conn, request, ago)
    ]
    line = Target(settings, conn).line
    if ended and not len(line):  # the turns nobody took: a worker that comes runs none
        for name in queueing.untaken(settings, queueing.UPDATE_JOB):
            queueing.withdraw(settings, name)
    return ended


def _end_unserved(
    settings: Settings, conn: redis.Redis, request: Request, ago: float | None
) -> bool:
    """End one request nobody served; False if a worker took its job after all."""
    name = settings.target_name
    seen = "none was ever seen" if ago is None else f"last seen {workers.seen_at(ago)}"
    took = f"no worker for {name} took it in {settings.worker_wait:g} s ({seen})"
    if request.state is not S.QUEUED:
        prefix = f"{queueing.INTAKE_JOB}{request.id}-"
        if queueing.running(settings, prefix):
            return False  # a worker told to stop finishes it first
        jobs = queueing.untaken(settings, prefix)
        withdrawn = [queueing.withdraw(settings, job) for job in jobs]
        if jobs and not any(withdrawn):
            return False  # taken this instant: a worker is back
        if not jobs:
            took = f"no worker for {name} is there to finish it ({seen})"
    why = f"{took}; {workers.how_to_serve(settings)}"
    to, phase = _UNSERVED_ENDS[request.state]
    try:
        RequestStore(conn).transition(
            request.id,
            to,
            actor="molt",
            message=why,
            phase=phase,
            data={"check": "workers"} if to is S.BLOCKED else None,
            allowed_from=frozenset({request.state}),
        )
    except IllegalTransition:  # it moved on meanwhile
        return False
    Target(settings, conn).line.leave(request.id)
    if to is S.BLOCKED:
        metrics.refused("workers")
    log.warning("no worker served the request", request_id=request.id, target=name)
    return True


# -- the config backup ------------------------------------------------------------------------


def backups(data_dir: Path, name: str) -> list[Path]:
    """Saved copies of the config file called ``name``, oldest first."""
    folder = data_dir / BACKUP_DIR
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob(f"{name}.*") if _STAMP.search(p.name))


def backup_config(settings: Settings, path: Path | None = None) -> Path | None:
    """Keep a copy of the config file that just loaded, if it changed since the last copy;
    returns the new copy, or None. ``molt run`` calls this at each start."""
    path = path or config_file()
    if not path.is_file():
        return None
    content = path.read_bytes()
    saved = backups(settings.data_dir, path.name)
    if saved and saved[-1].read_bytes() == content:
        return None
    folder = settings.data_dir / BACKUP_DIR
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    copy = folder / f"{path.name}.{stamp}"
    partial = folder / f".{copy.name}.partial"
    partial.write_bytes(content)
    partial.replace(copy)
    for old in backups(settings.data_dir, path.name)[:-KEEP_BACKUPS]:
        old.unlink(missing_ok=True)
    return copy


# -- molt recover -----------------------------------------------------------------------------


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


def config_problem(path: Path) -> str:
    """Why the settings do not load with ``path`` as the config file; "" if they do."""
    try:
        with path.open("rb") as handle:
            tomllib.load(handle)
    except OSError as exc:
        return f"cannot be read: {exc.strerror or exc}"
    except tomllib.TOMLDecodeError as exc:
        return f"is not valid TOML: {exc}"
    before = os.environ.get("MOLT_CONFIG")
    os.environ["MOLT_CONFIG"] = str(path)
    try:
        load_settings()
    except ConfigError as exc:
        return " ".join(str(exc).split())
    finally:
        if before is None:
            os.environ.pop("MOLT_CONFIG", None)
        else:
            os.environ["MOLT_CONFIG"] = before
    return ""


def data_dir_hint(path: Path) -> Path:
    """MOLT_DATA_DIR before the settings can load: the environment, the config file if it
    still parses, else the default."""
    value = os.environ.get("MOLT_DATA_DIR")
    if not value:
        try:
            with path.open("rb") as handle:
                raw = tomllib.load(handle)
            value = str(raw.get("MOLT_DATA_DIR") or raw.get("molt_data_dir") or "")
        except (OSError, tomllib.TOMLDecodeError):
            value = ""
    return Path(value or ".molt").expanduser().resolve()


def restore_config(path: Path, data_dir: Path) -> Step:
    """Put back the newest backup of the config file if it is missing or does not load
    (and the backup does); a broken file is kept beside it, renamed."""
    step = Step("config")
    saved = backups(data_dir, path.name)
    newest = saved[-1] if saved else None
    if not path.exists():
        if newest is None:
            step.say(f"no {path} and no backup of one: the settings come from the environment")
            return step
        problem = config_problem(newest)
        if problem:
            step.fail(f"{path} is missing, and its newest backup {newest} does not load: {problem}")
            return step
        shutil.copy2(newest, path)
        step.say(f"{path} was missing: restored it from {newest}")
        return step
    problem = config_problem(path)
    if not problem:
        step.say(f"{path} loads; nothing to restore")
        return step
    if newest is None:
        step.fail(f"{path} does not load ({problem}), and there is no backup in {data_dir}")
        return step
    if config_problem(newest):
        step.fail(
            f"{path} does not load ({problem}), and neither does its newest backup {newest}: "
            "left as it is"
        )
        return step
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    kept = path.with_name(f"{path.name}.broken-{stamp}")
    path.replace(kept)
    shutil.copy2(newest, path)
    step.say(
        f"{path} did not load ({problem}): restored it from {newest}; the broken file is {kept}"
    )
    return step


def recover(settings: Settings, conn: redis.Redis, actor: str) -> list[Step]:
    """The release and requests steps of ``molt recover`` (the config step comes first,
    before the settings can load: ``restore_config``)."""
    audit.append(conn, actor=actor, action="recover")
    store = RequestStore(conn)
    lock = Target(settings, conn).lock
    requests = Step("requests")
    holder = lock.holder()
    if holder is not None and _gone(holder):
        lock.release(holder.request_id)
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


def _gone(holder: Holder) -> bool:
    """The lock's holder is a process on this machine that no longer runs."""
    host, _, pid = holder.holder.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    return not alive(int(pid))


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
    _stop_left_commands(settings, conn, abandoned, step)
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
            step.say(f"the live checkout is at {where}, the snapshot of update {name}, already")
        else:
            # A return past a signed release is a release of its own, or the next start of
            # Molt would be refused as a downgrade.
            releases.record_return(
                settings,
                conn,
                commit=snapshot.commit,
                from_commit=live.head(),
                codename=codenames.new_codename(conn),
                reason=f"molt recover: update {name} stopped half-done",
                request_id=newest.id,
            )
            snapshots.restore(live, snapshot)
            step.say(
                f"returned the live checkout from {where} to {_where(live)}: the snapshot "
                f"update {name} took before it stopped half-done in {newest.phase or 'its run'}"
            )
        if newest.state in (S.RESTARTING, S.WATCHING) or newest.phase in RESTARTED_PHASES:
            step.say(_restart_after(settings, conn, newest, snapshot))
    except UpdateFailed as exc:
        step.fail(f"returning to snapshot {snapshot.short} of update {name}: {exc.reason}")
        return step, f"returning the live checkout to {snapshot.short} failed"
    finally:
        lock.release(newest.id)
    return step, f"the live checkout was returned to its snapshot {snapshot.short}"


def _stop_left_commands(
    settings: Settings, conn: redis.Redis, abandoned: list[Request], step: Step
) -> None:
    """A test command a half-done update left running goes first: it runs in the checkout
    about to be restored."""
    command = RunningCommand(conn, Target(settings, conn).keys.command)
    for request in abandoned:
        killed = command.stop_left(request.id)
        if killed:
            step.say(f"update {request.codename or request.id} stopped half-done: {killed}")


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
    for request_id in sorted(str(i) for i in conn.smembers(ACTIVE)):
        try:
            found: Request | None = store.get(request_id)
        except UnknownRequest:
            found = None
        if found is None or found.terminal:
            conn.srem(ACTIVE, request_id)
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
