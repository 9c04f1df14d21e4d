"""Rollouts: one commit through a fleet's targets in turn, after it soaked on staging.

The bot runs in the test's process (tests/integration/inprocess.py) with each target's jobs
on a thread of its own, registered as its worker; the three targets are checkouts of one
service's origin, so that a commit is the same commit on each.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NamedTuple

import pytest

from bot import cli
from pipeline import audit, keyspace, store
from pipeline.config import load_settings
from pipeline.incidents.alerts import FIRING, RESOLVED, Signal
from pipeline.incidents.book import IncidentBook
from pipeline.intake import control
from pipeline.requests.states import RequestState as S
from pipeline.requests.store import Origin, Request, RequestStore
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
{one_extra}

[targets.web-2]
dir = "{two}"
test_command = "python service_tests.py"

[rollouts.web]
from = "web-staging"
soak = "{soak}"
steps = ["web-1", "web-2"]
on_failure = "{on_failure}"
{extra}
"""


@dataclass
class Hosts:
    root: Path
    service: ServiceRepo
    lives: dict[str, Path]
    env: dict[str, str]
    monkeypatch: pytest.MonkeyPatch
    bots: list[InProcessBot]

    def bot(
        self,
        soak: str = "0s",
        on_failure: str = "rollback-all",
        extra: str = "",
        one_extra: str = "",
        **env: str,
    ) -> InProcessBot:
        self.configure(soak, on_failure, extra, one_extra)
        for name, value in {**self.env, "MOLT_CONFIG": str(self.config), **env}.items():
            self.monkeypatch.setenv(name, value)
        bot = InProcessBot(load_settings(), console=True)
        self.bots.append(bot)
        return bot.start()

    @property
    def config(self) -> Path:
        return self.root / "molt.toml"

    def configure(
        self,
        soak: str = "0s",
        on_failure: str = "rollback-all",
        extra: str = "",
        one_extra: str = "",
    ) -> None:
        """Write molt.toml: ``extra`` tables at its end, ``one_extra`` keys in web-1's table."""
        self.config.write_text(
            CONFIG.format(
                staging=self.lives["web-staging"],
                one=self.lives["web-1"],
                two=self.lives["web-2"],
                soak=soak,
                on_failure=on_failure,
                extra=extra,
                one_extra=one_extra,
            )
        )

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


@pytest.mark.slow
def test_a_rollout_goes_through_its_steps_one_after_another_in_one_message(
    hosts: Hosts,
) -> None:
    new = hosts.service.commit(V2, "web v2")
    old = hosts.head("web-1")
    # A short watch window (two probes): each step waits for its predecessor's to end well.
    bot = hosts.bot(MOLT_WATCH_SECONDS="0.5", MOLT_WATCH_INTERVAL="0.25")
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


def test_a_gate_that_fails_at_the_approval_ends_the_rollout_blocked(hosts: Hosts) -> None:
    old = hosts.head("web-1")
    new = hosts.service.commit(V2, "web v2")
    bot = hosts.bot()
    _live(bot, "deploy web-staging main")
    _, rollout_id = _rollout_planned(bot)
    settings = load_settings()
    book = IncidentBook(settings.for_target("web-staging"), hosts.requests().conn)
    book.take(Signal("alertmanager", "5xx", FIRING, "web-staging", "5xx on staging"))
    pressed = bot.type(f"press approve {rollout_id}")
    said = bot.transcript
    said.wait_for(r"⛔ Rollout blocked: `main`", since=pressed)
    said.wait_for(r"web-staging has an open incident \(i\w+: 5xx on staging\)", since=pressed)
    said.wait_for(rf"press retry {rollout_id}", since=pressed)
    assert hosts.requests().get(rollout_id).state is S.BLOCKED
    assert [s.state for s in _steps(hosts, rollout_id)] == [S.CANCELLED, S.CANCELLED]
    assert hosts.head("web-1") == old
    # Once the stage is well again, Retry plans the rollout anew.
    book.take(Signal("alertmanager", "5xx", RESOLVED, "web-staging", "5xx on staging"))
    again = bot.type(f"press retry {rollout_id}")
    said.wait_for(rf"📋 Rollout plan: {new[:7]} → web-1, web-2", since=again, timeout=180)
    assert hosts.requests().get(rollout_id).state is S.PLAN_READY


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


