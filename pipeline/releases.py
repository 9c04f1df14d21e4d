"""Which code is running, and the signed releases that say it may run.

After phase 2 the worker writes a release manifest for the commit it installed
(``Manifest``: release number, target and parent commit, a hash of the tracked
tree, the checks it passed) and signs it with Ed25519. At start-up Molt checks
the manifest of the code it runs (``verify_running``): a tree that differs from
its signed release, a commit no release names, a signature by a key nobody
trusts, or a release number lower than one already seen (a silent downgrade)
is refused, with a reason a person reads. Going back is allowed only as a new,
higher release of kind ``rollback`` that says who asked for it.

``tree_hash`` is a sha256 over the contents of the tracked files (each file's
own sha256, its kind and path), not over ``git ls-files -s``: what runs is what
is on disk, so that is what start-up hashes, and it does not lean on git's SHA-1
object ids or on an index that anyone can rewrite. The executable bit is left
out (``core.fileMode`` differs between file systems; the content is what runs).

Keys:
  molt:releases:<target_id>          hash: release number → signed manifest (JSON)
  molt:releases:<target_id>:highest  the highest release number seen
Files (so that a wiped Redis loses nothing):
  MOLT_DATA_DIR/releases/<target_id>/<release>-<codename>.json
  MOLT_DATA_DIR/keys/release-signing.pem (mode 0600) and .pub (base64)
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import getpass
import hashlib
import json
import os
import re
import socket
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

import redis
import structlog
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from pipeline import audit
from pipeline.config import MOLT_HOME, Settings
from pipeline.exceptions import ConfigError, GitError
from pipeline.git import Git

log = structlog.get_logger(__name__)

FORMAT = "molt-release/1"
#: Signatures cover this prefix and the canonical JSON, so no other signed text can pass.
_DOMAIN = b"molt release manifest\n"
KEY_FILE = "release-signing.pem"
MOLT = "molt"
#: Paths named in a refusal before "and N more".
SHOWN_PATHS = 8


def checkout_version() -> str:
    """The commit Molt's checkout is at now (may differ from the running code)."""
    try:
        return Git(MOLT_HOME).head()
    except GitError:
        try:
            return metadata.version("molt-bot")
        except metadata.PackageNotFoundError:
            return "unknown"


@cache
def running_version() -> str:
    """The commit of the code this process started with."""
    return checkout_version()


# -- manifests -----------------------------------------------------------------


class ReleaseKind(StrEnum):
    BASELINE = "baseline"  # the first start of an installation: what ran before Molt signed
    UPDATE = "update"  # an approved update, after phase 2
    ROLLBACK = "rollback"  # going back on purpose: an operator, or Molt undoing a failed update


def releases_key(target_id: str) -> str:
    return f"molt:releases:{target_id}"


def highest_key(target_id: str) -> str:
    return f"molt:releases:{target_id}:highest"


