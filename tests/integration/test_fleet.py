"""A fleet: two targets on one Redis server (the embedded one, reached by REDIS_URL).

End to end, each target's "host" is a worker process with a working directory, a data
directory and a checkout of its own, and the bot has no checkout of either (its molt.toml
names directories that do not exist): the updates run where their checkouts are, at once,
and a worker killed with -9 is recovered by its target's next one. The other scenarios run
the bot in the test's process (tests/integration/inprocess.py) with the hosts' molt.toml,
each target's jobs on a thread of their own, registered as its worker."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import time
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest

from bot import cli
from pipeline import store
from pipeline.config import load_settings
from pipeline.requests.states import RequestState as S
from pipeline.requests.store import RequestStore
from tests.integration.inprocess import InProcessBot
from tests.integration.inprocess import wait_for_file as wait_for_in_process
from tests.support import Molt, ServiceRepo, hang_on_live, wait_for_file

V2 = {"app.py": "def greet():\n    return 'hello'\n\n\nVERSION = 2\n"}
FLEET = """
[targets.api]
dir = "{api}"
test_command = "python service_tests.py"
approvers = ["console:alice", "console:ann"]
operators = ["console:alice", "console:ann"]

[targets.web]
dir = "{web}"
test_command = "python service_tests.py"
approvers = ["console:alice", "console:wes"]
operators = ["console:alice", "console:wes"]
"""


@dataclass
class Fleet:
    root: Path
    api: ServiceRepo
    web: ServiceRepo
    env: dict[str, str]
    started: list[Molt]
    hosts_config: Path  # the workers' molt.toml
    monkeypatch: pytest.MonkeyPatch
    in_process: list[InProcessBot]

    def start(self, *args: str, where: str = "bot", **env: str) -> Molt:
        """A Molt process in a directory (a "host") of its own, with its own data dir."""
        host = self.root / where
        (host / "data").mkdir(parents=True, exist_ok=True)
        molt = Molt(list(args), {**self.env, "MOLT_DATA_DIR": str(host / "data"), **env}, host)
        self.started.append(molt)
        return molt

    def worker(self, target: str) -> Molt:
        return self.workers(target)[0]

    def workers(self, *targets: str) -> list[Molt]:
        """Workers of ``targets``, started at once (each takes a second or more to import),
        serving once each says so."""
        started = [
            self.start(
                "worker", "--target", t, where=f"host-{t}", MOLT_CONFIG=str(self.hosts_config)
            )
            for t in targets
        ]
        for target, worker in zip(targets, started, strict=True):
            worker.wait_for(rf"molt-updates:{target}")
        return started

    def bot_and_workers(self) -> tuple[Molt, Molt, Molt]:
        """The bot and a worker of each target, started at once: the bot needs no worker
        until a plan, and each takes a second or more to start."""
        molt = self.start("console")
        api_worker, web_worker = self.workers("api", "web")
        molt.wait_for(r"Molt \S+ is up")
        return molt, api_worker, web_worker

    def bot_in_process(self, targets: list[str] | None = None, **env: str) -> InProcessBot:
        """The bot with its console in this process, with the hosts' molt.toml; the jobs of
        ``targets`` (default: all) run here, and the other targets have no worker."""
        data = self.root / "bot" / "data"
        data.mkdir(parents=True, exist_ok=True)
        every = {**self.env, "MOLT_DATA_DIR": str(data), "MOLT_CONFIG": str(self.hosts_config)}
        for name, value in {**every, "MOLT_WORKERS": "0", **env}.items():
            self.monkeypatch.setenv(name, value)
        bot = InProcessBot(load_settings(), console=True, targets=targets)
        self.in_process.append(bot)
        return bot.start()

    def cli(self, *args: str, **env: str) -> str:
        """``molt <args>`` at the bot's host, in this process: what it printed."""
        said = io.StringIO()
        data = os.environ.get("MOLT_DATA_DIR", str(self.root / "bot" / ".molt"))
        with self.monkeypatch.context() as patch:
            for name, value in {**self.env, "MOLT_DATA_DIR": data, **env}.items():
                patch.setenv(name, value)
            with redirect_stdout(said), redirect_stderr(said):
                cli.main(list(args))
        return said.getvalue()

    def requests(self) -> RequestStore:
        return RequestStore(store.connect(load_settings(redis_url=self.env["REDIS_URL"])))