@pytest.mark.slow
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


def _waiting_on(hosts: Hosts, target: str, started: Path, go: Path) -> dict[str, str]:
    """The service's test, which on ``target``'s live checkout only (its phase 2) says it
    started and waits for ``go``; as many tests as before, so that a rollback to the commit
    before passes its own."""
    check = (
        "import os, pathlib, time\n\nfrom app import greet\n\n\ndef test_greet():\n"
        "    assert greet() == 'hello'\n"
        f"    if os.getcwd() == {str(hosts.lives[target])!r}:\n"
        f"        pathlib.Path({str(started)!r}).touch()\n"
        f"        while not pathlib.Path({str(go)!r}).exists():\n"
        "            time.sleep(0.1)\n"
    )
    return {"checks/test_app.py": check}


class Held(NamedTuple):
    """A rollout approved and held in one step's phase 2 until ``go`` exists."""

    bot: InProcessBot
    since: int
    rollout_id: str
    new: str
    go: Path


def _held_in_phase_2(hosts: Hosts, tmp_path: Path, target: str, **options: str) -> Held:
    """``deploy web main`` of a commit whose tests wait on ``target``'s live checkout,
    approved; returns once that step's phase 2 has started."""
    started, go = tmp_path / "phase-2-started", tmp_path / "go"
    waits = _waiting_on(hosts, target, started, go)
    new = hosts.service.commit(V2 | waits, f"web v2, waiting on {target}")
    bot = hosts.bot(**options)
    _live(bot, "deploy web-staging main")
    since, rollout_id = _rollout_planned(bot)
    bot.type(f"press approve {rollout_id}")
    wait_for_in_process(started, bot, timeout=300)
    return Held(bot, since, rollout_id, new, go)


def test_stop_during_a_rollout_stops_it_and_rolls_back_as_on_failure_says(
    hosts: Hosts, tmp_path: Path
) -> None:
    old = hosts.head("web-1")
    # web-1's phase 2 waits
    bot, since, rollout_id, new, _ = _held_in_phase_2(hosts, tmp_path, "web-1")
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
    # web-1 runs; web-2's plan waits its turn
    bot, since, rollout_id, new, go = _held_in_phase_2(hosts, tmp_path, "web-1")
    _, waiting = _steps(hosts, rollout_id)
    hosts.requests().transition(
        waiting.id, S.EXPIRED, actor="molt", message="nobody approved it within 60 min"
    )
    go.touch()
    bot.transcript.wait_for(rf"✅ Rolled out: {new[:7]}", since=since, timeout=300)
    assert hosts.head("web-2") == new
    one, two = _steps(hosts, rollout_id)
    assert two.id != waiting.id and (one.state, two.state) == (S.SUCCEEDED, S.SUCCEEDED)


# -- freezes -------------------------------------------------------------------------------

BREAK_GLASS_HINT = (
    "To deploy anyway, an operator of every step's target may break glass: "
    "`deploy web <ref> --break-glass <reason>`, which a second operator approves"
)


def _freeze(targets: str, reason: str, days: float = 2) -> tuple[str, datetime]:
    """A [[freeze]] table holding ``targets`` (comma-separated) from an hour ago for ``days``,
    and its end."""
    now = datetime.now(UTC).replace(microsecond=0)
    end = now + timedelta(days=days)
    listed = ", ".join(f'"{t}"' for t in targets.split(","))
    table = (
        f"[[freeze]]\ntargets = [{listed}]\n"
        f'start = "{(now - timedelta(hours=1)).isoformat()}"\nend = "{end.isoformat()}"\n'
        f'reason = "{reason}"\n'
    )
    return table, end


