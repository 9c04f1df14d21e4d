"""Operating Molt, end to end: ``molt`` at a shell acting on a running bot, and `molt
recover` after all of Molt was killed, with real Molt processes, workers, the embedded
Redis and real git repositories. The console's operator controls and the autonomy modes
run in-process (tests/pipeline/test_rollback.py, test_jobs.py, test_autonomy.py)."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline import store
from pipeline.config import load_settings
from pipeline.requests.states import RequestState as S
from pipeline.requests.store import RequestStore
from tests.desk import molt as in_process
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


@pytest.mark.slow
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
    shown = in_process("review", env=molt_env)
    assert shown.returncode == 0, shown.stderr
    assert "Waiting for a person: 1" in shown.stdout
    assert "waits for approval · LOW risk · asked by alice" in shown.stdout

    paused = in_process("pause", env=molt_env)
    assert paused.returncode == 0, paused.stderr
    assert "Paused: no new update will start until `resume`" in paused.stdout
    assert "Molt status: paused" in in_process("status", env=molt_env).stdout
    molt.send("press approve")
    molt.wait_for(r"🕒 Queued", since=since)
    resumed = in_process("resume", env=molt_env)
    assert resumed.returncode == 0 and "Resumed" in resumed.stdout
    codename = molt.wait_for(r"✅ Live: (\S+)", since=since).group(1)
    assert service.live_head() == new

    rollback = run_cli(molt_env, tmp_path, "rollback", codename)
    assert rollback.returncode == 0, rollback.stderr
    assert "📋 Plan ready" in rollback.stdout
    assert f"Rollback of {codename}: back to" in rollback.stdout
    [planned] = _store(data_dir).recent(1)
    assert planned.text == f"rollback {codename}" and planned.state is S.PLAN_READY
    assert f"press approve {planned.id}" in rollback.stdout
    molt.wait_for(rf"\[{planned.id}\] 📋 Plan ready", since=since)
    pressed = molt.send(f"press approve {planned.id}")
    molt.wait_for(r"✅ Live: ", since=pressed)
    assert service.live_head() == old


@pytest.mark.slow
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

    recovered = in_process("recover", env=molt_env)
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

    again = in_process("recover", env=molt_env)
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
    _up(start_molt(MOLT_CONFIG=str(config))).stop()
    [backup] = (data_dir / "config-backup").glob("molt.toml.*")
    assert backup.read_text() == 'MOLT_REFUSAL_THEME = "butler"\n'

    config.write_text('MOLT_REFUSAL_THEME = "pirate"\n')
    fixed = in_process("recover", env={**molt_env, "MOLT_CONFIG": str(config)})
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert f"{config} did not load (invalid configuration: MOLT_REFUSAL_THEME" in fixed.stdout
    assert f"restored it from {backup}" in fixed.stdout
    assert config.read_text() == 'MOLT_REFUSAL_THEME = "butler"\n'

    for saved in (data_dir / "config-backup").iterdir():
        saved.unlink()
    config.write_text("MOLT_REFUSAL_THEME = \n")
    unfixable = in_process("recover", env={**molt_env, "MOLT_CONFIG": str(config)})
    assert unfixable.returncode == 1
    assert "✗ config" in unfixable.stdout and "there is no backup" in unfixable.stdout
    assert "the settings do not load, so it stops here" in unfixable.stderr
