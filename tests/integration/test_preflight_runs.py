"""The pre-flight test run, as a person meets it through the console: started with Molt,
joined by the first request, and shown while it runs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.support import Molt, ServiceRepo, wait_for_file

StartMolt = Callable[..., Molt]


def _slow_tests(runs: Path, seconds: int) -> str:
    """The service's tests, taking ``seconds`` longer, each run noted in ``runs``."""
    return f"echo run >> {runs} && sleep {seconds} && python service_tests.py"


def test_the_tests_run_as_molt_starts_and_the_first_request_joins_that_run(
    service: ServiceRepo, start_molt: StartMolt, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    head = service.live_head()
    service.commit({"app.py": "def greet():\n    return 'hello'\n\n\nVERSION = 2\n"}, "v2")
    # The runs are noted outside the checkout, out of a sandbox's sight.
    molt = start_molt(MOLT_TEST_COMMAND=_slow_tests(runs, 6), MOLT_SANDBOX="off")
    molt.wait_for(r"Molt \S+ is up")
    wait_for_file(runs, molt)  # nobody asked for anything yet
    since = molt.send("deploy main")
    molt.wait_for(rf"Waiting for the tests: the tests at {head[:7]} have been running", since=since)
    molt.wait_for(r"📋 Plan ready", since=since)
    assert runs.read_text().splitlines() == ["run"], "the request joined the run at start-up"
