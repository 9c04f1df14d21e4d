"""Shared fixtures: clean environment, real git repos, embedded Redis, a running Molt."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import prometheus_client  # noqa: F401 - see below
import pytest
import redis

from pipeline import store
from pipeline.config import Settings, load_settings
from pipeline.intake import preflight
from tests.support import Molt, RedisServer, ServiceRepo, processes_in

# prometheus_client picks its mode when first imported: imported here, before any test
# points PROMETHEUS_MULTIPROC_DIR at a folder, the test process keeps its own samples in
# memory (the Molt processes tests start write theirs to files, pipeline/metrics.py).
_LEAKY_PREFIXES = ("MOLT_", "SLACK_", "DISCORD_", "GITHUB_", "ANTHROPIC_", "PROMETHEUS_")
_LEAKY_NAMES = ("REDIS_URL", "GIT_DIR", "GIT_WORK_TREE", "PYTHONPATH")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep real credentials and settings of this machine out of every test."""
    for name in list(os.environ):
        if name.startswith(_LEAKY_PREFIXES) or name in _LEAKY_NAMES:
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MOLT_CONFIG", str(tmp_path / "no-molt.toml"))
    # No watch window after restarts unless a test asks for one: a test's update ends at once.
    monkeypatch.setenv("MOLT_WATCH_SECONDS", "0")
    # Nor idle health probes or a log watcher: a test that wants incidents turns them on.
    monkeypatch.setenv("MOLT_HEALTH_INTERVAL", "0")
    # Test commands run without the sandbox (a subreaper still ends all they start), so the
    # services' checks may coordinate with a test through files outside their checkout;
    # tests/pipeline/test_confinement.py runs them in the sandbox.
    monkeypatch.setenv("MOLT_SANDBOX", "off")
    monkeypatch.setenv("MOLT_WATCH_LOG", "off")
    for who in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{who}_NAME", "Test Person")
        monkeypatch.setenv(f"GIT_{who}_EMAIL", "test@example.invalid")
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")


@pytest.hookimpl(trylast=True)  # after -k and -m deselected what will not run
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Each xdist worker starts on its share of the tests marked ``slow``. Work stealing
    (scripts/test) hands worker k the k-th of as many contiguous runs of the collection as
    there are workers, and later moves tests from the end of one worker's run to another:
    with the slow tests at the head of every run, they start at once, one per worker, and
    the suite ends on short tests that keep every worker busy."""
    workers = getattr(config, "workerinput", {}).get("workercount", 1)
    slow = [item for item in items if item.get_closest_marker("slow")]
    quick = [item for item in items if not item.get_closest_marker("slow")]
    ordered: list[pytest.Item] = []
    left = len(items)
    for worker in range(workers):
        size = left // (workers - worker)  # the share xdist's work stealing hands it
        left -= size
        mine = slow[worker::workers]
        take = max(size - len(mine), 0)
        ordered += mine + quick[:take]
        del quick[:take]
    items[:] = ordered + quick


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item) -> None:
    """The Molt processes a test started stop first, all at once, while the fakes of the
    platforms they talk to (fixtures torn down after) still answer their last calls."""
    Molt.stop_all()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One Redis per test process (an xdist worker), started when a test first needs it."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def redis_url(
    request: pytest.FixtureRequest, clean_environment: None, monkeypatch: pytest.MonkeyPatch
) -> str | None:
    """The Redis this test and the Molt processes it starts share: the test process's own,
    emptied, and named by REDIS_URL, so that ``load_settings(data_dir=...)`` reaches it too.
    A test marked ``own_redis`` (its point is a Redis of its own: a data directory's
    embedded server, which Molt starts and stops, or sentinels) gets None and no REDIS_URL."""
    if request.node.get_closest_marker("own_redis"):
        return None
    server: RedisServer = request.getfixturevalue("redis_server")
    server.empty()
    monkeypatch.setenv("REDIS_URL", server.url)
    return server.url


@pytest.fixture(autouse=True)
def no_process_left(tmp_path: Path) -> Iterator[None]:
    """A test leaves no process running in its directories (a service's test command, a
    Redis server): each gets a few seconds to finish stopping, then fails it. A `molt
    worker` whose bot was killed at Molt.stop's deadline (its workers run in sessions of
    their own) is stopped here without failing the test."""
    yield
    deadline = time.monotonic() + 20
    left = processes_in(tmp_path)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = processes_in(tmp_path)
    for found in left:
        try:
            os.killpg(int(found.split()[0]), signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(found.split()[0]), signal.SIGKILL)
    stray = [found for found in left if "bot.cli worker" not in found]
    assert not stray, "processes left running:\n" + "\n".join(stray)


@pytest.fixture
def service(tmp_path: Path) -> ServiceRepo:
    """A small Python service: an origin repository and a live clone of it."""
    return ServiceRepo.create(tmp_path / "service")


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "data"
    path.mkdir()
    yield path
    preflight.finish_background(timeout=120)  # a run the test started, before its Redis stops
    store.stop_embedded(path)


@pytest.fixture
def settings(service: ServiceRepo, data_dir: Path, redis_url: str | None) -> Settings:
    return load_settings(
        data_dir=data_dir,
        redis_url=redis_url,
        target_dir=service.live,
        test_command=service.test_command,
        authorised_users=["console:alice", "slack:U1ALICE"],
        approvers=["console:alice", "console:bob", "slack:U1ALICE", "slack:U2BOB"],
        console_user="alice",
    )


@pytest.fixture
def conn(settings: Settings) -> Iterator[redis.Redis]:
    client = store.connect(settings)
    yield client
    preflight.finish_background(timeout=120)  # a run the test started ends before its client
    client.close()


@pytest.fixture
def molt_env(service: ServiceRepo, data_dir: Path, redis_url: str | None) -> dict[str, str]:
    """The environment of a Molt process managing ``service``."""
    shared = {"REDIS_URL": redis_url} if redis_url else {}
    return shared | {
        "MOLT_DATA_DIR": str(data_dir),
        "MOLT_TARGET_DIR": str(service.live),
        "MOLT_TEST_COMMAND": service.test_command,
        "MOLT_RESTART_COMMAND": "true",
        "MOLT_HEALTH_COMMAND": "python health.py",
        # How long a restarted service has to report healthy: a deadline, for a loaded machine
        # too (a test whose service never gets healthy sets a short one).
        "MOLT_BOOT_TIMEOUT": "60",
        "MOLT_HTTP_PORT": "0",
        "MOLT_LOCK_TTL": "3",
        "MOLT_CONSOLE_USER": "alice",
        "MOLT_AUTHORISED_USERS": "console:alice,slack:U1ALICE",
        "MOLT_APPROVERS": "console:alice,console:bob,slack:U1ALICE,slack:U2BOB",
        "MOLT_LOG_LEVEL": "debug",
    }


@pytest.fixture
def start_molt(molt_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., Molt]]:
    """Start real Molt processes (``molt console`` by default); all stopped at the end."""
    started: list[Molt] = []

    def start(*args: str, **env: str) -> Molt:
        molt = Molt(list(args) or ["console"], {**molt_env, **env}, cwd=tmp_path)
        started.append(molt)
        return molt

    yield start
    for molt in started:  # stopped already, unless a test runs fixtures by hand
        molt.stop()
