"""Whether a checkout is a signed release: Molt's check at start-up, and ``molt release verify``.

A tree that differs from its signed release, a commit no release names, a signature by
a key nobody trusts, a manifest edited after it was signed, or a release number lower
than one already seen (a silent downgrade) is refused, with a reason a person reads: a
``Verdict``, the Decision of pipeline/requests/decisions.py whose check is "release:<problem>".
The first start of an installation, with no manifest at all, records the running commit
as the signed baseline (release 1).
"""

from __future__ import annotations

import getpass
import socket
from dataclasses import dataclass, field
from enum import StrEnum

import redis
import structlog

from pipeline.config import Settings
from pipeline.exceptions import GitError
from pipeline.git import Git
from pipeline.releases import ledger
from pipeline.releases.ledger import Ledger
from pipeline.releases.manifests import Manifest, ReleaseKind, running_version
from pipeline.releases.signing import sign_release
from pipeline.releases.trees import check_tree, tree_hash_at
from pipeline.requests.decisions import Decision

log = structlog.get_logger(__name__)


class Problem(StrEnum):
    NONE = ""  # verified
    NO_RELEASE = "no-release"  # nothing recorded yet (and no baseline asked for)
    UNSIGNED = "unsigned"  # no trusted manifest names this commit
    UNTRUSTED = "untrusted"  # only manifests by keys not in MOLT_TRUSTED_KEYS name it
    ALTERED = "altered"  # a manifest naming it was edited after it was signed
    TAMPERED = "tampered"  # the files differ from the signed release
    DOWNGRADE = "downgrade"  # a lower release than one already seen


@dataclass(frozen=True)
class Verdict(Decision):
    """A Decision on a checkout; its ``check`` is "release", or "release:<problem>" for a
    refusal with a known problem ("release:downgrade"). Everything after the reason is
    keyword-only, so nothing lands in ``check`` by position."""

    check: str = field(init=False, default="")
    problem: Problem = field(default=Problem.NONE, kw_only=True)
    manifest: Manifest | None = field(default=None, kw_only=True)
    highest: int = field(default=0, kw_only=True)
    paths: list[str] = field(default_factory=list, kw_only=True)
    #: This check recorded the installation's first release.
    baseline: bool = field(default=False, kw_only=True)

    def __post_init__(self) -> None:
        named = f"release:{self.problem.value}" if self.problem else "release"
        object.__setattr__(self, "check", named)


#: What a manifest naming the commit says when its signature does not count.
_BAD_SIGNATURES = {
    Problem.UNTRUSTED: "{short} is {release}, signed by key {key}, which is not trusted: if "
    "that key is yours, add its public key to MOLT_TRUSTED_KEYS",
    Problem.ALTERED: "the manifest of {release} for {short} was altered after it was signed "
    "(its signature by key {key} does not match)",
}


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
    known = ledger.read(settings, conn)
    if known.empty:
        if not baseline:
            return Verdict(
                False,
                f"no release of {settings.target_dir} is recorded yet",
                problem=Problem.NO_RELEASE,
            )
        return _baseline(settings, conn, git, commit)
    mine = known.newest_for(commit)
    if mine is None:
        return _no_trusted_release(settings, known, commit)
    tree = check_tree(git, commit, mine.tree_hash)
    if not tree.matches(mine.tree_hash):
        return Verdict(
            False,
            f"the checkout differs from signed {mine.describe()} of {short}: "
            f"{tree.describe() or 'the tracked files hash differently'}. Undo that "
            f"(`git checkout -- . && git clean -fd` in {settings.target_dir}) or deploy the "
            "change through Molt.",
            problem=Problem.TAMPERED,
            manifest=mine,
            highest=known.highest,
            paths=tree.paths,
        )
    if mine.release < known.highest:
        return _downgrade(known, mine, commit)
    ledger.raise_highest(settings, conn, mine.release)
    ledger.mirror(settings, conn, known)
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
            problem=Problem.TAMPERED,
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
    for problem, found in ((Problem.UNTRUSTED, known.untrusted), (Problem.ALTERED, known.altered)):
        named = [m for m in found if m.target_commit == commit]
        if named:
            m = named[-1]
            why = _BAD_SIGNATURES[problem].format(short=short, release=m.describe(), key=m.key_id)
            return Verdict(False, why, problem=problem, manifest=m, highest=known.highest)
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
        problem=Problem.UNSIGNED,
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
        problem=Problem.DOWNGRADE,
        manifest=mine,
        highest=known.highest,
    )
