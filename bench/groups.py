"""Group approvers: platform API calls per approval, with the kept answers cold and warm.

MOLT_APPROVERS names one group on each platform (``slack:@deployers``,
``github:@acme/deployers``, ``discord:@&<role>``); the fakes of tests/fakes/ answer for them
on 127.0.0.1, and the answers are kept in an embedded Redis in a temporary MOLT_DATA_DIR, as
the bot keeps them. Each approval is the check an Approve click runs
(``authorisation.may_approve``, through the bot's ``bot.groups.Groups``): the first asks the
platform (cold), the next ``--approvals`` within MOLT_GROUP_TTL should ask nothing (warm, the
goal: 0 calls). Calls are counted on the fakes, by endpoint.

    python bench/groups.py [--approvals 100]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# The repository root for ``bench`` and ``tests``, instead of bench/, whose github.py would
# hide PyGithub's ``github``.
sys.path.remove(str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import BenchFailure, clean_environment, table
from bot.groups import Groups
from pipeline import logs, store
from pipeline.config import Settings, load_settings
from pipeline.requests import authorisation
from pipeline.requests.store import Origin
from tests.fakes import discord as fake_discord
from tests.fakes import github as fake_github
from tests.fakes import slack as fake_slack

GROUP_CALLS = {
    "slack": ("usergroups.list", "usergroups.users.list"),
    "github": ("GET /orgs/acme/teams/deployers/memberships/",),
    "discord": ("GET /channels/{id}", "GET /guilds/{id}/members/{id}"),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--approvals", type=int, default=100, help="warm approvals per platform")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="molt-bench-groups-") as tmp:
        clean_environment(Path(tmp))
        logs.configure("warning", [], fmt="console")
        with (
            fake_slack.FakeSlack() as slack,
            fake_github.FakeGitHub() as github,
            fake_discord.FakeDiscord() as discord,
        ):
            slack.add_usergroup("deployers", ["U2BOB"])
            github.add_team("acme", "deployers", {"bob": "active"})
            bob = fake_discord.Person("1300000000000000103", "bob", (fake_discord.ROLE_APPROVERS,))
            discord.join(bob)
            settings = load_settings(
                data_dir=Path(tmp) / "data",
                approvers=[
                    "slack:@deployers",
                    "github:@acme/deployers",
                    f"discord:@&{fake_discord.ROLE_APPROVERS}",
                ],
                slack_bot_token=fake_slack.BOT_TOKEN,
                slack_api_url=slack.url,
                github_token=fake_github.TOKEN,
                github_api_url=github.url,
                discord_token=fake_discord.TOKEN,
                discord_api_url=discord.api_url,
            )
            conn = store.connect(settings)
            authorisation.ask_groups_with(Groups(settings, conn))
            counts: dict[str, Callable[[], int]] = {
                "slack": lambda: sum(len(slack.calls(m)) for m in GROUP_CALLS["slack"]),
                "github": lambda: sum(
                    1
                    for c in github.calls
                    if f"{c.method} {c.path}".startswith(GROUP_CALLS["github"][0])
                ),
                "discord": lambda: sum(len(discord.calls(r)) for r in GROUP_CALLS["discord"]),
            }
            clickers = {
                "slack": Origin("slack", "U2BOB", "C1DEPLOYS"),
                "github": Origin("github", "bob", "acme/api#1"),
                "discord": Origin("discord", bob.id, fake_discord.CHANNEL_ID),
            }
            rows = []
            try:
                for platform, who in clickers.items():
                    rows.append(_measure(settings, who, counts[platform], args.approvals))
            finally:
                authorisation.ask_groups_with(None)
                conn.close()
            store.leave(settings.data_dir)
    headers = [
        "platform",
        "calls, cold approval",
        f"calls, {args.approvals} warm approvals",
        "calls per warm approval",
        "ms per warm check",
    ]
    print(table(headers, rows, digits=3))
    warm = sum(row[2] for row in rows)
    print(f"\ngroup lookups per approval with the cache warm: {warm / (3 * args.approvals):g}")
    return 0 if warm == 0 else 1


def _measure(
    settings: Settings, who: Origin, calls: Callable[[], int], approvals: int
) -> list[Any]:
    before = calls()
    if not authorisation.may_approve(settings, who, "slack:U1ALICE", "low"):
        raise BenchFailure(f"{who.principal} was refused")
    cold = calls() - before
    started = time.perf_counter()
    for _ in range(approvals):
        if not authorisation.may_approve(settings, who, "slack:U1ALICE", "low"):
            raise BenchFailure(f"{who.principal} was refused")
    seconds = time.perf_counter() - started
    warm = calls() - before - cold
    return [who.platform, cold, warm, warm / approvals, seconds * 1000 / approvals]


if __name__ == "__main__":
    sys.exit(main())
