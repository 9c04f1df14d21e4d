"""Code under test runs in a sandbox: a branch whose tests try to act with Molt's powers is
contained in phase 1 and phase 2 while its honest tests pass, its limits fail the phase by
name, and nothing it started is left running. The update runs in-process, on a real RQ
SimpleWorker (tests.desk.ThreadWorker) in burst mode, with real Redis, git and bubblewrap."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from pipeline import processes, store
from pipeline.config import Settings, load_settings
from pipeline.intake import approval, preflight
from pipeline.intake import flow as intake
from pipeline.queue import queueing
from pipeline.requests.states import RequestState as S
from pipeline.requests.store import Origin, RequestStore
from pipeline.sandbox import confinement
from pipeline.sandbox.validation import run_tests
from tests.conversations import implemented, planned, reviewed
from tests.desk import StartChat, ThreadWorker
from tests.fakes.anthropic import FakeAnthropic
from tests.support import ServiceRepo, git

pytestmark = pytest.mark.skipif(
    not confinement.support().works, reason="this host cannot make a sandbox"
)

ALICE, BOB = Origin("console", "alice"), Origin("console", "bob")

ESCAPES = """\
import os, pathlib, socket, subprocess, sys

FACTS = {facts!r}
LIVE = pathlib.Path(FACTS["live"])


def _fails(attempt):
    try:
        attempt()
    except OSError:
        return True
    return False


def test_molts_secrets_are_not_in_the_environment():
    assert not [n for n in FACTS["secrets"] if n in os.environ], sorted(os.environ)


def test_a_listed_variable_is_given():
    assert os.environ.get("SERVICE_DB") == "postgres://tests"


def test_the_hosts_loopback_is_out_of_reach():
    assert _fails(lambda: socket.create_connection(("127.0.0.1", FACTS["port"]), timeout=3))


def test_its_own_loopback_works():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    socket.create_connection(server.getsockname(), timeout=3).sendall(b"hi")
    assert server.accept()[0].recv(2) == b"hi"


def test_molts_data_is_out_of_sight_and_writes_there_vanish():
    data = pathlib.Path(FACTS["data"])
    # Only the way to a checkout under test that lives in it (phase 1's worktree) is seen.
    assert {{p.name for p in data.iterdir()}} <= {{"worktrees"}} if data.exists() else True
    assert not pathlib.Path(FACTS["socket"]).exists()
    _fails(lambda: (data / "escaped").write_text("x"))


def test_molts_redis_does_not_answer():
    def ask():
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(3)
        s.connect(FACTS["socket"])
        s.sendall(b"PING\\r\\n")
        if s.recv(10):
            raise AssertionError("Redis answered")
    assert _fails(ask)


def test_the_live_checkout_is_out_of_sight_before_phase_two():
    if os.getcwd() != str(LIVE):
        assert not (LIVE / "app.py").exists()
        _fails(lambda: (LIVE / "escaped").write_text("x"))


def test_home_and_tmp_are_private():
    for path in (pathlib.Path(FACTS["home"]) / FACTS["mark"], pathlib.Path("/tmp") / FACTS["mark"]):
        _fails(lambda: path.write_text("x"))


def test_a_daemon_left_running():
    # Double fork into a session of its own: it outlives the test command unless stopped.
    code = "import os, time\\nif os.fork() == 0:\\n    os.setsid()\\n    time.sleep(600)\\n"
    subprocess.run([sys.executable, "-c", code], check=True)
    with open("daemon.started", "a") as f:
        f.write("started\\n")
"""

LIMITS = """\
import os, subprocess, sys, time

LIVE = {live!r}


def _in_phase():
    return (os.getcwd() == LIVE) == {phase_two!r}


def test_a_fork_flood():
    if not _in_phase():
        return
    children = []
    try:
        for _ in range(1000):
            children.append(subprocess.Popen(["sleep", "60"]))
    finally:
        for child in children:
            child.kill()
    assert len(children) < 1000


def test_a_memory_hog():
    if _in_phase():
        hog = bytearray(6 * 1024**3)
        assert hog
