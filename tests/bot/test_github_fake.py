"""The fake GitHub answers the real PyGithub the way GitHub does: comments, edits, labels,
permissions, conditional requests, errors after a write that landed, rate limits, and
webhook deliveries signed as GitHub signs them."""

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
    deliver,
    issue_comment_payload,
    issues_payload,
    ping_payload,
    sign,
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
