"""End to end through the console chat: real Molt, real workers, real Redis and git."""

from __future__ import annotations

from collections.abc import Callable

from tests.support import Molt, ServiceRepo


def test_deploy_lands_after_approval_and_reports_success(
    service: ServiceRepo, start_molt: Callable[..., Molt]
) -> None:
    new = service.commit({"app.py": "def greet():\n    return 'hello'\n\n\nVERSION = 2\n"}, "v2")
    molt = start_molt()
    molt.wait_for(r"Molt \S+ is up")
    since = molt.send("deploy main")
    molt.wait_for(r"Plan ready", since=since)
    molt.send("press approve")
    molt.wait_for(r"✅ Live: ", since=since)
    assert service.live_head() == new
    assert service.live_status() == ""
