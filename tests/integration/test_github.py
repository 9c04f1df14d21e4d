"""GitHub: signed webhook deliveries to the bot's real HTTP server, the poller, real Redis,
RQ and git, and a fake GitHub REST API on loopback that the real PyGithub client talks to.
The bot runs in the test's process (tests/integration/inprocess.py), but in the end-to-end
test, which starts ``molt run``. Each test reads the issue the way a person would: its
comments and labels."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pipeline import audit
from tests.fakes.github import FakeGitHub, issue_comment_payload, issues_payload, ping_payload
from tests.integration.github_bot import REPO, V2, GitHubBot
from tests.support import ServiceRepo


@pytest.mark.slow
def test_labelled_issue_planned_approved_by_a_ticked_box_and_live(
    service: ServiceRepo, start_github_molt: Callable[..., GitHubBot], github: FakeGitHub
) -> None:
    """End to end, with ``molt run``'s processes: the webhook on the HTTP process, the plan
    from the bot, the update on its worker."""
    github_bot = start_github_molt()
    new = service.commit(V2, "v2")
    issue = github_bot.open_issue("deploy main")
    number = int(issue["number"])
    plan = github_bot.shows(number, "Plan ready")
    assert "- [ ] Approve" in plan["body"] and "- [ ] Reject" in plan["body"]
    assert "@alice" in plan["body"]  # the requester, named by Molt
    github_bot.wait_until(
        "the plan-ready label", lambda: "molt:plan-ready" in github.labels_on(REPO, number)
    )
    github_bot.tick(number, "Approve", "bob")
    done = github_bot.shows(number, "Live")
    assert "[ ]" not in done["body"]
    github_bot.wait_until(
        "labels saying it succeeded",
        lambda: sorted(github.labels_on(REPO, number)) == ["molt", "molt:succeeded"],
    )
    assert service.live_head() == new
    # Watchers were told of the plan (the status comment's own post) and of the success.
    github_bot.said(number, "✅ Live")
    assert set(github.repo_labels(REPO)) >= {"molt:planning", "molt:running", "molt:failed"}
    request = github_bot.requests()[0]
    assert request.approver == "github:bob"
    approvals = [e for e in audit.entries(github_bot.conn, request.id) if e["action"] == "approved"]
    assert [e["actor"] for e in approvals] == ["github:bob"]


def test_molt_deploy_comment_and_approve_comment(
    service: ServiceRepo, github_bot: GitHubBot, github: FakeGitHub
) -> None:
    new = service.commit(V2, "v2")
    issue = github.open_issue(REPO, "Ship it", "", "alice")
    number = int(issue["number"])
    github_bot.comment(number, "/molt deploy main")
    github_bot.shows(number, "Plan ready")
    github_bot.comment(number, "/molt approve", user="bob")
    github_bot.shows(number, "Live")
    assert service.live_head() == new


def test_listed_login_without_write_access_is_refused_and_nothing_is_planned(
    service: ServiceRepo, github_bot: GitHubBot, github: FakeGitHub
) -> None:
    issue = github.open_issue(REPO, "Ship it", "", "alice")
    number = int(issue["number"])
    github_bot.comment(number, "/molt deploy main", user="mallory")
    refusal = github_bot.said(number, "@mallory")
    assert "read access" in refusal["body"]
    assert github_bot.requests() == []
    refused = [e for e in audit.entries(github_bot.conn) if e["action"] == "github_refused"]
    assert refused and refused[-1]["actor"] == "github:mallory"


def test_permission_check_erroring_refuses(
    service: ServiceRepo, github_bot: GitHubBot, github: FakeGitHub
) -> None:
    github.break_permissions(500)
    issue = github_bot.open_issue("deploy main")
    refusal = github_bot.said(int(issue["number"]), "GitHub could not be asked")
    assert "@alice" in refusal["body"]
    assert github_bot.requests() == []
    # Asked once more, at once, and then refused: not after a quarter of a minute of backoff.
    asked = [c for c in github.calls if c.path.endswith("/collaborators/alice/permission")]
    assert len(asked) == 2


def test_forged_missing_unwatched_and_redelivered_deliveries(
    service: ServiceRepo, github_bot: GitHubBot, github: FakeGitHub
) -> None:
    service.commit(V2, "v2")
    issue = github.open_issue(REPO, "deploy main", "", "alice", labels=["molt"])
    payload = issues_payload("opened", REPO, issue, "alice")
    assert github_bot.send("issues", payload, signature="sha256=" + "0" * 64) == 401
    assert github_bot.send("issues", payload, signature="") == 401
    elsewhere = github.open_issue("evil/elsewhere", "deploy main", "", "alice", labels=["molt"])
    foreign = issues_payload("opened", "evil/elsewhere", elsewhere, "alice")
    assert github_bot.send("issues", foreign) == 403
    assert github_bot.send("ping", ping_payload(REPO)) == 200
    assert github_bot.send("push", {"repository": {"full_name": REPO}}) == 204
    # The same delivery twice, and a second delivery of the same happening: one request.
    assert github_bot.send("issues", payload, delivery="d-1") == 200
    assert github_bot.send("issues", payload, delivery="d-1") == 200
    labelled = issues_payload("labeled", REPO, issue, "alice", label="molt")
    assert github_bot.send("issues", labelled) == 200
    github_bot.shows(int(issue["number"]), "Plan ready")
    github_bot.settled()
    assert len(github_bot.requests()) == 1
    actions = {e["action"] for e in audit.entries(github_bot.conn)}
    assert "http_refused" in actions  # the refusals, counted in a summary


def test_molts_own_comments_and_bots_are_ignored(
    service: ServiceRepo, github_bot: GitHubBot, github: FakeGitHub
) -> None:
    issue = github.open_issue(REPO, "Ship it", "", "alice")
    number = int(issue["number"])
    made = github.add_comment(REPO, number, "/molt deploy main", github.login)
    payload = issue_comment_payload("created", REPO, issue, made, github.login)
    assert github_bot.send("issue_comment", payload) == 200
    bot = {"login": "ci-helper[bot]", "id": 5, "type": "Bot"}
    payload = issue_comment_payload("created", REPO, issue, made, bot)
    assert github_bot.send("issue_comment", payload) == 200
    github_bot.comment(number, "/molt status", user="alice")  # this one is answered
    github_bot.said(number, "@alice")
    assert github_bot.requests() == []


def test_a_box_ticked_by_someone_who_may_not_is_unticked_and_refused(
    service: ServiceRepo, github_bot: GitHubBot, github: FakeGitHub
) -> None:
    service.commit(V2, "v2")
    issue = github_bot.open_issue("deploy main")
    number = int(issue["number"])
    github_bot.shows(number, "Plan ready")
    github_bot.tick(number, "Approve", "dave")  # write access, not an approver
    github_bot.said(number, "@dave")
    github_bot.wait_until(
        "the box unticked", lambda: "- [ ] Approve" in github_bot.status_comment(number)["body"]
    )
    assert github_bot.requests()[0].state.value == "plan_ready"
    github_bot.tick(number, "Approve", "bob")  # the same box, now by an approver
    github_bot.shows(number, "Live")


def test_retry_from_the_failure_comment(
    service: ServiceRepo, github_bot: GitHubBot, github: FakeGitHub
) -> None:
    old = service.live_head()
    service.commit({"checks/test_new.py": "def test_new():\n    assert False\n"}, "broken")
    issue = github_bot.open_issue("deploy main")
    number = int(issue["number"])
    github_bot.shows(number, "Plan ready")
    github_bot.comment(number, "/molt approve", user="bob")
    failed = github_bot.shows(number, "Failed")
    assert "- [ ] Retry" in failed["body"]
    github_bot.said(number, "❌")
    github_bot.wait_until("failed label", lambda: "molt:failed" in github.labels_on(REPO, number))
    assert service.live_head() == old
    github_bot.tick(number, "Retry", "alice")
    github_bot.wait_until("a second attempt", lambda: github_bot.requests()[0].attempt == 2)
    github_bot.shows(number, "Plan ready")


def test_a_5xx_after_the_comment_landed_leaves_exactly_one_comment(
    service: ServiceRepo, github_bot: GitHubBot, github: FakeGitHub
) -> None:
    service.commit(V2, "v2")
    github.fail_next("POST", "/comments", 502, land=True)
    issue = github_bot.open_issue("deploy main")
    number = int(issue["number"])
    github_bot.shows(number, "Plan ready")
    statuses = [c for c in github.comments(REPO, number) if '"kind": "status"' in c["body"]]
    assert len(statuses) == 1


@pytest.mark.slow
def test_rate_limits_are_waited_out_and_the_final_status_delivered(
    service: ServiceRepo, github_bot: GitHubBot, github: FakeGitHub
) -> None:
    new = service.commit(V2, "v2")
    issue = github_bot.open_issue("deploy main")
    number = int(issue["number"])
    github_bot.shows(number, "Plan ready")
    # Retry-After 0 and a reset now (waited as a second): each limit is still waited out
    # and its write tried again, without seconds spent waiting.
    github.rate_limit_next("PATCH", "/comments/", kind="secondary", retry_after=0)
    github.rate_limit_next("POST", "/comments", kind="429", retry_after=0)
    github.rate_limit_next("POST", "/labels", kind="primary", retry_after=0)
    github_bot.comment(number, "/molt approve", user="bob")
    github_bot.shows(number, "Live")
    github_bot.said(number, "✅ Live")
    assert service.live_head() == new
    limited = [c for c in github.calls if c.status in (403, 429)]
    assert len(limited) == 3


@pytest.mark.slow
def test_polling_alone_picks_up_a_labelled_issue_and_takes_comments(
    service: ServiceRepo, start_github_bot: Callable[..., GitHubBot], github: FakeGitHub
) -> None:
    new = service.commit(V2, "v2")
    bot = start_github_bot(GITHUB_WEBHOOK_SECRET="", MOLT_GITHUB_POLL="0.25")
    issue = github.open_issue(REPO, "deploy main", "", "alice", labels=["molt"])
    number = int(issue["number"])
    plan = bot.shows(number, "Plan ready")
    assert "[ ]" not in plan["body"] and "`/molt approve`" in plan["body"]
    bot.comment(number, "/molt approve", user="bob", send=False)
    bot.shows(number, "Live")
    assert service.live_head() == new
    bot.settled(polls=2)  # more polls: nothing is taken twice
    assert len(bot.requests()) == 1
    assert any(c.status == 304 for c in github.calls)


def test_webhook_and_poller_seeing_the_same_comment_act_once(
    service: ServiceRepo, start_github_bot: Callable[..., GitHubBot], github: FakeGitHub
) -> None:
    service.commit(V2, "v2")
    bot = start_github_bot(MOLT_GITHUB_POLL="0.3")
    issue = github.open_issue(REPO, "Ship it", "", "alice")
    number = int(issue["number"])
    bot.comment(number, "/molt deploy main")
    bot.shows(number, "Plan ready")
    bot.settled(polls=2)  # the poller has seen the comment too
    assert len(bot.requests()) == 1
    statuses = [c for c in github.comments(REPO, number) if '"kind": "status"' in c["body"]]
    assert len(statuses) == 1


def test_a_reply_by_the_requester_answers_the_planners_questions(
    service: ServiceRepo, start_github_bot: Callable[..., GitHubBot], github: FakeGitHub
) -> None:
    from tests.conversations import planned
    from tests.fakes.anthropic import FakeAnthropic, reply, tool

    questions = ["What should ping() return?"]
    with FakeAnthropic(reply(tool("ask_questions", {"questions": questions})), planned()) as model:
        bot = start_github_bot(**model.env())
        issue = bot.open_issue("Add a ping function", "so we can check it is up <!-- hidden -->")
        number = int(issue["number"])
        bot.shows(number, "What should ping() return?")
        bot.comment(number, "it returns PONG", user="dave")  # not the requester: not an answer
        bot.comment(number, "it returns pong", user="alice")
        bot.shows(number, "Plan ready")
        request = bot.requests()[0]
        assert request.answers and "it returns pong" in request.answers[-1]
        assert "hidden" not in request.text


def test_deploys_are_github_deployments_and_a_rollback_is_active_again(
    service: ServiceRepo, start_github_bot: Callable[..., GitHubBot], github: FakeGitHub
) -> None:
    old = service.live_head()
    new = service.commit(V2, "v2")
    bot = start_github_bot(MOLT_GITHUB_DEPLOYMENTS="true", MOLT_GITHUB_ENVIRONMENT="staging")
    number = int(bot.open_issue("deploy main")["number"])
    bot.shows(number, "Plan ready")
    bot.comment(number, "/molt approve", user="bob")
    bot.shows(number, "Live")
    bot.wait_until("the deployment succeeded", lambda: len(github.deployments(REPO)) == 1)
    [deployment] = github.deployments(REPO)
    assert deployment["sha"] == new and deployment["environment"] == "staging"
    bot.wait_until(
        "its statuses",
        lambda: [s["state"] for s in github.deployments(REPO)[0]["statuses"]][-1] == "success",
    )
    states = [s["state"] for s in github.deployments(REPO)[0]["statuses"]]
    assert states[0] == "queued" and "in_progress" in states and states[-1] == "success"
    bot.comment(number, "/molt rollback", user="alice")
    bot.wait_until("a rollback plan", lambda: len(bot.requests()) == 2)
    rollback = bot.requests()[0]
    bot.wait_until(
        "the rollback's plan", lambda: bot.store.get(rollback.id).state.value == "plan_ready"
    )
    bot.comment(number, "/molt approve", user="bob")
    bot.wait_until("the old release live", lambda: service.live_head() == old)
    bot.wait_until("a second deployment", lambda: len(github.deployments(REPO)) == 2)
    bot.wait_until(
        "the first one inactive",
        lambda: github.deployments(REPO)[0]["statuses"][-1]["state"] == "inactive",
    )
    assert github.deployments(REPO)[1]["sha"] == old


def test_requests_from_github_switched_off_say_which_setting(
    service: ServiceRepo, start_github_bot: Callable[..., GitHubBot], github: FakeGitHub
) -> None:
    service.commit(V2, "v2")
    bot = start_github_bot(MOLT_ALLOW_GITHUB="false")
    number = int(bot.open_issue("deploy main")["number"])
    bot.shows(number, "MOLT_ALLOW_GITHUB=false")
    bot.wait_until("the refused label", lambda: "molt:refused" in github.labels_on(REPO, number))


def test_an_incident_opens_an_issue_where_its_rollback_is_approved_by_a_ticked_box(
    service: ServiceRepo, start_github_bot: Callable[..., GitHubBot], github: FakeGitHub
) -> None:
    from tests.fakes.alerts import Alertmanager, alertmanager_alert, alertmanager_payload

    bot = start_github_bot(MOLT_INCIDENT_CHANNEL=f"github:{REPO}", MOLT_ALERT_TOKEN="tok")
    old = service.live_head()
    service.commit(V2, "v2")
    number = int(bot.open_issue("deploy main")["number"])
    bot.shows(number, "Plan ready")
    bot.tick(number, "Approve", "bob")
    bot.shows(number, "Live")

    alert = alertmanager_payload([alertmanager_alert("c0ffee", summary="HTTP 500s")])
    sender = Alertmanager(f"http://127.0.0.1:{bot.port}/alerts/alertmanager", "tok")
    assert sender.send(alert)[0] == 200
    github.wait_for(lambda c: c.method == "POST" and c.path == f"/repos/{REPO}/issues")
    incident = number + 1  # the next issue of the repository: Molt opened it
    assert "HTTP 500s" in github.issue(REPO, incident)["title"]
    bot.shows(incident, "Plan ready")  # the rollback's status, on the incident's issue
    bot.said(incident, "is the suspect")
    bot.tick(incident, "Approve", "bob")
    bot.shows(incident, "Live")
    assert service.live_head() == old
    creates = [c for c in github.calls if c.method == "POST" and c.path.endswith("/issues")]
    assert len(creates) == 1  # one issue for the incident, however many messages it had


def test_polling_takes_a_labelled_issue_as_the_request_of_whoever_labelled_it(
    service: ServiceRepo, start_github_bot: Callable[..., GitHubBot], github: FakeGitHub
) -> None:
    """An approver's old issue labelled by someone without write access is that person's
    request, refused; the poller cannot be used to ask in someone else's name."""
    service.commit(V2, "v2")
    bot = start_github_bot(GITHUB_WEBHOOK_SECRET="", MOLT_GITHUB_POLL="0.25")
    issue = github.open_issue(REPO, "deploy main", "", "bob")
    github.add_label(REPO, int(issue["number"]), "molt", by="mallory")
    refusal = bot.said(int(issue["number"]), "@mallory")
    assert "read access" in refusal["body"]
    assert bot.requests() == []


