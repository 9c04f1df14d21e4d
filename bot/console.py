"""The console chat: a terminal, or a script piping commands into stdin.

Buttons are pressed by typing ``press <button> [request]``: ``press approve`` takes
the newest request this console started that shows an Approve button now, waits for
the plan of one still being planned, and otherwise says at once that nothing waits.
When stdin ends, the console waits until every request it started has settled (ended,
or waits for a person), then exits.

People are named by their console names (``bob``), others by their principals.

Lines are read from the file descriptor byte by byte, so that when Molt
restarts itself (exec) the unread rest of a piped script is still there for
the new process.
"""

from __future__ import annotations

import os
import select
import sys
import threading
import time
from typing import TYPE_CHECKING, TextIO

from bot import people
from bot.base import Platform, Wiring
from bot.messages import Message
from bot.terminal import Terminal
from pipeline.requests.states import RequestState as S
from pipeline.requests.states import template_for
from pipeline.requests.store import Origin, Request, RequestStore

if TYPE_CHECKING:
    from bot.desk import Desk

#: How often a read waiting for a line looks whether Molt is stopping.
STOP_POLL_SECONDS = 0.2
#: Templates after which a request needs nobody's attention from this console.
SETTLED = frozenset(
    {
        "success",
        "failure",
        "refused",
        "blocked",
        "rejected",
        "expired",
        "cancelled",
        "plan_ready",
        "needs_info",
        "rollout",  # a rollout's one message, shown again as it moves on
    }
)
SINCE_ENV = "MOLT_CONSOLE_SINCE"
#: The field a progress refresh fills (templates/working.toml, watching.toml).
PROGRESS_FIELD = "Progress"
#: Piped, at most one progress line a minute per request: a script's log is read later.
PROGRESS_EVERY = 60.0


