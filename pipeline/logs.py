"""Structured logs, with secrets masked before anything is written."""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any, TextIO, cast

import structlog

from pipeline.redaction import redact_data


def configure(level: str, secrets: list[str], file: Path | None = None) -> None:
    """Log to stderr, or to ``file`` when the terminal belongs to the console chat."""
    stream: TextIO = open(file, "a", buffering=1) if file else sys.stderr  # noqa: SIM115
    known = tuple(secrets)

    def mask(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> Mapping[str, Any]:
        return cast(Mapping[str, Any], redact_data(dict(event), known))

    numeric = getattr(logging, level.upper(), logging.INFO)
    logging.basicConfig(
        stream=stream, level=max(numeric, logging.WARNING), format="%(message)s", force=True
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.format_exc_info,
            mask,
            structlog.processors.KeyValueRenderer(key_order=["timestamp", "level", "event"]),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=True,
    )