@dataclass(frozen=True)
class Manifest:
    release: int
    kind: ReleaseKind
    codename: str
    target: str  # target_id: a manifest of one target is no use for another
    target_commit: str
    parent_commit: str  # what ran before ("" for a baseline)
    tree_hash: str
    checks: list[dict[str, Any]]
    at: str  # ISO 8601, UTC
    key_id: str
    operator: str = ""  # who asked for a rollback ("molt" when Molt undid a failed update)
    reason: str = ""
    request_id: str = ""
    signature: str = ""  # base64 Ed25519 over _DOMAIN + canonical()
    format: str = FORMAT

    def body(self) -> dict[str, Any]:
        data = asdict(self)
        data["kind"] = self.kind.value
        data.pop("signature")
        return data

    def canonical(self) -> bytes:
        """The signed bytes' JSON: sorted keys, no spaces, UTF-8."""
        return json.dumps(
            self.body(), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode()

    def to_json(self) -> str:
        return json.dumps(self.body() | {"signature": self.signature}, sort_keys=True, indent=2)

    @classmethod
    def from_json(cls, raw: str | bytes) -> Manifest:
        """Raises ValueError on anything that is not a manifest of this format."""
        data = json.loads(raw)
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError("not a Molt release manifest")
        try:
            return cls(
                release=int(data["release"]),
                kind=ReleaseKind(data["kind"]),
                codename=str(data["codename"]),
                target=str(data["target"]),
                target_commit=str(data["target_commit"]),
                parent_commit=str(data["parent_commit"]),
                tree_hash=str(data["tree_hash"]),
                checks=list(data["checks"]),
                at=str(data["at"]),
                key_id=str(data["key_id"]),
                operator=str(data.get("operator", "")),
                reason=str(data.get("reason", "")),
                request_id=str(data.get("request_id", "")),
                signature=str(data.get("signature", "")),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"incomplete manifest: {exc}") from exc

    @property
    def short(self) -> str:
        return self.target_commit[:7]

    @property
    def file_name(self) -> str:
        return f"{self.release}-{re.sub(r'[^A-Za-z0-9_.-]', '_', self.codename)}.json"

    def describe(self) -> str:
        """``release 4 (amber-otter, rollback by console:alice)``, ``release 1 (baseline)``"""
        what = self.kind.value + (f" by {self.operator}" if self.operator else "")
        if self.codename and self.codename != self.kind.value:
            what = f"{self.codename}, {what}"
        return f"release {self.release} ({what})"


# -- keys ------------------------------------------------------------------------


def _decode_raw(text: str) -> bytes | None:
    """32 raw bytes from hex or base64 (either alphabet, padding optional)."""
    text = text.strip()
    if re.fullmatch(r"[0-9a-fA-F]{64}", text):
        return bytes.fromhex(text)
    padded = text + "=" * (-len(text) % 4)
    for decode in (base64.b64decode, base64.urlsafe_b64decode):
        try:
            raw = decode(padded.encode())
        except (binascii.Error, ValueError):
            continue
        if len(raw) == 32:
            return raw
    return None


def public_key_bytes(text: str) -> bytes | None:
    """A trusted key as written in MOLT_TRUSTED_KEYS; None if it is not 32 bytes."""
    return _decode_raw(text)


def private_key_from_text(text: str) -> Ed25519PrivateKey | None:
    """MOLT_SIGNING_KEY: PEM (PKCS#8), or base64/hex of the 32-byte seed."""
    text = text.strip()
    if "-----BEGIN" in text:
        try:
            key = serialization.load_pem_private_key(text.encode(), password=None)
        except (ValueError, TypeError):
            return None
        return key if isinstance(key, Ed25519PrivateKey) else None
    raw = _decode_raw(text)
    return Ed25519PrivateKey.from_private_bytes(raw) if raw else None


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id_of(public: bytes) -> str:
    return hashlib.sha256(public).hexdigest()[:16]


@dataclass(frozen=True)
class SigningKey:
    private: Ed25519PrivateKey
    source: str  # "MOLT_SIGNING_KEY" or the key file

    @property
    def public(self) -> bytes:
        return _raw_public(self.private.public_key())

    @property
    def public_b64(self) -> str:
        return base64.b64encode(self.public).decode()

    @property
    def key_id(self) -> str:
        return key_id_of(self.public)

    def sign(self, manifest: Manifest) -> Manifest:
        signed = replace(manifest, key_id=self.key_id, signature="")
        signature = self.private.sign(_DOMAIN + signed.canonical())
        return replace(signed, signature=base64.b64encode(signature).decode())


def keys_dir(settings: Settings) -> Path:
    return settings.data_dir / "keys"


def signing_key(settings: Settings) -> SigningKey:
    """MOLT_SIGNING_KEY, or the key file under MOLT_DATA_DIR/keys/, created on first use."""
    if settings.signing_key and settings.signing_key.get_secret_value().strip():
        private = private_key_from_text(settings.signing_key.get_secret_value())
        if private is None:
            raise ConfigError("MOLT_SIGNING_KEY: expected an Ed25519 private key")
        return SigningKey(private, "MOLT_SIGNING_KEY")
    folder = keys_dir(settings)
    path = folder / KEY_FILE
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_key_file(path)
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    key = SigningKey(private, str(path))
    (folder / "release-signing.pub").write_text(key.public_b64 + "\n")
    log.warning("created a release signing key", path=str(path), key_id=key.key_id)
    return key


def _read_key_file(path: Path) -> SigningKey:
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise ConfigError(
            f"the release signing key {path} can be read by others (mode {mode:o}): "
            f"`chmod 600 {path}`"
        )
    text = path.read_text()
    if not text.strip():  # another process is writing it right now
        import time

        time.sleep(0.2)
        text = path.read_text()
    private = private_key_from_text(text)
    if private is None:
        raise ConfigError(f"{path} is not an Ed25519 private key (PEM)")
    return SigningKey(private, str(path))


def trusted_keys(settings: Settings) -> dict[str, Ed25519PublicKey]:
    """key id → key: MOLT_TRUSTED_KEYS, and the key Molt signs with now."""
    found: dict[str, Ed25519PublicKey] = {}
    for text in settings.trusted_keys:
        raw = public_key_bytes(text)
        if raw is not None:
            found[key_id_of(raw)] = Ed25519PublicKey.from_public_bytes(raw)
    own = signing_key(settings)
    found[own.key_id] = own.private.public_key()
    return found


def signature_problem(manifest: Manifest, trusted: dict[str, Ed25519PublicKey]) -> str:
    """Empty when ``manifest`` carries a good signature by a trusted key; else what is wrong."""
    key = trusted.get(manifest.key_id)
    if key is None:
        return "untrusted"
    try:
        key.verify(base64.b64decode(manifest.signature), _DOMAIN + manifest.canonical())
    except (InvalidSignature, binascii.Error, ValueError):
        return "altered"
    return ""


# -- the tree --------------------------------------------------------------------


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


# -- storage ---------------------------------------------------------------------


def releases_dir(settings: Settings) -> Path:
    return settings.data_dir / "releases" / settings.target_id


@contextmanager
def _writing(settings: Settings) -> Iterator[None]:
    """One writer at a time per target (the number must go up by one, across processes)."""
    folder = releases_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def stored(settings: Settings, conn: redis.Redis) -> list[Manifest]:
    """Every manifest of this target, from Redis and from the files, as found (unchecked)."""
    found: dict[tuple[int, str], Manifest] = {}
    raws: list[str | bytes] = list(conn.hvals(releases_key(settings.target_id)))
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

    def newest_for(self, commit: str) -> Manifest | None:
        mine = [m for m in self.good if m.target_commit == commit]
        return mine[-1] if mine else None

    def by_release(self, release: int) -> Manifest | None:
        return next((m for m in self.good if m.release == release), None)

    def by_codename(self, codename: str) -> Manifest | None:
        named = [m for m in self.good if m.codename == codename]
        return named[-1] if named else None


def ledger(settings: Settings, conn: redis.Redis) -> Ledger:
    trusted = trusted_keys(settings)
    good: list[Manifest] = []
    untrusted: list[Manifest] = []
    altered: list[Manifest] = []
    for manifest in stored(settings, conn):
        problem = signature_problem(manifest, trusted)
        {"": good, "untrusted": untrusted, "altered": altered}[problem].append(manifest)
    seen = int(conn.get(highest_key(settings.target_id)) or 0)
    highest = max([seen, *(m.release for m in good)])
    return Ledger(good, untrusted, altered, highest)


def _store(settings: Settings, conn: redis.Redis, manifest: Manifest) -> None:
    folder = releases_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / manifest.file_name
    partial = path.with_suffix(".json.partial")
    partial.write_text(manifest.to_json() + "\n")
    os.replace(partial, path)
    with conn.pipeline() as pipe:
        pipe.hset(releases_key(settings.target_id), str(manifest.release), manifest.to_json())
        pipe.execute()
    _raise_highest(settings, conn, manifest.release)


def _raise_highest(settings: Settings, conn: redis.Redis, release: int) -> None:
    key = highest_key(settings.target_id)
    conn.eval(
        "local v = tonumber(redis.call('GET', KEYS[1]) or '0') "
        "if tonumber(ARGV[1]) > v then redis.call('SET', KEYS[1], ARGV[1]) end return 1",
        1,
        key,
        str(release),
    )


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def sign_release(
    settings: Settings,
    conn: redis.Redis,
    *,
    kind: ReleaseKind,
    commit: str,
    parent: str,
    codename: str,
    checks: list[dict[str, Any]] | None = None,
    operator: str = "",
    reason: str = "",
    request_id: str = "",
    git: Git | None = None,
) -> Manifest:
    """Number, sign, store and audit a release of ``commit`` (hashed as committed)."""
    git = git or Git(settings.target_dir)
    tree = tree_hash_at(git, commit)
    key = signing_key(settings)
    with _writing(settings):
        number = ledger(settings, conn).highest + 1
        manifest = key.sign(
            Manifest(
                release=number,
                kind=kind,
                codename=codename,
                target=settings.target_id,
                target_commit=commit,
                parent_commit=parent,
                tree_hash=tree,
                checks=[_check_summary(c) for c in checks or []],
                at=_now(),
                key_id=key.key_id,
                operator=operator,
                reason=reason[:500],
                request_id=request_id,
            )
        )
        _store(settings, conn, manifest)
    audit.append(
        conn,
        actor=operator or MOLT,
        action=f"release_{kind.value}",
        request_id=request_id,
        detail={
            "release": number,
            "codename": codename,
            "commit": commit,
            "parent": parent,
            "tree_hash": tree,
            "key_id": key.key_id,
            "reason": manifest.reason,
        },
    )
    log.info("release signed", release=number, kind=kind.value, commit=commit[:12])
    return manifest


def _check_summary(check: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": str(check.get("name", "")),
        "ok": bool(check.get("ok")),
        "seconds": check.get("seconds", 0),
        "detail": str(check.get("detail", ""))[:200],
    }


# -- the update's release, and going back -----------------------------------------


def is_operator_rollback(settings: Settings, request: Any) -> bool:
    """A deploy planned by ``rollback [codename]`` (chat or ``molt rollback``), which only an
    operator may give; checked again here, since the release it makes is a rollback."""
    from pipeline.authorisation import may_operate
    from pipeline.autonomy import is_rollback

    return is_rollback(request) and bool(may_operate(settings, request.origin))


def record_update(
    settings: Settings,
    conn: redis.Redis,
    request: Any,
    *,
    commit: str,
    parent: str,
    checks: list[dict[str, Any]],
) -> Manifest:
    """The release an update writes after phase 2: ``update``, or ``rollback`` when an
    operator asked to go back. A target with no release yet (not Molt, whose first start
    records one) gets ``parent``, the snapshot it ran, as its baseline first."""
    rollback = is_operator_rollback(settings, request)
    known = ledger(settings, conn)
    if not (known.good or known.untrusted or known.altered) and parent:
        sign_release(
            settings,
            conn,
            kind=ReleaseKind.BASELINE,
            commit=parent,
            parent="",
            codename="baseline",
            operator=MOLT,
            reason=f"what ran before update {request.codename or request.id}, the first signed",
        )
    return sign_release(
        settings,
        conn,
        kind=ReleaseKind.ROLLBACK if rollback else ReleaseKind.UPDATE,
        commit=commit,
        parent=parent,
        codename=request.codename or request.id,
        checks=checks,
        operator=request.requester if rollback else "",
        reason=request.text if rollback else "",
        request_id=request.id,
    )


def record_return(
    settings: Settings,
    conn: redis.Redis,
    *,
    commit: str,
    from_commit: str,
    codename: str,
    reason: str,
    request_id: str = "",
    operator: str = MOLT,
) -> Manifest | None:
    """Before Molt returns to ``commit`` (a failed update's snapshot, the boot guard's last
    good release): a ``rollback`` release for it, unless it already is the newest release.
    ``commit`` must have been a signed release: nothing else may be returned to this way."""
    known = ledger(settings, conn)
    mine = known.newest_for(commit)
    if mine is None:
        log.info("returning to a commit that was never a release", commit=commit[:12])
        return None
    if mine.release >= known.highest:
        return None
    return sign_release(
        settings,
        conn,
        kind=ReleaseKind.ROLLBACK,
        commit=commit,
        parent=from_commit,
        codename=codename,
        operator=operator,
        reason=reason,
        request_id=request_id,
    )


# -- verification ------------------------------------------------------------------


class Problem(StrEnum):
    NONE = ""  # verified
    NO_RELEASE = "no-release"  # nothing recorded yet (and no baseline asked for)
    UNSIGNED = "unsigned"  # no trusted manifest names this commit
    UNTRUSTED = "untrusted"  # only manifests by keys not in MOLT_TRUSTED_KEYS name it
    ALTERED = "altered"  # a manifest naming it was edited after it was signed
    TAMPERED = "tampered"  # the files differ from the signed release
    DOWNGRADE = "downgrade"  # a lower release than one already seen


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str  # what a person reads
    problem: Problem = Problem.NONE
    manifest: Manifest | None = None
    highest: int = 0
    paths: list[str] = field(default_factory=list)
    baseline: bool = False  # this check recorded the installation's first release

    def __bool__(self) -> bool:
        return self.ok


def verify_running(settings: Settings, conn: redis.Redis, *, baseline: bool = True) -> Verdict:
    """Molt's start-up check of the code it runs (its own checkout at ``running_version``).

    ``baseline``: with no manifest at all, sign the running commit as release 1 first.
    """
    return verify_checkout(settings, conn, commit=running_version(), baseline=baseline)


def verify_checkout(
    settings: Settings, conn: redis.Redis, *, commit: str | None = None, baseline: bool = False
) -> Verdict:
    """Check the target's checkout (at ``commit``, default its HEAD) against its releases."""
    git = Git(settings.target_dir)
    try:
        commit = commit or git.head()
    except GitError as exc:
        return Verdict(False, f"{settings.target_dir} is not a git checkout: {exc}")
    short = commit[:7]
    known = ledger(settings, conn)
    everything = known.good + known.untrusted + known.altered
    if not everything:
        if not baseline:
            return Verdict(
                False,
                f"no release of {settings.target_dir} is recorded yet",
                Problem.NO_RELEASE,
            )
        return _baseline(settings, conn, git, commit)
    mine = known.newest_for(commit)
    if mine is None:
        return _no_trusted_release(settings, known, commit)
    tree = check_tree(git, commit, mine.tree_hash)
    if tree.tree_hash != mine.tree_hash or tree.added:
        return Verdict(
            False,
            f"the checkout differs from signed {mine.describe()} of {short}: "
            f"{tree.describe() or 'the tracked files hash differently'}. Undo that "
            f"(`git checkout -- . && git clean -fd` in {settings.target_dir}) or deploy the "
            "change through Molt.",
            Problem.TAMPERED,
            mine,
            known.highest,
            tree.paths,
        )
    if mine.release < known.highest:
        return _downgrade(known, mine, commit)
    _raise_highest(settings, conn, mine.release)
    _mirror(settings, conn, known)
    return Verdict(
        True,
        f"{short} is signed {mine.describe()} (key {mine.key_id}); its tracked files are "
        f"intact; highest release seen: {known.highest}",
        manifest=mine,
        highest=known.highest,
    )


def _baseline(settings: Settings, conn: redis.Redis, git: Git, commit: str) -> Verdict:
    tree = check_tree(git, commit, tree_hash_at(git, commit))
    if tree.paths:
        return Verdict(
            False,
            f"no release is recorded yet, and the checkout differs from {commit[:7]} "
            f"({tree.describe()}): the first release can only be recorded for a clean commit",
            Problem.TAMPERED,
            paths=tree.paths,
        )
    manifest = sign_release(
        settings,
        conn,
        kind=ReleaseKind.BASELINE,
        commit=commit,
        parent="",
        codename="baseline",
        operator=_local_principal(),
        reason="first start of this installation: no release manifest existed",
        git=git,
    )
    log.warning(
        "no release manifest existed: recorded a baseline release",
        release=manifest.release,
        commit=commit[:12],
        key_id=manifest.key_id,
    )
    return Verdict(
        True,
        f"no release was recorded yet: {commit[:7]} is now the signed baseline, "
        f"{manifest.describe()} (key {manifest.key_id})",
        manifest=manifest,
        highest=manifest.release,
        baseline=True,
    )


def _local_principal() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _no_trusted_release(settings: Settings, known: Ledger, commit: str) -> Verdict:
    short = commit[:7]
    untrusted = [m for m in known.untrusted if m.target_commit == commit]
    if untrusted:
        m = untrusted[-1]
        return Verdict(
            False,
            f"{short} is {m.describe()}, signed by key {m.key_id}, which is not trusted: if "
            "that key is yours, add its public key to MOLT_TRUSTED_KEYS",
            Problem.UNTRUSTED,
            m,
            known.highest,
        )
    altered = [m for m in known.altered if m.target_commit == commit]
    if altered:
        m = altered[-1]
        return Verdict(
            False,
            f"the manifest of {m.describe()} for {short} was altered after it was signed "
            f"(its signature by key {m.key_id} does not match)",
            Problem.ALTERED,
            m,
            known.highest,
        )
    last = known.by_release(known.highest) or (known.good[-1] if known.good else None)
    back = (
        f" The last release is {last.release} ({last.short}): return to it "
        f"(`git checkout {last.short}` in {settings.target_dir}) and deploy through Molt."
        if last
        else ""
    )
    return Verdict(
        False,
        f"{short} is not a signed release: no trusted release manifest names it, so it was "
        f"not installed by Molt.{back}",
        Problem.UNSIGNED,
        highest=known.highest,
    )


def _downgrade(known: Ledger, mine: Manifest, commit: str) -> Verdict:
    after = [m for m in known.good if m.release > mine.release]
    newest = known.by_release(known.highest)
    undo = next((m for m in after if m.parent_commit == commit), None) or newest
    seen = f"{newest.describe()} of {newest.short}" if newest else f"release {known.highest}"
    named = undo.codename if undo else "<codename of the update to undo>"
    back = f" or return to {newest.short}" if newest else ""
    return Verdict(
        False,
        f"downgrade refused: {commit[:7]} is {mine.describe()}, lower than {seen} already "
        f"seen. If going back is meant, an operator allows it with `molt release rollback "
        f"{named}` (a signed, audited rollback release){back}.",
        Problem.DOWNGRADE,
        mine,
        known.highest,
    )


def _mirror(settings: Settings, conn: redis.Redis, known: Ledger) -> None:
    """Put back into Redis what only the files still have (after Redis was wiped)."""
    have = set(conn.hkeys(releases_key(settings.target_id)))
    missing: dict[Any, Any] = {
        str(m.release): m.to_json() for m in known.good if str(m.release) not in have
    }
    if missing:
        conn.hset(releases_key(settings.target_id), mapping=missing)


# -- an operator going back -----------------------------------------------------


def operator_rollback(
    settings: Settings, conn: redis.Redis, codename: str, operator: str
) -> Verdict:
    """Return the target to the release before update ``codename`` and sign that as a
    ``rollback`` release by ``operator`` (authorised by the caller). The checkout is moved
    there if it is not already (it must be clean); a checkout already there (a manual
    ``git checkout``) must match that release's files. A refusal is a Verdict with a reason.
    """
    from pipeline import codenames, snapshots
    from pipeline.locking import UpdateLock

    known = ledger(settings, conn)
    undone = known.by_codename(codename)
    if undone is None:
        return Verdict(False, f"no signed release is named {codename!r}", Problem.UNSIGNED)
    back = known.newest_for(undone.parent_commit) if undone.parent_commit else None
    if back is None:
        return Verdict(
            False,
            f"{undone.describe()} has no signed release before it to return to",
            Problem.UNSIGNED,
        )
    lock = UpdateLock(conn, settings.target_id, settings.lock_ttl)
    holder = lock.try_lock(f"rollback-{codename}", codename)
    if holder is not None:
        return Verdict(
            False,
            f"update {holder.codename or holder.request_id} is running: wait for it, or `stop` it",
        )
    try:
        live = Git(settings.target_dir)
        if live.head() == back.target_commit:
            tree = check_tree(live, back.target_commit, back.tree_hash)
            if tree.tree_hash != back.tree_hash or tree.added:
                return Verdict(
                    False,
                    f"the checkout is at {back.short} but differs from {back.describe()}: "
                    f"{tree.describe()}",
                    Problem.TAMPERED,
                    back,
                    paths=tree.paths,
                )
        else:
            dirty = live.dirty()
            if dirty:
                shown = ", ".join(line[3:] for line in dirty[:SHOWN_PATHS])
                return Verdict(
                    False, f"the checkout has uncommitted changes: {shown}", Problem.TAMPERED
                )
            if not live.ok("cat-file", "-e", f"{back.target_commit}^{{commit}}"):
                live.run("fetch", "--quiet", settings.target_remote)
        current = known.by_release(known.highest)
        manifest = sign_release(
            settings,
            conn,
            kind=ReleaseKind.ROLLBACK,
            commit=back.target_commit,
            parent=current.target_commit if current else live.head(),
            codename=codenames.new_codename(conn),
            operator=operator,
            reason=f"rollback of {undone.describe()} to {back.describe()}",
        )
        if live.head() != back.target_commit:
            snapshots.move_to(live, back.target_commit, live.branch())
    finally:
        lock.release(f"rollback-{codename}")
    verdict = verify_checkout(settings, conn)
    if not verdict.ok:
        return verdict
    return Verdict(
        True,
        f"{back.short} is signed {manifest.describe()} (key {manifest.key_id}): "
        f"{undone.describe()} is rolled back",
        manifest=manifest,
        highest=manifest.release,
    )
