"""Rollouts: one commit through a fleet's targets in turn, after it soaked on staging.

The bot runs in the test's process (tests/integration/inprocess.py) with each target's jobs
on a thread of its own, registered as its worker; the three targets are checkouts of one
service's origin, so that a commit is the same commit on each.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline import audit, store
from pipeline.config import load_settings
from pipeline.incidents.alerts import FIRING, RESOLVED, Signal
from pipeline.incidents.book import IncidentBook
from pipeline.requests.states import RequestState as S
from pipeline.requests.store import Request, RequestStore
from pipeline.update import rollouts
from tests.integration.inprocess import InProcessBot
from tests.integration.inprocess import wait_for_file as wait_for_in_process
from tests.support import ServiceRepo, git

V2 = {"app.py": "def greet():\n    return 'hello'\n\n\nVERSION = 2\n"}
CONFIG = """
[targets.web-staging]
dir = "{staging}"
test_command = "python service_tests.py"

[targets.web-1]
dir = "{one}"
test_command = "python service_tests.py"

[targets.web-2]
dir = "{two}"
test_command = "python service_tests.py"

[rollouts.web]
from = "web-staging"
soak = "{soak}"
steps = ["web-1", "web-2"]
on_failure = "{on_failure}"
"""


@dataclass
class Hosts:
    root: Path
    service: ServiceRepo
    lives: dict[str, Path]
    env: dict[str, str]
    monkeypatch: pytest.MonkeyPatch
    bots: list[InProcessBot]

    def bot(self, soak: str = "0s", on_failure: str = "rollback-all", **env: str) -> InProcessBot:
        config = self.root / "molt.toml"
        config.write_text(
            CONFIG.format(
                staging=self.lives["web-staging"],
                one=self.lives["web-1"],
                two=self.lives["web-2"],
                soak=soak,
                on_failure=on_failure,
            )
        )
        for name, value in {**self.env, "MOLT_CONFIG": str(config), **env}.items():
            self.monkeypatch.setenv(name, value)
        bot = InProcessBot(load_settings(), console=True)
        self.bots.append(bot)
        return bot.start()

    def head(self, target: str) -> str:
        return git(self.lives[target], "rev-parse", "HEAD")

    def requests(self) -> RequestStore:
        return RequestStore(store.connect(load_settings(redis_url=self.env["REDIS_URL"])))


@pytest.fixture
def hosts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Hosts]:
    service = ServiceRepo.create(tmp_path / "web")
    lives = {"web-staging": service.live}
    for name in ("web-1", "web-2"):
        lives[name] = tmp_path / name
        subprocess.run(["git", "clone", "-q", str(service.origin), str(lives[name])], check=True)
    shared = tmp_path / "redis"
    sock = store.ensure_embedded(shared)
    (tmp_path / "data").mkdir()
    env = {
        "REDIS_URL": f"unix://{sock}",
        "MOLT_DATA_DIR": str(tmp_path / "data"),
        "MOLT_RESTART_COMMAND": "true",
        "MOLT_SANDBOX": "off",  # the checks below wait for files in the test's directory
        "MOLT_HEALTH_COMMAND": "python health.py",
        "MOLT_BOOT_TIMEOUT": "60",
        "MOLT_HTTP_PORT": "0",
        "MOLT_LOCK_TTL": "3",
        "MOLT_WORKERS": "0",
        "MOLT_CONSOLE_USER": "alice",
        "MOLT_AUTHORISED_USERS": "console:alice",
        "MOLT_APPROVERS": "console:alice,console:bob",
        "MOLT_LOG_LEVEL": "debug",
    }
    found = Hosts(tmp_path, service, lives, env, monkeypatch, [])
    yield found
    for bot in reversed(found.bots):
        bot.stop()
    store.stop_embedded(shared)


def _live(bot: InProcessBot, command: str) -> None:
    """An ordinary update of one target, approved and landed."""
    since = bot.type(command)
    planned = bot.transcript.wait_for(r"press approve (r[0-9a-f]+)", since=since).group(1)
    bot.type(f"press approve {planned}")
    bot.transcript.wait_for(rf"✅ Live: .*{command.split()[1]}", since=since, timeout=180)


def _rollout_planned(bot: InProcessBot, command: str = "deploy web main") -> tuple[int, str]:
    since = bot.type(command)
    found = bot.transcript.wait_for(r"press approve (r[0-9a-f]+)", since=since, timeout=180)
    return since, found.group(1)


def _steps(hosts: Hosts, rollout_id: str) -> list[Request]:
    requests = hosts.requests()
    rollout = requests.get(rollout_id)
    return [requests.get(s["request_id"]) for s in (rollout.result or {})["steps"]]


def test_a_rollout_goes_through_its_steps_one_after_another_in_one_message(
    hosts: Hosts,
) -> None:
    new = hosts.service.commit(V2, "web v2")
    old = hosts.head("web-1")
    bot = hosts.bot(MOLT_WATCH_SECONDS="1", MOLT_WATCH_INTERVAL="0.5")
    _live(bot, "deploy web-staging main")
    since, rollout_id = _rollout_planned(bot)
    said = bot.transcript
    said.wait_for(rf"Rollout plan: {new[:7]} → web-1, web-2", since=since)
    said.wait_for(r"Gate: \w+ succeeded on web-staging with ", since=since)
    said.wait_for(rf"1\. web-1 \(canary\): planned · from {old[:7]} · risk \w+", since=since)
    said.wait_for(rf"2\. web-2: planned · from {old[:7]}", since=since)
    # A step is approved with its rollout, in turn, never on its own.
    canary = (hosts.requests().get(rollout_id).result or {})["steps"][0]["request_id"]
    console = bot.bot.console
    assert console is not None
    refused = len(said.lines)
    bot.bot.desk.press(console.origin, "approve", canary).result(timeout=60)
    said.wait_for(rf"this is a step of rollout {rollout_id}: its buttons are", since=refused)
    assert hosts.requests().get(canary).state is S.PLAN_READY
    approved = bot.type(f"press approve {rollout_id}")
    said.wait_for(rf"✅ Rolled out: {new[:7]}", since=approved, timeout=300)
    assert hosts.head("web-1") == new and hosts.head("web-2") == new
    requests = hosts.requests()
    assert requests.get(rollout_id).state is S.SUCCEEDED
    one, two = _steps(hosts, rollout_id)
    assert (one.target, one.state, two.target, two.state) == (
        "web-1",
        S.SUCCEEDED,
        "web-2",
        S.SUCCEEDED,
    )
    assert one.approver == two.approver == "console:alice"
    # web-2 was approved only once web-1's watch window had ended well.
    landed = next(e for e in audit.entries(requests.conn, one.id) if e["action"] == "succeeded")
    started = next(e for e in audit.entries(requests.conn, two.id) if e["action"] == "approved")
    assert landed["seq"] < started["seq"]
    # One message: the steps' own plans and results are not shown, the rollout's is.
    shown = said.text(since)
    assert "Plan ready" not in shown and "✅ Live" not in shown
    assert "1. web-1 (canary): done" in shown and "2. web-2: done" in shown
    history = bot.type("history web")
    said.wait_for(rf"UTC \*?{rollout_id}\*? succeeded `main` {new[:7]}", since=history)


def test_a_commit_not_yet_on_staging_is_blocked(hosts: Hosts) -> None:
    new = hosts.service.commit(V2, "web v2")
    old = hosts.head("web-1")
    bot = hosts.bot()
    since = bot.type("deploy web main")
    bot.transcript.wait_for(r"⛔ Rollout blocked: `main`", since=since, timeout=180)
    bot.transcript.wait_for(
        rf"{new[:7]} never succeeded on web-staging: deploy it there first", since=since
    )
    [rollout] = [r for r in hosts.requests().recent(10) if r.command == "rollout"]
    assert rollout.state is S.BLOCKED
    assert [s.state for s in _steps(hosts, rollout.id)] == [S.CANCELLED, S.CANCELLED]
    assert hosts.head("web-1") == old and hosts.head("web-2") == old


def test_a_commit_that_has_not_soaked_is_blocked_until_it_has(hosts: Hosts) -> None:
    new = hosts.service.commit(V2, "web v2")
    bot = hosts.bot(soak="10m")
    _live(bot, "deploy web-staging main")
    since = bot.type("deploy web main")
    said = bot.transcript
    said.wait_for(r"⛔ Rollout blocked", since=since, timeout=180)
    said.wait_for(
        rf"{new[:7]} has soaked on web-staging for 0 min of 10; ready at \d\d:\d\d UTC",
        since=since,
    )
    [staged] = [r for r in hosts.requests().recent(10) if r.target == "web-staging"]
    settings = load_settings()
    rollout = settings.rollout("web")
    conn = hosts.requests().conn
    soaking = rollouts.check_gate(settings, conn, rollout, new, now=staged.updated_at + 599)
    assert not soaking and "9 min of 10" in soaking.reason
    ready = rollouts.check_gate(settings, conn, rollout, new, now=staged.updated_at + 600)
    assert ready and ready.shown["landed"] == (staged.codename or staged.id)
    # An open incident on the stage holds the commit back, however long it soaked.
    book = IncidentBook(settings.for_target("web-staging"), conn)
    opened = book.take(Signal("alertmanager", "5xx", FIRING, "web-staging", "5xx on staging"))
    assert opened.incident is not None
    held = rollouts.check_gate(settings, conn, rollout, new, now=staged.updated_at + 600)
    assert not held
    assert f"web-staging has an open incident ({opened.incident.id}: 5xx on staging)" in held.reason


def test_the_gate_is_checked_again_at_the_approval(hosts: Hosts) -> None:
    old = hosts.head("web-1")
    new = hosts.service.commit(V2, "web v2")
    bot = hosts.bot()
    _live(bot, "deploy web-staging main")
    _, rollout_id = _rollout_planned(bot)
    settings = load_settings()
    book = IncidentBook(settings.for_target("web-staging"), hosts.requests().conn)
    book.take(Signal("alertmanager", "5xx", FIRING, "web-staging", "5xx on staging"))
    refused = bot.type(f"press approve {rollout_id}")
    said = bot.transcript
    said.wait_for(r"web-staging has an open incident \(i\w+: 5xx on staging\)", since=refused)
    assert hosts.requests().get(rollout_id).state is S.PLAN_READY
    assert hosts.head("web-1") == old
    book.take(Signal("alertmanager", "5xx", RESOLVED, "web-staging", "5xx on staging"))
    approved = bot.type(f"press approve {rollout_id}")
    said.wait_for(rf"✅ Rolled out: {new[:7]}", since=approved, timeout=300)


def _fails_on(live: Path) -> dict[str, str]:
    """The service's test, failing on ``live``'s checkout only (that target's phase 2); as
    many tests as before, so that a rollback to the commit before passes its own."""
    check = (
        "import os\n\nfrom app import greet\n\n\ndef test_greet():\n"
        f"    assert greet() == 'hello'\n    assert os.getcwd() != {str(live)!r}\n"
    )
    return {"checks/test_app.py": check}


def test_a_failed_canary_is_rolled_back_and_the_next_step_never_runs(hosts: Hosts) -> None:
    old = hosts.head("web-1")
    hosts.service.commit(V2 | _fails_on(hosts.lives["web-1"]), "web v2, failing on web-1")
    bot = hosts.bot(on_failure="stop")
    _live(bot, "deploy web-staging main")
    since, rollout_id = _rollout_planned(bot)
    bot.type(f"press approve {rollout_id}")
    said = bot.transcript
    said.wait_for(r"❌ Rollout failed", since=since, timeout=300)
    said.wait_for(r"step web-1 failed: ", since=since)
    said.wait_for(rf"press retry {rollout_id}", since=since)
    assert hosts.head("web-1") == old and hosts.head("web-2") == old
    assert hosts.requests().get(rollout_id).state is S.FAILED
    one, two = _steps(hosts, rollout_id)
    assert (one.state, two.state) == (S.FAILED, S.CANCELLED)
    # Retry plans the whole rollout again, each step anew.
    again = bot.type(f"press retry {rollout_id}")
    said.wait_for(rf"press approve {rollout_id}", since=again, timeout=180)
    retried = hosts.requests().get(rollout_id)
    assert (retried.state, retried.attempt) == (S.PLAN_READY, 2)
    assert {s.id for s in _steps(hosts, rollout_id)}.isdisjoint({one.id, two.id})


def test_a_failed_step_rolls_back_the_steps_done_before_it(hosts: Hosts) -> None:
    old = hosts.head("web-1")
    new = hosts.service.commit(V2 | _fails_on(hosts.lives["web-2"]), "web v2, failing on web-2")
    bot = hosts.bot(on_failure="rollback-all")
    _live(bot, "deploy web-staging main")
    since, rollout_id = _rollout_planned(bot)
    bot.type(f"press approve {rollout_id}")
    said = bot.transcript
    said.wait_for(r"1\. web-1 \(canary\): done", since=since, timeout=300)
    assert hosts.head("web-1") == new
    said.wait_for(r"❌ Rollout failed", since=since, timeout=300)
    [rollback] = [r for r in hosts.requests().recent(20) if r.command == "rollback"]
    assert (rollback.target, rollback.state) == ("web-1", S.SUCCEEDED), rollback.message
    said.wait_for(r"step web-2 failed: .*; rolled back: web-1", since=since)
    said.wait_for(r"1\. web-1 \(canary\): done, rolled back", since=since)
    assert hosts.head("web-1") == old and hosts.head("web-2") == old
    assert hosts.head("web-staging") == new  # the gate's target is no step: it stays


def _waiting_on_web_1(hosts: Hosts, started: Path, go: Path) -> str:
    """A test that, on web-1's live checkout only (its phase 2), says it started and waits
    for ``go``."""
    return (
        "import os, pathlib, time\n\n\ndef test_waits_on_web_1():\n"
        f"    if os.getcwd() == {str(hosts.lives['web-1'])!r}:\n"
        f"        pathlib.Path({str(started)!r}).touch()\n"
        f"        while not pathlib.Path({str(go)!r}).exists():\n"
        "            time.sleep(0.1)\n"
    )


def test_stop_during_a_rollout_stops_it_and_rolls_back_as_on_failure_says(
    hosts: Hosts, tmp_path: Path
) -> None:
    old = hosts.head("web-1")
    started, go = tmp_path / "phase-2-started", tmp_path / "go"
    waits = _waiting_on_web_1(hosts, started, go)
    new = hosts.service.commit(V2 | {"checks/test_wait.py": waits}, "web v2, waiting on web-1")
    bot = hosts.bot()
    _live(bot, "deploy web-staging main")
    since, rollout_id = _rollout_planned(bot)
    bot.type(f"press approve {rollout_id}")
    wait_for_in_process(started, bot, timeout=300)  # web-1's phase 2 waits
    said = bot.transcript
    status = bot.type("status")  # the fleet's, with the rollouts under way
    said.wait_for(
        rf"web {rollout_id} running {new[:7]}: web-1 running · phase 2; web-2 waiting", since=status
    )
    stop = bot.type("stop web")
    said.wait_for(r"Stopping rollout \S+ at its next safe point", since=stop)
    said.wait_for(r"❌ Rollout failed", since=since, timeout=300)
    said.wait_for(r"step web-1 failed: stopped by console:alice", since=since)
    assert hosts.head("web-1") == old and hosts.head("web-2") == old
    one, two = _steps(hosts, rollout_id)
    assert (one.state, two.state) == (S.FAILED, S.CANCELLED)


def test_a_step_whose_plan_expired_while_it_waited_is_planned_again_in_turn(
    hosts: Hosts, tmp_path: Path
) -> None:
    started, go = tmp_path / "phase-2-started", tmp_path / "go"
    waits = _waiting_on_web_1(hosts, started, go)
    new = hosts.service.commit(V2 | {"checks/test_wait.py": waits}, "web v2, waiting on web-1")
    bot = hosts.bot()
    _live(bot, "deploy web-staging main")
    since, rollout_id = _rollout_planned(bot)
    bot.type(f"press approve {rollout_id}")
    wait_for_in_process(started, bot, timeout=300)  # web-1 runs; web-2's plan waits its turn
    _, waiting = _steps(hosts, rollout_id)
    hosts.requests().transition(
        waiting.id, S.EXPIRED, actor="molt", message="nobody approved it within 60 min"
    )
    go.touch()
    bot.transcript.wait_for(rf"✅ Rolled out: {new[:7]}", since=since, timeout=300)
    assert hosts.head("web-2") == new
    one, two = _steps(hosts, rollout_id)
    assert two.id != waiting.id and (one.state, two.state) == (S.SUCCEEDED, S.SUCCEEDED)
