"""The one way back to a commit (pipeline/service/rollback.py ``return_to``), on a real live
checkout with real signed releases: what it leaves on disk, what it signs, what it reports,
and where a failure midway leaves things."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import redis

from pipeline.config import Settings
from pipeline.exceptions import UpdateFailed
from pipeline.git import Git
from pipeline.releases import ledger
from pipeline.releases import signing as releases
from pipeline.releases.manifests import ReleaseKind
from pipeline.releases.verification import verify_checkout
from pipeline.service import restart, snapshots
from pipeline.service.rollback import Trail, return_to
from pipeline.service.snapshots import Snapshot
from pipeline.update.repair import Step
from tests.support import ServiceRepo, git

V2 = {"app.py": "def greet():\n    return 'howdy'\n", "extra.py": "X = 1\n"}
#: A restart command that records the greeting of the code it restarted.
RECORD = "import pathlib, sys; pathlib.Path(sys.argv[1]).write_text(open('app.py').read())"


def _updated(settings: Settings, conn: redis.Redis, service: ServiceRepo) -> tuple[Snapshot, str]:
    """The live checkout signed as a baseline and snapshotted, then moved to a new commit
    signed as an update and left with a stray file: what a failed update leaves."""
    assert verify_checkout(settings, conn, baseline=True).allowed
    snapshot = snapshots.take(Git(service.live))
    new = service.commit(V2, "v2")
    git(service.live, "pull", "-q", "--ff-only")
    releases.sign_release(
        settings, conn, kind=ReleaseKind.UPDATE, commit=new, parent=snapshot.commit, codename="v2"
    )
    (service.live / "left-behind.txt").write_text("written by the update\n")
    return snapshot, new


def test_the_way_back_restores_the_commit_exactly_signs_a_rollback_and_restarts_on_it(
    settings: Settings, conn: redis.Redis, service: ServiceRepo, tmp_path: Path
) -> None:
    snapshot, new = _updated(settings, conn, service)
    seen = tmp_path / "restarted-on.txt"
    restarting = settings.model_copy(
        update={"restart_command": f'{sys.executable} -c "{RECORD}" {seen}'}
    )
    trail = Trail(log_dir=tmp_path, started=0.0)

    return_to(
        restarting,
        conn,
        snapshot,
        "update v2 failed in verify: it did not answer",
        trail,
        request_id="r-v2",
        bring_back=lambda commit: restart.bring_back(restarting, conn, commit, tmp_path / "r.log"),
    )

    assert service.live_head() == snapshot.commit
    assert git(service.live, "branch", "--show-current") == "main"
    assert service.live_status() == ""  # the stray file is gone, nothing is modified
    assert seen.read_text() == "def greet():\n    return 'hello'\n"  # restarted on the old code
    back = ledger.read(settings, conn).good[-1]
    assert back.kind is ReleaseKind.ROLLBACK
    assert (back.target_commit, back.parent_commit) == (snapshot.commit, new)
    assert back.reason == "update v2 failed in verify: it did not answer"
    assert back.request_id == "r-v2"
    assert [(c["name"], c["ok"]) for c in trail.checks] == [
        ("rollback release", True),
        ("rollback", True),
        ("restart after rollback", True),
    ]
    assert trail.checks[0]["detail"].endswith(f"key {back.key_id}")
    assert trail.checks[1]["detail"] == f"back on {snapshot.short}"
    assert trail.checks[2]["detail"].startswith("restarted in ")


def test_a_restart_that_fails_on_the_way_back_is_reported_and_leaves_the_commit_restored(
    settings: Settings, conn: redis.Redis, service: ServiceRepo, tmp_path: Path
) -> None:
    snapshot, new = _updated(settings, conn, service)
    failing = settings.model_copy(
        update={"restart_command": f"{sys.executable} -c \"print('no port'); exit(3)\""}
    )
    step = Step("release")

    with pytest.raises(UpdateFailed) as failed:
        return_to(
            failing,
            conn,
            snapshot,
            "molt recover: update v2 stopped half-done",
            step,
            bring_back=lambda commit: restart.bring_back(failing, conn, commit, tmp_path / "r.log"),
            returned="returned the live checkout to where it was",
        )

    assert "restart command exited 3: no port" in failed.value.reason
    assert not step.ok
    assert step.lines[1:] == [
        "returned the live checkout to where it was",
        f"restart after rollback failed: on {snapshot.short}: restart command exited 3: no port",
    ]
    assert step.lines[0].startswith("release 3 (") and ", rollback by molt)" in step.lines[0]
    # The steps before the failure stay done: the checkout is back and its return signed, so
    # the next start on it is no downgrade.
    assert service.live_head() == snapshot.commit and service.live_status() == ""
    newest = ledger.read(settings, conn).good[-1]
    assert (newest.kind, newest.target_commit, newest.parent_commit) == (
        ReleaseKind.ROLLBACK,
        snapshot.commit,
        new,
    )
    assert verify_checkout(settings, conn).allowed


def test_a_return_to_the_newest_release_signs_nothing_and_a_restore_that_fails_is_reported(
    settings: Settings, conn: redis.Redis, service: ServiceRepo, tmp_path: Path
) -> None:
    assert verify_checkout(settings, conn, baseline=True).allowed
    here = snapshots.take(Git(service.live))
    (service.live / "app.py").write_text("broken = True\n")
    trail = Trail(log_dir=tmp_path, started=0.0)

    return_to(settings, conn, here, "nothing newer", trail)

    assert [(c["name"], c["ok"]) for c in trail.checks] == [("rollback", True)]
    assert service.live_status() == "" and len(ledger.read(settings, conn).good) == 1

    gone = Snapshot(commit="0" * 40, branch="main", taken_at=0.0)
    with pytest.raises(UpdateFailed):
        return_to(settings, conn, gone, "to a commit that does not exist", trail)
    name, ok, detail = (trail.checks[-1][k] for k in ("name", "ok", "detail"))
    assert (name, ok) == ("rollback", False) and detail.startswith("restoring snapshot 0000000")
    assert service.live_head() == here.commit and service.live_status() == ""
