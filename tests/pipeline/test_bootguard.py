"""The boot guard's records: which starts count as failed, when that is a crash loop, what a
waiting worker is told, and one Molt per data directory."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import redis

from pipeline.config import Settings
from pipeline.keyspace import TargetKeys
from pipeline.queue.targets import Target
from pipeline.update import bootguard
from tests.support import ROOT

COMMIT = "c0ffee" + "0" * 34


def _start(
    settings: Settings, conn: redis.Redis, start_id: str, *, ago: float = 1.0, **fields: object
) -> None:
    """A recorded start (a dead process unless ``pid`` says otherwise)."""
    record = {"commit": COMMIT, "pid": 999_999, "at": f"{time.time() - ago:.3f}"} | fields
    conn.hset(TargetKeys(settings.target_id).start(start_id), mapping=record)
    conn.lpush(TargetKeys(settings.target_id).starts, start_id)


def test_failed_starts_within_the_window_make_a_crash_loop(
    settings: Settings, conn: redis.Redis
) -> None:
    limited = settings.model_copy(update={"crash_loop": "2/60"})
    _start(limited, conn, "long-ago", ago=600, ended="failed", detail="old trouble")
    _start(limited, conn, "served", healthy_at=time.time(), ended="stopped")
    _start(limited, conn, "running", pid=os.getppid())  # alive, not ended: still starting
    assert Target(limited, conn).boots.crash_loop(COMMIT) is None
    _start(limited, conn, "crashed", detail="")  # died without a word
    assert Target(limited, conn).boots.crash_loop(COMMIT) is None
    _start(limited, conn, "raised", ended="failed", detail="this release cannot start")
    loop = Target(limited, conn).boots.crash_loop(COMMIT)
    assert loop is not None and [s.id for s in loop.failures] == ["raised", "crashed"]
    assert loop.describe() == (
        "Molt failed to start 2 times within 60s on c0ffee0 (this release cannot start)"
    )
    assert Target(limited, conn).boots.crash_loop(COMMIT, exclude="raised") is None
    assert Target(limited, conn).boots.crash_loop("another" + COMMIT[7:]) is None


def test_a_waiting_worker_learns_why_the_new_release_will_not_come(
    settings: Settings, conn: redis.Redis
) -> None:
    asked = time.time() - 5
    assert Target(settings, conn).boots.trouble(COMMIT, asked) is None
    _start(settings, conn, "before", ago=10, ended="refused", detail="old news")
    assert Target(settings, conn).boots.trouble(COMMIT, asked) is None
    _start(settings, conn, "now", ended="refused", detail="the checkout differs: app.py")
    assert Target(settings, conn).boots.trouble(COMMIT, asked) == (
        "Molt refused to start c0ffee0: the checkout differs: app.py"
    )
    conn.hset(
        TargetKeys(settings.target_id).guard_rollback,
        mapping={"from": COMMIT, "detail": "the boot guard returned", "at": time.time()},
    )
    assert Target(settings, conn).boots.trouble(COMMIT, asked) == "the boot guard returned"


def test_someone_is_bringing_molt_back_while_a_start_is_under_way(
    settings: Settings, conn: redis.Redis
) -> None:
    assert not Target(settings, conn).boots.starting()
    _start(settings, conn, "dead", ago=30, ended="failed")
    assert not Target(settings, conn).boots.starting()
    _start(settings, conn, "alive", ago=30, pid=os.getppid())
    assert Target(settings, conn).boots.starting()
    conn.hset(TargetKeys(settings.target_id).start("alive"), "healthy_at", time.time())
    assert not Target(settings, conn).boots.starting()
    _start(settings, conn, "just-now", ago=0.5, ended="failed")  # a supervisor cycling
    assert Target(settings, conn).boots.starting()


@pytest.mark.parametrize(
    ("raised", "ending", "detail"),
    [
        (SystemExit(0), "stopped", ""),
        (KeyboardInterrupt(), "stopped", ""),
        (SystemExit("this release cannot start"), "failed", "this release cannot start"),
        (ImportError("no module named 'gone'"), "failed", "ImportError: no module named 'gone'"),
    ],
)
def test_how_a_start_ended_is_recorded(
    settings: Settings, conn: redis.Redis, raised: BaseException, ending: str, detail: str
) -> None:
    _start(settings, conn, "mine")
    boot = bootguard.Boot(settings, conn, "mine", COMMIT)
    boot.ended_by(raised)
    boot.stopped()  # the first ending stays
    [start] = Target(settings, conn).boots.starts()
    assert (start.ended, start.detail) == (ending, detail)
    assert start.failed is (ending == "failed")


HOLD = """
import sys, time
from pipeline.update import bootguard
from pipeline.config import load_settings
bootguard.hold_instance_lock(load_settings())
print("holding", flush=True)
time.sleep(float(sys.argv[1]))
"""


def test_a_second_molt_on_the_same_data_dir_waits_for_the_first(settings: Settings) -> None:
    env = {**os.environ, "MOLT_DATA_DIR": str(settings.data_dir), "PYTHONPATH": str(ROOT)}

    def hold(seconds: float) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-c", HOLD, str(seconds)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    first = hold(60)
    second = None
    try:
        assert first.stdout is not None and first.stdout.readline() == "holding\n"
        second = hold(0)
        assert second.stdout is not None
        waiting = second.stdout.readline()
        assert f"another Molt is running with MOLT_DATA_DIR={settings.data_dir}" in waiting
        assert f"(pid {first.pid}); waiting for it to stop" in waiting
        first.terminate()
        assert second.stdout.readline() == "holding\n"
        assert second.wait(30) == 0
    finally:
        for proc in (first, second):
            if proc is not None:
                proc.kill()
                proc.wait()
                if proc.stdout:
                    proc.stdout.close()
