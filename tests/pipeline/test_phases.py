"""Validation phases as the console shows them, with the update run by an RQ worker in this
process, real git and real test commands. A long phase shows its progress while it runs;
a test that fails once, then passes, is told apart from one that is broken."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from bot.rendering import render
from pipeline import events, keyspace
from tests.desk import Chat, StartChat
from tests.support import ServiceRepo, fails_once

PYTEST = "python -m pytest -q -p no:cacheprovider"
PROGRESS = re.compile(
    r"⏳ phase 1 running for ([\d.]+) s: (\d+)% of tests done, (\d+) failed so far"
)


def _fake_pytest(path: Path, live: Path, go_on: Path) -> str:
    """A pytest-like test command: slow in the sandbox once the checkout has a SLOW file,
    printing pytest's ``-q`` progress lines (with one failure mark) as it goes, and holding
    its last one until ``go_on`` exists (made once the status showed the progress)."""
    path.write_text(
        "import os, pathlib, time\n"
        f"if pathlib.Path('SLOW').exists() and os.getcwd() != {str(live)!r}:\n"
        "    for step in range(1, 8):\n"
        "        marks = '....F' if step == 2 else '.....'\n"
        "        print(f'{marks}  [{step * 100 // 8:3d}%]', flush=True)\n"
        "        time.sleep(0.25)\n"
        "    deadline = time.monotonic() + 120\n"
        f"    while not pathlib.Path({str(go_on)!r}).exists() and time.monotonic() < deadline:\n"
        "        time.sleep(0.05)\n"
        "    print('.....  [100%]', flush=True)\n"
        "print('40 passed')\n"
    )
    return f"python {path}"


def _progress(chat: Chat, request_id: str) -> tuple[list[str], list[tuple[float, int, int]]]:
    """The status message's Progress fields as it was refreshed in place (a piped console
    prints at most one progress line a minute), each rendered as the notifier renders it;
    and what they say: seconds run, share done, failures so far."""
    request = chat.store.get(request_id)
    refreshes = [
        events.Event.from_fields(i, f)
        for i, f in chat.conn.xrange(keyspace.EVENTS)
        if f.get("request_id") == request_id and f.get("template") == "working"
    ]
    fields = [
        field.value
        for event in refreshes
        for field in render("working", request.context() | event.data).fields
        if field.name == "Progress"
    ]
    shown = [PROGRESS.search(f"⏳ {value}") for value in fields]
    return fields, [(float(m.group(1)), int(m.group(2)), int(m.group(3))) for m in shown if m]


FLAKY_ID = "checks/test_flaky.py::test_sometimes"


@pytest.mark.slow
def test_a_long_phase_shows_its_progress_while_it_runs(
    service: ServiceRepo, start_chat: StartChat, tmp_path: Path
) -> None:
    go_on = tmp_path / "go-on"
    command = _fake_pytest(tmp_path / "fake_pytest.py", service.live, go_on)
    new = service.commit({"SLOW": "the tests take a while\n"}, "slow tests")
    chat = start_chat(MOLT_TEST_COMMAND=command, MOLT_PROGRESS_INTERVAL="2")
    since = chat.send("deploy main")
    [request] = chat.requests(1)
    chat.send("press approve")
    chat.work_in_background()
    deadline = time.monotonic() + 120
    while len(_progress(chat, request.id)[1]) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    go_on.touch()  # the phase may end: its progress was shown twice (or never will be)
    chat.wait_for(r"✅ Live: ", since=since, timeout=120)
    assert service.live_head() == new
    fields, progress = _progress(chat, request.id)
    assert len(progress) >= 2, fields
    seconds = [p[0] for p in progress]
    assert seconds == sorted(seconds) and seconds[0] < seconds[-1]
    assert all(0 < share <= 100 for _, share, _ in progress)
    assert progress[-1][2] == 1  # the failure mark, counted as it came


def test_a_flaky_test_fails_the_update_by_default_naming_it_and_history_keeps_it(
    service: ServiceRepo, start_chat: StartChat, tmp_path: Path
) -> None:
    old = service.live_head()
    service.commit({"checks/test_flaky.py": fails_once(tmp_path / "ran")}, "a flaky test")
    chat = start_chat(MOLT_TEST_COMMAND=PYTEST)
    since = chat.send("deploy main")
    chat.send("press approve")
    chat.work()
    chat.wait_for(r"❌ Failed: ", since=since)
    named = rf"flaky \(failed, then passed when run again\): {re.escape(FLAKY_ID)}"
    chat.wait_for(named, since=since)
    assert service.live_head() == old
    asked = chat.send("history")
    chat.wait_for(r"Flaky tests \(failed, then passed when run again\)", since=asked)
    chat.wait_for(rf"`{re.escape(FLAKY_ID)}`: 1 time, last .* \(phase 1\)", since=asked)


def test_with_flaky_pass_a_flaky_test_lands_and_the_success_message_lists_it(
    service: ServiceRepo, start_chat: StartChat, tmp_path: Path
) -> None:
    new = service.commit({"checks/test_flaky.py": fails_once(tmp_path / "ran")}, "a flaky test")
    chat = start_chat(MOLT_TEST_COMMAND=PYTEST, MOLT_FLAKY="pass")
    since = chat.send("deploy main")
    chat.send("press approve")
    chat.work()
    chat.wait_for(r"✅ Live: ", since=since)
    chat.wait_for(rf"Flaky tests: • `{re.escape(FLAKY_ID)}` failed, then passed", since=since)
    assert service.live_head() == new


def test_a_test_that_always_fails_is_not_called_flaky(
    service: ServiceRepo, start_chat: StartChat
) -> None:
    broken = "def test_broken():\n    assert 1 + 1 == 3, 'broken for good'\n"
    service.commit({"checks/test_broken.py": broken}, "a broken test")
    chat = start_chat(MOLT_TEST_COMMAND=PYTEST, MOLT_FLAKY="pass")
    since = chat.send("deploy main")
    chat.send("press approve")
    chat.work()
    chat.wait_for(r"❌ Failed: ", since=since)
    chat.wait_for(r"failed again when run again: checks/test_broken.py::test_broken", since=since)
    assert "flaky" not in "\n".join(chat.lines[since:])
