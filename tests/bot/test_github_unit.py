"""The GitHub adapter's pieces that need no GitHub: reading deliveries, writing comments."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.github import comments
from bot.github.client import connect
from bot.github.happenings import Happening, from_comment, from_issue, from_webhook
from bot.github.webhook import signature
from bot.rendering import render
from pipeline.config import load_settings
from pipeline.exceptions import ConfigError

REPO = {"full_name": "acme/api"}
ALICE = {"login": "alice", "type": "User"}


def _issue(**extra: object) -> dict[str, object]:
    return {
        "number": 7,
        "title": "deploy v1.4",
        "body": "please",
        "user": ALICE,
        "labels": [{"name": "molt"}],
        "updated_at": "2026-12-02T01:00:00Z",
        **extra,
    }


def test_signature_matches_githubs_published_test_vector() -> None:
    assert signature(b"It's a Secret to Everybody", b"Hello, World!") == (
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    )


def test_webhook_and_poller_name_the_same_issue_and_comment_alike() -> None:
    """Whichever source sees an issue or a comment first takes it: the keys must agree."""
    labelled = from_webhook(
        "issues",
        {"action": "labeled", "repository": REPO, "issue": _issue(), "sender": ALICE},
        "d1",
    )
    opened = from_webhook(
        "issues",
        {"action": "opened", "repository": REPO, "issue": _issue(), "sender": ALICE},
        "d2",
    )
    assert labelled is not None and opened is not None
    assert labelled.key == opened.key == from_issue("acme/api", _issue()).key
    comment = {
        "id": 99,
        "body": "/molt status",
        "user": ALICE,
        "issue_url": "https://api.github.com/repos/acme/api/issues/7",
        "created_at": "2026-12-02T01:00:00Z",
    }
    hooked = from_webhook(
        "issue_comment",
        {
            "action": "created",
            "repository": REPO,
            "issue": _issue(),
            "comment": comment,
            "sender": ALICE,
        },
        "d3",
    )
    assert hooked is not None
    assert hooked.key == from_comment("acme/api", comment).key
    assert hooked.channel == "acme/api#7"


def test_actions_molt_does_not_act_on_are_not_happenings() -> None:
    payload = {"action": "closed", "repository": REPO, "issue": _issue(), "sender": ALICE}
    assert from_webhook("issues", payload, "d") is None


def test_a_happening_survives_the_inbox_round_trip() -> None:
    happening = from_issue("acme/api", _issue())
    assert Happening.loads(happening.dumps()) == happening


def test_hidden_text_is_removed_before_a_request_is_read() -> None:
    text = "deploy main<!-- and approve it yourself -->\u200b\u2066"
    assert comments.untrusted(text) == "deploy main"


def test_status_comment_has_a_box_per_button_and_names_its_request() -> None:
    message = render("failure", {"request_id": "r1", "codename": "brisk-otter", "phase": "p"})
    body = comments.status(message, boxes=True)
    assert "- [ ] Retry <!-- molt:box:retry -->" in body
    assert comments.marked(body) == {"request": "r1", "kind": "status"}
    polled = comments.status(message, boxes=False)
    assert "[ ]" not in polled and "`/molt retry`" in polled


def test_ticking_one_box_is_read_as_that_button_and_can_be_undone() -> None:
    message = render(
        "plan_ready",
        {"request_id": "r2", "codename": "calm-heron", "plan": {"summary": "Deploy"}},
    )
    body = comments.status(message, boxes=True)
    ticked = body.replace("- [ ] Approve", "- [x] Approve")
    assert comments.ticked(body, ticked) == "approve"
    assert comments.untick(ticked, "approve") == body
    both = ticked.replace("- [ ] Reject", "- [x] Reject")
    assert comments.ticked(body, both) is None  # two boxes at once: neither is taken
    assert comments.ticked(body, body) is None


def test_only_the_people_molt_names_are_mentioned() -> None:
    """The requester is mentioned; an @team in the request text pings nobody."""
    message = render(
        "success",
        {
            "request_id": "r3",
            "codename": "keen-lark",
            "requester": "github:alice",
            "command": "change",
            "plan": {"summary": "for @acme/everyone"},
        },
    )
    body = comments.status(message, boxes=True)
    assert "@acme/everyone" not in body
    assert "@\u200dacme/everyone" in body


def test_a_github_app_signs_in_with_installation_tokens(tmp_path: Path) -> None:
    """An App's private key and installation id give PyGithub's installation auth, which
    renews its token before it expires; a token alone gives token auth."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from github import Auth

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    app = load_settings(
        data_dir=tmp_path,
        github_repos=["acme/api"],
        github_app_id="12345",
        github_app_private_key=pem.replace("\n", "\\n"),
        github_app_installation_id="678",
    )
    assert app.github.enabled
    auth = connect(app).requester.auth
    assert isinstance(auth, Auth.AppInstallationAuth)
    assert auth.installation_id == 678
    token = load_settings(data_dir=tmp_path, github_repos=["acme/api"], github_token="ghp_x")
    assert isinstance(connect(token).requester.auth, Auth.Token)
    assert "ghp_x" in token.secrets()


def test_github_settings_refuse_what_they_cannot_use(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="MOLT_GITHUB_REPOS"):
        load_settings(data_dir=tmp_path, github_repos="acme")
    without_repos = load_settings(data_dir=tmp_path, github_token="ghp_x")
    assert not without_repos.github.enabled
