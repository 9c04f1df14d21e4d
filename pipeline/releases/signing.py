"""Signed releases: the one place a release is numbered, signed, stored and audited.

After phase 2 the worker records the release of the commit it installed
(``record_update``: a release manifest, pipeline/releases/manifests.py, signed with
Ed25519, pipeline/releases/keys.py, and kept in the ledger, pipeline/releases/ledger.py). Its
caller says what kind of release it is: an update, or a rollback an operator asked for. At
start-up Molt checks the release of the code it runs (pipeline/releases/verification.py).
Going back is allowed only as a new, higher release of kind ``rollback`` that says who asked
for it: an operator's (pipeline/update/release_rollback.py), or Molt's own when it returns to
what ran before (``record_return``: a failed update, the boot guard).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import redis
import structlog

from pipeline import audit
from pipeline.config import Settings
from pipeline.git import Git
from pipeline.releases import ledger
from pipeline.releases.keys import signing_key
from pipeline.releases.manifests import Manifest, ReleaseKind
from pipeline.releases.trees import tree_hash_at
from pipeline.requests.store import Request

log = structlog.get_logger(__name__)

MOLT = "molt"


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
    with ledger.writing(settings):
        number = ledger.read(settings, conn).highest + 1
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
        ledger.store(settings, conn, manifest)
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


def record_update(
    settings: Settings,
    conn: redis.Redis,
    request: Request,
    *,
    kind: ReleaseKind,
    commit: str,
    parent: str,
    checks: list[dict[str, Any]],
) -> Manifest:
    """The release an update writes after phase 2, of the ``kind`` its caller says:
    ``update``, or ``rollback`` when an operator asked to go back (then it names them and
    their words). A target with no release yet (not Molt, whose first start records one)
    gets ``parent``, the snapshot it ran, as its baseline first."""
    rollback = kind is ReleaseKind.ROLLBACK
    if ledger.read(settings, conn).empty and parent:
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
        kind=kind,
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
    known = ledger.read(settings, conn)
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
