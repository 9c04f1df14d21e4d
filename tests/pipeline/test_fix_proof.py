"""A fix must reproduce the failure first (pipeline/update/reproduction.py): a release whose
handler fails only in production, its incident from the service's real traceback, Fix it,
and the implementer's fix and test through the fake Messages API; the test runs on the base
and on the fix in the sandbox before phase 1, the fix lands, the watch window watches the
incident's signature, and the hold check marks the incident held."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis

from bot.rendering import render
from pipeline import audit
from pipeline.config import Settings
from pipeline.git import Git
from pipeline.incidents import diagnosis, failures
from pipeline.incidents.alerts import FIRING, RESOLVED, Signal
from pipeline.incidents.book import Incident, IncidentBook, listing
from pipeline.incidents.logwatch import LineReader, occurrence_signal
from pipeline.queue import workers
from pipeline.requests.states import RequestState as S
from pipeline.sandbox.validation import PhaseSpec
from pipeline.service.snapshots import Sandbox
from pipeline.update import reproduction
from tests.conversations import fix_plan
from tests.desk import Chat, StartChat
from tests.fakes.anthropic import FakeAnthropic, Turn, reply, tool
from tests.support import ServiceRepo, git

#: A release that passes its tests, and divides by the count of items, which is 0 only
#: in production.
HANDLER = (
    "def greet():\n    return 'hello'\n\n\ndef handle(total, count):\n    return total // count\n"
)
PASSES = "from app import handle\n\n\ndef test_handle():\n    assert handle(10, 2) == 5\n"
FIXED = (
    "def greet():\n    return 'hello'\n\n\n"
    "def handle(total, count):\n    return total // count if count else 0\n"
)
ZERO_COUNT = "from app import handle\n\n\ndef test_zero_count():\n    assert handle(10, 0) == 0\n"
DIAGNOSED = {
    "cause": "handle() divides by the count, which is 0 for an empty order",
    "files": ["app.py"],
    "evidence": [{"file": "app.py", "line": 6, "quote": "return total // count"}],
    "confidence": 0.9,
    "fix": "answer 0 when the count is 0",
    "confirm": "the ZeroDivisionError stops",
}


def written(app: str | None, test: str | None) -> list[Turn]:
    """One round of the implementer: it writes what it is given, then finishes."""
    writes = [
        tool("write_file", {"path": path, "content": content})
        for path, content in (("app.py", app), ("checks/test_handlers.py", test))
        if content is not None
    ]
    return [reply(*writes), reply(tool("finish", {"summary": "fixed handle()"}))]


def approve() -> Turn:
    return reply(tool("submit_review", {"verdict": "approve", "reasons": ["guards it"]}))


@pytest.fixture
def fake() -> Any:
    with FakeAnthropic() as server:
        yield server


def _released(service: ServiceRepo) -> str:
    """The release with the handler is live (it passed its tests)."""
    service.commit({"app.py": HANDLER, "checks/test_app_handle.py": PASSES}, "handle orders")
    git(service.live, "pull", "-q", "--ff-only")
    return service.live_head()


def _incident(chat: Chat, service: ServiceRepo, fake: FakeAnthropic) -> tuple[Incident, Signal]:
    """An empty order in production: the service's own traceback, read by the log watcher's
    reader, opens an incident, which is diagnosed; returns it and its signal."""
    run = subprocess.run(
        [sys.executable, "-c", "from app import handle; handle(10, 0)"],
        cwd=service.live,
        capture_output=True,
        text=True,
        check=False,
    )
    reader = LineReader(service.live)
    [found] = [o for o in map(reader.feed, run.stderr.splitlines(keepends=True)) if o]
    signal = replace(occurrence_signal(chat.settings, found), counted=False)
    book = IncidentBook(chat.settings, chat.conn)
    incident = book.take(signal).incident
    assert incident is not None
    fake.add(reply(tool("submit_diagnosis", DIAGNOSED)))
    diagnosis.post(chat.settings, chat.conn, book, incident)
    return incident, signal


def _fix_it(chat: Chat, incident: Incident) -> int:
    since = chat.send(f"press fix {incident.id}")
    chat.wait_for(r"📋 Plan ready", since=since)
    chat.send("press approve")
    chat.work()
    return since


@pytest.mark.slow
def test_a_fix_whose_test_reproduces_the_incident_lands_and_holds(
    service: ServiceRepo, start_chat: StartChat, fake: FakeAnthropic
) -> None:
    base = _released(service)
    chat = start_chat(**fake.env(), MOLT_WATCH_SECONDS="1", MOLT_FIX_HOLD="0.5")
    incident, _ = _incident(chat, service, fake)
    assert incident.summary.startswith("ZeroDivisionError")
    fake.add(reply(tool("submit_plan", fix_plan())), *written(FIXED, ZERO_COUNT), approve())
    since = _fix_it(chat, incident)
    chat.wait_for(r"✅ Live: ", since=since)
    fix = service.live_head()
    proof = (
        f"test_handlers.py::test_zero_count failed on {base[:7]} with ZeroDivisionError "
        f"at app.py:handle, passes on {fix[:7]}"
    )
    chat.wait_for(f"Proof: {proof}", since=since)
    assert (service.live / "checks/test_handlers.py").read_text() == ZERO_COUNT
    [request] = [r for r in chat.requests() if r.command == "change"]
    assert request.state is S.SUCCEEDED
    assert request.incident is not None and request.incident["kind"] == "ZeroDivisionError"
    assert (request.result or {})["proof"] == proof
    planning = fake.calls()[1].user_text()
    assert "must add or modify a test that reproduces the failure" in planning
    assert "fails with ZeroDivisionError at app.py:handle" in planning

    # The signature stayed quiet through the window and MOLT_FIX_HOLD: the hold check, put
    # on the queue by a worker's beat once due, marks the incident held. The beat's work is
    # done here at each look rather than on its thread, which does it every BEAT_SECONDS.
    deadline = time.monotonic() + 60
    book = IncidentBook(chat.settings, chat.conn)
    beat = workers.Beat(chat.settings, "fix-worker", [chat.settings])
    try:
        while (book.get(incident.id) or incident).outcome != "held":
            assert time.monotonic() < deadline, "the hold check never marked the incident held"
            time.sleep(0.2)
            beat.enqueue_due()
            chat.work()
    finally:
        beat.stop()
    chat.wait_for(rf"✅ Held: incident {incident.id}", since=since)
    assert listing(chat.settings, chat.conn)["incidents"][0]["outcome"] == "held"


def test_the_incidents_signature_coming_back_in_the_watch_rolls_the_fix_back(
    service: ServiceRepo, start_chat: StartChat, fake: FakeAnthropic
) -> None:
    base = _released(service)
    chat = start_chat(**fake.env(), MOLT_WATCH_SECONDS="60")
    incident, signal = _incident(chat, service, fake)
    fake.add(reply(tool("submit_plan", fix_plan())), *written(FIXED, ZERO_COUNT), approve())
    since = chat.send(f"press fix {incident.id}")
    chat.wait_for(r"📋 Plan ready", since=since)
    chat.send("press approve")
    chat.work_in_background()
    [request] = [r for r in chat.requests() if r.command == "change"]
    deadline = time.monotonic() + 120
    while chat.store.get(request.id).state is not S.WATCHING:
        assert time.monotonic() < deadline, "the fix was never watched"
        time.sleep(0.05)
    IncidentBook(chat.settings, chat.conn).take(replace(signal, at=time.time()))
    chat.wait_for(r"❌ Failed: ", since=since)
    chat.wait_for(rf"incident {incident.id}'s signature came back: ZeroDivisionError", since=since)
    assert service.live_head() == base
    assert chat.store.get(request.id).state is S.FAILED


def test_what_a_fix_carries_of_log_and_sentry_incidents_and_a_fix_that_did_not_hold(
    settings: Settings, conn: redis.Redis
) -> None:
    book = IncidentBook(settings, conn)
    logged = Signal(
        "log",
        "log:1",
        FIRING,
        summary="ZeroDivisionError: division by zero (svc/handlers.py:handle)",
        details="Traceback (most recent call last):\n...",
    )
    sentry = Signal(
        "sentry", "sentry:7", FIRING, summary="KeyError: 'count'", details="svc.orders in total"
    )
    alert = Signal("alertmanager", "am:1", FIRING, summary="HighErrorRate")
    shown = {}
    for signal in (logged, sentry, alert):
        opened = book.take(signal).incident
        assert opened is not None
        carried = failures.carried(opened)
        shown[signal.source] = (carried["kind"], carried["frame"], carried["signature"])
    assert shown == {
        "log": (
            "ZeroDivisionError",
            "svc/handlers.py:handle",
            "ZeroDivisionError at svc/handlers.py:handle",
        ),
        "sentry": ("KeyError", "svc/orders.py:total", "KeyError at svc/orders.py:total"),
        "alertmanager": ("", "", "HighErrorRate"),
    }
    # Seen again after the fix went live, before the hold check: it did not hold.
    went_live = time.time()
    again = book.take(replace(logged, at=went_live + 1)).incident
    assert again is not None
    failure = failures.carried(again)
    assert failures.settle(settings, conn, failure, "r1", went_live) == "did not hold"
    assert failures.settle(settings, conn, failure, "r1", went_live + 2) == "did not hold"


def _refused(
    service: ServiceRepo, start_chat: StartChat, fake: FakeAnthropic, rounds: list[Turn]
) -> tuple[Chat, str, int]:
    base = _released(service)
    chat = start_chat(**fake.env())
    incident, _ = _incident(chat, service, fake)
    fake.add(reply(tool("submit_plan", fix_plan())), *rounds)
    since = _fix_it(chat, incident)
    chat.wait_for(r"❌ Failed: ", since=since)
    chat.wait_for(r"press retry", since=since)
    assert service.live_head() == base
    [request] = [r for r in chat.requests() if r.command == "change"]
    refusals = [e for e in audit.entries(chat.conn, request.id) if e["action"] == "fix_refused"]
    assert len(refusals) == 2  # refused, told once, refused again
    _told_by_molt(fake)
    return chat, base, since


def _told_by_molt(fake: FakeAnthropic) -> None:
    """The implementer's second round is told why, in Molt's words outside the untrusted
    fence (a model discounts what is inside), the test run's output inside it."""
    told = fake.calls()[-1].user_text()
    instruction = told.index("Molt ran your tests on the current code and on your change")
    assert '<untrusted source="refusal">' in told[instruction:]
    assert "<untrusted" not in told[told.rindex("</untrusted>", 0, instruction) : instruction]


