"""A rollout as processes: the bot (no checkout of any target: its molt.toml names
directories that do not exist) and one worker per target on a "host" of its own, sharing one
Redis server. Every step is planned and run where its checkout is."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline import store
from pipeline.config import load_settings
from pipeline.requests.states import RequestState as S
from pipeline.requests.store import RequestStore
from tests.support import Hosts, ServiceRepo, git

V2 = {"app.py": "def greet():\n    return 'hello'\n\n\nVERSION = 2\n"}
TARGETS = ("web-staging", "web-1", "web-2")
TABLE = '[targets.{name}]\ndir = "{dir}"\ntest_command = "python service_tests.py"\n'
ROLLOUT = '[rollouts.web]\nfrom = "web-staging"\nsteps = ["web-1", "web-2"]\n'


class Rollout(Hosts):
    """Staging and two hosts of web, cloned from one upstream, and the web rollout."""

    def __init__(self, root: Path) -> None:
        self.service = ServiceRepo.create(root / "web")
        self.lives = {"web-staging": self.service.live}
        for name in TARGETS[1:]:
            self.lives[name] = root / name
            subprocess.run(
                ["git", "clone", "-q", str(self.service.origin), str(self.lives[name])], check=True
            )
        bots = [TABLE.format(name=n, dir=root / f"no-{n}") for n in TARGETS]
        (root / "molt.toml").write_text("\n".join([*bots, ROLLOUT]))
        hosts = [TABLE.format(name=n, dir=self.lives[n]) for n in TARGETS]
        (root / "hosts.toml").write_text("\n".join([*hosts, ROLLOUT]))
        super().__init__(
            root,
            MOLT_RESTART_COMMAND="true",
            MOLT_SANDBOX="off",
            MOLT_HEALTH_COMMAND="python health.py",
            MOLT_LOCK_TTL="3",
        )

    def head(self, target: str) -> str:
        return git(self.lives[target], "rev-parse", "HEAD")


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[Rollout]:
    found = Rollout(tmp_path)
    yield found
    found.stop()


@pytest.mark.slow
def test_a_rollout_runs_each_step_on_its_targets_own_worker(hosts: Rollout) -> None:
    new = hosts.service.commit(V2, "web v2")
    molt = hosts.start("bot", "console")  # starting meanwhile: it needs no worker until a plan
    workers = dict(zip(TARGETS, hosts.workers(*TARGETS), strict=True))
    molt.wait_for(r"Molt \S+ is up")
    since = molt.send("deploy web-staging main")
    staged = molt.wait_for(r"press approve (r[0-9a-f]+)", since=since).group(1)
    molt.send(f"press approve {staged}")
    molt.wait_for(r"✅ Live: ", since=since, timeout=180)
    since = molt.send("deploy web main")
    planned = molt.wait_for(r"press approve (r[0-9a-f]+)", since=since, timeout=180).group(1)
    molt.send(f"press approve {planned}")
    molt.wait_for(rf"✅ Rolled out: {new[:7]}", since=since, timeout=300)
    assert all(hosts.head(name) == new for name in TARGETS)
    conn = store.connect(load_settings(redis_url=hosts.env["REDIS_URL"]))
    rollout = RequestStore(conn).get(planned)
    assert rollout.state is S.SUCCEEDED
    for step in (rollout.result or {})["steps"]:
        assert step["request_id"] in workers[step["target"]].output
        others = [w for name, w in workers.items() if name != step["target"]]
        assert all(step["request_id"] not in w.output for w in others)
