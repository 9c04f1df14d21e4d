"""``molt run``: the front ends, the HTTP server, the notifier, and the
housekeeping that keeps every request moving (expiring plans, recovering
updates whose worker died, keeping workers running, ending a fleet's requests that no
worker came to take), in one process.

The bot registers itself in ``molt:bot`` (pipeline/service/restart.py) so a worker can
ask it to restart onto new code and check that the new process came back.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import suppress
from typing import Any

import redis
import structlog

from bot.base import Adapter, Wiring
from bot.desk import Desk, background_thread
from bot.groups import Groups
from bot.inbox import InboxReader
from bot.notifier import Notifier
from bot.platforms import PLATFORMS
from bot.server import HttpProcess, HttpThread
from bot.spawner import Child, spawner
from bot.terminal import Terminal
from pipeline import audit, keyspace, metrics, processes, store
from pipeline.config import SANDBOX_OFF, Settings
from pipeline.exceptions import IllegalTransition
from pipeline.incidents import logwatch, oncall
from pipeline.intake import approval, preflight
from pipeline.queue import queueing
from pipeline.releases.manifests import running_version
from pipeline.requests import authorisation
from pipeline.requests.states import RequestState as S
from pipeline.requests.store import RequestStore
from pipeline.sandbox.confinement import Confinement
from pipeline.service import restart
from pipeline.update import backups, bootguard, recovery, rollouts

log = structlog.get_logger(__name__)
HOUSEKEEPING_SECONDS = 1.0
#: How long a stop or a restart waits for a round of housekeeping under way to end (the
#: workers' stop runs meanwhile): within the 10 s supervisors give before SIGKILL. What it
#: cuts off, the next start takes up again.
HOUSEKEEPING_FINISH = 5.0
#: How long ``run`` leaves the process to ``restart_self`` before shutting down anyway.
RESTART_WAIT = 60.0
#: How long a stop leaves workers to go once RQ killed the work horse, after the
#: MOLT_WORKER_GRACE they had to finish their job.
WORKER_KILL_WAIT = 3.0


class Bot:
    def __init__(
        self, settings: Settings, *, console: bool = False, http_thread: bool = False
    ) -> None:
        self.settings = settings
        self.boot_id = uuid.uuid4().hex[:12]
        self.conn = store.connect(settings)
        self.store = RequestStore(self.conn)
        self.adapters: dict[str, Adapter] = {}
        self.desk = Desk(settings, self.conn, self.adapters)
        # Group entries of the user lists (slack:@oncall) are asked of their platforms.
        authorisation.ask_groups_with(Groups(settings, self.conn))
        wiring = Wiring(settings, self.store, self.desk, terminal=console)
        for platform in PLATFORMS:
            adapter = platform.build(wiring)
            if adapter is not None:
                self.adapters[platform.name] = adapter
        #: The front end in the foreground, when the terminal is a chat.
        self.console = next((a for a in self.adapters.values() if isinstance(a, Terminal)), None)
        self.inbox = InboxReader(self.conn, self.desk)
        self.oncall = oncall.SignalReader(settings, self.conn)
        self.watchers = logwatch.Watchers(settings, self.conn)
        self.notifier = Notifier(settings, self.conn, self.adapters)
        #: Moves rollouts on as their steps end (pipeline/update/rollouts.py).
        self.rollouts = rollouts.Driver(settings, self.conn)
        self.http: HttpProcess | HttpThread
        if http_thread:
            self.http = HttpThread(settings, self.conn, self.boot_id)
        else:
            # With the console on the terminal, the HTTP process logs to a file instead.
            http_log = settings.data_dir / "http.log" if console else None
            self.http = HttpProcess(settings, self.conn, self.boot_id, http_log)
        self.stopping = threading.Event()
        self._housekeeper: threading.Thread | None = None
        self._restart_to: str | None = None
        self._children: list[Child] = []
        # Housekeeping starts workers and shutdown stops them: one at a time, so that no
        # worker is started after shutdown looked for the ones to stop.
        self._workers_lock = threading.Lock()

    # -- life cycle ----------------------------------------------------------

    def _announce_sandbox(self) -> None:
        """Where test commands will run, in one line per target; MOLT_SANDBOX=off is audited
        (an operator chose to run code under test with Molt's powers)."""
        for name in self.settings.target_names():
            settings = self.settings.for_target(name)
            confinement = Confinement.of(settings)
            if confinement.sandboxed:
                log.info(confinement.describe(), target=name)
            else:
                log.warning(confinement.describe(), target=name)
        if self.settings.sandbox == SANDBOX_OFF:
            audit.append(
                self.conn,
                actor="molt",
                action="sandbox off",
                detail={"reason": "MOLT_SANDBOX=off: test commands run without a sandbox"},
            )

    def start(self) -> int:
        """Start every part of the bot but the console's loop; returns the HTTP port."""
        backups.backup_config(self.settings)
        version = running_version()
        for adapter in self.adapters.values():
            adapter.start()
        port = self.http.start()
        self.resume_interrupted()
        self.inbox.start()
        self.notifier.start()
        if self.settings.rollout_names():
            self.rollouts.start()
        self.oncall.start()
        self.watchers.start()
        # Now rather than at the first housekeeping: a worker takes a second or more to
        # import, and the first approved update would wait for it.
        self._keep_workers()
        self._register(port)
        self._housekeeper = threading.Thread(
            target=self._housekeeping, name="molt-housekeeping", daemon=True
        )
        self._housekeeper.start()
        for loop in (self._beat, self._control, self._warm):
            threading.Thread(target=loop, name=f"molt-{loop.__name__[1:]}", daemon=True).start()
        log.info("molt is up", version=version[:12], port=port, boot_id=self.boot_id)
        self._announce_sandbox()
        return port

    def run(self) -> int:
        terminated = threading.Event()
        reason = "end of input"

        def terminate() -> None:
            nonlocal reason
            reason = "SIGTERM"
            terminated.set()
            self.stopping.set()

        # Handled from before the start, which can take seconds on a busy machine: a SIGTERM
        # meanwhile ends in the same clean stop, not in an exit that stops nothing.
        _on_sigterm(terminate)
        port = self.start()
        if self.console is not None:
            target = (
                ", ".join(self.settings.target_names())
                if self.settings.fleet
                else self.settings.target_dir
            )
            notice = _notice(
                f"Molt {running_version()[:7]} is up on port {port}, managing {target}"
            )
            self.console.notice(notice)
        try:
            if self.console is not None:
                self.console.serve(self.desk, self.stopping)
            else:
                while not self.stopping.wait(0.5):
                    pass
        except KeyboardInterrupt:
            reason = "interrupted"
            terminated.set()
        # restart_self is finishing what is in flight and re-executes this process onto the
        # new code: shutting down here would stop the workers and the embedded Redis under
        # it. Should the exec not come, shut down after all.
        restarting = self.stopping.is_set() and not terminated.is_set()
        if restarting and not terminated.wait(RESTART_WAIT):
            reason = "the restart did not happen"
        log.info("shutting down", reason=reason)
        self.shutdown()
        # Stopped: a SIGTERM repeated now would find the default action restored as Python
        # exits, and turn this clean stop into a kill.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        return 0

    def shutdown(self) -> None:
        """Stop every part; the embedded Redis is left by ``molt run`` once it has recorded
        how this start ended (bot/cli.py)."""
        began = time.monotonic()
        self.stop()
        log.info("stopped", seconds=round(time.monotonic() - began, 2))

    def stop(self) -> None:
        """Stop every part of the bot and its workers; the embedded Redis stays up. The
        workers are told at once and go meanwhile: a worker's exit takes as long as the
        other parts' stops together, and waiting for those first added the two up."""
        self.stopping.set()
        self.conn.hdel(keyspace.BOT, "beat")
        workers = threading.Thread(
            target=self._stop_workers, args=(self.settings.worker_grace,), name="molt-stop"
        )
        workers.start()
        _together(self.http.stop, self.inbox.stop, self.oncall.stop, self.watchers.stop)
        self.notifier.stop()
        self.rollouts.stop()
        self.desk.close()
        _together(*(adapter.stop for adapter in self.adapters.values()))
        authorisation.ask_groups_with(None)
        self._finish_housekeeping()
        workers.join()

    def _register(self, port: int) -> None:
        self.conn.hset(
            keyspace.BOT,
            mapping={
                "pid": os.getpid(),
                "boot_id": self.boot_id,
                "version": running_version(),
                "port": port,
                "argv": json.dumps(sys.orig_argv),
                "cwd": os.getcwd(),
                "beat": f"{time.time():.3f}",
                # What `molt ui-link` reads from any shell on this data directory.
                "ui": "1" if self.settings.ui else "0",
                "host": self.settings.http_host,
            },
        )
        # Registered and beating: /healthz answers ok from here on, so this start is good.
        bootguard.healthy(self.settings, self.conn)

    def _beat(self) -> None:
        while not self.stopping.wait(restart.BEAT_SECONDS):
            try:
                if self.conn.hget(keyspace.BOT, "boot_id") == self.boot_id:
                    self.conn.hset(keyspace.BOT, "beat", f"{time.time():.3f}")
            except redis.RedisError:
                continue

    # -- restarting itself ---------------------------------------------------

    def _control(self) -> None:
        while not self.stopping.is_set():
            try:
                item = self.conn.blpop([keyspace.BOT_CONTROL], timeout=1)
            except redis.RedisError:
                time.sleep(1)
                continue
            if not item:
                continue
            command = json.loads(item[1])
            if command.get("action") == "restart":
                self.restart_self(str(command.get("expect", "")))

    def restart_self(self, expect: str) -> None:
        """Finish what is in flight, leave the rest in the stream, and exec the new code."""
        log.info("restarting onto new code", expect=expect[:12])
        if self.console is not None:
            self.console.notice(_notice(f"Molt is restarting onto {expect[:7]}…"))
        self.stopping.set()
        _together(self.http.stop, self.inbox.stop, self.oncall.stop, self.watchers.stop)
        self.desk.drain(timeout=10)
        self._finish_housekeeping()
        self.notifier.stop()
        self.rollouts.stop()
        _together(*(adapter.stop for adapter in self.adapters.values()))
        self.conn.hdel(keyspace.BOT, "beat")
        self.conn.close()
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, sys.orig_argv)

    # -- housekeeping --------------------------------------------------------

    def resume_interrupted(self) -> None:
        """Requests a previous bot process left mid-intake end with a message, or move on
        (in a fleet, pre-flight and planning run on the target's worker and go on)."""
        for request in self.store.active():
            try:
                if self.settings.fleet and request.state in (S.PREFLIGHT, S.PLANNING):
                    continue  # a fleet's worker checks and plans it (pipeline/intake/flow.py)
                if request.state in (S.RECEIVED, S.PREFLIGHT, S.PLANNING):
                    self.store.transition(
                        request.id,
                        S.FAILED,
                        actor="molt",
                        message="Molt restarted before this plan was ready: press Retry",
                        phase=request.state.value,
                    )
                elif request.state is S.APPROVED:
                    queueing.enqueue(self.of(request.target), self.conn, request.id)
            except IllegalTransition:
                continue

    def _warm(self) -> None:
        """The pre-flight test run of the live commit, now, at a low priority: the first
        request finds it done or joins it instead of waiting for a whole run."""
        if self.settings.fleet:  # the bot holds no checkout of a fleet's targets
            return
        background_thread()
        try:
            record = preflight.warm(self.settings, self.conn, self.stopping.is_set)
        except Exception:
            log.exception("the pre-flight test run at start-up failed")
            return
        log.info("pre-flight tests at start-up", passed=record.passed, seconds=record.seconds)

    def _housekeeping(self) -> None:
        while not self.stopping.wait(HOUSEKEEPING_SECONDS):
            try:
                self.housekeeping()
            except Exception:
                log.exception("housekeeping")

    def _finish_housekeeping(self) -> None:
        """Let a round of housekeeping under way end before the process goes: it may be
        returning an abandoned update to its snapshot, which an exec or an exit would cut
        off halfway."""
        if self._housekeeper is not None and self._housekeeper is not threading.current_thread():
            self._housekeeper.join(HOUSEKEEPING_FINISH)

    def housekeeping(self) -> None:
        if not self.http.alive and not self.stopping.is_set():
            log.warning("the HTTP server stopped; starting it again")
            self.conn.hset(keyspace.BOT, "port", self.http.start())
        for request in self.store.active():
            if request.state is S.PLAN_READY:
                approval.expire_if_due(self.of(request.target), self.store, request)
            elif request.state is S.NEEDS_INFO:
                approval.expire_unanswered(self.of(request.target), self.store, request)
        # in a fleet, the target's own workers do (pipeline/queue/workers.py); a bot on its
        # way out leaves it to the next start, rather than begin a rollback it cannot see through
        if not self.settings.fleet and not self.stopping.is_set():
            recovery.recover_abandoned(self.settings, self.conn)
        for name in self.settings.target_names():
            recovery.keep_line_moving(self.of(name), self.conn)
            recovery.end_unserved(self.of(name), self.conn)  # in a fleet: no worker came
        metrics.tidy()  # metrics files of processes that are gone, into the archive
        self._keep_workers()

    def of(self, target: str) -> Settings:
        """The settings of a request's target (the one target's, without a fleet; a
        rollout's, the fleet's own)."""
        if target in self.settings.rollouts:
            return self.settings
        return self.settings.for_target(target)

    def _keep_workers(self) -> None:
        """Keep MOLT_WORKERS embedded workers alive, including after an exec."""
        with self._workers_lock:
            if not self.stopping.is_set():  # shutting down: no worker that nobody would stop
                self._top_up_workers()

    def _top_up_workers(self) -> None:
        # A fleet's workers run on their targets' hosts (``molt worker --target``), not here.
        wanted = 0 if self.settings.fleet else self.settings.workers
        alive = []
        for raw in self.conn.lrange(keyspace.BOT_WORKERS, 0, -1):
            pid = int(raw)
            if _running(pid):
                alive.append(pid)
        self._children = [c for c in self._children if c.poll() is None]
        missing = wanted - len(alive)
        for _ in range(max(0, missing)):
            alive.append(self._spawn_worker())
        self.conn.delete(keyspace.BOT_WORKERS)
        if alive:
            self.conn.rpush(keyspace.BOT_WORKERS, *alive)

    def _spawn_worker(self) -> int:
        logs = self.settings.data_dir / "workers.log"
        child = spawner.popen(["worker"], log_to=logs, new_session=True)
        self._children.append(child)
        return child.pid

    def _stop_workers(self, grace: float) -> None:
        """Warm shutdown (finish the job); past the grace period a second SIGTERM makes RQ
        kill the work horse, and recovery rolls its update back at the next start."""
        with self._workers_lock:
            self._stop_listed_workers(grace)

    def _stop_listed_workers(self, grace: float) -> None:
        listed = {int(p) for p in self.conn.lrange(keyspace.BOT_WORKERS, 0, -1)}
        pids = sorted(listed | {c.pid for c in self._children if c.poll() is None})
        for attempt in range(2):
            for pid in pids:
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + (grace if attempt == 0 else WORKER_KILL_WAIT)
            while any(_running(p) for p in pids) and time.monotonic() < deadline:
                time.sleep(0.05)
        for pid in pids:
            if _running(pid):
                with suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
        self.conn.delete(keyspace.BOT_WORKERS)


