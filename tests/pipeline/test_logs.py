"""pipeline/logs.py: one event per line, JSON or console, with the request's fields bound
and secrets masked, for structlog and the standard library's loggers alike."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from pipeline import logs

SECRET = "xoxb-not-for-your-eyes-1234"


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    yield
    logs.unbind()
    structlog.reset_defaults()
    for handler in root.handlers:
        if handler not in saved and isinstance(handler, logging.StreamHandler):
            handler.stream.close()
    root.handlers[:], root.level = saved, level


def test_json_logs_are_one_object_a_line_with_bound_fields_and_no_secret(tmp_path: Path) -> None:
    file = tmp_path / "molt.log"
    logs.configure("info", [SECRET], file, "json")
    logs.bind(request_id="r0a1b2c3d", codename="brisk-otter", target="svc-1", phase="phase 1")
    log = structlog.get_logger("pipeline.update.jobs")
    log.info("validating", token=SECRET, note=f"a {SECRET} b")
    logging.getLogger("rq.worker").warning("job %s done", "j1")
    logs.unbind()
    try:
        raise RuntimeError(f"boom with {SECRET}")
    except RuntimeError:
        structlog.get_logger().exception("failed")
    lines = file.read_text().splitlines()
    assert len(lines) == 3
    first, library, failed = (json.loads(line) for line in lines)
    assert first["event"] == "validating"
    assert first["level"] == "info"
    assert (first["request_id"], first["codename"], first["target"], first["phase"]) == (
        "r0a1b2c3d",
        "brisk-otter",
        "svc-1",
        "phase 1",
    )
    assert library["event"] == "job j1 done" and library["request_id"] == "r0a1b2c3d"
    assert "request_id" not in failed
    assert "RuntimeError" in failed["exception"]
    assert SECRET not in file.read_text()


def test_console_logs_are_lines_for_a_person(tmp_path: Path) -> None:
    file = tmp_path / "molt.log"
    logs.configure("info", [SECRET], file, "console")
    structlog.get_logger().info("molt is up", port=3000, token=SECRET)
    [line] = file.read_text().splitlines()
    assert "molt is up" in line and "port=3000" in line
    assert not line.startswith("{") and SECRET not in line


def test_a_file_that_is_not_a_terminal_gets_json_by_default(tmp_path: Path) -> None:
    file = tmp_path / "molt.log"
    logs.configure("info", [], file)
    structlog.get_logger().info("hello")
    assert json.loads(file.read_text())["event"] == "hello"