def test_a_freeze_on_any_step_blocks_the_rollout_at_plan_time_saying_how_to_break_glass(
    hosts: Hosts,
) -> None:
    old = hosts.head("web-2")
    hosts.service.commit(V2, "web v2")
    table, end = _freeze("web-2", "holidays")
    bot = hosts.bot(extra=table)
    since = bot.type("deploy web main")
    said = bot.transcript
    said.wait_for(r"⛔ Rollout blocked: `main`", since=since, timeout=180)
    frozen = f"web-2 is frozen until {end:%a %H:%M} UTC: holidays. {BREAK_GLASS_HINT}"
    said.wait_for(re.escape(frozen), since=since)
    [rollout] = [r for r in hosts.requests().recent(10) if r.command == "rollout"]
    assert rollout.state is S.BLOCKED
    # No step was planned: nothing ran on any target's worker.
    assert [r.command for r in hosts.requests().recent(10)] == ["rollout"]
    assert hosts.head("web-1") == hosts.head("web-2") == old


def test_breaking_glass_into_a_frozen_step_takes_an_operator_of_every_step_and_a_second_to_approve(
    hosts: Hosts,
) -> None:
    old = hosts.head("web-2")
    new = hosts.service.commit(V2, "web v2")
    table, end = _freeze("web-2", "holidays")
    bot = hosts.bot(
        extra=table,
        # carol operates web-1 only; alice and bob (the approvers) every target
        one_extra='operators = ["console:alice", "console:bob", "console:carol"]',
        MOLT_AUTHORISED_USERS="console:alice,console:carol",
    )
    settings = load_settings()
    conn = hosts.requests().conn
    text = "deploy web main --break-glass because"
    carol = rollouts.plan(
        settings, conn, Origin("console", "carol"), "web", "main", text, "because"
    )
    assert carol.state is S.REFUSED
    assert carol.message == (
        "only an operator of every step's target may break glass: not of web-2 (operators)"
    )
    assert hosts.head("web-2") == old

    _live(bot, "deploy web-staging main")
    said = bot.transcript
    since = bot.type("deploy web main --break-glass login is down for everyone")
    rollout_id = said.wait_for(r"press approve (r[0-9a-f]+)", since=since, timeout=180).group(1)
    said.wait_for(r"Break glass.* by console:alice: login is down for everyone", since=since)
    said.wait_for(re.escape(f"• web-2 is frozen until {end:%a %H:%M} UTC: holidays"), since=since)
    said.wait_for(r"Only a second operator of every step's target approves it", since=since)

    pressed = bot.type(f"press approve {rollout_id}")  # the requester's own approval
    said.wait_for(r"the requester cannot approve their own", since=pressed)
    assert hosts.requests().get(rollout_id).state is S.PLAN_READY

    bot.bot.desk.press(Origin("console", "bob"), "approve", rollout_id).result(timeout=60)
    said.wait_for(rf"✅ Rolled out: {new[:7]}", since=since, timeout=300)
    assert hosts.head("web-1") == hosts.head("web-2") == new
    done = {(e["actor"], e["action"]): e for e in audit.entries(conn, rollout_id)}
    asked = done[("console:alice", "break_glass")]["detail"]
    assert asked["reason"] == "login is down for everyone"
    assert [f["target"] for f in asked["frozen"]] == ["web-2"]
    assert ("console:bob", "break_glass_approved") in done


