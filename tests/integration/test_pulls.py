"""Changes through pull requests, on the fake GitHub with the bot in the test's process
(tests/integration/inprocess.py): a change in words in
``pull-request`` mode is proposed on a branch of the target's bare remote and a pull request,
the live checkout untouched; its merge is deployed through the whole pipeline; a close, a
foreign push and failing checks each say what happened."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conversations import implemented, planned, reviewed
from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.github import (
    FakeGitHub,
    check_suite_payload,
    issue_comment_payload,
    pull_request_payload,
)
from tests.integration.github_bot import REPO, V2, GitHubBot
from tests.support import ServiceRepo, git

ASK = "Add a ping function"


@pytest.fixture
def model() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(planned(), *implemented(), reviewed()) as fake:
        yield fake


def _propose(bot: GitHubBot) -> tuple[int, dict[str, Any]]:
    """A labelled issue asking for a change, approved by bob, until it is proposed."""
    number = int(bot.open_issue(ASK, "so we can check it is up")["number"])
    bot.shows(number, "Plan ready")
    bot.comment(number, "/molt approve", user="bob")
    return number, bot.shows(number, "Proposed", timeout=120)


def _merge(service: ServiceRepo, branch: str) -> str:
    """What a person's merge button does to the remote: a merge commit on main."""
    git(service.work, "fetch", "-q", "origin")
    git(service.work, "merge", "-q", "--no-ff", f"origin/{branch}", "-m", f"Merge {branch}")
    git(service.work, "push", "-q", "origin", "main")
    return service.work_head()


@pytest.fixture
def proposing(
    model: FakeAnthropic, start_github_bot: Callable[..., GitHubBot]
) -> Callable[..., GitHubBot]:
    def start(**env: str) -> GitHubBot:
        return start_github_bot(**model.env(), MOLT_CHANGE_DELIVERY="pull-request", **env)

    return start


def test_a_change_is_proposed_as_a_pull_request_and_its_merge_deployed(
    service: ServiceRepo, proposing: Callable[..., GitHubBot], github: FakeGitHub
) -> None:
    old = service.live_head()
    bot = proposing()
    number, proposed = _propose(bot)
    request = bot.requests()[0]
    branch = f"molt/{request.codename}"
    assert request.state.value == "proposed"
    assert service.live_head() == old and service.live_status() == ""
    pushed = git(service.origin, "rev-parse", branch)
    assert git(service.origin, "log", "-1", "--format=%an", branch) == "Molt"
    trailers = git(service.origin, "log", "-1", "--format=%(trailers)", branch)
    assert "Co-authored-by: alice <alice@users.noreply.github.com>" in trailers
    assert "Co-authored-by: bob <bob@users.noreply.github.com>" in trailers
    [pull] = github.pulls(REPO)
    assert pull["head"]["ref"] == branch and pull["base"]["ref"] == "main"
    assert "Add ping()" in pull["title"]
    assert ASK in pull["body"] and "phase 1: tests" in pull["body"] and "@alice" in pull["body"]
    assert f"#{pull['number']}" in proposed["body"] and pull["html_url"] in proposed["body"]

    merge = _merge(service, branch)
    merged = github.merge_pull(REPO, pull["number"], by="bob", merge_commit_sha=merge)
    assert bot.send("pull_request", pull_request_payload("closed", REPO, merged, "bob")) == 200
    bot.said(number, "was merged")
    bot.wait_until("a deploy plan", lambda: len(bot.status_comments(number)) == 2)
    bot.shows(number, "Plan ready")
    deploy = bot.requests()[0]
    assert deploy.command == "deploy" and deploy.argument == merge
    bot.comment(number, "/molt approve", user="bob")
    bot.shows(number, "Live")
    assert service.live_head() == merge and pushed != merge


