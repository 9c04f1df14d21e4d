"""pipeline/metrics.py: samples of many processes added up, surviving the processes that
wrote them, with bounded label values."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

from pipeline import metrics
from tests.support import ROOT

RECORD = textwrap.dedent(
    """
    import os, sys
    from pipeline import metrics
    metrics.request_finished("console", "deploy", "succeeded")
    metrics.rolled_back("molt-1", "phase 1", "tests failed: 1 failed")
    clock = metrics.PhaseClock("molt-1")
    clock.enter("snapshot")
    clock.enter("phase 1")
    clock.end("succeeded")
    metrics.release_live("molt-1", int(sys.argv[1]))
    if sys.argv[2] == "exec":
        os.execv(sys.executable, [sys.executable, "-c", sys.argv[3], sys.argv[1], "done"])
    """
)


def _record(folder: Path, release: int, exec_again: bool = False) -> None:
    """A process of its own recording an update (re-executing itself once if asked)."""
    args = [str(release), "exec" if exec_again else "once", RECORD]
    subprocess.run(
        [sys.executable, "-c", RECORD, *args],
        env={**os.environ, metrics.ENV: str(folder), "PYTHONPATH": str(ROOT)},
        check=True,
        timeout=60,
    )


def _scrape(folder: Path) -> str:
    os.environ[metrics.ENV] = str(folder)
    body, media_type = metrics.exposition(metrics.Readings(queue_length={"molt-1": 2}))
    assert media_type.startswith("text/plain")
    return body.decode()


def test_samples_of_processes_that_ended_or_re_executed_are_added_up(tmp_path: Path) -> None:
    folder = metrics.prepare(tmp_path / "data")
    _record(folder, 3)
    _record(folder, 4, exec_again=True)  # the same pid writes twice, across an exec
    text = _scrape(folder)
    assert 'molt_requests_total{kind="deploy",platform="console",state="succeeded"} 3.0' in text
    assert 'molt_rollbacks_total{cause="checks",phase="phase 1",target="molt-1"} 3.0' in text
    assert 'molt_phase_seconds_count{phase="snapshot",target="molt-1"} 3.0' in text
    assert 'molt_update_seconds_count{outcome="succeeded",target="molt-1"} 3.0' in text
    assert 'molt_release_live{target="molt-1"} 4.0' in text
    assert 'molt_queue_length{target="molt-1"} 2.0' in text


def test_tidy_folds_the_files_of_processes_that_are_gone_and_keeps_their_counts(
    tmp_path: Path,
) -> None:
    folder = metrics.prepare(tmp_path / "data")
    for release in (1, 2, 3):
        _record(folder, release)
    before = _scrape(folder)
    assert len(list(folder.glob("counter_*.db"))) == 3
    assert metrics.tidy() == 3
    assert [p.name for p in folder.glob("counter_*.db")] == ["counter_archive.db"]
    after = _scrape(folder)
    assert 'molt_requests_total{kind="deploy",platform="console",state="succeeded"} 3.0' in after
    assert 'molt_release_live{target="molt-1"} 3.0' in after
    assert sorted(before.splitlines()) == sorted(after.splitlines())
    assert metrics.tidy() == 0


def test_label_values_stay_bounded() -> None:
    """Free text, ids and long names never become label values."""
    assert metrics.word("tests") == "tests"
    assert metrics.word("release:downgrade") == "release:downgrade"
    assert metrics.word("r1a2b3c4 said: please deploy $(rm -rf /) now!!") == "other"
    assert metrics.word("") == "other"
    assert metrics.cause_of("phase 2", "emergency stop by console:alice") == "stop"
    assert metrics.cause_of("phase 2", "tests: 1 failed") == "checks"
    assert metrics.cause_of("verify", "health command `x` still failing after 5s") == "timeout"
    assert metrics.cause_of("restart", "restart command exited 1: boom") == "unhealthy"


def test_a_worker_host_serves_its_own_samples_on_its_metrics_port(tmp_path: Path) -> None:
    """A fleet's worker on a host without the bot: MOLT_METRICS_PORT; a second process on
    the same host finds the port taken and leaves it to the first."""
    folder = metrics.prepare(tmp_path / "data")
    _record(folder, 7)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = metrics.serve("127.0.0.1", port)
    try:
        assert metrics.serve("127.0.0.1", port) is None
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
        assert 'molt_release_live{target="molt-1"} 7.0' in text
    finally:
        server.shutdown()
        server.server_close()


def test_every_metric_the_grafana_dashboard_asks_for_is_one_molt_serves() -> None:
    metrics._m()  # every metric, with no sample yet
    body, _ = metrics.exposition(metrics.Readings())
    served = set()
    for line in body.decode().splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            served |= {name} | (
                {f"{name}_bucket", f"{name}_count", f"{name}_sum"} if kind == "histogram" else set()
            )
    dashboard = json.loads((ROOT / "grafana" / "molt-dashboard.json").read_text())
    asked = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\bmolt_[a-z_]+", target["expr"])
    }
    assert asked and asked <= served, asked - served
    assert {"molt_requests_total", "molt_phase_seconds_bucket", "molt_ack_seconds_bucket"} <= asked


def test_threads_recording_their_first_metric_at_once_build_the_metrics_once(
    tmp_path: Path,
) -> None:
    """The desk's threads may each record first: the metrics are built once, none fails
    (in a process of its own, whose metrics are not built yet)."""
    race = textwrap.dedent(
        """
        import threading
        from pipeline import metrics
        gate, failed = threading.Barrier(8), []
        def record():
            gate.wait()
            try:
                metrics.refused("tests")
            except BaseException as exc:
                failed.append(repr(exc))
        threads = [threading.Thread(target=record) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        print(failed or "none failed")
        """
    )
    for _ in range(5):
        ran = subprocess.run(
            [sys.executable, "-c", race],
            env={
                **os.environ,
                metrics.ENV: str(metrics.prepare(tmp_path)),
                "PYTHONPATH": str(ROOT),
            },
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert ran.stdout.strip() == "none failed", ran.stdout + ran.stderr


def test_rollouts_are_counted_by_step_outcome_and_timed(tmp_path: Path) -> None:
    folder = metrics.prepare(tmp_path / "data")
    record = (
        "from pipeline import metrics\n"
        "metrics.rollout_step('web', 'succeeded')\n"
        "metrics.rollout_step('web', 'rolled_back')\n"
        "metrics.rollout_step('web', 'failed')\n"
        "metrics.rollout_finished('web', 'failed', 42.0)\n"
    )
    subprocess.run(
        [sys.executable, "-c", record],
        env={**os.environ, metrics.ENV: str(folder), "PYTHONPATH": str(ROOT)},
        check=True,
        timeout=60,
    )
    text = _scrape(folder)
    for outcome in ("succeeded", "rolled_back", "failed"):
        assert f'molt_rollout_steps_total{{outcome="{outcome}",rollout="web"}} 1.0' in text
    assert 'molt_rollout_seconds_count{outcome="failed",rollout="web"} 1.0' in text
