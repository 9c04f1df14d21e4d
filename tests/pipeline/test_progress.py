"""A running phase's progress, read from what its test command prints: pytest's share of
tests done and the failures so far, from real pytest runs and from its line formats."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from pipeline.sandbox.progress import TestProgress, Ticker


def _suite(root: Path, failing: int, passing: int) -> None:
    root.mkdir()
    (root / "test_many.py").write_text(
        "import pytest\n\n\n"
        f"@pytest.mark.parametrize('n', range({passing}))\ndef test_ok(n):\n    pass\n\n\n"
        f"@pytest.mark.parametrize('n', range({failing}))\ndef test_bad(n):\n    assert False\n"
    )


def _pytest(root: Path, *args: str) -> bytes:
    env = {**os.environ, "COLUMNS": "80"}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=root,
        env=env,
        capture_output=True,
        check=False,
    )
    assert run.returncode == 1, run.stdout.decode()
    return run.stdout


def _fed(output: bytes, size: int = 7) -> TestProgress:
    seen = TestProgress()
    for start in range(0, len(output), size):
        seen.feed(output[start : start + size])
    return seen


def test_a_quiet_pytest_run_reads_as_all_done_with_its_failures(tmp_path: Path) -> None:
    _suite(tmp_path / "suite", failing=3, passing=150)
    seen = _fed(_pytest(tmp_path / "suite", "-q"))
    assert seen.snapshot()["share"] == 100
    assert seen.snapshot()["failed"] == 3


def test_a_verbose_pytest_run_reads_the_same(tmp_path: Path) -> None:
    _suite(tmp_path / "suite", failing=2, passing=8)
    seen = _fed(_pytest(tmp_path / "suite", "-v"))
    assert seen.snapshot()["share"] == 100
    assert seen.snapshot()["failed"] == 2


def test_part_way_through_the_share_is_the_last_line_shown_and_failures_count_as_they_come() -> (
    None
):
    seen = TestProgress()
    seen.feed(b"....F.....  [ 20%]\n")
    assert seen.snapshot()["share"] == 20
    assert seen.snapshot()["failed"] == 1
    # Marks of the line being written move the share on, estimated from the last one.
    seen.feed(b"...")
    seen.feed(b"..E..")
    assert seen.snapshot() | {"seconds": 0} == {"seconds": 0, "share": 36, "failed": 2}
    seen.feed(b"..  [ 40%]\n")
    assert seen.snapshot()["share"] == 40
    assert seen.snapshot()["failed"] == 2


def test_xdist_and_verbose_lines_count_one_test_each() -> None:
    seen = TestProgress()
    seen.feed(b"[gw0] [ 25%] PASSED tests/test_a.py::test_one \n")
    seen.feed(b"[gw1] [ 50%] FAILED tests/test_a.py::test_two \n")
    seen.feed(b"tests/test_b.py::test_three ERROR                           [ 75%]\n")
    assert seen.snapshot()["share"] == 75
    assert seen.snapshot()["failed"] == 2


def test_another_runner_shows_only_how_long_it_has_run() -> None:
    seen = TestProgress()
    seen.feed(b"Ran 12 tests in 0.3s\n\nOK\n12 passed, 0 failed\nEEE\n")
    shown = seen.snapshot()
    assert set(shown) == {"seconds"}
    assert shown["seconds"] >= 0


def test_a_ticker_reports_while_its_block_runs_and_never_after() -> None:
    said: list[int] = []
    with Ticker(0.05, lambda: said.append(len(said))) as ticker:
        while len(said) < 3:
            time.sleep(0.01)
    reports = len(said)
    time.sleep(0.2)
    assert ticker.reports == reports == len(said) >= 3
