"""The front desk every adapter talks to.

Adapters ack at once and call ``say`` or ``press``; the work (Redis, git,
pre-flight tests, planning) runs here on a thread pool, never on the
platform's thread. Answers that belong to a request travel as events; answers
to one person (help, status, a refused operator command) go straight back
through the adapter's ``reply``. A click on a request that moved on meanwhile is
refused like any other click, saying where the request is now, not as a failure.
"""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from typing import Any

import redis
import structlog

from bot.base import Adapter, Front
from bot.commands import HELP, OPERATOR_VERBS, Command, parse
from bot.rendering import refusal_line, render
from pipeline import audit
from pipeline.config import Settings
from pipeline.exceptions import ConfigError, GitError, IllegalTransition, UnknownRequest
from pipeline.incidents import book as incidents
from pipeline.incidents import diagnosis
from pipeline.intake import approval, control, freezes
from pipeline.intake import flow as intake
from pipeline.requests import authorisation, steps
from pipeline.requests.decisions import Decision
from pipeline.requests.states import RequestState as S
from pipeline.requests.steps import ROLLOUT
from pipeline.requests.store import Origin, RequestStore
from pipeline.update import rollouts

log = structlog.get_logger(__name__)


def background_thread() -> None:
    """Lower this thread's CPU priority (Linux: per thread), so acks and the console come first."""
    with suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


#: Verbs whose work may run pre-flight (the target's tests) or the planner: they wait on the
#: desk's planning threads, so that ``help``, ``status`` and a click never wait behind them.
PLANNING_VERBS = frozenset({"deploy", "change", "rollback", "answer"})
PLANNING_BUTTONS = frozenset({"retry", "fix"})
#: Verbs that, in a fleet, may go without a target: help, answers, and the views of every
#: target (``status``, ``review``). Any other needs one, named or the channel's.
FLEET_WIDE = frozenset({"help", "invalid", "answer", "status", "review", "freezes"})


def broke(exc: Exception) -> str:
    """What went wrong, in words for the person who asked (the log has the details)."""
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
        return "Molt cannot reach its Redis"
    if isinstance(exc, redis.RedisError):
        return "Redis refused what Molt asked of it"
    if isinstance(exc, GitError):
        return "a git command on the target's checkout failed"
    if isinstance(exc, ConfigError):
        return "Molt's settings for the target have an error"
    if isinstance(exc, UnknownRequest):
        return "the request is gone"
    return "Molt hit an error it did not expect"