def test_a_freeze_met_when_a_step_starts_blocks_the_rollout_and_the_steps_done_roll_back_anyway(
    hosts: Hosts, tmp_path: Path
) -> None:
    old = hosts.head("web-1")
    # web-1's phase 2 waits
    bot, since, rollout_id, new, go = _held_in_phase_2(
        hosts, tmp_path, "web-1", on_failure="rollback-all"
    )
    # A freeze of both hosts begins (molt.toml as their workers read it): web-2's step is
    # held, and web-1's rollback is not.
    table, end = _freeze("web-1,web-2", "change freeze")
    hosts.configure(extra=table)
    go.touch()
    said = bot.transcript
    said.wait_for(r"⛔ Rollout blocked", since=since, timeout=300)
    frozen = f"step web-2 blocked: web-2 is frozen until {end:%a %H:%M} UTC: change freeze"
    said.wait_for(
        re.escape(frozen) + r".*; rolled back: web-1\. " + re.escape(BREAK_GLASS_HINT), since
    )
    assert hosts.requests().get(rollout_id).state is S.BLOCKED
    assert hosts.head("web-1") == hosts.head("web-2") == old
    one, two = _steps(hosts, rollout_id)
    assert (one.state, two.state) == (S.SUCCEEDED, S.FAILED) and new != old


# -- rollbacks, the coordinator, the shell ------------------------------------------------


@pytest.mark.slow
def test_the_rollback_of_a_step_is_never_held_by_a_pause_observe_mode_or_the_daily_limit(
    hosts: Hosts, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = hosts.head("web-1")
    # web-1 done; web-2's phase 2 waits
    bot, since, rollout_id, new, _ = _held_in_phase_2(
        hosts, tmp_path, "web-2", on_failure="rollback-all"
    )
    assert hosts.head("web-1") == new
    # The shell shows the rollout under way, as chat's status does.
    assert cli.main(["status"]) == 0
    shown = capsys.readouterr().out
    assert re.search(rf"web {rollout_id} running {new[:7]}: web-1 done; web-2 running", shown)
    said = bot.transcript
    paused = bot.type("pause web-1")
    said.wait_for(r"Paused: no new update will start", since=paused)
    # web-1 also turns to observe mode, its day's one update spent (molt.toml as its worker
    # reads it when the rollback is planned and starts).
    hosts.configure(one_extra='autonomy = "observe"\nmax_changes_per_day = 1')
    bot.type("stop web")
    said.wait_for(r"❌ Rollout failed", since=since, timeout=300)
    said.wait_for(r"step web-2 failed: stopped by console:alice.*; rolled back: web-1", since)
    assert hosts.head("web-1") == hosts.head("web-2") == old
    assert control.is_paused(load_settings().for_target("web-1"), hosts.requests().conn)
    assert cli.main(["history", "--target", "web"]) == 0
    shown = capsys.readouterr().out
    assert "Rollout web: history" in shown
    assert re.search(rf"{rollout_id}\*? failed `main` {new[:7]}", shown)
    assert "1. web-1: done, rolled back" in shown


@pytest.mark.slow
def test_a_rollout_another_bot_process_holds_is_moved_on_only_once_it_lets_go(
    hosts: Hosts,
) -> None:
    new = hosts.service.commit(V2, "web v2")
    bot = hosts.bot()
    _live(bot, "deploy web-staging main")
    since, rollout_id = _rollout_planned(bot)
    conn = hosts.requests().conn
    other = conn.lock(keyspace.rollout_advancing(rollout_id), timeout=120)
    # as another bot process on this Redis holds it (once the bot's planning let it go)
    assert other.acquire(blocking=True, blocking_timeout=60)
    bot.type(f"press approve {rollout_id}")
    time.sleep(1.5)  # time enough to have approved it, were it not held
    assert hosts.requests().get(rollout_id).state is S.PLAN_READY
    assert [s.state for s in _steps(hosts, rollout_id)] == [S.PLAN_READY, S.PLAN_READY]
    other.release()
    bot.transcript.wait_for(rf"✅ Rolled out: {new[:7]}", since=since, timeout=300)
    one, two = _steps(hosts, rollout_id)
    for step in (one, two):
        approvals = [e for e in audit.entries(conn, step.id) if e["action"] == "approved"]
        assert len(approvals) == 1
