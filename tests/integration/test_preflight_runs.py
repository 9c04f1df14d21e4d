"""The pre-flight test run, as a person meets it through the console: started with Molt, shown
on the plan while it runs, and waited for by the approved update in another process."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support import Molt, ServiceRepo, wait_for_file

StartMolt = Callable[..., Molt]


def _gated_tests(runs: Path, gate: Path, head: str) -> str:
    """The service's tests; at ``head`` each run is noted in ``runs`` and waits for ``gate``."""
    return (
        f'if [ "$(git rev-parse HEAD)" = {head} ]; then echo run >> {runs}; '
        f"while [ ! -e {gate} ]; do sleep 0.05; done; fi; python service_tests.py"
    )


@pytest.mark.slow
def test_the_plan_shows_the_run_molt_started_and_the_approved_update_waits_for_it(
    service: ServiceRepo, start_molt: StartMolt, tmp_path: Path
) -> None:
    runs, gate = tmp_path / "runs", tmp_path / "gate"
    head = service.live_head()
    new = service.commit({"app.py": "def greet():\n    return 'hello'\n\n\nVERSION = 2\n"}, "v2")
    molt = start_molt(MOLT_TEST_COMMAND=_gated_tests(runs, gate, head))
    molt.wait_for(r"Molt \S+ is up")
    wait_for_file(runs, molt)  # nobody asked for anything yet
    since = molt.send("deploy main")
    molt.wait_for(r"📋 Plan ready", since=since)
    molt.wait_for(rf"Tests at `{head[:7]}`:\W* running", since=since)
    molt.send("press approve")
    molt.wait_for(r"waiting for the pre-flight test run", since=since)
    gate.touch()
    molt.wait_for(r"✅ Live: ", since=since)
    assert service.live_head() == new
    assert runs.read_text().splitlines() == ["run"], "the update joined the run at start-up"
