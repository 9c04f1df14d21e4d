"""The front end that holds the terminal: ``molt run`` serves it in the foreground."""

from __future__ import annotations

import threading
from abc import abstractmethod
from typing import TYPE_CHECKING

from bot.base import Adapter
from bot.messages import Message

if TYPE_CHECKING:
    from bot.desk import Desk


class Terminal(Adapter):
    """The front end that holds the terminal (the console): ``molt run`` serves it in the
    foreground until it ends, and tells it when Molt is up or restarting."""

    @abstractmethod
    def serve(self, desk: Desk, stopping: threading.Event) -> None:
        """Read commands until the input ends or ``stopping`` is set."""

    @abstractmethod
    def notice(self, message: Message) -> None:
        """Show ``message`` to whoever is at the terminal."""