def _together(*stops: Callable[[], None]) -> None:
    """Stop parts at once: each waits up to its read's timeout (half a second for a
    stream) to notice, and one after the other those waits added up."""
    threads = [threading.Thread(target=stop, name="molt-stop") for stop in stops]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _running(pid: int) -> bool:
    """Alive and not a zombie; reaps our own exited children (also ones from before an exec).
    A worker an earlier process started (before a supervisor started Molt again) is not
    ours to reap: once it exited it is a zombie until init reaps it, and counts as gone."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return False
    except ChildProcessError:
        pass
    return processes.alive(pid)


def _on_sigterm(act: Callable[[], None]) -> None:
    """Run ``act`` on a thread of its own each time SIGTERM comes. A Python signal handler
    runs in the main thread between any two bytecodes, inside an Event's ``set`` there too:
    one that set that Event itself waited for the Event's own lock forever (a supervisor that
    sent SIGTERM twice left Molt hanging). So the handler does nothing: the signal's number
    reaches a pipe (``signal.set_wakeup_fd``), which the thread reads."""
    read, write = os.pipe()
    os.set_blocking(write, False)
    signal.set_wakeup_fd(write)
    signal.signal(signal.SIGTERM, lambda *_: None)

    def listen() -> None:
        while True:
            try:
                got = os.read(read, 64)
            except OSError:
                return
            if int(signal.SIGTERM) in got:
                act()

    threading.Thread(target=listen, name="molt-signals", daemon=True).start()


def _notice(text: str) -> Any:
    from bot.messages import Message

    return Message(template="notice", title=text)
