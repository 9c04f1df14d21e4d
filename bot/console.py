"""The console chat: a terminal, or a script piping commands into stdin.

Buttons are pressed by typing ``press <button> [request]`` (``press approve``
takes the newest request that shows an Approve button, waiting for one if the
plan is not ready yet). When stdin ends, the console waits until every request
it started has settled (ended, or waits for a person), then exits.

People are named by their console names (``bob``), others by their principals.

Lines are read from the file descriptor byte by byte, so that when Molt
restarts itself (exec) the unread rest of a piped script is still there for
the new process.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from typing import TextIO

from bot import people
from bot.base import Adapter
from bot.desk import Desk
from bot.messages import Message
from pipeline.requests import Origin, Request, RequestStore

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
    }
)
SINCE_ENV = "MOLT_CONSOLE_SINCE"
#: The field of a running phase's status that a progress refresh fills (templates/working.toml).
PROGRESS_FIELD = "Progress"
#: Light Markdown bold (``*word*``) reads as noise in a terminal.
_BOLD = re.compile(r"(?<![\w*])\*([^*\n]+)\*(?![\w*])")


class Console(Adapter):
    platform = "console"

    def __init__(
        self, user: str, store: RequestStore, out: TextIO | None = None, wait: float = 3600
    ) -> None:
        self.user = user
        self.store = store
        self.out = out or sys.stdout
        self.wait = wait
        self.origin = Origin("console", user, "console", user)
        self.buttons: dict[str, tuple[str, ...]] = {}
        self.last_template: dict[str, str] = {}
        #: The lines last printed for each request: a message shown again prints what changed.
        self.shown: dict[str, list[str]] = {}
        self._changed = threading.Condition()
        self._write = threading.Lock()
        self._progress_open = False  # a progress line is shown and not yet ended (terminal)
        self.booted = time.time()
        self.since = float(os.environ.get(SINCE_ENV) or self.booted)
        os.environ[SINCE_ENV] = repr(self.since)

    # -- output ------------------------------------------------------------

    def _print(self, text: str) -> None:
        text = _BOLD.sub(r"\1", people.address(text, "console"))
        with self._write:
            self.out.write(("\n" if self._progress_open else "") + text + "\n")
            self._progress_open = False
            self.out.flush()

    def _print_progress(self, line: str) -> None:
        """One progress line, rewritten in place on a terminal (a new line when piped)."""
        with self._write:
            if self.out.isatty():
                self.out.write(f"\r\x1b[2K{line}")
                self._progress_open = True
            else:
                self.out.write(line + "\n")
            self.out.flush()

    def deliver(self, request: Request, message: Message) -> None:
        name = message.codename or request.id
        progress = [f.value for f in message.fields if f.name == PROGRESS_FIELD]
        if message.template == "working" and progress:
            self._print_progress(f"[{name}] ⏳ {progress[0]}")
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
        before = self.shown.get(request.id, [])
        if before[:2] == lines[:2]:  # the same message again, updated: what changed
            changed = [line.strip() for line in lines[1:] if line not in before]
            if changed:
                self._print("\n".join([f"[{name}] {changed[0]}", *(f"  {c}" for c in changed[1:])]))
        else:
            self._print("\n".join(lines))
        with self._changed:
            self.shown[request.id] = lines
            self.buttons[request.id] = tuple(b.action for b in message.buttons)
            self.last_template[request.id] = message.template
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

    def read_line(self) -> str | None:
        data = bytearray()
        while True:
            chunk = os.read(0, 1)
            if not chunk:
                return data.decode(errors="replace") if data else None
            if chunk == b"\n":
                return data.decode(errors="replace")
            data += chunk

    def serve(self, desk: Desk, stopping: threading.Event) -> None:
        """Read commands until stdin ends, ``quit``, or ``stopping`` is set."""
        if sys.stdin.isatty():
            self._print("Molt console: type `help`, `press approve`, or `quit`.")
        while not stopping.is_set():
            line = self.read_line()
            if line is None:
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
        if not words:
            self._print("  usage: press <approve|reject|retry> [request]")
            return
        action, wanted = words[0].lower(), (words[1] if len(words) > 1 else "")
        deadline = time.monotonic() + self.wait
        with self._changed:
            while True:
                found = self._offering(action, wanted)
                if found or stopping.is_set() or time.monotonic() > deadline:
                    break
                self._changed.wait(0.2)
        if not found:
            self._print(
                f"  no request shows a {action} button" + (f" ({wanted})" if wanted else "")
            )
            return
        desk.press(self.origin, action, found).result()

    def _offering(self, action: str, wanted: str) -> str | None:
        if wanted:
            request = self.store.find(wanted)
            if request and action in self.buttons.get(request.id, ()):
                return request.id
            return None
        for request_id in reversed(list(self.buttons)):
            if action in self.buttons[request_id]:
                return request_id
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
        shown = self.last_template.get(request.id)
        if shown is not None:
            return shown in SETTLED
        # Shown before Molt restarted itself, or never ours to show.
        waiting = request.terminal or request.state.value in ("plan_ready", "needs_info")
        return waiting and request.updated_at < self.booted
