"""Edits of a request's status message, inside Discord's rate limits.

A progress edit arriving within ``EDIT_INTERVAL`` of the last one waits and is replaced by
any newer one; every other edit is made at once, in order. Waiting edits are made before
the client closes.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable

import discord
import structlog

log = structlog.get_logger(__name__)

#: One status message is edited at most this often; a progress edit arriving sooner waits,
#: and is replaced by any newer one, so a busy update stays inside the rate limits.
EDIT_INTERVAL = 1.0
#: Status messages whose edits are tracked (the latest ones).
GATES_KEPT = 1000


class EditGate:
    """Edits of one status message: a progress edit within ``EDIT_INTERVAL`` of the last
    waits and is replaced by any newer one; every other edit is made at once, in order."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._last = float("-inf")
        self._version = 0
        self._pending: tuple[int, Callable[[], Awaitable[None]]] | None = None
        self._flush: asyncio.Task[None] | None = None

    @property
    def waiting(self) -> bool:
        """A progress edit waits its turn."""
        return self._pending is not None

    def touched(self) -> None:
        """The message was just posted: the next progress edit waits its turn too."""
        self._last = asyncio.get_running_loop().time()

    async def run(self, edit: Callable[[], Awaitable[None]], *, coalesce: bool) -> None:
        loop = asyncio.get_running_loop()
        self._version += 1
        version = self._version
        wait = self._last + EDIT_INTERVAL - loop.time()
        if coalesce and wait > 0:
            self._pending = (version, edit)
            if self._flush is None or self._flush.done():
                self._flush = asyncio.ensure_future(self._later(wait))
            return
        async with self._lock:
            if version != self._version:
                return  # a newer edit came meanwhile and is shown instead
            self._pending = None
            await edit()
            self._last = loop.time()

    async def _later(self, wait: float) -> None:
        await asyncio.sleep(wait)
        await self.flush()

    async def flush(self) -> None:
        async with self._lock:
            pending, self._pending = self._pending, None
            if pending is None or pending[0] != self._version:
                return
            try:
                await pending[1]()
            except discord.HTTPException as exc:
                log.info("a coalesced discord edit failed; the next one repeats it", error=str(exc))
            self._last = asyncio.get_running_loop().time()


class EditGates:
    """The gates of the latest ``GATES_KEPT`` status messages, by message id."""

    def __init__(self) -> None:
        self._gates: OrderedDict[int, EditGate] = OrderedDict()

    def of(self, message_id: int) -> EditGate:
        gate = self._gates.get(message_id)
        if gate is None:
            gate = self._gates[message_id] = EditGate()
            while len(self._gates) > GATES_KEPT:
                self._gates.popitem(last=False)
        self._gates.move_to_end(message_id)
        return gate

    async def flush(self, timeout: float) -> None:
        """Progress edits still waiting are made before the client closes."""
        waiting = [gate.flush() for gate in list(self._gates.values()) if gate.waiting]
        if not waiting:
            return
        try:
            await asyncio.wait_for(
                asyncio.gather(*waiting, return_exceptions=True), timeout=timeout
            )
        except TimeoutError:
            log.info("discord edits still waiting were dropped at shutdown")
