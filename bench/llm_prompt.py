"""How big the plan call's prompt is, and whether a second request reuses the cached prefix.

For Molt's own repository (its current commit) and for a generated 500-file repository
(bench/repo.py), with embedded Redis and the fake Messages API (tests/fakes/anthropic.py)
reached by the real ``anthropic`` client:

* the first plan prompt (tools + instructions + repository map + request) in tokens: as
  ``messages.count_tokens`` answers (the fake counts JSON characters / 4; with
  ``--count-with-api`` the API named by ANTHROPIC_API_KEY / ANTHROPIC_BASE_URL counts instead)
  and as Molt estimates it (characters / 3, on the side of caution for code), for a typical
  request and for the largest one intake accepts (2,000 characters and the most follow-ups);
  each against the budget MOLT_LLM_PROMPT_BUDGET;
* two plan requests in a row on the same commit: the tokens each wrote to and read from the
  prompt cache, as the fake reports them (it caches like the API: the prefix up to a
  ``cache_control`` breakpoint, from 1,024 tokens).

    python bench/llm_prompt.py [--runs 3] [--budget 24000] [--count-with-api]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for ``bench`` and ``tests``

from bench.harness import clean_environment, table
from bench.repo import generate_repo
from pipeline import store
from pipeline.config import MOLT_HOME, load_settings
from pipeline.git import Git
from pipeline.intake import flow as intake
from pipeline.llm import planner, repomap
from pipeline.llm.client import Claude
from pipeline.planning import deploys as planning
from pipeline.requests.store import Origin, RequestStore
from tests.conversations import planned
from tests.fakes.anthropic import API_KEY, FakeAnthropic

ASK = "add a /ping command that answers pong"
BIGGEST = ("x" * intake.MAX_TEXT, ["y" * intake.MAX_TEXT] * intake.MAX_FOLLOW_UPS)


def measure(
    name: str, target: Path, data: Path, budget: int, fake: FakeAnthropic, counter: Any
) -> dict[str, Any]:
    settings = load_settings(
        data_dir=data,
        target_dir=target,
        authorised_users=["console:bench"],
        anthropic_api_key=API_KEY,
        anthropic_base_url=fake.url,
        llm_prompt_budget=budget,
    )
    conn = store.connect(settings)
    git = Git(target)
    head = git.head()
    began = time.monotonic()
    graph = planning.import_graph(settings, conn, git, head)
    system, drawn = planner.system_blocks(settings, git, head, graph)
    map_seconds = time.monotonic() - began
    figures: dict[str, Any] = {
        "repository": name,
        "files": drawn.files,
        "listed": drawn.listed,
        "map_tokens": drawn.tokens,
        "map_seconds": map_seconds,
        "budget": budget,
    }
    for label, (text, follow_ups) in (("typical", (ASK, [])), ("largest", BIGGEST)):
        message = planner.request_message(settings, text, follow_ups)
        counted = counter(settings).count_tokens(
            system=system, messages=[message], tools=planner.TOOLS
        )
        estimated = repomap.estimate_tokens(json.dumps([planner.TOOLS, system, message]))
        figures[f"{label}_counted"] = counted
        figures[f"{label}_estimated"] = estimated

    requests = RequestStore(conn)
    some_module = sorted(graph.modules.values())[0]
    files = [{"path": some_module, "action": "modify", "why": "answer /ping"}]
    for n in (1, 2):
        fake.add(planned(files=files))
        request = requests.create(Origin("console", "bench"), ASK, "change", ASK)
        made = planner.plan_change(settings, conn, request)
        usage = made.usage
        figures[f"call{n}_write"] = usage.cache_creation_input_tokens
        figures[f"call{n}_read"] = usage.cache_read_input_tokens
        figures[f"call{n}_input"] = usage.input_tokens
    calls = fake.calls()
    figures["same_prefix"] = (
        calls[-1].body["system"] == calls[-2].body["system"]
        and calls[-1].body["tools"] == calls[-2].body["tools"]
    )
    store.stop_embedded(data)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="map build timings: median of N")
    parser.add_argument("--budget", type=int, default=24_000, help="MOLT_LLM_PROMPT_BUDGET")
    parser.add_argument("--count-with-api", action="store_true")
    args = parser.parse_args(argv)
    api = {k: os.environ.get(k, "") for k in ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL")}
    with tempfile.TemporaryDirectory(prefix="molt-bench-llm-") as tmp_name:
        tmp = Path(tmp_name)
        clean_environment(tmp)
        _, generated, _ = generate_repo(tmp / "generated", files=500, megabytes=5.0)
        targets = [("molt (this checkout)", MOLT_HOME), ("generated, 500 files", generated)]
        slugs = ["molt", "generated"]
        rows: list[dict[str, Any]] = []
        with FakeAnthropic() as fake:

            def counter(settings: Any) -> Claude:
                if not args.count_with_api:
                    return Claude(settings, "count")
                real = settings.model_copy(
                    update={
                        "anthropic_api_key": api["ANTHROPIC_API_KEY"],
                        "anthropic_base_url": api["ANTHROPIC_BASE_URL"] or None,
                    }
                )
                return Claude(real, "count")

            for (name, target), slug in zip(targets, slugs, strict=True):
                runs = [
                    measure(name, target, tmp / f"data-{slug}-{n}", args.budget, fake, counter)
                    for n in range(args.runs)
                ]
                row = dict(runs[0])
                row["map_seconds"] = statistics.median(r["map_seconds"] for r in runs)
                rows.append(row)

    counted_by = "the API" if args.count_with_api else "the fake (JSON chars / 4)"
    print(f"Plan prompt, budget MOLT_LLM_PROMPT_BUDGET={args.budget:,} tokens")
    print(f"counted: messages.count_tokens answered by {counted_by}; estimated: chars / 3\n")
    print(
        table(
            [
                "repository",
                "files",
                "in map",
                "map tok",
                "map s",
                "typical cnt/est",
                "largest cnt/est",
                "within",
            ],
            [
                [
                    r["repository"],
                    r["files"],
                    r["listed"],
                    r["map_tokens"],
                    r["map_seconds"],
                    f"{r['typical_counted']:,} / {r['typical_estimated']:,}",
                    f"{r['largest_counted']:,} / {r['largest_estimated']:,}",
                    "yes"
                    if max(r["largest_counted"], r["largest_estimated"]) <= r["budget"]
                    else "NO",
                ]
                for r in rows
            ],
        )
    )
    print("\nTwo plan requests on the same commit (tokens, as the fake's cache reports them)\n")
    print(
        table(
            [
                "repository",
                "1st: written",
                "1st: read",
                "1st: uncached",
                "2nd: written",
                "2nd: read",
                "2nd: uncached",
                "same prefix",
            ],
            [
                [
                    r["repository"],
                    r["call1_write"],
                    r["call1_read"],
                    r["call1_input"],
                    r["call2_write"],
                    r["call2_read"],
                    r["call2_input"],
                    "yes" if r["same_prefix"] else "NO",
                ]
                for r in rows
            ],
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