class Console(Terminal):
    platform = "console"
    help_lines = (
        "press approve|reject|retry [request] — press a button: of the request named (id or "
        "codename), or of your newest request that shows it",
        "press revise [request] <what to change> — Request changes: plan it again with your "
        "note (for a deploy, `deploy <ref>` changes the ref)",
        "quit — leave the console (at the end of a piped script it waits for its requests)",
    )

    def __init__(
        self,
        user: str,
        store: RequestStore,
        out: TextIO | None = None,
        wait: float = 3600,
        fd: int = 0,
    ) -> None:
        self.user = user
        self.fd = fd  # where commands are read from: stdin, or a pipe
        self.store = store
        self.out = out or sys.stdout
        self.wait = wait
        self.origin = Origin("console", user, "console", user)
        self.buttons: dict[str, tuple[str, ...]] = {}
        self.last_template: dict[str, str] = {}
        self._changed = threading.Condition()
        self._write = threading.Lock()
        self._progress_open = False  # a progress line is shown and not yet ended (terminal)
        self._shown_as: dict[str, tuple[str, str]] = {}  # the template and title last shown
        #: The lines last printed for each request, to print only what changed.
        self._lines: dict[str, list[str]] = {}
        self._progress_at: dict[str, float] = {}  # when the last piped progress line was
        self.booted = time.time()
        self.since = float(os.environ.get(SINCE_ENV) or self.booted)
        os.environ[SINCE_ENV] = repr(self.since)

    def notice(self, message: Message) -> None:
        self.reply(self.origin, message)

    # -- output ------------------------------------------------------------

    def _print(self, text: str) -> None:
        # Imported here: the HTTP process reads this module's PLATFORM and never prints, so
        # it need not load the templates' engine.
        from bot.rendering import as_text

        text = as_text(people.address(text, NAMING))
        with self._write:
            self.out.write(("\n" if self._progress_open else "") + text + "\n")
            self._progress_open = False
            self.out.flush()

    def _print_progress(self, request_id: str, line: str) -> None:
        """One progress line: rewritten in place on a terminal; piped, one a minute."""
        with self._write:
            if self.out.isatty():
                self.out.write(f"\r\x1b[2K{line}")
                self._progress_open = True
            elif time.monotonic() - self._progress_at.get(request_id, 0.0) >= PROGRESS_EVERY:
                self._progress_at[request_id] = time.monotonic()
                self.out.write(line + "\n")
            self.out.flush()

    def deliver(self, request: Request, message: Message) -> None:
        """A message whose template and title are those last shown for the request is a
        refresh of it: only its progress is shown, or, without progress, the lines that
        changed (a plan shown again once pre-flight's tests ended). Anything else is a
        block of its own."""
        name = message.codename or request.id
        progress = [f.value for f in message.fields if f.name == PROGRESS_FIELD and f.value]
        shown_as = (message.template, message.title)
        if progress and self._shown_as.get(request.id) == shown_as:
            self._print_progress(request.id, f"[{name}] ⏳ {progress[0]}")
            return
        lines = [f"[{name}] {message.title}"]
        if message.text:
            lines.extend(f"  {line}" for line in message.text.splitlines())
        for f in message.fields:
            value = f.value.replace("\n", "\n    ")
            lines.append(f"  {f.name}: {value}")
        if message.buttons:
            shown = " ".join(f"[{b.label}]" for b in message.buttons)
            first = message.buttons[0].action
            lines.append(f"  {shown}   (type: press {first} {request.id})")
        before = self._lines.get(request.id, [])
        self._shown_as[request.id] = shown_as
        self._lines[request.id] = lines
        self._progress_at[request.id] = time.monotonic()
        self._shown(request.id, message)  # first, so a press reacting to the text finds it
        if before[:2] != lines[:2]:
            self._print("\n".join(lines))
            return
        changed = [line.strip() for line in lines[1:] if line not in before]
        if changed:
            self._print("\n".join([f"[{name}] {changed[0]}", *(f"  {c}" for c in changed[1:])]))

    def _shown(self, request_id: str, message: Message) -> None:
        """What a request shows here now: its buttons, and the message they came with."""
        with self._changed:
            self.buttons[request_id] = tuple(b.action for b in message.buttons)
            self.last_template[request_id] = message.template
            self._changed.notify_all()

    def announce(self, channel: str, message: Message, thread: str = "") -> None:
        """An incident, with the press that answers its button."""
        lines = [message.title, *(f"  {line}" for line in message.text.splitlines())]
        lines += [f"  {f.name}: {f.value}" for f in message.fields]
        for button in message.buttons:
            lines.append(f"  [{button.label}]   (type: press {button.action} {button.value})")
        self._print("\n".join(lines))

    def reply(self, origin: Origin, message: Message) -> None:
        self._print("\n".join(["  " + line for line in message.marked().splitlines()]))

    # -- input -------------------------------------------------------------

    def read_line(self, stopping: threading.Event | None = None) -> str | None:
        """The next line, or None once the input ends (or Molt stops while it waits)."""
        data = bytearray()
        while True:
            if stopping is not None and not self._readable(stopping):
                return None
            chunk = os.read(self.fd, 1)
            if not chunk:
                return data.decode(errors="replace") if data else None
            if chunk == b"\n":
                return data.decode(errors="replace")
            data += chunk

    def _readable(self, stopping: threading.Event) -> bool:
        """Wait for input, or for Molt to stop: a SIGTERM must not wait for someone at the
        terminal to type a line (a read retried after the signal would)."""
        while not stopping.is_set():
            ready, _, _ = select.select([self.fd], [], [], STOP_POLL_SECONDS)
            if ready:
                return True
        return False

    def serve(self, desk: Desk, stopping: threading.Event) -> None:
        """Read commands until stdin ends, ``quit``, or ``stopping`` is set."""
        if os.isatty(self.fd):
            self._print("Molt console: type `help`, `press approve`, or `quit`.")
        while not stopping.is_set():
            line = self.read_line(stopping)
            if line is None:
                if not stopping.is_set():
                    self.settle(desk, stopping)
                return
            line = line.strip()
            if not line:
                continue
            if line in ("quit", "exit"):
                return
            if line.split()[0] == "press":
                self.press(desk, line.split()[1:], stopping)
            else:
                desk.say(self.origin, line).result()

    def press(self, desk: Desk, words: list[str], stopping: threading.Event) -> None:
        """Press a button of the named request, or of the newest request this console
        started that shows it; a request of this console still being planned is waited
        for (that plan only). Nothing to press is said at once."""
        if not words:
            self._print("  usage: press <approve|reject|retry|revise> [request]  (see `help`)")
            return
        action, wanted = words[0].lower(), (words[1] if len(words) > 1 else "")
        if action == "revise":
            self.revise(desk, words[1:], stopping)
            return
        if wanted:
            request = self.store.find(wanted)
            if request is None:  # an incident's Fix it, or the desk says there is no such request
                desk.press(self.origin, action, wanted).result()
                return
            chosen: Request | None = request
            if self._being_planned(request):
                chosen = self._wait_for_plan(request, stopping)
        else:
            chosen = self._newest(action)
            if chosen is not None and self._being_planned(chosen):
                chosen = self._wait_for_plan(chosen, stopping)
                if chosen is not None and action not in self.buttons.get(chosen.id, ()):
                    chosen = None
        if chosen is None:
            self._print(f"  nothing waits for {action}" + (f" ({wanted})" if wanted else ""))
            return
        # A request that moved on is told where it is now, by the desk.
        desk.press(self.origin, action, chosen.id).result()

    def revise(self, desk: Desk, words: list[str], stopping: threading.Event) -> None:
        """``press revise [request] <note>``: Request changes on the named plan, or on the
        newest of this console that shows the button (its plan waited for)."""
        named = self.store.find(words[0]) if words else None
        note = " ".join(words[1:] if named else words)
        chosen = named or self._newest("revise")
        if chosen is not None and not named and self._being_planned(chosen):
            chosen = self._wait_for_plan(chosen, stopping)
            if chosen is not None and "revise" not in self.buttons.get(chosen.id, ()):
                chosen = None
        if not note:
            self._print("  usage: press revise [request] <what to change>")
        elif chosen is None:
            self._print("  nothing waits for revise")
        else:
            desk.revise(self.origin, chosen.id, note).result()

    def _newest(self, action: str) -> Request | None:
        """The newest request of this console that shows ``action`` now, or that is still
        being planned (its plan may show it)."""
        for request in self.mine():
            if action in self.buttons.get(request.id, ()) or self._being_planned(request):
                return request
        return None

    def _being_planned(self, request: Request) -> bool:
        """Still on its way to a plan (or to the question, block or refusal that ends it),
        or there but not yet shown here."""
        if request.state in (S.RECEIVED, S.PREFLIGHT, S.PLANNING):
            return True
        mine = request.origin.platform == "console" and request.origin.user == self.user
        shown = self.last_template.get(request.id)
        waits = request.state in (S.PLAN_READY, S.NEEDS_INFO) or request.terminal
        unseen = shown not in SETTLED and request.updated_at >= self.booted
        return mine and waits and unseen

    def _wait_for_plan(self, request: Request, stopping: threading.Event) -> Request | None:
        label = request.codename or request.id
        self._print(f"  waiting for the plan of {label}…")
        deadline = time.monotonic() + self.wait
        with self._changed:
            while not stopping.is_set() and time.monotonic() < deadline:
                current = self.store.get(request.id)
                if not self._being_planned(current):
                    return current
                self._changed.wait(0.2)
        return None

    def mine(self) -> list[Request]:
        return [
            r
            for r in self.store.recent(100)
            if r.origin.platform == "console"
            and r.origin.user == self.user
            and r.created_at >= self.since - 1
        ]

    def settle(self, desk: Desk, stopping: threading.Event) -> None:
        """At the end of a script: wait until this console's requests need nobody."""
        desk.drain(timeout=self.wait)
        deadline = time.monotonic() + self.wait
        with self._changed:
            while not stopping.is_set() and time.monotonic() < deadline:
                if all(self._settled(r) for r in self.mine()):
                    return
                self._changed.wait(0.2)

    def _settled(self, request: Request) -> bool:
        """Ended, or waiting for a person, and shown so here. Approved, queued and running
        wait for nobody: the console stays until they end."""
        if not (request.terminal or request.state in (S.PLAN_READY, S.NEEDS_INFO)):
            return False
        shown = self.last_template.get(request.id)
        if shown is not None:
            return shown == template_for(request.state)
        # Shown before Molt restarted itself, or never ours to show.
        return request.updated_at < self.booted


def _person(user: str) -> str | None:
    return user or None


def _build(wiring: Wiring) -> Console | None:
    if not wiring.terminal:
        return None
    settings = wiring.settings
    return Console(settings.console_user, wiring.store, wait=settings.console_wait)


#: People are named by their console names.
NAMING = people.Naming("console", _person)
#: A console is there when ``molt run`` has one.
PLATFORM = Platform(naming=NAMING, build=_build)
