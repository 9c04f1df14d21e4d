"""What an operator watching Molt sees, end to end with real Molt processes, workers and
the embedded Redis: /metrics added up over every process, the logs, the status page."""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tests.support import Molt, ServiceRepo

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
