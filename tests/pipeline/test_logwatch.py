"""The log watcher: real tracebacks of real code, real files renamed and truncated the way
logrotate does it, and the signature that groups occurrences of one problem."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pipeline.incidents.logwatch import LineReader, LogFollower, fingerprint, stripped

BROKEN = "def greet(user_id):\n    return 1 / 0\n"


def _traceback(service: Path, user_id: int) -> str:
    """What the service writes to its log when ``greet`` fails: Python's own traceback."""
    run = subprocess.run(
        [sys.executable, "-c", f"from app import greet; greet({user_id})"],
        cwd=service,
        capture_output=True,
        text=True,
        check=False,
    )
    return run.stderr


def _occurrences(reader: LineReader, text: str) -> list[str]:
    return [o.signature for o in map(reader.feed, text.splitlines(keepends=True)) if o]


def test_a_traceback_is_signed_by_its_exception_and_innermost_frame_of_own_code(
    tmp_path: Path,
) -> None:
    (tmp_path / "app.py").write_text(BROKEN)
    reader = LineReader(tmp_path)
    first = _occurrences(reader, _traceback(tmp_path, 41))
    second = _occurrences(reader, _traceback(tmp_path, 1234))
    assert first == ["ZeroDivisionError at app.py:greet"]
    assert second == first


def test_error_lines_are_grouped_with_ids_numbers_and_addresses_stripped(tmp_path: Path) -> None:
    reader = LineReader(tmp_path)
    lines = (
        "2026-12-02 00:01:02 ERROR order 1234 failed at 0x7f3a2b on "
        "3f2b8c1e-1111-4222-8333-944445555666\n"
        "2026-12-02 00:01:09 ERROR order 98 failed at 0x10 on "
        "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee\n"
        "2026-12-02 00:01:10 INFO all is well, no error here\n"
    )
    found = _occurrences(reader, lines)
    assert len(found) == 2 and found[0] == found[1]
    assert fingerprint(found[0]) == fingerprint(
        stripped("ERROR order 5 failed at 0xff on 00000000-0000-4000-8000-000000000000")
    )


def test_a_traceback_inside_a_structured_log_line_is_read_too(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(BROKEN)
    text = _traceback(tmp_path, 7).replace("\n", "\\n").replace('"', '\\"')
    line = f"timestamp='2026-12-02T00:00:00Z' level='error' event='failed' exception='{text}'\n"
    assert _occurrences(LineReader(tmp_path), line) == ["ZeroDivisionError at app.py:greet"]


def test_the_follower_reads_across_rotation_and_truncation(tmp_path: Path) -> None:
    log = tmp_path / "service.log"
    log.write_text("logged before Molt looked\n")
    follower = LogFollower(str(tmp_path / "*.log"))
    assert list(follower.lines()) == []
    with log.open("a") as out:
        out.write("one\ntw")
    assert list(follower.lines()) == ["one\n"]
    with log.open("a") as out:
        out.write("o\nlast of the old file\n")
    log.rename(tmp_path / "service.log.1")  # rotated: renamed away, a new file in its place
    log.write_text("first of the new file\n")
    assert list(follower.lines()) == ["two\n", "last of the old file\n", "first of the new file\n"]
    log.write_text("")  # truncated (copytruncate)
    assert list(follower.lines()) == []
    log.write_text("after truncation\n")
    assert list(follower.lines()) == ["after truncation\n"]
    follower.close()
