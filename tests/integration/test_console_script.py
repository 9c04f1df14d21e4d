"""A script piped into ``molt console``: it ends once every request it started has ended
or waits for a person, and never before its approved update ran."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from bot.app import WORKER_KILL_WAIT
from tests.support import Molt, ServiceRepo

StartMolt = Callable[..., Molt]


@pytest.mark.slow
def test_a_piped_console_stays_until_its_approved_deploy_has_run(
    service: ServiceRepo, start_molt: StartMolt
) -> None:
    new = service.commit({"app.py": "def greet():\n    return 'hello'\n\n\nVERSION = 2\n"}, "v2")
    # longer than a stop gives a worker before it kills the job
    molt = start_molt(
        MOLT_WORKER_GRACE="1",
        MOLT_RESTART_COMMAND=f"sleep {1 + WORKER_KILL_WAIT + 1:.0f}",
    )
    molt.send("deploy main")
    molt.send("press approve")
    molt.close_input()
    assert molt.proc.wait(timeout=240) == 0
    molt.stop()
    assert service.live_head() == new
    assert "✅ Live: " in molt.output


def test_the_readme_example_ends_saying_there_is_nothing_to_deploy(
    service: ServiceRepo, start_molt: StartMolt
) -> None:
    old = service.live_head()
    molt = start_molt()
    molt.send("deploy main")
    molt.send("press approve")
    molt.close_input()
    assert molt.proc.wait(timeout=240) == 0
    molt.stop()
    assert "nothing to deploy" in molt.output
    assert service.live_head() == old
