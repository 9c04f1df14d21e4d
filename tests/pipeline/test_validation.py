"""Validation phases run against real test commands: failed tests run once more, flaky ones
(failed, then passed) are named, and MOLT_FLAKY decides whether they fail the phase."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import FLAKY_FAIL, FLAKY_PASS
from pipeline.sandbox.validation import PhaseResult, PhaseSpec, run_phase
from tests.support import fails_once

PYTEST = "python -m pytest -q -p no:cacheprovider"
STEADY = "def test_one():\n    pass\n\n\ndef test_two():\n    pass\n"


def _service(root: Path, files: dict[str, str]) -> Path:
    root.mkdir()
    for name, text in files.items():
        (root / name).write_text(text)
    return root


def _phase(
    root: Path, command: str, flaky: str, baseline: int | None = None, log: Path | None = None
) -> PhaseResult:
    spec = PhaseSpec(command, timeout=120, flaky=flaky)
    return run_phase(
        "phase 1", root, spec, changed_files=[], baseline_passed=baseline, log_path=log
    )


def test_a_test_that_fails_once_fails_the_phase_by_default_and_is_named_flaky(
    tmp_path: Path,
) -> None:
    root = _service(
        tmp_path / "svc",
        {"test_steady.py": STEADY, "test_flaky.py": fails_once(tmp_path / "svc" / "ran")},
    )
    result = _phase(root, PYTEST, FLAKY_FAIL)
    assert not result.ok
    assert result.flaky == ["test_flaky.py::test_sometimes"]
    assert "flaky (failed, then passed when run again): test_flaky.py::test_sometimes" in (
        result.reason
    )
    assert "MOLT_FLAKY=fail" in result.reason


def test_with_flaky_pass_the_phase_passes_and_counts_the_rerun_passes(tmp_path: Path) -> None:
    root = _service(
        tmp_path / "svc",
        {"test_steady.py": STEADY, "test_flaky.py": fails_once(tmp_path / "svc" / "ran")},
    )
    log = tmp_path / "phase1.log"
    result = _phase(root, PYTEST, FLAKY_PASS, baseline=3, log=log)
    assert result.ok, result.reason
    assert result.flaky == ["test_flaky.py::test_sometimes"]
    assert result.passed == 3
    [tests, count] = [c for c in result.checks if c.name in ("tests", "passing tests")]
    assert "flaky" in tests.detail and "test_flaky.py::test_sometimes" in tests.detail
    assert count.ok and count.detail == "3 now, 3 before"
    # Only the failed test ran again.
    assert f"$ {PYTEST} test_flaky.py::test_sometimes" in log.read_text()


def test_a_test_that_always_fails_is_not_called_flaky(tmp_path: Path) -> None:
    broken = "def test_broken():\n    assert 1 + 1 == 3\n"
    root = _service(tmp_path / "svc", {"test_steady.py": STEADY, "test_broken.py": broken})
    result = _phase(root, PYTEST, FLAKY_PASS)
    assert not result.ok
    assert result.flaky == []
    assert "flaky" not in result.reason
    assert "failed again when run again: test_broken.py::test_broken" in result.reason


def test_another_runner_runs_again_whole_and_is_named_by_its_command(tmp_path: Path) -> None:
    marker = tmp_path / "svc" / "ran"
    runner = (
        "import pathlib, sys\n"
        f"marker = pathlib.Path({str(marker)!r})\n"
        "if not marker.exists():\n"
        "    marker.touch()\n"
        "    print('4 passed, 1 failed')\n"
        "    sys.exit(1)\n"
        "print('5 passed, 0 failed')\n"
    )
    root = _service(tmp_path / "svc", {"run_checks.py": runner})
    result = _phase(root, "python run_checks.py", FLAKY_PASS, baseline=5)
    assert result.ok, result.reason
    assert result.flaky == ["python run_checks.py"]
    assert result.passed == 5


@pytest.mark.slow
def test_a_timeout_or_a_stop_is_never_run_again(tmp_path: Path) -> None:
    runs = tmp_path / "svc" / "runs"
    slow = f"import time\nopen({str(runs)!r}, 'a').write('run\\n')\ntime.sleep(60)\n"
    root = _service(tmp_path / "svc", {"slow.py": slow})
    # The shell notes the run, so a Python slow to start on a busy machine still counts.
    spec = PhaseSpec(f"echo run >> {runs} && sleep 60", timeout=2, flaky=FLAKY_PASS)
    timed_out = run_phase("phase 1", root, spec, changed_files=[], baseline_passed=None)
    assert "did not finish within 2.0 s and was stopped" in timed_out.reason
    assert runs.read_text() == "run\n"

    runs.unlink()
    spec = PhaseSpec("python slow.py", timeout=60, flaky=FLAKY_PASS)
    stopped = run_phase(
        "phase 1",
        root,
        spec,
        changed_files=[],
        baseline_passed=None,
        stop=lambda: runs.exists(),
    )
    assert "was stopped" in stopped.reason
    assert runs.read_text() == "run\n"
