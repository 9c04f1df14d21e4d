"""The plan's estimate counts what the update will spend (both phases' tests, the restart,
the watch window), and its steps are the ones the progress counts."""

from __future__ import annotations

import redis

from pipeline.config import Settings
from pipeline.planning import deploys as planning
from pipeline.planning import estimates
from pipeline.queue.targets import Target
from pipeline.update import jobs
from tests.support import ServiceRepo


def test_with_no_past_update_the_estimate_counts_both_phases_the_restart_and_the_watch(
    settings: Settings, conn: redis.Redis
) -> None:
    watched = settings.model_copy(update={"watch_seconds": 60.0})
    seconds, basis = estimates.estimate(Target(watched, conn), {"seconds": 20.0})
    assert seconds is not None and seconds >= 2 * 20 + 60 + 10
    assert "watch window" in basis


def test_the_plans_steps_are_the_steps_the_progress_counts(
    settings: Settings, conn: redis.Redis, service: ServiceRepo
) -> None:
    service.commit({"notes.txt": "v2\n"}, "v2")
    for window in (0.0, 60.0):
        view = settings.model_copy(update={"watch_seconds": window})
        plan = planning.plan_deploy(view, conn, "main")
        assert len(plan.tasks) == len(jobs.steps_of(view, jobs.PHASES))
        assert (plan.tasks[-1]["name"] == "watch") == (window > 0)
