"""What an operator watching Molt sees: /metrics added up over every process and the logs
(with ``molt``'s real processes, workers and the embedded Redis), and the status page (the
bot in the test's process, tests/integration/inprocess.py)."""

from __future__ import annotations

import http.client
import json
import re
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fakes.alerts import Alertmanager, alertmanager_alert, alertmanager_payload
from tests.integration.inprocess import StartBot
from tests.support import Molt, ServiceRepo, run_cli

StartMolt = Callable[..., Molt]
V2 = {"app.py": "def greet():\n    return 'hello'\n\n\nVERSION = 2\n"}
BROKEN = {"checks/test_broken.py": "def test_broken():\n    assert 1 + 1 == 3, 'broken'\n"}


def _port(molt: Molt) -> int:
    return int(molt.wait_for(r"Molt \S+ is up on port (\d+)").group(1))


def _get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def _sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample, its labels in any order; 0 when it is not there."""
    for line in text.splitlines():
        found = re.match(rf"^{name}\{{(.*)\}} (\S+)$", line)
        if found and all(f'{k}="{v}"' in found.group(1).split(",") for k, v in labels.items()):
            return float(found.group(2))
    return 0.0


@pytest.mark.slow
def test_metrics_add_up_the_bot_its_http_server_and_the_workers_horses(
    service: ServiceRepo, start_molt: StartMolt, data_dir: Path
) -> None:
    """An update that lands and one rolled back in phase 1, counted by the work horses that
    ran them (processes gone by the scrape), timed per phase, beside what Redis says now."""
    service.commit(V2, "v2")
    molt = start_molt()
    port = _port(molt)
    since = molt.send("deploy main")
    molt.send("press approve")
    molt.wait_for(r"✅ Live: ", since=since)
    service.commit(BROKEN, "a broken test")
    since = molt.send("deploy main")
    molt.send("press approve")
    molt.wait_for(r"❌ Failed: ", since=since)
    status, text = _get(port, "/metrics")
    assert status == 200
    finished = {"platform": "console", "kind": "deploy"}
    assert _sample(text, "molt_requests_total", state="succeeded", **finished) == 1
    assert _sample(text, "molt_requests_total", state="failed", **finished) == 1
    assert _sample(text, "molt_rollbacks_total", phase="phase 1", cause="checks") == 1
    assert _sample(text, "molt_update_seconds_count", outcome="succeeded") == 1
    assert _sample(text, "molt_update_seconds_count", outcome="failed") == 1
    for phase in ("snapshot", "sandbox", "phase 1", "apply", "phase 2", "restart"):
        assert _sample(text, "molt_phase_seconds_count", phase=phase) >= 1, phase
    assert _sample(text, "molt_check_seconds_count", check="tests", outcome="failed") == 1
    assert _sample(text, "molt_restarts_total") == 1
    assert _sample(text, "molt_release_live") >= 1
    assert _sample(text, "molt_event_delivery_seconds_count", platform="console") > 0
    assert re.search(r"^molt_queue_length\{target=\S+\} 0\.0$", text, re.M)
    assert re.search(r"^molt_events_pending \d", text, re.M)
    assert re.search(r"^molt_uptime_seconds \d", text, re.M)
    for line in text.splitlines():  # label values are bounded: no request id, no codename
        assert not re.search(r'"r[0-9a-f]{8}"', line), line

    _logs_are_json_with_the_update_bound(data_dir)


def _logs_are_json_with_the_update_bound(data_dir: Path) -> None:
    """Written to files (not a terminal), every process's log is JSON, one event a line;
    what the job logs names its request, codename, target and phase."""
    events = []
    for name in ("molt.log", "workers.log"):
        for line in (data_dir / name).read_text().splitlines():
            events.append(json.loads(line))
    failed = [e for e in events if e.get("event") == "update failed"]
    assert failed, events
    assert failed[0]["phase"] == "phase 1"
    assert re.fullmatch(r"r[0-9a-f]{8}", failed[0]["request_id"])
    assert failed[0]["codename"] and failed[0]["target"]


TOKEN = "ui-token-4f1d9c2e"


def _page(port: int, path: str) -> tuple[int, str]:
    return _get(port, path, {"Authorization": f"Bearer {TOKEN}"})


def _login(port: int, link: str) -> tuple[int, str]:
    """Open a one-time link without following its redirect: the status and the cookie."""
    path = link.split(str(port), 1)[1]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        reply = conn.getresponse()
        reply.read()
        return reply.status, (reply.getheader("set-cookie") or "").split(";")[0]
    finally:
        conn.close()


def test_the_status_page_draws_each_phase_and_names_the_step_that_failed(
    service: ServiceRepo, start_bot: StartBot, molt_env: dict[str, str], tmp_path: Path
) -> None:
    service.commit(V2, "v2")
    molt = start_bot(console=True, MOLT_UI="true", MOLT_UI_TOKEN=TOKEN)
    port = molt.port
    since = molt.type("deploy main")
    molt.type("press approve")
    landed = molt.transcript.wait_for(r"✅ Live: (\S+)", since=since).group(1)
    service.commit(BROKEN, "a broken test")
    since = molt.type("deploy main")
    molt.type("press approve")
    broken = molt.transcript.wait_for(r"❌ Failed: (\S+)", since=since).group(1)
    since = molt.type(f"deploy {TOKEN}")  # a secret in a request's text is never shown
    molt.transcript.wait_for(r"❌ Failed: ", since=since)  # no such ref: it ends at once

    assert _get(port, "/")[0] == 401
    assert _get(port, "/", {"Authorization": "Bearer wrong"})[0] == 401
    status, index = _page(port, "/")
    assert status == 200
    assert "Nothing is running" in index and "The line is empty" in index
    assert landed in index and "succeeded" in index and "failed" in index
    assert re.search(r"verifies</span> \d+ entries", index)
    assert "signed</span>" in index
    assert TOKEN not in index

    [failed] = re.findall(rf'href="/requests/(r[0-9a-f]{{8}})">{re.escape(broken)}</a>', index)
    status, page = _page(port, f"/requests/{failed}")
    assert status == 200
    phases = re.findall(r'data-phase="([^"]+)"', page)
    assert phases == [
        "sandbox",
        "phase 1",
        "snapshot",
        "apply",
        "phase 2",
        "restart",
        "verify",
        "watch",
    ]  # no rollback: phase 1 fails before the snapshot, with nothing to return
    assert re.search(r"Failed in phase 1: .*test", page)
    rows = dict(re.findall(r'data-phase="([^"]+)">.*?class="outcome (\w+)"', page, re.S))
    assert rows["sandbox"] == "passed" and rows["phase 1"] == "failed"
    assert rows["snapshot"] == rows["apply"] == rows["restart"] == "skipped"
    assert "byte-compile" in page  # the checks table
    assert 'http-equiv="refresh"' not in page  # it ended: nothing to refresh

    made = run_cli(molt_env, tmp_path, "ui-link", MOLT_UI="true", MOLT_UI_TOKEN=TOKEN)
    assert made.returncode == 0, made.stderr
    link = made.stdout.split()[0]
    opened, cookie = _login(port, link)
    assert opened == 303 and cookie.startswith("molt_ui=")
    assert _get(port, "/", {"Cookie": cookie})[0] == 200
    assert _login(port, link)[0] == 401  # once only


ALERT_TOKEN = "am-token-9c1e"


@pytest.mark.slow
def test_an_incident_and_the_watch_window_show_on_the_page_and_in_the_metrics(
    service: ServiceRepo, start_molt: StartMolt
) -> None:
    """An update watched after its restart draws its watch bar; an alert's incident is open
    on the index and counted, and the alert's ack is timed in the HTTP process (with
    ``molt``'s processes: the metrics of the test's own process add up over its tests)."""
    service.commit(V2, "v2")
    molt = start_molt(
        MOLT_UI="true",
        MOLT_UI_TOKEN=TOKEN,
        MOLT_ALERT_TOKEN=ALERT_TOKEN,
        MOLT_WATCH_SECONDS="0.5",
        MOLT_WATCH_INTERVAL="0.25",
    )
    port = _port(molt)
    since = molt.send("deploy main")
    molt.send("press approve")
    molt.wait_for(r"✅ Live: ", since=since)
    url = f"http://127.0.0.1:{port}/alerts/alertmanager"
    payload = alertmanager_payload([alertmanager_alert("7d2e", summary="HTTP 500s above 5%")])
    after = len(molt.lines)
    assert Alertmanager(url, ALERT_TOKEN).send(payload)[1] == {"accepted": 1, "duplicates": 0}
    molt.wait_for(r"Approve rollback", since=after)

    _, index = _page(port, "/")
    assert "Open incidents (1)" in index and "HTTP 500s above 5%" in index
    landed = re.search(
        r'href="/requests/(r[0-9a-f]{8})">\S+</a></td>\s*<td><span class="state succeeded"', index
    )
    assert landed
    _, page = _page(port, f"/requests/{landed.group(1)}")
    rows = dict(re.findall(r'data-phase="([^"]+)">.*?class="outcome (\w+)"', page, re.S))
    assert rows["restart"] == "passed" and rows["watch"] == "passed"
    _, text = _get(port, "/metrics")
    assert _sample(text, "molt_incidents_total", source="alertmanager") == 1
    assert _sample(text, "molt_incidents_open") == 1
    assert _sample(text, "molt_ack_seconds_count", front="alerts") == 1
    assert _sample(text, "molt_phase_seconds_count", phase="watch") == 1
