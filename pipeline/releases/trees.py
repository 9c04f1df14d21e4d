"""The tree hash of a checkout, and which of its installed files differ from a commit.

``tree_hash`` is a sha256 over the contents of the tracked files (each file's own
sha256, its kind and path), not over ``git ls-files -s``: what runs is what is on disk,
so that is what start-up hashes, and it does not lean on git's SHA-1 object ids or on an
index that anyone can rewrite. The executable bit is left out (``core.fileMode`` differs
between file systems; the content is what runs).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.git import Git

#: Paths named in a refusal before "and N more".
SHOWN_PATHS = 8


@dataclass(frozen=True)
class Entry:
    kind: str  # file | link | commit (a submodule)
    oid: str  # git's object id, to read the committed content when naming changed paths
    path: bytes


def tracked(git: Git, commit: str) -> list[Entry]:
    out = git.run_bytes("ls-tree", "-r", "-z", "--full-tree", commit)
    entries = []
    for record in out.split(b"\0"):
        if not record:
            continue
        meta, _, path = record.partition(b"\t")
        mode, _type, oid = meta.decode().split(" ")
        kind = {"120000": "link", "160000": "commit"}.get(mode, "file")
        entries.append(Entry(kind, oid, path))
    return sorted(entries, key=lambda e: e.path)


def committed_digests(git: Git, entries: Iterable[Entry]) -> dict[bytes, str]:
    """path → sha256 of the content as committed (``git cat-file --batch``)."""
    entries = list(entries)
    blobs = [e for e in entries if e.kind != "commit"]
    out = git.run_bytes(
        "cat-file", "--batch", input=b"".join(e.oid.encode() + b"\n" for e in blobs), timeout=300
    )
    digests: dict[bytes, str] = {e.path: e.oid for e in entries if e.kind == "commit"}
    at = 0
    for entry in blobs:
        end = out.index(b"\n", at)
        size = int(out[at:end].split(b" ")[2])
        content = out[end + 1 : end + 1 + size]
        digests[entry.path] = hashlib.sha256(content).hexdigest()
        at = end + 1 + size + 1
    return digests


def disk_digest(root: Path, entry: Entry) -> str:
    """sha256 of what is on disk at ``entry``'s path; "missing" or "changed-type" otherwise."""
    path = root / os.fsdecode(entry.path)
    if entry.kind == "commit":
        return entry.oid  # a submodule's own checkout is its business
    try:
        if entry.kind == "link":
            if not path.is_symlink():
                return "changed-type"
            return hashlib.sha256(os.fsencode(os.readlink(path))).hexdigest()
        if path.is_symlink() or not path.is_file():
            return "changed-type" if path.exists() or path.is_symlink() else "missing"
        digest = hashlib.sha256()
        with open(path, "rb") as content:
            while chunk := content.read(1 << 20):
                digest.update(chunk)
        return digest.hexdigest()
    except FileNotFoundError:
        return "missing"


def _combine(entries: list[Entry], digests: dict[bytes, str]) -> str:
    total = hashlib.sha256()
    for entry in entries:
        total.update(f"{entry.kind} {digests[entry.path]} ".encode() + entry.path + b"\0")
    return f"sha256:{total.hexdigest()}"


def tree_hash_at(git: Git, commit: str) -> str:
    """The tree hash of ``commit`` as committed (what a manifest records)."""
    entries = tracked(git, commit)
    return _combine(entries, committed_digests(git, entries))


@dataclass(frozen=True)
class TreeCheck:
    tree_hash: str  # of the tracked files as they are on disk
    modified: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)  # untracked files git does not ignore

    @property
    def paths(self) -> list[str]:
        return self.modified + self.missing + self.added

    def matches(self, expected: str) -> bool:
        """The files on disk are those of the tree hashed ``expected``, and nothing is added."""
        return self.tree_hash == expected and not self.added

    def describe(self) -> str:
        parts = []
        for label, paths in (
            ("modified", self.modified),
            ("missing", self.missing),
            ("added", self.added),
        ):
            if paths:
                shown = ", ".join(paths[:SHOWN_PATHS])
                more = f" and {len(paths) - SHOWN_PATHS} more" if len(paths) > SHOWN_PATHS else ""
                parts.append(f"{label}: {shown}{more}")
        return "; ".join(parts)


def check_tree(git: Git, commit: str, expected: str) -> TreeCheck:
    """Hash the checkout's tracked files as they are on disk; when that is not ``expected``,
    name the paths that differ from ``commit`` (and the untracked ones)."""
    entries = tracked(git, commit)
    on_disk = {e.path: disk_digest(git.path, e) for e in entries}
    found = _combine(entries, on_disk)
    out = git.run_bytes("ls-files", "-z", "--others", "--exclude-standard")
    added = sorted(os.fsdecode(p) for p in out.split(b"\0") if p)
    if found == expected and not added:
        return TreeCheck(found)
    committed = committed_digests(git, entries)
    modified = [
        os.fsdecode(e.path)
        for e in entries
        if on_disk[e.path] not in (committed[e.path], "missing")
    ]
    missing = [os.fsdecode(e.path) for e in entries if on_disk[e.path] == "missing"]
    return TreeCheck(found, modified, missing, added)
