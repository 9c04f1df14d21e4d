"""A change delivered as a pull request (MOLT_CHANGE_DELIVERY=pull-request), and what
follows it.

After the change is written and phase 1 passed in the sandbox, the job pushes the sandbox
commit to ``molt/<codename>`` on the target's remote and the request ends ``proposed``: the
live checkout is not touched. The GitHub front end opens the pull request (bot/github/pulls.py)
and follows it; what it sees comes back here: a merge plans a deploy of the merge commit in
the request's own conversation (approved by the merge itself when MOLT_MERGE_APPROVES and the
one who merged is an approver), a close without merging or someone else's push to the branch
ends the follow-up with a message.

Keys: ``molt:proposal:<request id>`` the follow-up of a proposed request (``state``: open,
merged, closed, voided; ``deploy``: the deploy request a merge made).
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import redis
import structlog

from pipeline import keyspace
from pipeline.config import Settings
from pipeline.exceptions import GitError, UpdateFailed
from pipeline.git import Git
from pipeline.intake import approval
from pipeline.intake import flow as intake
from pipeline.requests.states import RequestState as S
from pipeline.requests.store import Origin, Request, RequestStore

log = structlog.get_logger(__name__)
BRANCH_PREFIX = "molt/"
#: How long a proposal is followed (a pull request open longer is still deployed by hand).
FOLLOW_TTL = 90 * 86400


def branch_for(codename: str) -> str:
    return f"{BRANCH_PREFIX}{codename}"


def push(settings: Settings, commit: str, branch: str) -> str:
    """Push ``commit`` to ``branch`` on the target's remote; returns where that is, as a
    person may read it (without any credentials the remote's URL carries, here or in what
    a failed push says)."""
    live = Git(settings.target_dir)
    remote = settings.target_remote
    url = remote if "/" in remote or ":" in remote else live.run("remote", "get-url", remote)
    url = url.strip()
    try:
        live.run("push", "--quiet", remote, f"{commit}:refs/heads/{branch}")
    except GitError as exc:
        said = exc.output.replace(url, shown_url(url)) if url else exc.output
        raise UpdateFailed(
            "propose", f"pushing to {shown_url(url)}: {said.strip()[:500]}"
        ) from None
    return shown_url(url)


def shown_url(url: str) -> str:
    """A remote's URL without the user and password an https URL may carry."""
    parts = urlsplit(url)
    if parts.scheme and "@" in parts.netloc:
        return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    return url


def follow(conn: redis.Redis, request_id: str, commit: str, branch: str) -> None:
    conn.hset(
        keyspace.proposal(request_id), mapping={"state": "open", "commit": commit, "branch": branch}
    )
    conn.expire(keyspace.proposal(request_id), FOLLOW_TTL)


def state(conn: redis.Redis, request_id: str) -> dict[str, str]:
    raw = conn.hgetall(keyspace.proposal(request_id))
    return {_text(k): _text(v) for k, v in raw.items()}


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def merged(
    settings: Settings,
    conn: redis.Redis,
    request_id: str,
    merge_commit: str,
    merged_by: Origin | None,
    where: str,
) -> Request | None:
    """The pull request was merged: plan a deploy of the merge commit where the request was
    asked. With MOLT_MERGE_APPROVES, a merge by an approver approves that plan. ``settings``
    are the request's target's."""
    store = RequestStore(conn)
    following = state(conn, request_id)
    if following.get("state") != "open":
        return None  # voided, closed or already deployed: a merge changes nothing here
    conn.hset(keyspace.proposal(request_id), "state", "merged")
    proposed = store.get(request_id)
    store.notify(
        request_id,
        "proposal",
        actor=merged_by.principal if merged_by else "github",
        action="proposal_merged",
        data={"event": "merged", "where": where, "commit": merge_commit},
    )
    deploy = intake.submit(
        settings,
        conn,
        proposed.origin,
        "deploy",
        merge_commit,
        f"deploy {merge_commit} (merged from {where}, request {request_id})",
    )
    conn.hset(keyspace.proposal(request_id), "deploy", deploy.id)
    if deploy.state is S.PLAN_READY and settings.merge_approves and merged_by is not None:
        decision = approval.approve_on_merge(settings, conn, deploy.id, merged_by, where)
        if not decision:
            log.info("the merge does not approve", request_id=deploy.id, reason=decision.reason)
    return store.get(deploy.id)


def ended(conn: redis.Redis, request_id: str, how: str, detail: str, actor: str) -> bool:
    """The follow-up ends without a deploy: ``closed`` unmerged, or ``voided`` by a push
    someone else made to the branch. Told in the request's conversation, once."""
    following = state(conn, request_id)
    if following.get("state") != "open":
        return False
    conn.hset(keyspace.proposal(request_id), "state", how)
    RequestStore(conn).notify(
        request_id,
        "proposal",
        actor=actor,
        action=f"proposal_{how}",
        data={"event": how, "detail": detail},
    )
    return True
