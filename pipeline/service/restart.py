"""Restarting the service and checking that it came back.

For any service: MOLT_RESTART_COMMAND, then MOLT_HEALTH_COMMAND until it exits
0 or MOLT_BOOT_TIMEOUT passes. For Molt itself: the worker asks the bot to
restart (list ``molt:control:bot``) and waits until a new bot process answers
/healthz with the expected version. The bot registers itself in the hash
``molt:bot`` {pid, boot_id, version, port, argv, cwd, beat}.

The wait for Molt ends early when the boot records (pipeline/releases/boots.py)
say the new release will not come: refused by the release check, in a crash
loop, rolled back by the guard, or exited at start with nothing to restart it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis

from pipeline import keyspace, metrics
from pipeline.config import Settings
from pipeline.exceptions import UpdateFailed
from pipeline.queue.targets import Target
from pipeline.releases.boots import restart_grace
from pipeline.sandbox.validation import run_command

#: The bot refreshes its registration this often; twice this without a beat means gone.
BEAT_SECONDS = 1.0


@dataclass(frozen=True)
class BotInfo:
    pid: int
    boot_id: str
    version: str
    port: int
    argv: list[str]
    cwd: str
    beat: float
    ui: bool = False  # it serves the status page (MOLT_UI)
    host: str = "127.0.0.1"  # where its HTTP server listens

    @property
    def alive(self) -> bool:
        if time.time() - self.beat > 5 * BEAT_SECONDS:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def bot_info(conn: redis.Redis) -> BotInfo | None:
    raw = conn.hgetall(keyspace.BOT)
    if not raw:
        return None
    return BotInfo(
        pid=int(raw["pid"]),
        boot_id=str(raw["boot_id"]),
        version=str(raw["version"]),
        port=int(raw["port"]),
        argv=json.loads(raw["argv"]),
        cwd=str(raw["cwd"]),
        beat=float(raw.get("beat") or 0),
        ui=raw.get("ui") == "1",
        host=str(raw.get("host") or "127.0.0.1"),
    )


def healthz(port: int, timeout: float = 1.0) -> dict[str, str] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=timeout) as reply:
            body = json.loads(reply.read())
    except (OSError, ValueError, urllib.error.URLError):
        return None
    return body if isinstance(body, dict) else None


def restart(
    settings: Settings,
    conn: redis.Redis,
    expect: str,
    log_path: Path,
    verifying: Callable[[], None] = lambda: None,
) -> str:
    """Restart the service and wait until it is healthy on ``expect``; returns a summary.

    ``verifying`` is called once the restart was issued and the wait for health begins.
    Each restart and its window until healthy are counted (``molt_restart_window_seconds``).
    """
    with metrics.restart_window(settings.target_name):
        return _restart(settings, conn, expect, log_path, verifying)


def _restart(
    settings: Settings,
    conn: redis.Redis,
    expect: str,
    log_path: Path,
    verifying: Callable[[], None],
) -> str:
    if settings.restart_command:
        code, output, seconds = run_command(
            settings.restart_command, settings.target_dir, settings.restart_timeout, log_path
        )
        if code is None:
            raise UpdateFailed(
                "restart", f"restart command did not finish within {settings.restart_timeout:.0f}s"
            )
        if code != 0:
            raise UpdateFailed("restart", f"restart command exited {code}: {output.strip()[-300:]}")
        verifying()
        return _wait_healthy(settings, log_path, f"restarted in {seconds:.1f}s")
    if settings.manages_itself:
        return _restart_self(settings, conn, expect, verifying)
    verifying()
    return _wait_healthy(settings, log_path, "no MOLT_RESTART_COMMAND: nothing to restart")


def _wait_healthy(settings: Settings, log_path: Path, done: str) -> str:
    command = settings.health_command
    if not command:
        return done
    deadline = time.monotonic() + settings.boot_timeout
    attempts = 0
    while True:
        attempts += 1
        remaining = max(1.0, deadline - time.monotonic())
        code, output, _ = run_command(command, settings.target_dir, remaining, log_path)
        if code == 0:
            return f"{done}; healthy after {attempts} health check(s)"
        if time.monotonic() >= deadline:
            tail = output.strip().splitlines()[-1:] or [""]
            raise UpdateFailed(
                "verify",
                f"health command `{command}` still failing after {settings.boot_timeout:.0f}s "
                f"(exit {code}): {tail[0][:200]}",
            )
        time.sleep(0.5)


def _restart_self(
    settings: Settings, conn: redis.Redis, expect: str, verifying: Callable[[], None] = lambda: None
) -> str:
    before = bot_info(conn)
    if before is None or not before.alive:
        raise UpdateFailed("restart", "Molt's bot is not running, so it cannot restart itself")
    asked = time.time()
    conn.rpush(keyspace.BOT_CONTROL, json.dumps({"action": "restart", "expect": expect}))
    verifying()
    started = time.monotonic()
    deadline = started + settings.boot_timeout
    failed_since: dict[str, float] = {}  # start id → when it was first seen failed
    records = Target(settings, conn).boots
    while time.monotonic() < deadline:
        info = bot_info(conn)
        if info and info.boot_id != before.boot_id:
            health = healthz(info.port)
            if health and health.get("status") == "ok" and health.get("version") == expect:
                return f"Molt came back on {expect[:7]} in {time.monotonic() - started:.1f}s"
        trouble = records.trouble(expect, asked)
        if trouble:
            raise UpdateFailed("verify", trouble)
        last = records.latest_start()
        if last is not None and last.commit == expect and last.at >= asked and last.failed:
            seen_at = failed_since.setdefault(last.id, time.monotonic())
            if time.monotonic() - seen_at > restart_grace(settings):
                why = f" ({last.detail})" if last.detail else ""
                raise UpdateFailed(
                    "verify",
                    f"Molt did not report healthy on {expect[:7]}: it exited at start and "
                    f"nothing started it again{why}",
                )
        time.sleep(0.1)
    info = bot_info(conn)
    seen = info.version[:7] if info and info.boot_id != before.boot_id else "no new process"
    raise UpdateFailed(
        "verify",
        f"Molt did not report healthy on {expect[:7]} within {settings.boot_timeout:.0f}s ({seen})",
    )


def bring_back(settings: Settings, conn: redis.Redis, expect: str, log_path: Path) -> str:
    """After a rollback: restart on the restored code, relaunching Molt if it died.

    A Molt already back on ``expect`` (the boot guard re-executed onto it) is left as it is;
    while a supervisor or the boot guard is bringing Molt back, Molt is not launched a second
    time; a start that hung on the rolled-back code is stopped first.
    """
    if settings.restart_command or not settings.manages_itself:
        return restart(settings, conn, expect, log_path)
    info = bot_info(conn)
    if info and info.alive:
        health = healthz(info.port)
        if info.version == expect and health and health.get("version") == expect:
            return f"Molt is back on {expect[:7]}"
        return _restart_self(settings, conn, expect)
    if info is None:
        raise UpdateFailed("rollback", "Molt's bot never registered, so it cannot be relaunched")
    records = Target(settings, conn).boots
    records.stop_stale(keep=expect)
    deadline = time.monotonic() + settings.boot_timeout
    launched = False
    while time.monotonic() < deadline:
        fresh = bot_info(conn)
        if fresh and fresh.boot_id != info.boot_id and fresh.alive:
            health = healthz(fresh.port)
            if health and health.get("status") == "ok" and health.get("version") == expect:
                return f"Molt {'relaunched' if launched else 'came back'} on {expect[:7]}"
        if not launched and not records.starting():
            _launch(info, log_path)
            launched = True
        time.sleep(0.1)
    raise UpdateFailed("rollback", f"relaunched Molt did not report healthy on {expect[:7]}")


def _launch(info: BotInfo, log_path: Path) -> None:
    # Headless: the process that died may have owned a terminal; this one cannot.
    argv = [sys.executable, "-m", "bot.cli", "run", "--no-console"]
    with open(log_path, "ab") as log:
        subprocess.Popen(
            argv,
            cwd=info.cwd,
            env=dict(os.environ),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