class Desk(Front):
    def __init__(
        self,
        settings: Settings,
        conn: redis.Redis,
        adapters: Mapping[str, Adapter],
        threads: int = 4,
    ) -> None:
        self.settings = settings
        self.conn = conn
        self.adapters = adapters
        self.store = RequestStore(conn)
        self.targets = settings.target_names() if settings.fleet else []
        self.rollouts = settings.rollout_names()
        self._quick = ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="molt-desk", initializer=background_thread
        )
        self._planning = ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="molt-plan", initializer=background_thread
        )
        self._inflight: set[Future[Any]] = set()

    # -- called by adapters (return at once) ------------------------------

    def say(self, origin: Origin, text: str) -> Future[Any]:
        command = parse(text, [*self.targets, *self.rollouts])
        pool = self._planning if command.verb in PLANNING_VERBS else self._quick
        what = "your request" if command.verb in ("change", "deploy") else f"`{command.verb}`"
        return self._submit(pool, what, self._say, origin, command)

    def press(self, origin: Origin, action: str, request_id: str) -> Future[Any]:
        pool = self._planning if action in PLANNING_BUTTONS else self._quick
        what = f"your {action.capitalize()} click on {request_id}"
        return self._submit(pool, what, self._press, origin, action, request_id)

    def revise(self, origin: Origin, request_id: str, note: str) -> Future[Any]:
        what = f"your changes to {request_id}"
        return self._submit(self._planning, what, self._revise, origin, request_id, note)

    def answer(self, origin: Origin, request_id: str, text: str) -> Future[Any]:
        what = f"your answer on {request_id}"
        return self._submit(self._planning, what, self._answer, origin, request_id, text)

    def home(self, origin: Origin) -> Future[Any]:
        return self._submit(self._quick, "your Home tab", self._home, origin)

    def _submit(
        self, pool: ThreadPoolExecutor, what: str, fn: Callable[..., Any], *args: Any
    ) -> Future[Any]:
        future = pool.submit(self._guarded, what, fn, *args)
        self._inflight.add(future)
        future.add_done_callback(self._inflight.discard)
        return future

    def drain(self, timeout: float) -> bool:
        """Wait for work in flight (before a restart); true if all finished."""
        pending = list(self._inflight)
        for future in pending:
            try:
                future.result(timeout=timeout)
            except Exception:
                return False
        return True

    def close(self) -> None:
        self._quick.shutdown(wait=False, cancel_futures=True)
        self._planning.shutdown(wait=False, cancel_futures=True)

    def _guarded(self, what: str, fn: Callable[..., Any], origin: Origin, *args: Any) -> Any:
        """Run ``fn``; when it breaks, the person is told what did not get done and what to
        do, and the log keeps the traceback under a reference the message gives."""
        try:
            return fn(origin, *args)
        except Exception as exc:
            ref = secrets.token_hex(4)
            log.exception("desk action failed", what=what, ref=ref, principal=origin.principal)
            self._reply(origin, "not_done", what=what, cause=broke(exc), ref=ref)
            return None

    # -- the work -----------------------------------------------------------

    def _reply(self, origin: Origin, template: str, **context: Any) -> None:
        adapter = self.adapters.get(origin.platform)
        if adapter is None:
            log.warning("no adapter to reply through", platform=origin.platform)
            return
        context.setdefault("request_id", "")
        adapter.reply(origin, render(template, context))

    def _say(self, origin: Origin, command: Command) -> None:
        if command.target in self.rollouts:
            self._rollout(origin, command)
            return
        settings = self._target_of(origin, command)
        if settings is None:
            return
        if command.verb in OPERATOR_VERBS and not self._may_operate(settings, origin, command):
            return
        BY_VERB.get(command.verb, Desk._ask)(self, settings, origin, command)

    def _target_of(self, origin: Origin, command: Command) -> Settings | None:
        """The settings of the target a command is for: the one target; in a fleet the one
        it names, else the only target whose ``channels`` list the channel, else (for a view
        of every target) the fleet's own. None when that stays ambiguous: the speaker is
        told the targets."""
        if not self.settings.fleet:
            return self.settings
        name = command.target or self._channel_target(origin.channel)
        if name:
            return self.settings.for_target(name)
        if command.verb in FLEET_WIDE:
            return self.settings
        self._reply(origin, "which_target", targets=self.targets, command=command.text)
        return None

    def _channel_target(self, channel: str) -> str:
        """The target a channel belongs to, when exactly one target lists it (a GitHub
        repository, ``owner/name``, stands for each of its issues, ``owner/name#12``)."""
        where = {channel, channel.partition("#")[0]} - {""}
        listing = [n for n in self.targets if where & set(self.settings.for_target(n).channels)]
        return listing[0] if len(listing) == 1 else ""

    def _of(self, request_id: str) -> Settings:
        """The settings of an existing request's target (a rollout's: the fleet's own)."""
        request = self.store.get(request_id)
        if request.command == ROLLOUT:
            return self.settings
        return self.settings.for_target(request.target)

    def _whole_fleet(self, settings: Settings) -> bool:
        """A fleet's view of every target (a command that named none)."""
        return settings.fleet and settings is self.settings

    def _views(self, settings: Settings) -> list[Settings]:
        """The targets a command is about: each of a whole fleet, or the one."""
        if self._whole_fleet(settings):
            return [settings.for_target(name) for name in self.targets]
        return [settings]

    def _may_operate(self, settings: Settings, origin: Origin, command: Command) -> bool:
        """Operators (of the target) only: anyone else is answered with a themed refusal, and
        audited. The view of a whole fleet is for an operator of any of its targets."""
        views = (
            [settings.for_target(n) for n in self.targets]
            if self._whole_fleet(settings)
            else [settings]
        )
        decisions = [authorisation.may_operate(view, origin) for view in views]
        allowed = next((d for d in decisions if d), decisions[0])
        if allowed:
            return True
        principal = origin.principal
        detail = {"command": command.verb, "reason": allowed.reason}
        if not self._whole_fleet(settings) and settings.fleet:
            detail["target"] = settings.target_name
        audit.append(self.conn, actor=principal, action="operator_refused", detail=detail)
        line = refusal_line(self.settings.refusal_theme, f"{principal}:{command.text}")
        self._reply(origin, "refused", refusal_line=line, message=allowed.reason)
        return False

    # -- one handler per verb (the table BY_VERB, below the class) -------------

    def _ask(self, settings: Settings, origin: Origin, command: Command) -> None:
        """``deploy <ref>`` or a change in words: a new request."""
        intake.submit(
            settings,
            self.conn,
            origin,
            command.verb,
            command.argument,
            command.text,
            break_glass=command.break_glass,
        )

    def _help_lines(self, origin: Origin) -> tuple[str, ...]:
        """The grammar, and what the asker's platform adds (the console's ``press``)."""
        adapter = self.adapters.get(origin.platform)
        return HELP + (adapter.help_lines if adapter else ())

    def _help(self, settings: Settings, origin: Origin, command: Command) -> None:
        self._reply(origin, "help", help_lines=self._help_lines(origin))

    def _invalid(self, settings: Settings, origin: Origin, command: Command) -> None:
        self._reply(origin, "help", message=command.error, help_lines=self._help_lines(origin))

    def _answer_command(self, settings: Settings, origin: Origin, command: Command) -> None:
        self._answer_newest(origin, command.argument)

    def _status(self, settings: Settings, origin: Origin, command: Command) -> None:
        if self._whole_fleet(settings):
            under_way = rollouts.under_way(settings, self.conn)
            self._reply(origin, "fleet", **control.fleet(settings, self.conn), rollouts=under_way)
            return
        self._reply(origin, "status", **control.status(settings, self.conn))

    def _queue(self, settings: Settings, origin: Origin, command: Command) -> None:
        self._reply(origin, "queue", requests=control.waiting(settings, self.conn))

    def _history(self, settings: Settings, origin: Origin, command: Command) -> None:
        flaky = control.flaky_tests(settings, self.conn)
        shown = control.history(self.conn, settings=settings)
        self._reply(origin, "history", requests=shown, flaky=flaky)

    def _review(self, settings: Settings, origin: Origin, command: Command) -> None:
        views = (
            [settings.for_target(n) for n in self.targets]
            if self._whole_fleet(settings)
            else [settings]
        )
        pending = [r for view in views for r in control.pending(view, self.conn)]
        pending.sort(key=lambda r: -r["age"])
        self._reply(origin, "review", requests=pending, autonomy=settings.autonomy)

    def _incidents(self, settings: Settings, origin: Origin, command: Command) -> None:
        self._reply(origin, "incidents", **incidents.listing(settings, self.conn))

    def _freezes(self, settings: Settings, origin: Origin, command: Command) -> None:
        self._reply(origin, "freezes", **freezes.listing(settings))

    def _pause(self, settings: Settings, origin: Origin, command: Command) -> None:
        said = control.pause(settings, self.conn, origin.principal)
        self._reply(origin, "status", message=said, paused=True)

    def _resume(self, settings: Settings, origin: Origin, command: Command) -> None:
        said = control.resume(settings, self.conn, origin.principal)
        self._reply(origin, "status", message=said)

    def _stop(self, settings: Settings, origin: Origin, command: Command) -> None:
        said = control.stop(settings, self.conn, origin.principal)
        self._reply(origin, "status", message=said)

    def _rollback(self, settings: Settings, origin: Origin, command: Command) -> None:
        """Return to the release before an update, as a deploy of its rollback point."""
        asked = control.rollback(settings, self.conn, origin, command.argument)
        if not asked:
            self._reply(origin, "not_allowed", reason=asked.reason)

    def _rollout(self, origin: Origin, command: Command) -> None:
        """A command naming a rollout: ``deploy`` plans it; ``stop``, ``status``, ``queue`` and
        ``history`` are for the operators of every one of its steps' targets."""
        name = command.target
        if command.verb == "deploy":
            rollouts.plan(
                self.settings,
                self.conn,
                origin,
                name,
                command.argument,
                command.text,
                break_glass=command.break_glass,
            )
            return
        if command.verb not in ("stop", "status", "queue", "history"):
            named = ", ".join(self.settings.rollout(name).steps)
            reason = f"`{command.verb}` is for a target: name one of rollout {name}'s ({named})"
            self._reply(origin, "not_allowed", reason=reason)
            return
        for target in self.settings.rollout(name).steps:
            if not self._may_operate(self.settings.for_target(target), origin, command):
                return
        if command.verb == "stop":
            said = rollouts.stop(self.settings, self.conn, name, origin.principal)
            self._reply(origin, "status", message=said)
            return
        count = 10 if command.verb == "history" else 1
        shown = rollouts.listing(self.conn, name, count)
        self._reply(origin, "rollouts", rollout=name, rollouts=shown, verb=command.verb)

    # -- answers on an existing request ----------------------------------------

    def _revise(self, origin: Origin, request_id: str, note: str) -> None:
        self._on_request(origin, request_id, "revise", intake.revise, note)

    def _answer_newest(self, origin: Origin, text: str) -> None:
        """``answer <text>``: for the speaker's newest request that waits for answers."""
        waiting = next(
            (
                r
                for r in self.store.recent(100)
                if r.state is S.NEEDS_INFO and r.requester == origin.principal
            ),
            None,
        )
        if waiting is None:
            self._reply(
                origin, "not_allowed", reason="none of your requests is waiting for answers"
            )
            return
        self._answer(origin, waiting.id, text)

    def _answer(self, origin: Origin, request_id: str, text: str) -> None:
        self._on_request(origin, request_id, "answer", intake.answer, text)

    def _on_request(
        self,
        origin: Origin,
        request_id: str,
        action: str,
        step: Callable[..., Decision],
        text: str,
    ) -> None:
        """Run ``step`` on an existing request; a refusal is told to that person alone."""
        if not self._known(origin, request_id):
            return
        try:
            decision = step(self._of(request_id), self.conn, request_id, origin, text)
        except IllegalTransition:  # a race the step did not settle: it moved on meanwhile
            decision = approval.moved_on(self.store.get(request_id))
        if not decision:
            self._refused(origin, request_id, action, decision)

    def _refused(self, origin: Origin, request_id: str, action: str, decision: Decision) -> None:
        """Tell the one who asked, and only them, why ``action`` on the request was refused."""
        self.store.notify(
            request_id,
            "not_allowed",
            actor=origin.principal,
            action=f"{action}_refused",
            audience=origin.principal,
            data={"reason": decision.reason},
        )

    def _home(self, origin: Origin) -> None:
        adapter = self.adapters.get(origin.platform)
        if adapter is None:
            return
        context = control.status(self.settings, self.conn) | {
            "history": control.history(self.conn, 10),
            "request_id": "",
        }
        if self.settings.fleet:  # every target, with what runs and waits on it
            context |= control.fleet(self.settings, self.conn)
        adapter.show_home(origin, render("home", context))

    def _known(self, origin: Origin, request_id: str) -> bool:
        """Whether the request exists; if not, the one who asked is told so."""
        try:
            self.store.get(request_id)
        except UnknownRequest:
            self._reply(origin, "not_allowed", reason=f"no request {request_id!r}")
            return False
        return True

    def _press(self, origin: Origin, action: str, request_id: str) -> None:
        if action == "fix":  # Fix it, on an incident's diagnosis: its value is the incident
            asked = diagnosis.fix_under_way(self.settings, self.conn, request_id)
            if asked is not None:
                said = f"a fix of this incident is already under way: {asked.id}"
                self._reply(origin, "not_allowed", reason=f"{said} ({asked.state.value})")
            elif diagnosis.fix(self.settings, self.conn, request_id, origin) is None:
                self._reply(origin, "not_allowed", reason=f"no diagnosis of {request_id!r}")
            return
        if not self._known(origin, request_id):
            return
        settings = self._of(request_id)  # the target's people decide
        rollout = steps.rollout_of(self.conn, request_id)
        if rollout:  # a step is approved, in turn, with its rollout
            said = f"this is a step of rollout {rollout}: its buttons are the rollout's"
            self._refused(origin, request_id, action, Decision(False, said, "rollout"))
            return
        try:
            if self.store.get(request_id).command == ROLLOUT:
                self._press_rollout(origin, action, request_id)
            elif action == "approve":  # approve and reject tell their refusals themselves
                approval.approve(settings, self.conn, request_id, origin)
            elif action == "reject":
                approval.reject(settings, self.conn, request_id, origin)
            elif action == "retry":
                decision = intake.retry(settings, self.conn, request_id, origin)
                if not decision:
                    self._refused(origin, request_id, "retry", decision)
            else:
                self._reply(origin, "not_allowed", reason=f"unknown button {action!r}")
        except IllegalTransition:  # a race the step did not settle: it moved on meanwhile
            moved_on = approval.moved_on(self.store.get(request_id))
            self._refused(origin, request_id, action, moved_on)

    def _press_rollout(self, origin: Origin, action: str, request_id: str) -> None:
        """A rollout's buttons: its own approval, rejection and Retry (which plans it again)."""
        pressed = {"approve": rollouts.approve, "reject": rollouts.reject, "retry": rollouts.retry}
        if action not in pressed:
            self._reply(origin, "not_allowed", reason=f"unknown button {action!r}")
            return
        pressed[action](self.settings, self.conn, request_id, origin)


#: What each verb of the grammar (bot/commands.py) does; "invalid" is a command that did
#: not parse, and any verb not here (``deploy``, a change in words) is a new request.
#: Operator verbs (OPERATOR_VERBS) pass ``Desk._may_operate`` first.
BY_VERB: dict[str, Callable[[Desk, Settings, Origin, Command], None]] = {
    "help": Desk._help,
    "invalid": Desk._invalid,
    "answer": Desk._answer_command,
    "status": Desk._status,
    "queue": Desk._queue,
    "history": Desk._history,
    "review": Desk._review,
    "incidents": Desk._incidents,
    "freezes": Desk._freezes,
    "pause": Desk._pause,
    "resume": Desk._resume,
    "stop": Desk._stop,
    "rollback": Desk._rollback,
}