def test_a_merge_by_an_approver_approves_the_deploy_when_merge_approves(
    service: ServiceRepo, proposing: Callable[..., GitHubBot], github: FakeGitHub
) -> None:
    bot = proposing(MOLT_MERGE_APPROVES="true")
    number, _ = _propose(bot)
    [pull] = github.pulls(REPO)
    head = git(service.origin, "rev-parse", pull["head"]["ref"])
    github.push_to_pull(REPO, pull["number"], head)  # the fake has no git: what Molt pushed
    runs = [
        {"name": "ci", "status": "completed", "conclusion": "success"},
        {"name": "lint", "status": "in_progress", "conclusion": None},
    ]
    github.set_check_runs(REPO, head, runs)
    github.add_review(REPO, pull["number"], "bob")
    bot.send("check_suite", check_suite_payload("completed", REPO, head, "success", "bob"))
    bot.shows(
        number, f"PR #{pull['number']}: 1/2 checks passed, failing: lint (in_progress), 1 approval"
    )
    merge = _merge(service, pull["head"]["ref"])
    merged = github.merge_pull(REPO, pull["number"], by="bob", merge_commit_sha=merge)
    bot.send("pull_request", pull_request_payload("closed", REPO, merged, "bob"))
    bot.wait_until("a deploy", lambda: len(bot.status_comments(number)) == 2)
    bot.shows(number, "Live")
    assert service.live_head() == merge
    assert bot.requests()[0].approver == "github:bob"


def test_closed_unmerged_and_a_foreign_push_end_the_follow_up(
    service: ServiceRepo, proposing: Callable[..., GitHubBot], github: FakeGitHub
) -> None:
    bot = proposing()
    number, _ = _propose(bot)
    [pull] = github.pulls(REPO)
    before = pull["head"]["sha"]
    pushed = github.push_to_pull(REPO, pull["number"], "f" * 40)
    payload = pull_request_payload("synchronize", REPO, pushed, "mallory", before=before)
    bot.send("pull_request", payload)
    bot.said(number, "no longer describes the pull request")
    # Merged after all: nothing is deployed from a voided plan.
    merged = github.merge_pull(REPO, pull["number"], by="bob", merge_commit_sha="e" * 40)
    bot.send("pull_request", pull_request_payload("closed", REPO, merged, "bob"))
    bot.comment(number, "/molt status")  # answered after the merge was taken in
    bot.said(number, "@alice")
    time.sleep(1)
    assert len(bot.status_comments(number)) == 1
    assert len(bot.requests()) == 1


def test_a_pull_request_closed_without_merging_says_so_and_commits_can_be_signed(
    service: ServiceRepo,
    proposing: Callable[..., GitHubBot],
    github: FakeGitHub,
    tmp_path: Path,
) -> None:
    key = tmp_path / "signing"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    bot = proposing(MOLT_COMMIT_SIGNING_KEY=str(key))
    number, _ = _propose(bot)
    allowed = tmp_path / "allowed_signers"
    allowed.write_text("molt@localhost " + (tmp_path / "signing.pub").read_text())
    branch = f"molt/{bot.requests()[0].codename}"
    verified = git(
        service.origin,
        "-c",
        f"gpg.ssh.allowedSignersFile={allowed}",
        "log",
        "-1",
        "--format=%G?",
        branch,
    )
    assert verified == "G"
    [pull] = github.pulls(REPO)
    closed = github.close_pull(REPO, pull["number"], by="bob")
    bot.send("pull_request", pull_request_payload("closed", REPO, closed, "bob"))
    bot.said(number, "without merging")
    assert len(bot.requests()) == 1


def test_a_5xx_when_opening_the_pull_request_leaves_exactly_one(
    service: ServiceRepo, proposing: Callable[..., GitHubBot], github: FakeGitHub
) -> None:
    github.fail_next("POST", "/pulls", 502, land=True)
    bot = proposing()
    _propose(bot)
    assert len(github.pulls(REPO)) == 1


def test_molt_deploy_on_any_pull_request_waits_for_its_checks(
    service: ServiceRepo, start_github_bot: Callable[..., GitHubBot], github: FakeGitHub
) -> None:
    head = service.commit(V2, "v2", branch="feature")
    pull = github.open_pull(REPO, "Feature", "", "alice", head="feature", head_sha=head)
    github.set_check_runs(
        REPO, head, [{"name": "ci", "status": "completed", "conclusion": "failure"}]
    )
    bot = start_github_bot(MOLT_REQUIRE_CHECKS="true")
    number = int(pull["number"])
    made = github.add_comment(REPO, number, "/molt deploy", "alice")
    issue = github.issue(REPO, number)
    bot.send("issue_comment", issue_comment_payload("created", REPO, issue, made, "alice"))
    refusal = bot.said(number, "ci (failure)")
    assert "blocked" in refusal["body"]
    assert bot.requests() == []
    github.set_check_runs(
        REPO, head, [{"name": "ci", "status": "completed", "conclusion": "success"}]
    )
    bot.comment(number, "/molt deploy")
    bot.shows(number, "Plan ready")
    assert bot.requests()[0].argument == head