"""


def _escapes(
    settings: Settings, service: ServiceRepo, secrets: list[str], port: int, mark: str
) -> str:
    """ESCAPES aimed at this test's Molt: its secrets' names, the host's listener on
    ``port``, its data, Redis socket and live checkout, and ``mark`` to write in home and /tmp."""
    facts = {
        "secrets": secrets,
        "port": port,
        "data": str(settings.data_dir),
        "socket": str(store.socket_path(settings.data_dir)),
        "live": str(service.live),
        "home": str(Path.home()),
        "mark": mark,
    }
    return ESCAPES.format(facts=facts)


@pytest.fixture
def listener() -> Iterator[tuple[int, list[bytes]]]:
    """A listener on the host's loopback, and what reached it."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    heard: list[bytes] = []

    def serve() -> None:
        while True:
            try:
                peer, _ = server.accept()
            except OSError:
                return
            heard.append(peer.recv(100) or b"(connected)")
            peer.close()

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()[1], heard
    server.close()


def _update(settings: Settings, conn: redis.Redis) -> str:
    """``deploy main``, approved, run by an RQ worker; returns the request's id."""
    request = intake.submit(settings, conn, ALICE, "deploy", "main", "deploy main")
    assert request.state is S.PLAN_READY, request.message
    assert approval.approve(settings, conn, request.id, BOB)
    queue = queueing.rq_queue(settings)
    ThreadWorker([queue], connection=queue.connection).work(burst=True)
    return request.id