def test_a_fix_without_a_test_is_refused_and_the_model_told_once(
    service: ServiceRepo, start_chat: StartChat, fake: FakeAnthropic
) -> None:
    again = FIXED + "\n# guarded\n"
    chat, _, since = _refused(
        service, start_chat, fake, [*written(FIXED, None), *written(again, None)]
    )
    chat.wait_for(r"adds or changes no test that reproduces the incident", since=since)


def test_a_test_that_passes_on_the_base_is_refused(
    service: ServiceRepo, start_chat: StartChat, fake: FakeAnthropic
) -> None:
    chat, base, since = _refused(
        service, start_chat, fake, [*written(FIXED, PASSES), *written(None, PASSES + "\n")]
    )
    chat.wait_for(
        rf"checks/test_handlers.py pass on {base[:7]}: they do not reproduce", since=since
    )


def test_a_test_failing_on_the_base_with_another_error_is_refused(
    service: ServiceRepo, start_chat: StartChat, fake: FakeAnthropic
) -> None:
    other = "from app import handle\n\n\ndef test_zero_count():\n    assert handle(10, 0) == 0\n"
    other = other.replace("handle(10, 0)", "{}['count']")
    chat, base, since = _refused(
        service, start_chat, fake, [*written(FIXED, other), *written(None, other + "\n")]
    )
    chat.wait_for(
        rf"fail on {base[:7]} with KeyError at \S*test_handlers.py:test_zero_count in "
        r"test_handlers.py::test_zero_count, not with ZeroDivisionError at app.py:handle",
        since=since,
    )


