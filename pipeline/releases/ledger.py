"""Where a target's signed release manifests are kept, and what is known of them.

Every manifest is written to Redis and to a file, so that a wiped Redis loses nothing;
the highest release number seen is kept apart from the manifests, so that deleting the
newest manifests does not make an older release look like the newest (a downgrade).
The ``Ledger`` sorts what is stored by its signature: trusted, by an untrusted key, or
altered after it was signed (pipeline/releases/keys.py).

Keys: the target's ``releases`` (hash: release number → signed manifest, JSON) and
``highest_release`` (pipeline/keyspace.py).
Files:
  MOLT_DATA_DIR/releases/<target_id>/<release>-<codename>.json
  MOLT_DATA_DIR/releases/<target_id>/.lock  held while a release is numbered and stored
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from pipeline.config import Settings
from pipeline.keyspace import TargetKeys
from pipeline.releases.keys import signature_problem, trusted_keys
from pipeline.releases.manifests import Manifest


def releases_dir(settings: Settings) -> Path:
    return settings.data_dir / "releases" / settings.target_id


@contextmanager
def writing(settings: Settings) -> Iterator[None]:
    """One writer at a time per target (the number must go up by one, across processes)."""
    folder = releases_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def stored(settings: Settings, conn: redis.Redis) -> list[Manifest]:
    """Every manifest of this target, from Redis and from the files, as found (unchecked)."""
    found: dict[tuple[int, str], Manifest] = {}
    raws: list[str | bytes] = list(conn.hvals(TargetKeys(settings.target_id).releases))
    folder = releases_dir(settings)
    if folder.is_dir():
        raws += [p.read_bytes() for p in sorted(folder.glob("*.json"))]
    for raw in raws:
        try:
            manifest = Manifest.from_json(raw)
        except ValueError:
            continue
        if manifest.target == settings.target_id:
            found.setdefault((manifest.release, manifest.signature), manifest)
    return sorted(found.values(), key=lambda m: m.release)


@dataclass(frozen=True)
class Ledger:
    """What is known of a target's releases: the trusted ones, the rest, the highest seen."""

    good: list[Manifest]  # good signature by a trusted key, oldest first
    untrusted: list[Manifest]
    altered: list[Manifest]
    highest: int

    @property
    def empty(self) -> bool:
        """No manifest at all, whatever its signature."""
        return not (self.good or self.untrusted or self.altered)

    def newest_for(self, commit: str) -> Manifest | None:
        mine = [m for m in self.good if m.target_commit == commit]
        return mine[-1] if mine else None

    def by_release(self, release: int) -> Manifest | None:
        return next((m for m in self.good if m.release == release), None)

    def by_codename(self, codename: str) -> Manifest | None:
        named = [m for m in self.good if m.codename == codename]
        return named[-1] if named else None


def read(settings: Settings, conn: redis.Redis) -> Ledger:
    """The target's ledger now, its signatures checked against the trusted keys."""
    trusted = trusted_keys(settings)
    good: list[Manifest] = []
    untrusted: list[Manifest] = []
    altered: list[Manifest] = []
    for manifest in stored(settings, conn):
        problem = signature_problem(manifest, trusted)
        {"": good, "untrusted": untrusted, "altered": altered}[problem].append(manifest)
    seen = int(conn.get(TargetKeys(settings.target_id).highest_release) or 0)
    highest = max([seen, *(m.release for m in good)])
    return Ledger(good, untrusted, altered, highest)


def store(settings: Settings, conn: redis.Redis, manifest: Manifest) -> None:
    """Write a signed manifest to its file and to Redis (under ``writing``)."""
    folder = releases_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / manifest.file_name
    partial = path.with_suffix(".json.partial")
    partial.write_text(manifest.to_json() + "\n")
    os.replace(partial, path)
    with conn.pipeline() as pipe:
        pipe.hset(
            TargetKeys(settings.target_id).releases, str(manifest.release), manifest.to_json()
        )
        pipe.execute()
    raise_highest(settings, conn, manifest.release)


def raise_highest(settings: Settings, conn: redis.Redis, release: int) -> None:
    """The highest release seen only goes up (a script, so two writers cannot lower it)."""
    key = TargetKeys(settings.target_id).highest_release
    conn.eval(
        "local v = tonumber(redis.call('GET', KEYS[1]) or '0') "
        "if tonumber(ARGV[1]) > v then redis.call('SET', KEYS[1], ARGV[1]) end return 1",
        1,
        key,
        str(release),
    )


def mirror(settings: Settings, conn: redis.Redis, known: Ledger) -> None:
    """Put back into Redis what only the files still have (after Redis was wiped)."""
    have = set(conn.hkeys(TargetKeys(settings.target_id).releases))
    missing: dict[Any, Any] = {
        str(m.release): m.to_json() for m in known.good if str(m.release) not in have
    }
    if missing:
        conn.hset(TargetKeys(settings.target_id).releases, mapping=missing)
