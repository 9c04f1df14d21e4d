"""The status page tells an update as it went: each step it passed (verify too), a blocked
request's pre-flight with its checks, times to the minute, and the release that is live."""

from __future__ import annotations

import re

import redis

from bot.ui import StatusPage
from pipeline import metrics
from pipeline.config import Settings
from pipeline.intake import approval
from pipeline.intake import flow as intake
from pipeline.requests.states import RequestState as S
from pipeline.requests.store import Origin, RequestStore
from pipeline.update import jobs
from tests.support import ServiceRepo

ALICE = Origin("console", "alice")
ROW = re.compile(r'data-phase="([^"]+)">.*?class="outcome (\w+)"', re.S)


def _ui(settings: Settings) -> Settings:
    return settings.model_copy(update={"ui": True})


def test_a_landed_update_shows_every_step_passed_and_its_release_live(
    settings: Settings, conn: redis.Redis, service: ServiceRepo
) -> None:
    service.commit({"extra.py": "VALUE = 1\n"}, "one Python file")
    request = intake.submit(settings, conn, ALICE, "deploy", "main", "deploy main")
    assert approval.approve(settings, conn, request.id, Origin("console", "bob"))
    turn = jobs.wait_for_turn(settings, conn)
    assert turn is not None
    jobs.Update(settings, conn, turn[0]).run(turn[1])
    assert RequestStore(conn).get(request.id).state is S.SUCCEEDED

    page = StatusPage(_ui(settings), conn)
    drawn = page.render_request(request.id)
    assert drawn is not None
    rows = dict(ROW.findall(drawn))
    assert rows["restart"] == rows["verify"] == "passed"
    assert "1 file<" in drawn or "1 file " in drawn or "1 file\n" in drawn
    assert "1 files" not in drawn
    index = page.render_index()
    assert re.search(r"<td>\d+ <span class=\"state ok\">live</span></td>", index)
    assert not re.search(r"\d\d:\d\d:\d\d\.\d+", index)  # no microseconds


def test_a_single_target_is_named_after_its_directory_on_the_page_and_in_the_metrics(
    settings: Settings, conn: redis.Redis, service: ServiceRepo
) -> None:
    service.commit({"extra.py": "VALUE = 1\n"}, "one Python file")
    request = intake.submit(settings, conn, ALICE, "deploy", "main", "deploy main")
    assert approval.approve(settings, conn, request.id, Origin("console", "bob"))
    turn = jobs.wait_for_turn(settings, conn)
    assert turn is not None
    jobs.Update(settings, conn, turn[0]).run(turn[1])
    name = service.live.name
    assert settings.target_name == name
    index = StatusPage(_ui(settings), conn).render_index()
    assert f'data-target="{name}"' in index and settings.target_id not in index
    text = metrics.exposition(metrics.Readings())[0].decode()
    assert f'molt_restarts_total{{target="{name}"}}' in text
    assert settings.target_id not in text


def test_a_blocked_request_shows_its_pre_flight_and_the_checks_it_ran(
    settings: Settings, conn: redis.Redis, service: ServiceRepo
) -> None:
    (service.live / "scratch.txt").write_text("left behind\n")
    blocked = intake.submit(settings, conn, ALICE, "deploy", "main", "deploy main")
    assert blocked.state is S.BLOCKED
    drawn = StatusPage(_ui(settings), conn).render_request(blocked.id)
    assert drawn is not None
    assert dict(ROW.findall(drawn))["pre-flight"] == "failed"
    assert "No checks were run" not in drawn
    assert "clean checkout" in drawn
