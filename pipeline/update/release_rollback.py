"""An operator going back: ``molt release rollback <codename>``.

Start-up refuses a release lower than one already seen (pipeline/releases/verification.py). When
going back is meant, an operator returns the target to the release before an update,
and that return is signed as a new, higher release of kind ``rollback`` naming them,
under the update lock, so that no update runs meanwhile.
"""

from __future__ import annotations

import redis

from pipeline import codenames
from pipeline.config import Settings
from pipeline.git import Git
from pipeline.queue.targets import Target
from pipeline.releases import ledger
from pipeline.releases.ledger import Ledger
from pipeline.releases.manifests import Manifest, ReleaseKind
from pipeline.releases.signing import sign_release
from pipeline.releases.trees import SHOWN_PATHS, check_tree
from pipeline.releases.verification import Problem, Verdict, verify_checkout
from pipeline.service import snapshots


def operator_rollback(
    settings: Settings, conn: redis.Redis, codename: str, operator: str
) -> Verdict:
    """Return the target to the release before update ``codename`` and sign that as a
    ``rollback`` release by ``operator`` (authorised by the caller). The checkout is moved
    there if it is not already (it must be clean); a checkout already there (a manual
    ``git checkout``) must match that release's files. A refusal is a Verdict with a reason.
    """
    known = ledger.read(settings, conn)
    point = _rollback_point(known, codename)
    if isinstance(point, Verdict):
        return point
    undone, back = point
    lock = Target(settings, conn).lock
    holder = lock.try_lock(f"rollback-{codename}", codename)
    if not holder.ours:
        return Verdict(
            False,
            f"update {holder.codename or holder.request_id} is running: wait for it, or `stop` it",
        )
    try:
        live = Git(settings.target_dir)
        refused = _checkout_refusal(settings, live, back)
        if refused is not None:
            return refused
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
    if not verdict:
        return verdict
    return Verdict(
        True,
        f"{back.short} is signed {manifest.describe()} (key {manifest.key_id}): "
        f"{undone.describe()} is rolled back",
        manifest=manifest,
        highest=manifest.release,
    )


def _rollback_point(known: Ledger, codename: str) -> tuple[Manifest, Manifest] | Verdict:
    """The release of update ``codename`` and the signed release before it, or why not."""
    undone = known.by_codename(codename)
    if undone is None:
        return Verdict(False, f"no signed release is named {codename!r}", problem=Problem.UNSIGNED)
    back = known.newest_for(undone.parent_commit) if undone.parent_commit else None
    if back is None:
        return Verdict(
            False,
            f"{undone.describe()} has no signed release before it to return to",
            problem=Problem.UNSIGNED,
        )
    return undone, back


def _checkout_refusal(settings: Settings, live: Git, back: Manifest) -> Verdict | None:
    """Why the checkout may not go back to ``back`` now; None (having fetched ``back``'s
    commit when it is missing) when it may."""
    if live.head() == back.target_commit:
        tree = check_tree(live, back.target_commit, back.tree_hash)
        if tree.matches(back.tree_hash):
            return None
        return Verdict(
            False,
            f"the checkout is at {back.short} but differs from {back.describe()}: "
            f"{tree.describe()}",
            problem=Problem.TAMPERED,
            manifest=back,
            paths=tree.paths,
        )
    dirty = live.dirty()
    if dirty:
        shown = ", ".join(line[3:] for line in dirty[:SHOWN_PATHS])
        return Verdict(
            False, f"the checkout has uncommitted changes: {shown}", problem=Problem.TAMPERED
        )
    if not live.ok("cat-file", "-e", f"{back.target_commit}^{{commit}}"):
        live.run("fetch", "--quiet", settings.target_remote)
    return None