@pytest.fixture
def fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Fleet]:
    api = ServiceRepo.create(tmp_path / "api")
    web = ServiceRepo.create(tmp_path / "web")
    config = tmp_path / "molt.toml"  # the bot's: no checkout of either target there
    config.write_text(FLEET.format(api=tmp_path / "no-api", web=tmp_path / "no-web"))
    hosts = tmp_path / "hosts.toml"  # the workers': each target's checkout on its host
    hosts.write_text(FLEET.format(api=api.live, web=web.live))
    shared = tmp_path / "redis"
    sock = store.ensure_embedded(shared)
    env = {
        "REDIS_URL": f"unix://{sock}",
        "MOLT_CONFIG": str(config),
        "MOLT_RESTART_COMMAND": "true",
        # The services' checks here wait for files in the test's directory, which a
        # sandbox keeps out of their sight (tests/pipeline/test_confinement.py covers it).
        "MOLT_SANDBOX": "off",
        "MOLT_HEALTH_COMMAND": "python health.py",
        "MOLT_BOOT_TIMEOUT": "5",
        "MOLT_HTTP_PORT": "0",
        "MOLT_LOCK_TTL": "3",
        "MOLT_CONSOLE_USER": "alice",
        "MOLT_AUTHORISED_USERS": "console:alice",
        "MOLT_LOG_LEVEL": "debug",
    }
    (tmp_path / "bot").mkdir()
    found = Fleet(tmp_path, api, web, env, [], hosts, monkeypatch, [])
    yield found
    for bot in reversed(found.in_process):
        bot.stop()
    for molt in reversed(found.started):
        molt.stop()
    store.stop_embedded(shared)


def _planned(molt: Molt, command: str) -> str:
    """Ask for a plan; the id of the request whose plan is ready."""
    since = molt.send(command)
    return molt.wait_for(r"press approve (r[0-9a-f]+)", since=since).group(1)


def _planned_here(bot: InProcessBot, command: str) -> str:
    """``_planned``, of the bot in this process."""
    since = bot.type(command)
    return bot.transcript.wait_for(r"press approve (r[0-9a-f]+)", since=since).group(1)


@pytest.mark.slow
def test_two_targets_update_at_once_each_on_its_own_worker(fleet: Fleet) -> None:
    new_api = fleet.api.commit(V2, "api v2")
    new_web = fleet.web.commit(V2, "web v2")
    molt, api_worker, web_worker = fleet.bot_and_workers()
    on_api = _planned(molt, "deploy api main")
    on_web = _planned(molt, "deploy web main")
    molt.send(f"press approve {on_api}")
    molt.send(f"press approve {on_web}")
    molt.wait_count(r"✅ Live: ", 2, timeout=120)
    assert fleet.api.live_head() == new_api and fleet.web.live_head() == new_web
    assert on_api in api_worker.output and on_web not in api_worker.output
    assert on_web in web_worker.output and on_api not in web_worker.output
    requests = fleet.requests()
    assert (requests.get(on_api).target, requests.get(on_web).target) == ("api", "web")
    assert all(requests.get(r).state is S.SUCCEEDED for r in (on_api, on_web))
    status = fleet.cli("status")
    assert "api: idle" in status and "web: idle" in status
    assert re.search(r"on \S+: api · seen", status) and re.search(r"on \S+: web · seen", status)
    trail = fleet.cli("history", on_api)
    assert "succeeded" in trail


def test_a_target_without_a_worker_is_blocked_saying_so(fleet: Fleet) -> None:
    """The bot starts no worker of a fleet's targets: they run on the targets' hosts."""
    fleet.web.commit(V2, "web v2")
    molt = fleet.bot_in_process(targets=["api"])
    since = molt.type("deploy web main")
    molt.transcript.wait_for(r"⛔ Blocked", since=since)
    molt.transcript.wait_for(r"no worker for web has been seen yet", since=since)
    [request] = fleet.requests().recent(1)
    assert (request.state, request.target) == (S.BLOCKED, "web")


