"""Structured logs, with secrets masked before anything is written.

Every process logs through structlog, one event per line: JSON (``MOLT_LOG_FORMAT=json``,
the default when the stream is not a terminal) or console lines for a person at a
terminal. What libraries log through the standard ``logging`` module (RQ, uvicorn) goes
through the same renderer, so a JSON log has no other kind of line. A job binds
``request_id``, ``codename``, ``target`` and ``phase`` (``bind``), and every event logged
while it runs carries them.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any, TextIO, cast

import structlog

from pipeline.redaction import redact_data

#: The fields a line starts with.
LEADING = ("timestamp", "level", "event")
#: The fields bound while a request is worked on; nothing else is bound.
BOUND = ("request_id", "codename", "target", "phase")


def configure(level: str, secrets: list[str], file: Path | None = None, fmt: str = "auto") -> None:
    """Log to stderr, or to ``file`` when the terminal belongs to the console chat."""
    stream: TextIO = open(file, "a", buffering=1) if file else sys.stderr  # noqa: SIM115
    known = tuple(secrets)

    def mask(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> Mapping[str, Any]:
        return cast(Mapping[str, Any], redact_data(dict(event), known))

    def first(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> Mapping[str, Any]:
        """When, how bad and what first, then the rest, as the console shows them."""
        return {k: event[k] for k in LEADING if k in event} | dict(event)

    as_json = fmt == "json" or (fmt != "console" and not stream.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer(sort_keys=False)
        if as_json
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    numeric = getattr(logging, level.upper(), logging.INFO)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                mask,
                first,
                renderer,
            ],
        )
    )
    logging.basicConfig(handlers=[handler], level=max(numeric, logging.WARNING), force=True)
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, mask, first, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(stream),
        # Not cached: a process the bot's spawner forks configures its own output, and a
        # logger cached before the fork would go on writing to the bot's (bot/spawner.py).
        cache_logger_on_first_use=False,
    )


def bind(**fields: str) -> None:
    """Bind what is known of the request being worked on to every event after this."""
    structlog.contextvars.bind_contextvars(
        **{name: value for name, value in fields.items() if name in BOUND and value}
    )


def unbind() -> None:
    structlog.contextvars.unbind_contextvars(*BOUND)