@pytest.fixture
def job_env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker's environment: the job loads its settings from it, as a worker does."""
    monkeypatch.setenv("MOLT_SANDBOX", "auto")
    monkeypatch.setenv("MOLT_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("MOLT_TARGET_DIR", str(settings.target_dir))
    monkeypatch.setenv("MOLT_TEST_COMMAND", settings.test_command)
    monkeypatch.setenv("MOLT_APPROVERS", "console:bob")
    monkeypatch.setenv("MOLT_AUTHORISED_USERS", "console:alice")


def test_a_branch_that_tries_every_escape_is_contained_in_both_phases(
    settings: Settings,
    service: ServiceRepo,
    monkeypatch: pytest.MonkeyPatch,
    listener: tuple[int, list[bytes]],
    job_env: None,
) -> None:
    port, heard = listener
    secrets = ["SLACK_BOT_TOKEN", "ANTHROPIC_API_KEY", "MOLT_ALERT_TOKEN", "DATABASE_PASSWORD"]
    for name in secrets:
        monkeypatch.setenv(name, "secret-value")
    monkeypatch.setenv("SERVICE_DB", "postgres://tests")
    monkeypatch.setenv("MOLT_TEST_ENV", "SERVICE_DB")
    mark = f"molt-escaped-{os.getpid()}-{port}"
    home = Path.home()
    conn = store.connect(settings)
    conn.set("molt:untouched", "yes")
    new = service.commit(
        {"checks/test_escape.py": _escapes(settings, service, secrets, port, mark)}, "escape"
    )

    request_id = _update(load_settings(), conn)

    done = RequestStore(conn).get(request_id)
    assert done.state is S.SUCCEEDED, done.message
    assert service.live_head() == new
    assert heard == []
    assert not (settings.data_dir / "escaped").exists()
    assert not (service.live / "escaped").exists()
    assert not (home / mark).exists() and not (Path("/tmp") / mark).exists()
    assert conn.get("molt:untouched") == "yes"
    # Both phases started their daemon (phase 2's note is in the live checkout); neither is
    # left running.
    assert (service.live / "daemon.started").read_text() == "started\n"
    assert _sleeping_daemons() == []


def _sleeping_daemons() -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and processes.alive(int(entry.name)):
            try:
                command = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"time.sleep(600)" in command:
                found.append(int(entry.name))
    return found


@pytest.mark.parametrize("phase_two", [False, True], ids=["phase 1", "phase 2"])
def test_the_limits_fail_the_phase_naming_them(
    settings: Settings,
    service: ServiceRepo,
    monkeypatch: pytest.MonkeyPatch,
    job_env: None,
    phase_two: bool,
) -> None:
    monkeypatch.setenv("MOLT_TEST_LIMITS", "memory=2048,processes=200")
    conn = store.connect(settings)
    old = service.live_head()
    text = LIMITS.format(live=str(service.live), phase_two=phase_two)
    service.commit({"checks/test_limits.py": text}, "a fork flood and a memory hog")

    request_id = _update(load_settings(), conn)

    done = RequestStore(conn).get(request_id)
    assert done.state is S.FAILED
    failed = [c["name"] for c in (done.result or {}).get("checks", []) if not c["ok"]]
    assert failed[0] == ("phase 2: tests" if phase_two else "phase 1: tests")
    assert "processes limit (200 processes; test_limits.processes)" in done.message
    assert "memory limit (2048 MiB a process; test_limits.memory)" in done.message
    assert service.live_head() == old


def test_a_secret_cannot_be_given_to_tests(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOLT_TEST_ENV", "DATABASE_URL,SLACK_SIGNING_SECRET")
    with pytest.raises(Exception, match="SLACK_SIGNING_SECRET is a secret of Molt's"):
        load_settings()


DAEMON = """\
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        open("daemon.started", "w").write("yes")
        time.sleep(600)
    os._exit(0)
os.wait()
time.sleep(600)
"""


def _confined(sandboxed: bool) -> confinement.Confinement:
    """The host's sandbox (or none) with nothing but the allowlisted environment."""
    return confinement.Confinement(sandboxed=sandboxed, env=confinement.sandbox_env(()))


@pytest.mark.parametrize("sandboxed", [True, False], ids=["sandbox", "MOLT_SANDBOX=off"])
def test_a_stopped_test_command_leaves_nothing_it_started_running(
    tmp_path: Path, sandboxed: bool
) -> None:
    """Its daemon, in a session of its own and orphaned, ends with it, sandbox or not."""
    token = f"molt-daemon-{os.getpid()}-{sandboxed}"
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (checkout / "daemon.py").write_text(DAEMON)
    run = run_tests(
        f"python daemon.py {token}",
        checkout,
        600,
        stop=lambda: (checkout / "daemon.started").exists(),
        confinement=_confined(sandboxed),
    )
    assert run.stopped
    deadline = time.monotonic() + 30
    while _running(token) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _running(token) == []


@pytest.mark.parametrize("sandboxed", [True, False], ids=["sandbox", "MOLT_SANDBOX=off"])
@pytest.mark.parametrize(
    ("ignore", "ignored"),
    [("__pycache__/\n", True), ("/__pycache__/\n", False), ("", False)],
    ids=["git ignores it", "only at the top", "git does not"],
)
def test_compiled_modules_are_kept_only_where_git_ignores_them(
    tmp_path: Path, sandboxed: bool, ignore: str, ignored: bool
) -> None:
    """A suite that starts its service hundreds of times compiles each module once, where the
    checkout's git ignores bytecode; elsewhere it writes none, and the checkout stays clean."""
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    files = {"service.py": "VERSION = 1\n", ".gitignore": ignore}
    for name, text in files.items():
        (checkout / name).write_text(text)
    git(checkout, "init", "-q")
    git(checkout, "add", "-A")
    git(checkout, "commit", "-q", "-m", "service")
    second = "import os, service; print('cached' if os.path.exists(service.__cached__) else 'not')"
    run = run_tests(
        f'python -c "import service" && python -c "{second}"',
        checkout,
        60,
        confinement=_confined(sandboxed),
    )
    assert run.ok, run.output
    assert run.output.strip().splitlines()[-1] == ("cached" if ignored else "not")
    assert git(checkout, "status", "--porcelain") == ""


KILLED_MID_RUN = """\
import sys
from pathlib import Path
from pipeline.sandbox import confinement
from pipeline.sandbox.validation import run_tests

checkout, sandboxed = Path(sys.argv[1]), sys.argv[2] == "yes"
way = confinement.Confinement(sandboxed=sandboxed, env=confinement.sandbox_env(()))
run_tests(f"python daemon.py {sys.argv[3]}", checkout, 600, confinement=way)
"""


@pytest.mark.parametrize("sandboxed", [True, False], ids=["sandbox", "MOLT_SANDBOX=off"])
def test_what_a_molt_killed_mid_run_left_is_cleared_by_the_next_run(
    tmp_path: Path, sandboxed: bool
) -> None:
    """A Molt killed with SIGKILL while its test command runs never cleans up after it: its
    command ends with it, and the next test command run removes the cgroup and the scratch
    directory named after it, once they are old enough not to be another Molt's new ones."""
    token = f"molt-daemon-{os.getpid()}-{sandboxed}-killed"
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (checkout / "daemon.py").write_text(DAEMON)
    molt = subprocess.Popen(
        [sys.executable, "-c", KILLED_MID_RUN, str(checkout), "yes" if sandboxed else "no", token]
    )
    deadline = time.monotonic() + 60
    while not (checkout / "daemon.started").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(molt.pid, signal.SIGKILL)
    molt.wait()
    left = _left_by(molt.pid)
    if confinement.support().cgroup:
        assert any(path.parent == Path(confinement.support().cgroup) for path in left)
    if not sandboxed:
        assert any(path.parent == Path(tempfile.gettempdir()) for path in left)
    while _running(token) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _running(token) == []
    an_hour_ago = time.time() - 3600
    for path in left:
        os.utime(path, (an_hour_ago, an_hour_ago))

    run = run_tests(
        "true",
        checkout,
        60,
        confinement=_confined(sandboxed),
    )

    assert run.ok
    assert _left_by(molt.pid) == []


def _left_by(pid: int) -> list[Path]:
    """The cgroups and scratch directories named after Molt process ``pid``."""
    places = [Path(tempfile.gettempdir()).glob(f"molt-tests-{pid}-*")]
    if confinement.support().cgroup:
        places.append(Path(confinement.support().cgroup).glob(f"molt-{pid}-*"))
    return [path for found in places for path in found]


def _running(token: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and processes.alive(int(entry.name)):
            try:
                if token.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_without_a_sandbox_auto_refuses_a_change_in_words_and_still_plans_deploys(
    settings: Settings,
    conn: redis.Redis,
    service: ServiceRepo,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A host where bwrap cannot make a sandbox (user namespaces switched off, say)."""
    settings = settings.model_copy(update={"sandbox": "auto"})
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    broken = bin_dir / "bwrap"
    broken.write_text(
        "#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n"
    )
    broken.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    confinement.support.cache_clear()
    try:
        change = intake.submit(settings, conn, ALICE, "change", "add a ping", "add a ping")
        assert change.state is S.BLOCKED
        assert "this host cannot make one" in change.message
        assert "No permissions to create new namespace" in change.message
        assert "MOLT_SANDBOX=off" in change.message

        service.commit({"app.py": "def greet():\n    return 'hi'\n"}, "a change")
        deploy = intake.submit(settings, conn, ALICE, "deploy", "main", "deploy main")
        assert deploy.state is S.PLAN_READY, deploy.message
        reasons = (deploy.plan or {})["risk"]["reasons"]
        assert any("test commands run without a sandbox" in r for r in reasons), reasons
    finally:
        preflight.finish_background(timeout=120)  # its run sees the broken bwrap too
        confinement.support.cache_clear()


def test_a_change_written_by_the_model_is_contained_like_any_branch(
    settings: Settings,
    service: ServiceRepo,
    start_chat: StartChat,
    listener: tuple[int, list[bytes]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The model's change carries the same escapes in its test: the implementer's own test
    run, phase 1 and phase 2 all run it in the sandbox, and its honest tests pass."""
    port, heard = listener
    monkeypatch.setenv("SERVICE_DB", "postgres://tests")
    mark = f"molt-escaped-{os.getpid()}-{port}-model"
    home = Path.home()
    secrets = ["ANTHROPIC_API_KEY", "MOLT_ALERT_TOKEN"]
    escapes = _escapes(settings, service, secrets, port, mark).replace(
        'with open("daemon.started", "a") as f:\n        f.write("started\\n")', "pass"
    )
    with FakeAnthropic() as fake:
        chat = start_chat(
            MOLT_SANDBOX="auto",
            MOLT_TEST_ENV="SERVICE_DB",
            MOLT_ALERT_TOKEN="secret-value",
            **fake.env(),
        )
        fake.add(planned(), *implemented(escapes), reviewed())
        since = chat.send("add a ping function that answers pong")
        chat.wait_for(r"📋 Plan ready", since=since)
        chat.send("press approve")
        chat.work()
        chat.wait_for(r"✅ Live: ", since=since, timeout=180)
    assert "ping" in (service.live / "app.py").read_text()
    assert heard == []
    assert not (settings.data_dir / "escaped").exists()
    assert not (service.live / "escaped").exists()
    assert not (home / mark).exists() and not (Path("/tmp") / mark).exists()
    assert _sleeping_daemons() == []