def test_pytest_runs_only_the_fix_tests_and_its_native_traceback_is_read(tmp_path: Path) -> None:
    """A pytest command is narrowed to the fix's tests; its traceback (longer than a log
    excerpt, through pytest's own frames) still names the exception, the service's frame
    and the test."""
    (tmp_path / "svc").mkdir()
    (tmp_path / "svc/__init__.py").write_text("")
    (tmp_path / "svc/handlers.py").write_text(
        "def handle(total, count):\n    return total // count\n"
    )
    (tmp_path / "checks").mkdir()
    (tmp_path / "checks/test_handlers.py").write_text(
        ZERO_COUNT.replace("from app", "from svc.handlers")
    )
    command = reproduction.command_for(
        f"{sys.executable} -m pytest -q -p no:cacheprovider", ["checks/test_handlers.py"]
    )
    assert command.endswith("--tb=native checks/test_handlers.py")
    assert reproduction.command_for("python service_tests.py", ["checks/t.py"]) == (
        "python service_tests.py"
    )
    run = subprocess.run(
        command, shell=True, cwd=tmp_path, capture_output=True, text=True, check=False
    )
    found = reproduction.raised(run.stdout, tmp_path.resolve(), ["checks/test_handlers.py"])
    wanted = {"kind": "ZeroDivisionError", "frame": "svc/handlers.py:handle"}
    assert reproduction.matching(found, wanted) == reproduction.Raised(
        "ZeroDivisionError", "svc/handlers.py:handle", "test_handlers.py::test_zero_count"
    )
    assert reproduction.matching(found, wanted | {"kind": "KeyError"}) is None


