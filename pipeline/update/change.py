"""Writing a change described in words, in the update's sandbox.

The job (pipeline/update/jobs.py) hands over at its sandbox step: the model implements the
approved plan in the sandbox, what it wrote is committed there, and phase 1 begins
with the checks only a written change needs: the diff stays inside the plan's scope
and off protected paths, and a second model call reviews it. Afterwards the plan's
``target_commit`` is the new commit, and the job validates and applies it like any
deploy.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import redis

from pipeline import audit
from pipeline.config import Settings
from pipeline.exceptions import LLMError, UpdateFailed
from pipeline.git import Git
from pipeline.llm.scope import Scope, check_scope
from pipeline.planning.deploys import import_graph
from pipeline.planning.diffs import changed_files
from pipeline.planning.plans import Plan
from pipeline.requests.store import Request, RequestStore
from pipeline.retries import transient
from pipeline.sandbox.validation import PhaseSpec
from pipeline.service.snapshots import Sandbox
from pipeline.update import reproduction
from pipeline.usage import record_usage

MOLT = "molt"
#: The implementer ended without writing anything.
NOTHING_WRITTEN = "the implementer changed nothing"

#: Who writes and commits a change written in the sandbox, whatever the environment says.
MOLT_AUTHOR = {
    "GIT_AUTHOR_NAME": "Molt",
    "GIT_AUTHOR_EMAIL": "molt@localhost",
    "GIT_COMMITTER_NAME": "Molt",
    "GIT_COMMITTER_EMAIL": "molt@localhost",
}
#: How a change written in the sandbox is committed; no hooks run and nothing is signed
#: unless MOLT_COMMIT_SIGNING_KEY asks for it.
COMMIT_CONFIG = (
    "-c",
    "user.name=Molt",
    "-c",
    "user.email=molt@localhost",
    "-c",
    "core.hooksPath=/dev/null",
    "-c",
    "commit.gpgSign=false",
)


class Steps(Protocol):
    """What the job lends the change while it is written: its progress and safe points."""

    def enter(self, phase: str, message: str) -> None: ...

    def check(self, name: str, ok: bool, seconds: float, detail: str = "") -> None: ...

    def guard(self) -> None: ...

    def stopping(self) -> bool: ...

    def running(self, pid: int) -> None: ...


@dataclass(frozen=True)
class Written:
    """The change in the sandbox: where it is, the files to validate, and what the final
    message should add (a note on files outside the plan's scope), or ""."""

    path: Path
    changed: list[str]
    note: str
    #: A Fix it request's proof: its test failed on the base as production did, and
    #: passes on the fix (pipeline/update/reproduction.py); "" for any other change.
    proof: str = ""


@dataclass(frozen=True)
class Writing:
    """One change being written: who asked, the plan, and where."""

    settings: Settings
    conn: redis.Redis
    steps: Steps
    request: Request
    plan: Plan
    sandbox: Sandbox
    log_dir: Path
    #: What the job's validation phases run (the target's test limit); the settings' own
    #: when not given.
    spec: PhaseSpec | None = None


def write(change: Writing) -> Written:
    """Implement, commit, check the scope and review, all in the sandbox; the plan's
    ``target_commit`` is the new commit afterwards."""
    path = _checkout_base(change)
    files, spent = _implement(change, path)
    proof = ""
    if change.request.incident:
        files, proof = _reproduce(change, files, spent)
    found = _check_scope(change, files)
    _review(change, found)
    note = found.deviation_detail() if found.unplanned else ""
    return Written(path, [f["path"] for f in files if f["status"] != "D"], note, proof)


def _reproduce(
    change: Writing, files: list[dict[str, Any]], spent: int
) -> tuple[list[dict[str, Any]], str]:
    """A Fix it request's test must reproduce its incident on the base and pass on the fix;
    refused, the implementer is told why once (within what is left of its model budget),
    then the request fails."""
    proof = _prove(change)
    if not proof.ok:
        refused = f"the fix does not reproduce its incident: {proof.reason}"
        try:
            files, _ = _implement(change, change.sandbox.path, spent, refused=proof.reason)
        except UpdateFailed as exc:
            if not (isinstance(exc.__cause__, LLMError) or exc.reason == NOTHING_WRITTEN):
                raise  # a stop, or a lost lock: that is the news
            # The refusal is the news; what went wrong in the second round follows it.
            raise UpdateFailed(
                "reproduce", f"{refused}; told once, the implementer then: {exc.reason}"
            ) from exc
        proof = _prove(change)
    if not proof.ok:
        raise UpdateFailed("reproduce", f"the fix does not reproduce its incident: {proof.reason}")
    return files, proof.shown()


def _prove(change: Writing) -> reproduction.Proof:
    """One run of the fix's tests on the base and on the fix; a refusal is audited."""
    plan = change.plan
    change.steps.enter("reproduce", f"running the fix's tests on {plan.base_commit[:7]}")
    began = time.monotonic()
    proof = reproduction.reproduce(
        change.sandbox,
        change.spec or PhaseSpec.from_settings(change.settings),
        plan.base_commit,
        plan.target_commit,
        change.request.incident or {},
        log_path=change.log_dir / "reproduce.log",
        stop=change.steps.stopping,
        started=change.steps.running,
    )
    detail = proof.shown() if proof.ok else proof.reason
    change.steps.check("reproduce", proof.ok, time.monotonic() - began, detail[:600])
    if not proof.ok:
        audit.append(
            change.conn,
            actor=MOLT,
            action="fix_refused",
            request_id=change.request.id,
            detail={"reason": proof.reason, "incident": (change.request.incident or {}).get("id")},
        )
    change.steps.guard()
    return proof


def _checkout_base(change: Writing) -> Path:
    base = change.plan.base_commit
    began = time.monotonic()
    path = transient("sandbox", change.sandbox.checkout, base)
    change.steps.check("sandbox", True, time.monotonic() - began, base[:7])
    return path


def _implement(
    change: Writing, path: Path, spent: int = 0, refused: str = ""
) -> tuple[list[dict[str, Any]], int]:
    """The model writes the plan in the sandbox; the result is committed there. Returns
    the files changed since the base and the tokens used, ``spent`` included (a second
    round has what is left of MOLT_LLM_MAX_TOKENS)."""
    from pipeline.llm import agent
    from pipeline.llm.client import Claude

    settings, plan, git = change.settings, change.plan, change.sandbox.git
    change.steps.enter("implement", "writing the change in the sandbox")
    began = time.monotonic()
    writer = Claude(settings, "implementation", max_tokens=max(1, settings.llm_max_tokens - spent))
    graph = import_graph(settings, change.conn, git, plan.base_commit)
    try:
        done = agent.implement(
            settings,
            writer,
            path,
            plan,
            change.request,
            graph,
            log_path=change.log_dir / "implement.log",
            guard=change.steps.guard,
            refused=refused,
        )
    except LLMError as exc:
        raise UpdateFailed("implement", str(exc)) from exc
    finally:
        writer.close()
        record_usage(change.conn, change.request.id, "implementation", settings.model, writer.usage)
    left_out = drop_strays(git, done.files.touched)
    with signing_config(change.settings) as signing:
        target = _commit(git, plan, change.request, done.summary, signing)
    files = changed_files(git, plan.base_commit, target)
    plan.target_commit = target
    RequestStore(change.conn).update(change.request.id, plan=plan.to_dict())
    turns = f"{done.turns} model call{'s' if done.turns != 1 else ''}"
    detail = f"{target[:7]}: {len(files)} files in {turns}; {done.summary}"
    if left_out:
        detail += f" (left out {len(left_out)} new files it did not write: {left_out[0]}…)"
    change.steps.check("implement", True, time.monotonic() - began, detail[:300])
    change.steps.guard()
    return files, spent + writer.usage.total


def _check_scope(change: Writing, files: list[dict[str, Any]]) -> Scope:
    """The diff against the plan's scope and the protected paths."""

    change.steps.enter("phase 1", "checking the change against the plan, then validating it")
    began = time.monotonic()
    found = check_scope(change.plan, files)
    change.steps.check(
        "phase 1: scope", found.deviation_ok, time.monotonic() - began, found.deviation_detail()
    )
    change.steps.check(
        "phase 1: protected paths", found.protected_ok, 0.0, found.protected_detail()
    )
    if not found.protected_ok:
        raise UpdateFailed("phase 1", found.protected_detail())
    if not found.deviation_ok:
        raise UpdateFailed("phase 1", f"scope: {found.deviation_detail()}")
    return found


def _review(change: Writing, found: Scope) -> None:
    """A second model call reads the diff against the plan; phase 1 fails without its
    approval."""
    from pipeline.llm import review
    from pipeline.llm.client import Claude

    settings, plan = change.settings, change.plan
    began = time.monotonic()
    reviewer = Claude(settings, "review")
    diff = change.sandbox.git.run(
        "diff",
        "--no-color",
        "--no-ext-diff",
        "--no-textconv",
        plan.base_commit,
        plan.target_commit,
        "--",
    )
    try:
        verdict = review.review(settings, reviewer, plan, change.request, diff, found)
    except LLMError as exc:
        raise UpdateFailed("phase 1", str(exc)) from exc
    finally:
        reviewer.close()
        record_usage(change.conn, change.request.id, "review", settings.model, reviewer.usage)
    change.steps.check(
        "phase 1: review", verdict.approved, time.monotonic() - began, verdict.detail()[:600]
    )
    if not verdict.approved:
        raise UpdateFailed("phase 1", f"review {verdict.detail()}")


def drop_strays(git: Git, written: set[str]) -> list[str]:
    """Remove new files the implementer did not write (what its test runs left behind);
    changes to existing files stay, for the scope check to judge."""
    out = git.run("ls-files", "-z", "--others", "--exclude-standard")
    strays = sorted(p for p in out.split("\0") if p and p not in written)
    for rel in strays:
        (git.path / rel).unlink(missing_ok=True)
    return strays


def _commit(git: Git, plan: Plan, request: Request, summary: str, signing: list[str]) -> str:
    """Commit what the implementer left in the sandbox, as Molt with the requester and the
    approver as co-authors (signed with MOLT_COMMIT_SIGNING_KEY when set); the new sha."""
    git.run("add", "--all")
    if not git.run("status", "--porcelain").strip():
        raise UpdateFailed("implement", NOTHING_WRITTEN)
    message = (
        f"{plan.summary}\n\n{summary}\n\n"
        f"Change request {request.id} by {request.requester}, written from the approved plan.\n\n"
        + "\n".join(trailers(request))
    )
    git.run(
        *COMMIT_CONFIG, *signing, "commit", "--quiet", "--no-verify", "-m", message, env=MOLT_AUTHOR
    )
    return git.head()


@contextmanager
def signing_config(settings: Settings) -> Iterator[list[str]]:
    """git's ``-c`` options that sign a commit with MOLT_COMMIT_SIGNING_KEY (SSH), or none.

    The key is a path, or the key itself: then it is written to a private temporary file for
    git to read, and removed as soon as the commit is made, before any test runs."""
    secret = settings.commit_signing_key
    key = secret.get_secret_value().strip() if secret else ""
    if not key:
        yield []
        return
    if "PRIVATE KEY" not in key:
        yield _signing(Path(key).expanduser())
        return
    with tempfile.TemporaryDirectory(prefix="molt-signing-") as where:
        path = Path(where) / "key"
        path.touch(mode=0o600)
        path.write_text(key.replace("\\n", "\n").strip() + "\n")
        yield _signing(path)


def _signing(path: Path) -> list[str]:
    return ["-c", "gpg.format=ssh", "-c", f"user.signingKey={path}", "-c", "commit.gpgSign=true"]


def trailers(request: Request) -> list[str]:
    """``Co-authored-by`` lines for the requester and the approver (commits are Molt's)."""
    people = [request.requester]
    if request.approver and request.approver not in people:
        people.append(request.approver)
    return [f"Co-authored-by: {_author(principal)}" for principal in people]


def _author(principal: str) -> str:
    platform, _, user = principal.partition(":")
    if platform == "github":
        return f"{user} <{user}@users.noreply.github.com>"
    safe = "".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in user)
    return f"{principal} <{platform}.{safe}@molt.invalid>"