def test_a_command_without_its_target_is_answered_with_the_targets(fleet: Fleet) -> None:
    molt = fleet.bot_in_process(targets=[])
    since = molt.type("deploy main")
    molt.transcript.wait_for(r"Which target\?", since=since)
    molt.transcript.wait_for(r"Targets:\W+api, web", since=since)
    stop = molt.type("stop")
    molt.transcript.wait_for(r"`stop` needs a target", since=stop)
    assert fleet.requests().recent(1) == []
    # The fleet's own status needs none: it lists every target.
    shown = molt.type("status")
    molt.transcript.wait_for(r"Molt fleet: 2 targets", since=shown)


@pytest.mark.slow
def test_people_are_checked_against_the_targets_own_lists(fleet: Fleet) -> None:
    fleet.api.commit(V2, "api v2")
    molt = fleet.bot_in_process()
    on_api = _planned_here(molt, "deploy api main")
    # ann approves and operates api only; wes web only.
    refused = fleet.cli("stop", "--target", "web", MOLT_CONSOLE_USER="ann")
    assert "console:ann may not stop: only operators may do that (operators of web)" in refused
    assert "Emergency stop" in fleet.cli("stop", "--target", "api", MOLT_CONSOLE_USER="ann")
    assert "Paused" in fleet.cli("pause", "--target", "web", MOLT_CONSOLE_USER="wes")
    assert "may not pause" in fleet.cli("pause", "--target", "api", MOLT_CONSOLE_USER="wes")
    assert fleet.requests().get(on_api).state is S.PLAN_READY  # a stop clears no plan
    web = fleet.cli("status", "--target", "web")
    assert "Molt status: paused · web" in web
    assert "paused" not in fleet.cli("status", "--target", "api").split("\n")[0]


def test_stop_on_one_target_leaves_the_other_running(fleet: Fleet, tmp_path: Path) -> None:
    started = tmp_path / "web-tests-started"
    slow = (
        "import os, pathlib, time\n\n\ndef test_slow():\n"
        f"    if os.getcwd() != {str(fleet.web.live)!r}:\n"
        f"        pathlib.Path({str(started)!r}).touch()\n"
        "        time.sleep(600)\n"
    )
    new_api = fleet.api.commit(
        {"checks/test_wait.py": _waits_for(tmp_path / "go")}, "api waits for a file"
    )
    old_web = fleet.web.live_head()
    fleet.web.commit({"checks/test_slow.py": slow}, "web: tests that never end")
    molt = fleet.bot_in_process()
    on_api = _planned_here(molt, "deploy api main")
    on_web = _planned_here(molt, "deploy web main")
    molt.type(f"press approve {on_web}")
    wait_for_in_process(started, molt)  # web's phase 1 runs its endless test
    molt.type(f"press approve {on_api}")
    _wait_until_running(fleet.requests(), on_api)
    stop = molt.type("stop web")
    said = molt.transcript
    said.wait_for(r"Emergency stop: update \S+ will roll back at its next safe point", since=stop)
    said.wait_for(r"❌ Failed: \S+", since=stop)
    (tmp_path / "go").touch()
    said.wait_for(r"✅ Live: ", since=stop, timeout=120)
    assert fleet.web.live_head() == old_web and fleet.api.live_head() == new_api
    requests = fleet.requests()
    assert requests.get(on_web).state is S.FAILED
    assert requests.get(on_api).state is S.SUCCEEDED


def _waits_for(go: Path) -> str:
    """A check that passes once ``go`` exists (on the live checkout only: phase 2)."""
    return (
        "import pathlib, time\n\n\ndef test_waits():\n"
        f"    while not pathlib.Path({str(go)!r}).exists():\n"
        "        time.sleep(0.1)\n"
    )


def _wait_until_running(requests: RequestStore, request_id: str) -> None:
    deadline = time.monotonic() + 60
    while requests.get(request_id).state is not S.RUNNING:
        assert time.monotonic() < deadline, f"{request_id} never started"
        time.sleep(0.05)