def test_a_fix_delivered_as_a_pull_request_shows_its_proof(
    service: ServiceRepo, start_chat: StartChat, fake: FakeAnthropic
) -> None:
    base = _released(service)
    chat = start_chat(**fake.env(), MOLT_CHANGE_DELIVERY="pull-request")
    incident, _ = _incident(chat, service, fake)
    fake.add(reply(tool("submit_plan", fix_plan())), *written(FIXED, ZERO_COUNT), approve())
    since = _fix_it(chat, incident)
    chat.wait_for(r"🔀 Proposed: ", since=since)
    proof = (
        rf"Proof: test_handlers.py::test_zero_count failed on {base[:7]} with ZeroDivisionError "
        r"at app.py:handle, passes on \w{7}"
    )
    chat.wait_for(proof, since=since)
    assert service.live_head() == base
    [request] = [r for r in chat.requests() if r.command == "change"]
    shown = (request.result or {})["proof"]
    body = render("pull_request", request.context() | {"fence": "```", "conversation": ""})
    assert f"*Proof:* {shown}" in body.text


def test_a_fix_whose_incident_came_back_as_a_new_one_did_not_hold(
    settings: Settings, conn: redis.Redis
) -> None:
    """The alert resolved once the fix went live, then fired again after its cooldown: the
    signature is back, in an incident of its own, so the fix did not hold."""
    quick = settings.model_copy(update={"incident_cooldown": 0.0})
    book = IncidentBook(quick, conn)
    alert = Signal("alertmanager", "am:rate", FIRING, summary="HighErrorRate", at=time.time())
    fixed = book.take(alert).incident
    assert fixed is not None
    went_live = time.time() + 1
    book.take(replace(alert, status=RESOLVED, at=went_live + 1))
    again = book.take(replace(alert, at=went_live + 2)).incident
    assert again is not None and again.id != fixed.id
    failure = failures.carried(fixed)
    assert failures.settle(quick, conn, failure, "r1", went_live) == "did not hold"


