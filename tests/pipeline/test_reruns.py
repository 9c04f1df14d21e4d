"""What runs again after a failed test command: pytest's failed node ids appended to a
plain pytest invocation, or the whole command; and which tests then count as flaky."""

from __future__ import annotations

from pipeline.sandbox.reruns import Rerun, failed_tests, is_plain_pytest, judge, plan_rerun

SUMMARY = """\
..F.E.                                                                   [100%]
=========================== short test summary info ============================
FAILED tests/test_a.py::test_two - AssertionError: assert 1 == 2
FAILED tests/test_a.py::test_param[1-x] - ValueError
ERROR tests/test_b.py::test_setup - RuntimeError: no database
2 failed, 3 passed, 1 error in 0.20s
"""


def test_failed_node_ids_come_from_the_short_summary() -> None:
    assert failed_tests(SUMMARY) == (
        "tests/test_a.py::test_two",
        "tests/test_a.py::test_param[1-x]",
        "tests/test_b.py::test_setup",
    )


def test_a_plain_pytest_command_runs_only_what_failed() -> None:
    rerun = plan_rerun("python -m pytest -q -n 2", SUMMARY, 1)
    assert rerun.only_failed
    assert rerun.command == (
        "python -m pytest -q -n 2 tests/test_a.py::test_two "
        "'tests/test_a.py::test_param[1-x]' tests/test_b.py::test_setup"
    )


def test_shell_operators_other_runners_and_cut_short_runs_run_whole() -> None:
    assert not is_plain_pytest("cd src && pytest -q")
    assert not is_plain_pytest("pytest -q | tee log")
    assert not is_plain_pytest("FOO=1 pytest")
    assert not is_plain_pytest("python service_tests.py")
    assert is_plain_pytest("pytest -q") and is_plain_pytest(".venv/bin/python3.12 -m pytest")
    for command, output, code in (
        ("make test", SUMMARY, 1),
        ("pytest -x", SUMMARY + "!!!!!!! stopping after 1 failures !!!!!!!\n", 1),
        ("pytest", "ERROR tests/test_c.py - SyntaxError\n1 error in 0.1s\n", 2),
        ("pytest", SUMMARY, 2),
    ):
        rerun = plan_rerun(command, output, code)
        assert rerun.command == command and not rerun.only_failed


def test_flaky_are_the_failures_that_passed_and_a_test_failing_again_is_not() -> None:
    rerun = Rerun("pytest a::x a::y", ("a::x", "a::y"), True)
    assert judge(rerun, True, "2 passed") == (("a::x", "a::y"), ())
    assert judge(rerun, False, "FAILED a::y - boom\n1 failed, 1 passed") == (("a::x",), ("a::y",))
    assert judge(rerun, False, "no summary at all") == ((), ("a::x", "a::y"))


def test_a_runner_that_names_no_tests_is_named_by_its_command() -> None:
    rerun = plan_rerun("python service_tests.py", "0 passed, 1 failed\n", 1)
    assert judge(rerun, True, "1 passed, 0 failed") == (("python service_tests.py",), ())
    assert judge(rerun, False, "0 passed, 1 failed") == ((), ("python service_tests.py",))
