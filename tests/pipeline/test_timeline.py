"""pipeline/requests/timeline.py: an update's phases read back from its audit trail."""

from __future__ import annotations

from typing import Any

from pipeline.requests.states import RequestState as S
from pipeline.requests.store import Origin, Request
from pipeline.requests.timeline import timeline


def _moved(
    at: float, to: str, phase: str, message: str = "", was: str = "running"
) -> dict[str, Any]:
    detail = {"from": was, "to": to, "phase": phase, "message": message}
    return {"at": at, "action": to, "detail": detail}


def _started(at: float) -> dict[str, Any]:
    """The job taking its turn: into running from the line, in its first phase."""
    return _moved(at, "running", "sandbox", was="queued")


def _request(state: S, command: str = "deploy") -> Request:
    return Request("r00000001", Origin("console", "alice"), "deploy v2", command, "v2", state)


def test_a_running_update_ends_at_now_and_only_its_last_attempt_is_drawn() -> None:
    entries = [
        {"at": 1.0, "action": "received", "detail": {}},
        _started(2.0),
        _moved(3.0, "failed", "phase 1", "first attempt"),  # then Retry
        _started(10.0),
        _moved(12.5, "running", "phase 1"),
    ]
    drawn = timeline(_request(S.RUNNING), entries, now=20.0)
    assert drawn.running and drawn.total == 10.0 and not drawn.failed_phase
    bars = {bar.phase: bar for bar in drawn.bars}
    assert [b.phase for b in drawn.bars][:4] == ["sandbox", "phase 1", "snapshot", "apply"]
    assert "implement" not in bars  # a deploy writes nothing
    assert (bars["sandbox"].seconds, bars["sandbox"].outcome) == (2.5, "passed")
    assert (bars["phase 1"].start, bars["phase 1"].seconds) == (2.5, 7.5)
    assert bars["phase 1"].outcome == "running" and bars["snapshot"].outcome == "skipped"
    scaled = {bar["phase"]: bar for bar in drawn.scaled()}
    assert scaled["phase 1"]["left"] == 25.0 and scaled["phase 1"]["width"] == 75.0


def test_a_failure_marks_its_phase_with_the_reason_and_the_rollback_follows() -> None:
    entries = [
        _started(0.0),
        _moved(1.0, "running", "implement"),
        _moved(5.0, "running", "phase 1"),
        _moved(5.5, "running", "snapshot"),
        _moved(6.0, "running", "apply"),
        _moved(7.0, "restarting", "restart"),
        _moved(9.0, "running", "rollback"),
        _moved(12.0, "failed", "verify", "health command still failing after 2s"),
    ]
    drawn = timeline(_request(S.FAILED, "change"), entries, now=99.0)
    assert not drawn.running and drawn.total == 12.0
    assert drawn.failed_phase == "verify"
    bars = {bar.phase: bar for bar in drawn.bars}
    assert bars["implement"].seconds == 4.0
    assert bars["verify"].outcome == "failed"
    assert bars["verify"].reason == "health command still failing after 2s"
    assert bars["verify"].start == 9.0  # where the rollback began
    assert bars["rollback"].outcome == "rollback" and bars["rollback"].seconds == 3.0
    assert bars["phase 2"].outcome == "skipped"


def test_a_change_proposed_as_a_pull_request_ends_at_propose() -> None:
    entries = [
        _started(1.0),
        _moved(2.0, "running", "implement"),
        _moved(6.0, "running", "phase 1"),
        _moved(8.0, "running", "propose"),
        _moved(9.0, "proposed", "done", "proposed as a pull request"),
    ]
    drawn = timeline(_request(S.PROPOSED, "change"), entries, now=50.0)
    assert [bar.phase for bar in drawn.bars] == ["sandbox", "implement", "phase 1", "propose"]
    assert all(bar.outcome == "passed" for bar in drawn.bars) and drawn.total == 8.0
