"""Snapshots of the live checkout and the sandbox worktree (pipeline/service/snapshots.py),
on real git: what a snapshot records, that returning to one leaves nothing of the update
behind, and that the sandbox is an exact copy of the commit it is asked for."""

from __future__ import annotations

import fcntl
from pathlib import Path

import pytest

from pipeline.exceptions import RollbackFailed, UpdateFailed
from pipeline.git import Git
from pipeline.service import snapshots
from pipeline.service.snapshots import Sandbox, Snapshot
from tests.support import ServiceRepo, git


def test_a_snapshot_records_the_commit_and_branch_and_survives_a_round_trip(
    service: ServiceRepo,
) -> None:
    live = Git(service.live)
    taken = snapshots.take(live)
    assert (taken.commit, taken.branch) == (service.live_head(), "main")
    assert Snapshot.from_dict(taken.to_dict()) == taken
    assert taken.short == taken.commit[:7]


def test_a_dirty_live_checkout_cannot_be_snapshotted_and_says_which_files(
    service: ServiceRepo,
) -> None:
    (service.live / "app.py").write_text("edited by hand\n")
    (service.live / "notes.txt").write_text("left here\n")
    with pytest.raises(UpdateFailed) as failed:
        snapshots.take(Git(service.live))
    assert "uncommitted changes" in str(failed.value)
    assert "app.py" in str(failed.value) and "notes.txt" in str(failed.value)


def test_restoring_returns_every_file_and_removes_what_the_update_added(
    service: ServiceRepo,
) -> None:
    live = Git(service.live)
    before = snapshots.take(live)
    new = service.commit({"app.py": "VERSION = 2\n", "added.py": "x = 1\n"}, "v2")
    live.run("fetch", "--quiet", "origin")
    snapshots.move_to(live, new, "main")
    (service.live / "stray.txt").write_text("written by the update's restart\n")
    (service.live / "__pycache__").mkdir()
    (service.live / "__pycache__" / "app.pyc").write_bytes(b"ignored")

    seconds = snapshots.restore(live, before)

    assert seconds >= 0
    assert service.live_head() == before.commit
    assert git(service.live, "branch", "--show-current") == "main"
    assert service.live_status() == ""
    assert not (service.live / "added.py").exists()
    assert not (service.live / "stray.txt").exists()
    assert (service.live / "__pycache__" / "app.pyc").exists()  # ignored files stay


def test_a_detached_snapshot_is_returned_to_detached(service: ServiceRepo) -> None:
    live = Git(service.live)
    first = service.live_head()
    live.run("checkout", "--quiet", "--detach", first)
    taken = snapshots.take(live)
    assert taken.branch == ""
    new = service.commit({"app.py": "VERSION = 2\n"}, "v2")
    live.run("fetch", "--quiet", "origin")
    snapshots.move_to(live, new, "")
    snapshots.restore(live, taken)
    assert service.live_head() == first
    assert git(service.live, "branch", "--show-current") == ""


def test_a_restore_that_cannot_reach_the_snapshot_says_so(service: ServiceRepo) -> None:
    live = Git(service.live)
    missing = Snapshot(commit="0" * 40, branch="main", taken_at=0.0)
    with pytest.raises(RollbackFailed) as failed:
        snapshots.restore(live, missing)
    assert "restoring snapshot 0000000" in str(failed.value)


def test_the_sandbox_is_an_exact_copy_of_the_commit_asked_for(
    service: ServiceRepo, tmp_path: Path
) -> None:
    live = Git(service.live)
    old = service.live_head()
    new = service.commit({"app.py": "VERSION = 2\n"}, "v2")
    live.run("fetch", "--quiet", "origin")
    sandbox = Sandbox(live, tmp_path / "sandbox")

    path = sandbox.checkout(new)
    (path / "left.txt").write_text("from the last run\n")
    (path / "__pycache__").mkdir()
    assert (path / "app.py").read_text() == "VERSION = 2\n"

    sandbox.checkout(old)  # reused: no second worktree, nothing of the last run
    assert git(path, "rev-parse", "HEAD") == old
    assert not (path / "left.txt").exists() and not (path / "__pycache__").exists()
    assert service.live_head() == old  # the live checkout never moved


def test_the_sandbox_lock_tells_a_waiting_run_it_is_busy(
    service: ServiceRepo, tmp_path: Path
) -> None:
    sandbox = Sandbox(Git(service.live), tmp_path / "sandbox")
    assert not sandbox.busy()
    with sandbox.locked():
        assert sandbox.busy()
        with open(f"{sandbox.path}.lock", "w") as other, pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert not sandbox.busy()


def test_a_sandbox_whose_worktree_was_deleted_is_made_again(
    service: ServiceRepo, tmp_path: Path
) -> None:
    live = Git(service.live)
    sandbox = Sandbox(live, tmp_path / "sandbox")
    sandbox.prepare()
    head = service.live_head()
    assert git(sandbox.path, "rev-parse", "HEAD") == head
    (sandbox.path / ".git").unlink()  # someone removed the worktree's link by hand
    assert sandbox.checkout(head) == sandbox.path
    assert git(sandbox.path, "rev-parse", "HEAD") == head