def test_a_team_approves_for_its_active_members_and_a_github_error_approves_nothing(
    service: ServiceRepo, start_github_bot: Callable[..., GitHubBot], github: FakeGitHub
) -> None:
    """MOLT_APPROVERS names ``github:@acme/deployers``: Dave, invited but not yet a member,
    is refused; Bob's tick while GitHub errors is refused with the reason; then it counts."""
    github.add_team("acme", "deployers", {"bob": "active", "dave": "pending"})
    github_bot = start_github_bot(MOLT_APPROVERS="github:alice,github:@acme/deployers")
    service.commit(V2, "v2")
    issue = github_bot.open_issue("deploy main")
    number = int(issue["number"])
    github_bot.shows(number, "Plan ready")

    github_bot.tick(number, "Approve", "dave")
    assert "only approvers" in github_bot.said(number, "@dave")["body"]
    github_bot.wait_until(
        "the box unticked", lambda: "- [ ] Approve" in github_bot.status_comment(number)["body"]
    )
    github.fail_next("GET", "/teams/deployers/memberships/bob", 502, times=2)
    github_bot.tick(number, "Approve", "bob")
    refusal = github_bot.said(number, "could not check whether github:bob")
    # The team is named without mentioning it (GitHub would notify all of it).
    assert "acme/deployers: GitHub answered 502" in refusal["body"]
    assert "@acme/deployers" not in refusal["body"]
    github_bot.wait_until(
        "the box unticked", lambda: "- [ ] Approve" in github_bot.status_comment(number)["body"]
    )
    assert github_bot.requests()[0].state.value == "plan_ready"

    github_bot.comment(number, "/molt approve", user="bob")  # the same tick again is a repeat
    github_bot.shows(number, "Live")
    assert github_bot.requests()[0].approver == "github:bob"
    asked = [c.path for c in github.calls if "/memberships/" in c.path]
    assert asked == [
        "/orgs/acme/teams/deployers/memberships/dave",
        *["/orgs/acme/teams/deployers/memberships/bob"] * 3,
    ]