def test_a_test_file_under_a_symlink_out_of_the_base_is_not_copied_there(
    service: ServiceRepo, settings: Settings, tmp_path: Path
) -> None:
    """On the base, checks/ is a symlink out of the repository; the fix makes it a directory
    with its test. Copying that test onto the base would write through the link, outside
    the sandbox: the fix is refused instead, and nothing is written there."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (service.work / "checks").rename(service.work / "kept")
    (service.work / "checks").symlink_to(outside)
    base = service.commit({}, "checks is a link")
    fix = service.commit({"checks": None, "checks/test_handlers.py": ZERO_COUNT}, "a test")
    git(service.live, "pull", "-q", "--ff-only")
    sandbox = Sandbox(Git(service.live), tmp_path / "sandbox")
    sandbox.checkout(fix)  # as the fix was written there
    spec = PhaseSpec.from_settings(settings)
    proof = reproduction.reproduce(sandbox, spec, base, fix, {"kind": "ZeroDivisionError"})
    assert not proof.ok
    assert proof.reason.startswith(f"checks/test_handlers.py is a symlink at {base[:7]}, or a")
    assert list(outside.iterdir()) == []
    assert sandbox.git.head() == fix


GUARDED = HANDLER + "\n\ndef guarded(total, count):\n    return total // count if count else 0\n"
IMPORTS_GUARDED = ZERO_COUNT.replace("import handle", "import guarded").replace(
    "handle(10, 0)", "guarded(10, 0)"
)


def test_a_test_that_does_not_load_on_the_base_does_not_reproduce_an_alert(
    service: ServiceRepo, settings: Settings, tmp_path: Path
) -> None:
    """An alert names no exception, so any failure on the base would do; but a test that
    imports what only the fix adds fails there before it runs, and proves nothing."""
    base = _released(service)
    fix = service.commit({"app.py": GUARDED, "checks/test_handlers.py": IMPORTS_GUARDED}, "fix")
    git(service.live, "pull", "-q", "--ff-only")
    sandbox = Sandbox(Git(service.live), tmp_path / "sandbox")
    sandbox.checkout(fix)
    pytest_command = f"{sys.executable} -m pytest -q -p no:cacheprovider"
    spec = replace(PhaseSpec.from_settings(settings), test_command=pytest_command)
    alert = {"id": "i1", "source": "alertmanager", "kind": "", "frame": ""}
    proof = reproduction.reproduce(sandbox, spec, base, fix, alert)
    assert not proof.ok
    assert proof.reason.startswith(
        f"checks/test_handlers.py did not run on {base[:7]} (pytest exited 2: "
    )
    # A runner of its own shows Python's traceback: raised while the test file loaded.
    loading = reproduction.Raised("ImportError", "", "test_handlers.py::<module>")
    assert reproduction.matching([loading], alert) is None
    assert reproduction.matching([loading], alert | {"kind": "ImportError"}) == loading


def test_a_second_round_that_writes_nothing_fails_naming_the_refusal(
    service: ServiceRepo, start_chat: StartChat, fake: FakeAnthropic
) -> None:
    base = _released(service)
    chat = start_chat(**fake.env())
    incident, _ = _incident(chat, service, fake)
    idle = reply(tool("finish", {"summary": "nothing more to do"}))
    fake.add(reply(tool("submit_plan", fix_plan())), *written(FIXED, None), idle)
    since = _fix_it(chat, incident)
    chat.wait_for(r"❌ Failed: ", since=since)
    chat.wait_for(
        r"the fix does not reproduce its incident: .*adds or changes no test.*; told once, "
        r"the implementer then: the implementer changed nothing",
        since=since,
    )
    assert service.live_head() == base
    _told_by_molt(fake)


def test_a_second_press_of_fix_it_says_the_fix_is_under_way(
    service: ServiceRepo, start_chat: StartChat, fake: FakeAnthropic
) -> None:
    _released(service)
    chat = start_chat(**fake.env())
    incident, _ = _incident(chat, service, fake)
    fake.add(reply(tool("submit_plan", fix_plan())))
    since = chat.send(f"press fix {incident.id}")
    chat.wait_for(r"📋 Plan ready", since=since)
    [asked] = [r for r in chat.requests() if r.command == "change"]
    again = chat.send(f"press fix {incident.id}")
    chat.wait_for(rf"a fix of this incident is already under way: {asked.id}", since=again)
    assert [r.id for r in chat.requests() if r.command == "change"] == [asked.id]