@pytest.mark.slow
def test_a_worker_killed_mid_update_is_rolled_back_by_its_targets_next_worker(
    fleet: Fleet, tmp_path: Path
) -> None:
    started = tmp_path / "api-phase-2-started"
    old_api = fleet.api.live_head()
    fleet.api.commit({"checks/test_hang.py": hang_on_live(fleet.api.live, started)}, "api hangs")
    go = tmp_path / "go"
    new_web = fleet.web.commit({"checks/test_wait.py": _waits_for(go)}, "web waits")
    molt, api_worker, web_worker = fleet.bot_and_workers()
    on_api = _planned(molt, "deploy api main")
    on_web = _planned(molt, "deploy web main")
    molt.send(f"press approve {on_api}")
    molt.send(f"press approve {on_web}")
    wait_for_file(started, molt)  # api's phase 2 hangs on the live checkout
    requests = fleet.requests()
    _wait_until_running(requests, on_web)
    horse = int(json.loads(requests.conn.get("molt:lock:api") or "{}")["holder"].split(":")[-1])
    for group in {os.getpgid(horse), api_worker.proc.pid}:
        os.killpg(group, signal.SIGKILL)
    api_worker.stop()
    (go).touch()
    molt.wait_for(r"✅ Live: ", timeout=120)  # web's update finishes meanwhile
    assert requests.get(on_api).state is S.RUNNING  # nobody of another target recovers it
    again = fleet.worker("api")
    again.wait_for(r"recovering abandoned update", timeout=60)
    molt.wait_for(r"the worker running this update stopped during phase 2", timeout=60)
    assert requests.get(on_api).state is S.FAILED
    assert fleet.api.live_head() == old_api and fleet.api.live_status() == ""
    assert fleet.web.live_head() == new_web
    assert "recovering abandoned update" not in web_worker.output


def test_redis_restarted_mid_update_the_update_ends_and_says_so(
    fleet: Fleet, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    started = tmp_path / "phase-1-started"
    waits = (
        "import pathlib, time\n\n\ndef test_waits():\n"
        f"    pathlib.Path({str(started)!r}).touch()\n"
        f"    while not pathlib.Path({str(go)!r}).exists():\n"
        "        time.sleep(0.1)\n"
    )
    old = fleet.api.live_head()
    new = fleet.api.commit({"checks/test_wait.py": waits}, "api waits for a file")
    molt = fleet.bot_in_process(targets=["api"])
    on_api = _planned_here(molt, "deploy api main")
    molt.type(f"press approve {on_api}")
    wait_for_in_process(started, molt)  # phase 1 runs
    shared = fleet.root / "redis"
    store.stop_embedded(shared)
    store.ensure_embedded(shared)
    go.touch()
    ended = molt.transcript.wait_for(r"(✅ Live|❌ Failed): ", timeout=120).group(1)
    request = fleet.requests().get(on_api)
    if ended == "✅ Live":
        assert request.state is S.SUCCEEDED and fleet.api.live_head() == new
    else:
        assert request.state is S.FAILED and fleet.api.live_head() == old
    assert fleet.api.live_status() == ""


def test_an_alert_naming_one_target_rolls_back_that_target_only(fleet: Fleet) -> None:
    from tests.fakes.alerts import Alertmanager, alertmanager_alert, alertmanager_payload

    old_api = fleet.api.live_head()
    fleet.api.commit(V2, "api v2")
    new_web = fleet.web.commit(V2, "web v2")
    molt = fleet.bot_in_process(MOLT_AUTONOMY="auto", MOLT_ALERT_TOKEN="tok")
    for name in ("api", "web"):
        since = molt.type(f"deploy {name} main")
        # auto mode: Molt approves low-risk plans
        molt.transcript.wait_for(r"✅ Live: ", since=since)

    after = len(molt.transcript.lines)
    alert = alertmanager_payload([alertmanager_alert("a1", target="api", summary="api 5xx")])
    sender = Alertmanager(f"http://127.0.0.1:{molt.port}/alerts/alertmanager", "tok")
    assert sender.send(alert)[0] == 200
    molt.transcript.wait_for(r"🚨 Incident i\w+: api 5xx", since=after)
    molt.transcript.wait_for(r"✅ Live: ", since=after)
    assert fleet.api.live_head() == old_api
    assert fleet.web.live_head() == new_web
    [rollback] = [r for r in fleet.requests().recent(5) if r.command == "rollback"]
    assert (rollback.target, rollback.state, rollback.approver) == ("api", S.SUCCEEDED, "molt:auto")
