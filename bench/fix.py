"""Fix it → the fix live, with the fake model, and the share of it that is the reproduction.

Each run takes a fresh bench target (``bench.harness.rig``: the generated service, embedded
Redis, a real ``bot.cli worker``) whose test command also runs pytest over ``checks/``, makes
a release whose handler raises ZeroDivisionError only in production live, opens the incident
from the handler's real traceback, diagnoses it through the fake Messages API
(``tests/fakes/anthropic.py``), then presses Fix it: planning, approval, the implementer's fix
and test, the reproduction (the test on the base, then on the fix), phase 1, phase 2 and the
restart, until the request succeeds. Printed: Fix it → plan ready, approve → live, the
reproduction step, and the whole from the press to live.

    python bench/fix.py [--runs 5] [--files 2000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for ``bench`` and ``tests``

from pydantic import SecretStr

from bench.harness import BENCH, BenchFailure, check_seconds, median, rig, table
from bench.repo import TEST_COMMAND, git
from pipeline.incidents import diagnosis
from pipeline.incidents.book import IncidentBook
from pipeline.incidents.logwatch import LineReader, occurrence_signal
from pipeline.requests.states import RequestState as S
from tests.conversations import fix_plan
from tests.fakes.anthropic import FakeAnthropic, reply, tool

HANDLER = "def handle(total, count):\n    return total // count\n"
FIXED = "def handle(total, count):\n    return total // count if count else 0\n"
PASSES = "from svc.handlers import handle\n\n\ndef test_handle():\n    assert handle(10, 2) == 5\n"
ZERO = (
    "from svc.handlers import handle\n\n\ndef test_zero_count():\n    assert handle(10, 0) == 0\n"
)
COMMAND = f"{TEST_COMMAND} && python -m pytest -q -p no:cacheprovider checks"
PLAN = fix_plan("svc/handlers.py")
DIAGNOSED = {
    "cause": "handle() divides by the count, which is 0 for an empty order",
    "files": ["svc/handlers.py"],
    "evidence": [{"file": "svc/handlers.py", "line": 2, "quote": "return total // count"}],
    "confidence": 0.9,
    "fix": "answer 0 when the count is 0",
    "confirm": "the ZeroDivisionError stops",
}


def one_run(files: int) -> tuple[float, float, float, float]:
    """(Fix it → plan ready, approve → live, reproduction, Fix it → live) in seconds."""
    with rig(files=files, change=1) as bench, FakeAnthropic() as model:
        live = bench.live
        (live / "svc/handlers.py").write_text(HANDLER)
        (live / "checks").mkdir(exist_ok=True)
        (live / "checks/test_orders.py").write_text(PASSES)
        git(live, "add", "-A")
        git(live, "commit", "-q", "-m", "handle orders")
        os.environ.update(model.env())
        bench.settings = bench.settings.model_copy(
            update={
                "test_command": COMMAND,
                "anthropic_api_key": SecretStr(model.api_key),
                "anthropic_base_url": model.url,
            }
        )
        bench.stop_worker()
        bench.start_worker()
        settings, conn = bench.settings, bench.conn

        run = subprocess.run(
            [sys.executable, "-c", "from svc.handlers import handle; handle(10, 0)"],
            cwd=live,
            capture_output=True,
            text=True,
            check=False,
        )
        reader = LineReader(live)
        [found] = [o for o in map(reader.feed, run.stderr.splitlines(keepends=True)) if o]
        book = IncidentBook(settings, conn)
        incident = book.take(replace(occurrence_signal(settings, found), counted=False)).incident
        if incident is None:
            raise BenchFailure("no incident opened")
        model.add(reply(tool("submit_diagnosis", DIAGNOSED)))
        diagnosis.post(settings, conn, book, incident)

        writes = [
            tool("write_file", {"path": "svc/handlers.py", "content": FIXED}),
            tool("write_file", {"path": "checks/test_handlers.py", "content": ZERO}),
        ]
        model.add(
            reply(tool("submit_plan", PLAN)),
            reply(*writes),
            reply(tool("finish", {"summary": "guarded the division"})),
            reply(tool("submit_review", {"verdict": "approve", "reasons": ["guards it"]})),
        )
        began = time.monotonic()
        request = diagnosis.fix(settings, conn, incident.id, BENCH)
        planned = time.monotonic() - began
        if request is None or request.state is not S.PLAN_READY:
            raise BenchFailure(f"Fix it ended {request.state.value if request else 'nowhere'}")
        done = bench.approve_and_wait(request.id)
        total = time.monotonic() - began
        if done.request.state is not S.SUCCEEDED:
            refused = [e["detail"] for e in bench.trail(request.id) if e["action"] == "fix_refused"]
            raise BenchFailure(
                f"the fix ended {done.request.state.value}: {refused or done.request.message}"
            )
        checks = (done.request.result or {}).get("checks", [])
        return planned, done.wall, check_seconds(checks, "reproduce"), total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--files", type=int, default=2000)
    args = parser.parse_args()
    rows = [one_run(args.files) for _ in range(args.runs)]
    columns = list(zip(*rows, strict=True))
    headers = [
        "run",
        "Fix it → plan (s)",
        "approve → live (s)",
        "reproduce (s)",
        "Fix it → live (s)",
    ]
    shown = [[n + 1, *row] for n, row in enumerate(rows)]
    shown.append(["median", *(median(c) for c in columns)])
    print(table(headers, shown))
    share = median(columns[2]) / median(columns[3])
    print(f"reproduction: {share:.0%} of Fix it → live (median)")


if __name__ == "__main__":
    main()
