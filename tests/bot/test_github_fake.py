"""The fake GitHub answers the real PyGithub the way GitHub does: comments, edits, labels,
permissions, conditional requests, errors after a write that landed, rate limits, pull
requests with their reviews, check runs and statuses, and webhook deliveries signed as GitHub
signs them."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from github import (
    Auth,
    BadCredentialsException,
    Github,
    GithubException,
    RateLimitExceededException,
)

from tests.fakes.github import (
    TOKEN,
    FakeGitHub,
    check_suite_payload,
    deliver,
    issue_comment_payload,
    issues_payload,
    ping_payload,
    pull_request_payload,
    pull_request_review_payload,
    sign,
    status_payload,
)

REPO = "acme/api"


@pytest.fixture
def fake() -> Iterator[FakeGitHub]:
    with FakeGitHub() as running:
        running.add_repo(REPO, collaborators={"alice": "write", "bob": "read", "carol": "admin"})
        yield running


def _client(fake: FakeGitHub, token: str = TOKEN) -> Github:
    return Github(
        base_url=fake.url,
        auth=Auth.Token(token),
        seconds_between_requests=0,
        seconds_between_writes=0,
        retry=None,
    )


def test_a_comment_made_through_pygithub_is_the_bots_and_shows_on_the_issue(
    fake: FakeGitHub,
) -> None:
    opened = fake.open_issue(REPO, "Deploy v2", "please", "alice")
    gh = _client(fake)
    assert gh.get_user().login == "molt-bot"
    issue = gh.get_repo(REPO).get_issue(opened["number"])
    assert issue.user.login == "alice" and issue.pull_request is None
    comment = issue.create_comment("Plan:\n- [ ] Approve")
    assert comment.user.login == "molt-bot"
    comment.edit("Plan:\n- [x] Approve")
    [shown] = fake.comments(REPO, opened["number"])
    assert shown["body"] == "Plan:\n- [x] Approve" and shown["user"]["type"] == "User"
    assert fake.issue(REPO, opened["number"])["comments"] == 1
    assert [c.status for c in fake.calls_to("POST", "/comments")] == [201]


def test_a_tick_by_a_person_is_an_edit_with_the_old_body(fake: FakeGitHub) -> None:
    number = fake.open_issue(REPO, "PR", "", "alice", pull_request=True)["number"]
    posted = fake.add_comment(REPO, number, "- [ ] Approve", "molt-bot")
    old, now = fake.edit_comment(REPO, posted["id"], "- [x] Approve")
    assert old == "- [ ] Approve" and now["body"] == "- [x] Approve"
    comment = _client(fake).get_repo(REPO).get_issue(number).get_comment(posted["id"])
    assert comment.body == "- [x] Approve"
    assert fake.issue(REPO, number)["pull_request"]["html_url"].endswith(f"/pull/{number}")


def test_labels_are_added_replaced_and_removed_as_on_github(fake: FakeGitHub) -> None:
    number = fake.open_issue(REPO, "t", "b", "alice", labels=["molt"])["number"]
    repo = _client(fake).get_repo(REPO)
    repo.create_label("molt:approved", "0e8a16", "approved")
    with pytest.raises(GithubException) as taken:
        repo.create_label("molt:approved", "0e8a16")
    assert taken.value.status == 422
    assert taken.value.data["errors"][0]["code"] == "already_exists"
    issue = repo.get_issue(number)
    issue.add_to_labels("molt:approved")
    assert fake.labels_on(REPO, number) == ["molt", "molt:approved"]
    issue.remove_from_labels("molt")
    with pytest.raises(GithubException) as missing:
        issue.remove_from_labels("molt")
    assert missing.value.status == 404
    issue.set_labels("molt:failed")
    assert fake.labels_on(REPO, number) == ["molt:failed"]
    assert fake.repo_labels(REPO)["molt:approved"] == "0e8a16"
    issue.delete_labels()
    assert fake.labels_on(REPO, number) == []


def test_permissions_by_role_and_a_broken_permission_check(fake: FakeGitHub) -> None:
    repo = _client(fake).get_repo(REPO)
    assert repo.get_collaborator_permission("alice") == "write"
    assert repo.get_collaborator_permission("bob") == "read"
    assert repo.get_collaborator_permission("carol") == "admin"
    assert repo.get_collaborator_permission("mallory") == "none"
    fake.break_permissions()
    with pytest.raises(GithubException) as broken:
        repo.get_collaborator_permission("alice")
    assert broken.value.status == 500
    fake.mend_permissions()
    assert repo.get_collaborator_permission("alice") == "write"


def test_a_matching_etag_gets_304_and_costs_nothing(fake: FakeGitHub) -> None:
    fake.open_issue(REPO, "one", "", "alice")
    gh = _client(fake)
    path = f"/repos/{REPO}/issues"
    headers, first = gh.requester.requestJsonAndCheck("GET", path, parameters={"state": "all"})
    remaining = int(headers["x-ratelimit-remaining"])
    again, nothing = gh.requester.requestJsonAndCheck(
        "GET", path, parameters={"state": "all"}, headers={"If-None-Match": headers["etag"]}
    )
    assert nothing is None and fake.calls[-1].status == 304
    assert int(again["x-ratelimit-remaining"]) == remaining
    fake.add_comment(REPO, first[0]["number"], "new", "bob")
    changed, listed = gh.requester.requestJsonAndCheck(
        "GET", path, parameters={"state": "all"}, headers={"If-None-Match": headers["etag"]}
    )
    assert listed[0]["comments"] == 1 and int(changed["x-ratelimit-remaining"]) == remaining - 1


def test_a_502_after_a_comment_that_landed(fake: FakeGitHub) -> None:
    number = fake.open_issue(REPO, "t", "b", "alice")["number"]
    fake.fail_next("POST", "/comments", 502, land=True)
    issue = _client(fake).get_repo(REPO).get_issue(number)
    with pytest.raises(GithubException) as failed:
        issue.create_comment("Plan")
    assert failed.value.status == 502
    assert [c["body"] for c in fake.comments(REPO, number)] == ["Plan"]


def test_rate_limits_come_in_githubs_shapes(fake: FakeGitHub) -> None:
    number = fake.open_issue(REPO, "t", "b", "alice")["number"]
    issue = _client(fake).get_repo(REPO).get_issue(number)
    fake.rate_limit_next("POST", "/comments", retry_after=7)
    with pytest.raises(RateLimitExceededException) as secondary:
        issue.create_comment("x")
    assert secondary.value.headers is not None and secondary.value.headers["retry-after"] == "7"
    fake.rate_limit_next("POST", "/comments", kind="primary", retry_after=60)
    with pytest.raises(RateLimitExceededException) as primary:
        issue.create_comment("x")
    assert primary.value.headers is not None
    assert primary.value.headers["x-ratelimit-remaining"] == "0"
    fake.rate_limit_next("POST", "/comments", kind="429")
    with pytest.raises(GithubException) as many:
        issue.create_comment("x")
    assert many.value.status == 429 and fake.comments(REPO, number) == []


def test_a_wrong_token_is_refused(fake: FakeGitHub) -> None:
    with pytest.raises(BadCredentialsException):
        _client(fake, "ghp_wrong").get_user().login  # noqa: B018


def test_since_and_pagination_on_the_issue_list(fake: FakeGitHub) -> None:
    now = [1_796_000_000.0]
    fake.clock = lambda: now[0]
    for n in range(3):
        fake.open_issue(REPO, f"old {n}", "", "alice", pull_request=n == 1)
    now[0] += 60
    fake.open_issue(REPO, "new", "", "bob", labels=["molt"])
    repo = _client(fake).get_repo(REPO)
    assert [i.title for i in repo.get_issues(state="all", direction="asc")] == [
        "old 0",
        "old 1",
        "old 2",
        "new",
    ]
    since = datetime.fromtimestamp(now[0], UTC)
    assert [i.title for i in repo.get_issues(since=since)] == ["new"]
    assert [i.title for i in repo.get_issues(labels=["molt"])] == ["new"]
    gh = _client(fake)
    headers, page = gh.requester.requestJsonAndCheck(
        "GET", f"/repos/{REPO}/issues", parameters={"per_page": "2"}
    )
    assert len(page) == 2 and 'rel="next"' in headers["link"]


def test_a_success_marks_earlier_deployments_inactive(fake: FakeGitHub) -> None:
    repo = _client(fake).get_repo(REPO)
    first = repo.create_deployment("v1", environment="production", description="Molt v1")
    first.create_status("success", target_url="https://molt.example/1")
    second = repo.create_deployment("v2", environment="production")
    second.create_status("in_progress")
    second.create_status("success", description="done")
    states = [[s["state"] for s in d["statuses"]] for d in fake.deployments(REPO)]
    assert states == [["success", "inactive"], ["in_progress", "success"]]
    assert [s.state for s in second.get_statuses()] == ["success", "in_progress"]
    assert fake.deployments(REPO)[0]["sha"] == "v1"


def test_the_signature_matches_githubs_test_vector() -> None:
    assert sign(b"Hello, World!", "It's a Secret to Everybody") == (
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    )


class _Hook(BaseHTTPRequestHandler):
    seen: list[tuple[dict[str, str], bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.seen.append(({k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(401 if "bad" in self.path else 204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


def test_deliveries_are_signed_and_shaped_like_githubs(fake: FakeGitHub) -> None:
    issue = fake.open_issue(REPO, "t", "b", "alice", labels=["molt"])
    comment = fake.add_comment(REPO, issue["number"], "- [x] Approve", "alice")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        edited = issue_comment_payload(
            "edited", REPO, issue, comment, "alice", changes={"body": {"from": "- [ ] Approve"}}
        )
        assert deliver(url + "/github", "issue_comment", edited, "s3cret", delivery="d-1")[0] == 204
        assert deliver(url + "/bad", "ping", ping_payload(REPO), "s3cret")[0] == 401
        labeled = issues_payload("labeled", REPO, issue, "renovate[bot]", label="molt")
        deliver(url + "/github", "issues", labeled, "s3cret", signature="sha256=00")
    finally:
        server.shutdown()
        server.server_close()
    (headers, body), (ping, _), (forged, forged_body) = _Hook.seen
    assert headers["x-github-event"] == "issue_comment" and headers["x-github-delivery"] == "d-1"
    assert headers["x-hub-signature-256"] == sign(body, "s3cret")
    assert headers["user-agent"].startswith("GitHub-Hookshot/")
    sent = json.loads(body)
    assert sent["changes"]["body"]["from"] == "- [ ] Approve"
    assert sent["repository"]["full_name"] == REPO and sent["comment"]["user"]["login"] == "alice"
    assert len(ping["x-github-delivery"]) == 36
    assert forged["x-hub-signature-256"] == "sha256=00"
    labeled_sent = json.loads(forged_body)
    assert labeled_sent["sender"]["type"] == "Bot" and labeled_sent["label"]["name"] == "molt"


def test_unknown_paths_and_unreadable_bodies_are_refused_as_on_github(fake: FakeGitHub) -> None:
    number = fake.open_issue(REPO, "t", "b", "alice")["number"]
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    answers = []
    for method, path, data in [
        ("GET", f"/repos/{REPO}/pulls/{number}/reviews", None),
        ("GET", "/repos/acme/nothing", None),
        ("POST", f"/repos/{REPO}/issues/{number}/comments", b"{not json"),
    ]:
        request = urllib.request.Request(fake.url + path, data=data, headers=auth, method=method)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        with refused.value as error:
            answers.append((error.code, json.loads(error.read())["message"]))
            assert error.headers["x-ratelimit-resource"] == "core"
    assert answers == [(404, "Not Found"), (404, "Not Found"), (400, "Problems parsing JSON")]
    assert fake.comments(REPO, number) == []
    assert fake.add_label(REPO, number, "molt")["color"] == "ededed"
    assert fake.labels_on(REPO, number) == ["molt"]


SHA_1 = "1" * 40
SHA_2 = "2" * 40


def test_a_pull_request_made_through_pygithub_is_an_issue_too(fake: FakeGitHub) -> None:
    fake.open_issue(REPO, "Bug", "", "bob")
    fake.set_branch(REPO, "molt/v2", SHA_1)
    repo = _client(fake).get_repo(REPO)
    made = repo.create_pull("main", "molt/v2", title="Deploy v2", body="Plan", draft=True)
    assert made.number == 2 and made.draft and made.user.login == "molt-bot"
    assert (made.head.label, made.head.sha, made.base.ref) == ("acme:molt/v2", SHA_1, "main")
    with pytest.raises(GithubException) as twice:
        repo.create_pull("main", "acme:molt/v2", title="again")
    assert twice.value.status == 422
    assert twice.value.data["errors"][0]["message"] == (
        "A pull request already exists for acme:molt/v2."
    )
    repo.get_issue(made.number).create_comment("Approve?")
    shown = repo.get_pull(made.number)
    assert shown.title == "Deploy v2" and shown.comments == 1 and shown.mergeable
    assert [p.number for p in repo.get_pulls(head="acme:molt/v2")] == [2]
    assert list(repo.get_pulls(head="acme:other")) == []
    issues = {i.number: i.pull_request is not None for i in repo.get_issues()}
    assert issues == {1: False, 2: True}
    assert fake.pull(REPO, 2)["html_url"].endswith("/acme/api/pull/2")


def test_a_502_after_a_pull_request_that_landed_leaves_exactly_one(fake: FakeGitHub) -> None:
    fake.fail_next("POST", "/pulls", 502, land=True)
    repo = _client(fake).get_repo(REPO)
    with pytest.raises(GithubException) as failed:
        repo.create_pull("main", "molt/v2", title="Deploy v2")
    assert failed.value.status == 502
    with pytest.raises(GithubException) as retried:
        repo.create_pull("main", "molt/v2", title="Deploy v2")
    assert retried.value.status == 422
    [found] = repo.get_pulls(head="acme:molt/v2", base="main")
    assert found.title == "Deploy v2" and len(fake.pulls(REPO)) == 1
    assert [c.status for c in fake.calls_to("POST", "/pulls")] == [502, 422]


def test_pushes_reviews_merges_and_closes_show_as_on_github(fake: FakeGitHub) -> None:
    number = fake.open_pull(REPO, "Deploy", "", "alice", "feature", head_sha=SHA_1)["number"]
    other = fake.open_pull(REPO, "Other", "", "bob", "bob:fix")["number"]
    fake.push_to_pull(REPO, number, SHA_2)
    fake.add_review(REPO, number, "carol")
    fake.add_review(REPO, number, "bob", "CHANGES_REQUESTED")
    repo = _client(fake).get_repo(REPO)
    pull = repo.get_pull(number)
    assert pull.head.sha == SHA_2 and pull.user.login == "alice"
    reviews = [(r.user.login, r.state, r.commit_id) for r in pull.get_reviews()]
    assert reviews == [("carol", "APPROVED", SHA_2), ("bob", "CHANGES_REQUESTED", SHA_2)]
    fake.merge_pull(REPO, number, "carol", "m" * 40)
    merged = repo.get_pull(number)
    assert (merged.state, merged.merged, merged.merged_by.login) == ("closed", True, "carol")
    assert merged.merge_commit_sha == "m" * 40 and merged.merged_at is not None
    assert repo.get_pull(other).base.sha == "m" * 40
    with pytest.raises(GithubException) as reopened:
        merged.edit(state="open")
    assert reopened.value.status == 422
    fake.close_pull(REPO, other, "bob")
    assert [p.number for p in repo.get_pulls()] == []
    assert [p.number for p in repo.get_pulls(state="closed", direction="asc")] == [1, 2]
    repo.get_pull(other).edit(state="open", title="Other, again")
    assert fake.pull(REPO, other)["state"] == "open" and not fake.pull(REPO, other)["merged"]
    assert fake.issue(REPO, other)["title"] == "Other, again"
    assert fake.pull(REPO, other)["head"]["repo"]["full_name"] == "bob/api"


def test_check_runs_and_the_combined_status_of_a_commit(fake: FakeGitHub) -> None:
    fake.open_pull(REPO, "Deploy", "", "alice", "feature", head_sha=SHA_1)
    fake.set_check_runs(
        REPO,
        SHA_1,
        [
            {"name": "build", "status": "completed", "conclusion": "success"},
            {"name": "lint", "status": "in_progress", "conclusion": None},
        ],
    )
    fake.set_check_runs(REPO, SHA_1, [{"name": "lint", "conclusion": "failure"}])
    commit = _client(fake).get_repo(REPO).get_commit(SHA_1)
    runs = {r.name: (r.status, r.conclusion) for r in commit.get_check_runs()}
    assert runs == {"build": ("completed", "success"), "lint": ("completed", "failure")}
    assert commit.get_check_runs().totalCount == 2
    empty = commit.get_combined_status()
    assert (empty.state, empty.total_count, empty.sha) == ("pending", 0, SHA_1)
    fake.set_statuses(REPO, SHA_1, [{"context": "ci/a", "state": "success"}])
    fake.set_statuses(REPO, SHA_1, [{"context": "ci/b", "state": "pending"}])
    assert commit.get_combined_status().state == "pending"
    fake.set_statuses(REPO, SHA_1, [{"context": "ci/b", "state": "success"}])
    combined = _client(fake).get_repo(REPO).get_commit("feature").get_combined_status()
    assert (combined.state, combined.total_count) == ("success", 2)
    fake.set_statuses(REPO, SHA_1, [{"context": "ci/a", "state": "error"}])
    assert [s.state for s in commit.get_combined_status().statuses] == ["success", "error"]
    assert commit.get_combined_status().state == "failure"
    with pytest.raises(ValueError):
        fake.set_check_runs(
            REPO, SHA_1, [{"name": "x", "status": "queued", "conclusion": "success"}]
        )


def test_pull_request_check_and_status_events_are_shaped_like_githubs(
    fake: FakeGitHub,
) -> None:
    opened = fake.open_pull(REPO, "Deploy", "", "alice", "feature", head_sha=SHA_1)
    pushed = fake.push_to_pull(REPO, opened["number"], SHA_2)
    sync = pull_request_payload("synchronize", REPO, pushed, "alice", before=SHA_1)
    assert (sync["number"], sync["before"], sync["after"]) == (1, SHA_1, SHA_2)
    assert sync["pull_request"]["head"]["label"] == "acme:feature"
    with pytest.raises(ValueError):
        pull_request_payload("synchronize", REPO, pushed, "alice")
    assert "before" not in pull_request_payload("opened", REPO, opened, "alice")
    review = fake.add_review(REPO, 1, "carol")
    reviewed = pull_request_review_payload("submitted", REPO, pushed, review, "carol")
    assert reviewed["review"]["state"] == "APPROVED" and reviewed["sender"]["login"] == "carol"
    suite = check_suite_payload("completed", REPO, SHA_2, "success", "github-actions[bot]")
    assert suite["check_suite"]["head_sha"] == SHA_2 and suite["sender"]["type"] == "Bot"
    assert suite["check_suite"]["status"] == "completed"
    status = status_payload(REPO, SHA_2, "failure", "ci/build", "ci-bot")
    assert "action" not in status and (status["state"], status["context"]) == (
        "failure",
        "ci/build",
    )
    assert status["repository"]["full_name"] == REPO and status["commit"]["sha"] == SHA_2
