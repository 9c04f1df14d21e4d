"""Operating Molt, end to end: the operator controls in the console and in the shell,
the autonomy modes and limits, and `molt recover`, with real Molt processes, workers,
the embedded Redis and real git repositories."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from pipeline import store
from pipeline.config import load_settings
from pipeline.requests import RequestStore
from pipeline.states import RequestState as S
from tests.support import (
    Molt,
    ServiceRepo,
    hang_on_live,
    run_cli,
    update_processes,
    wait_for_file,
)

StartMolt = Callable[..., Molt]
V2 = {"app.py": "def greet():\n    return 'hello'\n\n\nVERSION = 2\n"}
V3 = {"app.py": "def greet():\n    return 'hello'\n\n\nVERSION = 3\n"}


def _up(molt: Molt) -> Molt:
    molt.wait_for(r"Molt \S+ is up")
    return molt


def _store(data_dir: Path) -> RequestStore:
    return RequestStore(store.connect(load_settings(data_dir=data_dir)))


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie may stay until the system reaps it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def test_an_emergency_stop_during_phase_one_rolls_back_and_clears_the_queue(
    service: ServiceRepo, start_molt: StartMolt, data_dir: Path, tmp_path: Path
) -> None:
    started = tmp_path / "tests-started"
    endless = (
        "import os, pathlib, time\n\n\ndef test_endless():\n"
        f"    pathlib.Path({str(started)!r}).write_text(str(os.getpid()))\n"
        "    time.sleep(600)\n"
    )
    old = service.live_head()
    service.commit({"checks/test_endless.py": endless}, "tests that never end", branch="slow")
    service.commit(V2, "fine", branch="fine")
    molt = _up(start_molt())
    first = molt.send("deploy slow")
    molt.wait_for(r"📋 Plan ready", since=first)
    molt.send("press approve")
    wait_for_file(started, molt)  # phase 1 runs the endless test in the sandbox
    second = molt.send("deploy fine")
    molt.wait_for(r"📋 Plan ready", since=second)
    molt.send("press approve")
    molt.wait_for(r"🕒 Queued", since=second)

    stop = molt.send("stop")
    codename = molt.wait_for(
        r"Emergency stop: update (\S+) will roll back at its next safe point; "
        r"1 queued request\(s\) cleared\.",
        since=stop,
    ).group(1)
    molt.wait_for(rf"\[{codename}\] ❌ Failed: {codename}", since=stop)
    # The console names its people by name; Redis keeps the principal (below).
    molt.wait_for(r"Failed during phase 1: emergency stop by alice\b", since=stop)
    molt.wait_for(r"cleared from the queue by an emergency stop \(alice\)", since=stop)
    assert not _running(int(started.read_text()))  # the test command was killed
    assert service.live_head() == old
    assert service.live_status() == ""
    states = {r.argument: (r.state, r.message) for r in _store(data_dir).recent(2)}
    assert states["slow"] == (S.FAILED, "emergency stop by console:alice")
    assert states["fine"][0] is S.FAILED


def test_pause_holds_approved_updates_until_resume_and_rollback_returns(
    service: ServiceRepo, start_molt: StartMolt, data_dir: Path
) -> None:
    old = service.live_head()
    new = service.commit(V2, "v2")
    molt = _up(start_molt())
    paused = molt.send("pause")
    molt.wait_for(r"Paused: no new update will start until `resume`", since=paused)
    since = molt.send("deploy main")
    molt.wait_for(r"📋 Plan ready", since=since)  # requests still get plans
    molt.send("press approve")
    molt.wait_for(r"🕒 Queued", since=since)
    status = molt.send("status")
    molt.wait_for(r"Updates are paused: approved requests wait until `resume`", since=status)
    molt.wait_for(r"Nothing is running", since=status)
    [request] = _store(data_dir).recent(1)
    assert request.state is S.QUEUED
    assert service.live_head() == old

    resumed = molt.send("resume")
    molt.wait_for(r"Resumed: queued updates will start in turn", since=resumed)
    codename = molt.wait_for(r"✅ Live: (\S+)", since=resumed).group(1)
    assert service.live_head() == new

    back = molt.send(f"rollback {codename}")
    molt.wait_for(r"📋 Plan ready", since=back)
    molt.wait_for(r"a downgrade", since=back)
    molt.send("press approve")
    molt.wait_for(r"✅ Live: ", since=back)
    assert service.live_head() == old
    assert service.live_status() == ""


def test_observe_mode_makes_plans_that_nothing_can_run(
    service: ServiceRepo, start_molt: StartMolt, data_dir: Path
) -> None:
    old = service.live_head()
    service.commit(V2, "v2")
    molt = _up(start_molt(MOLT_AUTONOMY="observe", MOLT_CONSOLE_WAIT="2"))
    since = molt.send("deploy main")
    molt.wait_for(r"📋 Plan ready", since=since)
    molt.wait_for(
        r"Observe mode is on \(MOLT_AUTONOMY=observe\): this plan is for reading", since=since
    )
    molt.wait_for(r"\[Reject\] \[Request changes\]", since=since)
    pressed = molt.send("press approve")
    molt.wait_for(r"no request shows a approve button", since=pressed)
    assert "[Approve]" not in molt.output
    [request] = _store(data_dir).recent(1)
    assert request.state is S.PLAN_READY
    assert service.live_head() == old


def test_auto_mode_lands_a_low_risk_plan_itself_and_leaves_medium_risk_to_a_person(
    service: ServiceRepo,
    start_molt: StartMolt,
    data_dir: Path,
    molt_env: dict[str, str],
    tmp_path: Path,
) -> None:
    new = service.commit(V2, "v2")
    molt = _up(start_molt(MOLT_AUTONOMY="auto"))
    since = molt.send("deploy main")
    molt.wait_for(r"Low risk: Molt approves this plan itself \(MOLT_AUTONOMY=auto\)", since=since)
    molt.wait_for(r"Approved by molt:auto", since=since)
    codename = molt.wait_for(r"✅ Live: (\S+)", since=since).group(1)
    assert service.live_head() == new
    trail = run_cli(molt_env, tmp_path, "history", codename)
    assert trail.returncode == 0
    assert any("molt:auto" in line and "approved" in line for line in trail.stdout.splitlines())

    service.commit({"requirements.txt": "redis>=5\n"}, "a new dependency")
    again = molt.send("deploy main")
    molt.wait_for(r"this one needs an approver", since=again)
    molt.wait_for(r"\[Approve\] \[Reject\]", since=again)
    [request] = _store(data_dir).recent(1)
    assert request.state is S.PLAN_READY
    assert service.live_head() == new


def test_semi_mode_shows_phase_one_results_before_approval_and_still_runs_both_phases(
    service: ServiceRepo, start_molt: StartMolt
) -> None:
    old = service.live_head()
    new = service.commit(V2, "v2")
    molt = _up(start_molt(MOLT_AUTONOMY="semi"))
    since = molt.send("deploy main")
    molt.wait_for(r"Phase 1, run before approval \(MOLT_AUTONOMY=semi\): passed", since=since)
    molt.wait_for(r"✓ tests: 1 passed", since=since)
    molt.wait_for(r"\[Approve\]", since=since)
    assert service.live_head() == old
    molt.send("press approve")
    molt.wait_for(r"✅ Live: ", since=since)
    assert service.live_head() == new
    assert "phase 1: tests" in molt.output and "phase 2: tests" in molt.output


def test_the_daily_limit_and_a_switched_off_component_block_with_a_clear_message(
    service: ServiceRepo, start_molt: StartMolt, data_dir: Path
) -> None:
    new = service.commit(V2, "v2")
    molt = _up(start_molt(MOLT_MAX_CHANGES_PER_DAY="1", MOLT_ALLOW_CHANGES="false"))
    since = molt.send("deploy main")
    molt.send("press approve")
    molt.wait_for(r"✅ Live: ", since=since)
    service.commit(V3, "v3")
    again = molt.send("deploy main")
    molt.wait_for(r"⛔ Blocked", since=again)
    molt.wait_for(
        r"MOLT_MAX_CHANGES_PER_DAY=1\): 1 update started in the last 24 hours", since=again
    )
    status = molt.send("status")
    molt.wait_for(r"Updates started in 24 h: 1 of 1", since=status)
    molt.wait_for(r"Switched off: MOLT_ALLOW_CHANGES=false", since=status)
    change = molt.send("add a ping command")
    molt.wait_for(
        r"change requests in words are switched off here \(MOLT_ALLOW_CHANGES=false\)",
        since=change,
    )
    assert service.live_head() == new
    assert [r.state for r in _store(data_dir).recent(3)] == [S.BLOCKED, S.BLOCKED, S.SUCCEEDED]


def test_operator_controls_from_the_shell_act_as_the_console_operator(
    service: ServiceRepo,
    start_molt: StartMolt,
    data_dir: Path,
    molt_env: dict[str, str],
    tmp_path: Path,
) -> None:
    old = service.live_head()
    new = service.commit(V2, "v2")
    molt = _up(start_molt())
    since = molt.send("deploy main")
    molt.wait_for(r"📋 Plan ready", since=since)
    review = molt.send("review")
    molt.wait_for(r"Waiting for a person: 1", since=review)
    molt.wait_for(r"waits for approval · LOW risk · asked by alice", since=review)
    shown = run_cli(molt_env, tmp_path, "review")
    assert shown.returncode == 0, shown.stderr
    assert "Waiting for a person: 1" in shown.stdout
    assert "waits for approval · LOW risk · asked by alice" in shown.stdout

    paused = run_cli(molt_env, tmp_path, "pause")
    assert paused.returncode == 0, paused.stderr
    assert "Paused: no new update will start until `resume`" in paused.stdout
    assert "Molt status: paused" in run_cli(molt_env, tmp_path, "status").stdout
    molt.send("press approve")
    molt.wait_for(r"🕒 Queued", since=since)
    resumed = run_cli(molt_env, tmp_path, "resume")
    assert resumed.returncode == 0 and "Resumed" in resumed.stdout
    codename = molt.wait_for(r"✅ Live: (\S+)", since=since).group(1)
    assert service.live_head() == new

    rollback = run_cli(molt_env, tmp_path, "rollback", codename)
    assert rollback.returncode == 0, rollback.stderr
    assert "📋 Plan ready" in rollback.stdout and "a downgrade" in rollback.stdout
    [planned] = _store(data_dir).recent(1)
    assert planned.text == f"rollback {codename}" and planned.state is S.PLAN_READY
    assert f"press approve {planned.id}" in rollback.stdout
    molt.wait_for(rf"\[{planned.id}\] 📋 Plan ready", since=since)
    pressed = molt.send(f"press approve {planned.id}")
    molt.wait_for(r"✅ Live: ", since=pressed)
    assert service.live_head() == old

    stopped = run_cli(molt_env, tmp_path, "stop")
    assert stopped.returncode == 0
    assert "Emergency stop: no update was running; 0 queued request(s) cleared." in stopped.stdout
    nothing = run_cli(molt_env, tmp_path, "rollback", "no-such-update")
    assert nothing.returncode == 1
    assert "found no successful update 'no-such-update' to roll back" in nothing.stderr

    refused = run_cli(molt_env, tmp_path, "pause", MOLT_CONSOLE_USER="mallory")
    assert refused.returncode == 1
    assert "console:mallory may not pause: only operators may do that" in refused.stderr
    assert "Molt status: paused" not in run_cli(molt_env, tmp_path, "status").stdout
    trail = run_cli(molt_env, tmp_path, "history")
    assert trail.returncode == 0


@pytest.mark.own_redis  # the trail the embedded Redis kept on disk, read by a server started again
def test_audit_verify_names_the_first_broken_entry(
    service: ServiceRepo,
    start_molt: StartMolt,
    data_dir: Path,
    molt_env: dict[str, str],
    tmp_path: Path,
) -> None:
    service.commit(V2, "v2")
    molt = _up(start_molt())
    since = molt.send("deploy main")
    molt.wait_for(r"📋 Plan ready", since=since)
    molt.stop()
    intact = run_cli(molt_env, tmp_path, "audit", "verify")
    assert intact.returncode == 0 and "audit chain intact" in intact.stdout
    # Every Molt process has stopped, and the embedded Redis with them: tamper with the
    # trail it kept on disk, through a server started again on the same data.
    sock = store.ensure_embedded(data_dir)
    conn = redis.Redis(unix_socket_path=str(sock), decode_responses=True)
    entry = json.loads(conn.lindex("molt:audit", 2) or "{}")
    entry["actor"] = "console:mallory"
    conn.lset("molt:audit", 2, json.dumps(entry, sort_keys=True))
    conn.close()
    broken = run_cli(molt_env, tmp_path, "audit", "verify")
    assert broken.returncode == 1
    assert "audit chain broken at entry #2: entry was altered" in broken.stderr


def test_recover_returns_a_molt_killed_mid_update_to_its_snapshot(
    service: ServiceRepo,
    start_molt: StartMolt,
    data_dir: Path,
    molt_env: dict[str, str],
    tmp_path: Path,
) -> None:
    started = tmp_path / "phase2-started"
    hang = hang_on_live(service.live, started)
    old = service.live_head()
    new = service.commit({"checks/test_hang.py": hang}, "hangs in phase 2")
    molt = _up(start_molt())
    molt.send("deploy main")
    molt.send("press approve")
    wait_for_file(started, molt)
    assert service.live_head() == new  # the live checkout was moved to the update
    # All of Molt dies at once (a power cut, an OOM killer): nothing is left to roll back.
    for group in {*update_processes(data_dir), molt.proc.pid}:
        os.killpg(group, signal.SIGKILL)
    molt.stop()
    [request] = _store(data_dir).recent(1)
    assert request.state is S.RUNNING

    recovered = run_cli(molt_env, tmp_path, "recover")
    assert recovered.returncode == 0, recovered.stdout + recovered.stderr
    out = recovered.stdout
    assert "✓ config" in out and "✓ release" in out and "✓ requests" in out
    assert (
        f"returned the live checkout from {new[:7]} on main to {old[:7]} on main: the snapshot "
        f"update {request.codename} took before it stopped half-done in phase 2"
    ) in out
    assert (
        f"ended {request.codename} (running): its update stopped during phase 2 and no worker "
        f"runs it any more; the live checkout was returned to its snapshot {old[:7]}"
    ) in out
    assert out.rstrip().endswith("molt recover: done")
    assert service.live_head() == old
    assert service.live_status() == ""
    ended = _store(data_dir).get(request.id)
    assert ended.state is S.FAILED and ended.message.startswith("ended by molt recover: ")

    again = run_cli(molt_env, tmp_path, "recover")
    assert again.returncode == 0
    assert "no update was left half-done" in again.stdout
    assert "consistent: 0 open request(s) left" in again.stdout


def test_molt_run_keeps_a_config_backup_that_recover_restores(
    service: ServiceRepo,
    start_molt: StartMolt,
    data_dir: Path,
    molt_env: dict[str, str],
    tmp_path: Path,
) -> None:
    config = tmp_path / "molt.toml"
    config.write_text('MOLT_REFUSAL_THEME = "butler"\n')
    molt = _up(start_molt(MOLT_CONFIG=str(config)))
    molt.stop()
    [backup] = (data_dir / "config-backup").glob("molt.toml.*")
    assert backup.read_text() == 'MOLT_REFUSAL_THEME = "butler"\n'

    config.write_text('MOLT_REFUSAL_THEME = "pirate"\n')
    fixed = run_cli(molt_env, tmp_path, "recover", MOLT_CONFIG=str(config))
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert f"{config} did not load (invalid configuration: MOLT_REFUSAL_THEME" in fixed.stdout
    assert f"restored it from {backup}" in fixed.stdout
    assert config.read_text() == 'MOLT_REFUSAL_THEME = "butler"\n'

    for saved in (data_dir / "config-backup").iterdir():
        saved.unlink()
    config.write_text("MOLT_REFUSAL_THEME = \n")
    unfixable = run_cli(molt_env, tmp_path, "recover", MOLT_CONFIG=str(config))
    assert unfixable.returncode == 1
    assert "✗ config" in unfixable.stdout and "there is no backup" in unfixable.stdout
    assert "the settings do not load, so it stops here" in unfixable.stderr
