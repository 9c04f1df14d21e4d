"""The model client: loaded only when used, and counting what each call costs."""

from __future__ import annotations

import os
import subprocess
import sys

from pipeline.usage import Usage
from tests.support import ROOT


def test_start_up_does_not_import_the_sdk() -> None:
    """Importing anthropic takes over a second; the bot and workers must not pay it at start."""
    modules = "bot.app, bot.desk, pipeline.intake.flow, pipeline.update.jobs, pipeline.llm.planner"
    code = f"import sys, {modules}; print('anthropic' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert done.stdout.strip() == "False"


def test_usage_adds_up_and_reads_well() -> None:
    total = Usage(input_tokens=100, output_tokens=20, cache_creation_input_tokens=1500, calls=1)
    total.add(Usage(input_tokens=40, output_tokens=30, cache_read_input_tokens=1500, calls=1))
    assert total.total == 3190
    assert total.line() == (
        "3,140 tokens in (1,500 read from the cache, 1,500 written to it), 50 out, 2 calls"
    )
    assert Usage.from_dict(total.to_dict() | {"junk": "x", "calls": "2"}) == total
