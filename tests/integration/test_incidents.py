"""Incidents: Molt's bot in the test's process (tests/integration/inprocess.py) with its
console, HTTP server, log watcher and health probes, RQ jobs, real git, and alerts from
senders shaped like Alertmanager's. Production errors start the work: the update that
landed last is rolled back first."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pipeline import store
from pipeline.config import load_settings
from pipeline.requests.states import RequestState as S
from pipeline.requests.store import RequestStore
from tests.fakes.alerts import Alertmanager, alertmanager_alert, alertmanager_payload
from tests.integration.inprocess import StartBot
from tests.support import ServiceRepo

#: A release that passes its tests, and fails every request it serves once live.
FAILS_LIVE = {
    "app.py": (
        "def greet():\n    return 'hello'\n\n\n"
        "def handle(request_id):\n    return {'user': request_id} [request_id]\n"
    )
}
TOKEN = "am-secret-token"


def _serve_requests(live: Path, log: Path, count: int) -> None:
    """The live service answering ``count`` requests, each logging its traceback."""
    with log.open("a") as out:
        for n in range(count):
            subprocess.run(
                [sys.executable, "-c", f"from app import handle; handle({1000 + n})"],
                cwd=live,
                stderr=out,
                check=False,
            )


def _requests(data_dir: Path) -> RequestStore:
    return RequestStore(store.connect(load_settings(data_dir=data_dir)))


def test_a_release_that_logs_exceptions_once_live_is_rolled_back_on_its_own_in_auto_mode(
    service: ServiceRepo, start_bot: StartBot, data_dir: Path, tmp_path: Path
) -> None:
    log = tmp_path / "service.log"
    log.write_text("service started\n")
    old = service.live_head()
    new = service.commit(FAILS_LIVE, "serve requests")
    molt = start_bot(console=True, MOLT_AUTONOMY="auto", MOLT_WATCH_LOG=str(log))
    since = molt.type("deploy main")
    codename = molt.transcript.wait_for(r"✅ Live: (\S+)", since=since).group(1)
    assert service.live_head() == new

    after = len(molt.transcript.lines)
    _serve_requests(service.live, log, 5)  # MOLT_INCIDENT_THRESHOLD: 5 in 300 s
    molt.transcript.wait_for(r"🚨 Incident i\w+: KeyError", since=after)
    molt.transcript.wait_for(rf"update {codename} is the suspect", since=after)
    molt.transcript.wait_for(r"✅ Live: ", since=after)
    assert service.live_head() == old
    assert service.live_status() == ""
    [rollback, deploy] = _requests(data_dir).recent(2)
    assert (rollback.command, rollback.state, rollback.approver) == (
        "rollback",
        S.SUCCEEDED,
        "molt:auto",
    )
    assert deploy.codename == codename
    # The recovery path is fast: the old release passed its tests here, so they do not run again.
    checks = {c["name"] for c in (rollback.result or {}).get("checks", [])}
    assert {"phase 1: tests remembered", "phase 2: tests remembered"} <= checks


def test_an_alertmanager_alert_offers_approve_rollback_and_the_press_returns_the_old_release(
    service: ServiceRepo, start_bot: StartBot, data_dir: Path
) -> None:
    old = service.live_head()
    service.commit(FAILS_LIVE, "serve requests")
    molt = start_bot(console=True, MOLT_ALERT_TOKEN=TOKEN)
    port = molt.port
    since = molt.type("deploy main")
    molt.transcript.wait_for(r"📋 Plan ready", since=since)
    molt.type("press approve")
    molt.transcript.wait_for(r"✅ Live: ", since=since)

    url = f"http://127.0.0.1:{port}/alerts/alertmanager"
    payload = alertmanager_payload([alertmanager_alert("5f1c2a", summary="HTTP 500s above 5%")])
    assert Alertmanager(url, "wrong").send(payload)[0] == 401
    after = len(molt.transcript.lines)
    assert Alertmanager(url, TOKEN).send(payload)[1] == {"accepted": 1, "duplicates": 0}
    assert Alertmanager(url, TOKEN).send(payload)[1] == {"accepted": 0, "duplicates": 1}
    press = molt.transcript.wait_for(
        r"\[Approve rollback\]   \(type: (press approve r\w+)\)", since=after
    )
    assert service.live_head() != old  # nothing happens before a person approves
    molt.type(press.group(1))
    molt.transcript.wait_for(r"✅ Live: ", since=after)
    assert service.live_head() == old
    resolved = alertmanager_payload(
        [alertmanager_alert("5f1c2a", status="resolved")], status="resolved"
    )
    assert Alertmanager(url, TOKEN).send(resolved)[0] == 200
    molt.transcript.wait_for(r"✅ Resolved: incident i\w+", since=after)
    rollbacks = [r for r in _requests(data_dir).recent(10) if r.command == "rollback"]
    assert len(rollbacks) == 1


def test_an_incident_in_the_watch_window_rolls_the_watched_update_back(
    service: ServiceRepo, start_bot: StartBot, data_dir: Path, tmp_path: Path
) -> None:
    log = tmp_path / "service.log"
    log.write_text("")
    old = service.live_head()
    service.commit(FAILS_LIVE, "serve requests")
    watch = {"MOLT_WATCH_SECONDS": "60", "MOLT_WATCH_INTERVAL": "1"}
    molt = start_bot(console=True, MOLT_WATCH_LOG=str(log), **watch)
    since = molt.type("deploy main")
    molt.transcript.wait_for(r"📋 Plan ready", since=since)
    molt.type("press approve")
    molt.transcript.wait_for(r"👀 Watching", since=since)
    _serve_requests(service.live, log, 5)
    molt.transcript.wait_for(r"its watch window rolls it back on its own", since=since)
    molt.transcript.wait_for(
        r"Failed during watch: an incident on the target in the watch window", since=since
    )
    assert service.live_head() == old
    [request] = _requests(data_dir).recent(1)  # no rollback of its own: the watch did it
    assert (request.command, request.state, request.phase) == ("deploy", S.FAILED, "watch")


def test_failing_health_while_idle_is_an_incident_and_a_pass_resolves_it(
    service: ServiceRepo, start_bot: StartBot
) -> None:
    molt = start_bot(console=True, MOLT_HEALTH_INTERVAL="0.3", MOLT_HEALTH_FAILURES="2")
    after = len(molt.transcript.lines)
    marker = service.live / "UNHEALTHY"  # the service's health command fails while it exists
    marker.touch()
    molt.transcript.wait_for(r"🚨 Incident i\w+: 2 health checks failed in a row", since=after)
    molt.transcript.wait_for(r"no automatic action: no update landed", since=after)
    marker.unlink()
    molt.transcript.wait_for(r"✅ Resolved: incident i\w+", since=after)
