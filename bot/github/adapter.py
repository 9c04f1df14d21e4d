"""The GitHub adapter: labelled issues and ``/molt`` comments become requests; plan,
approval, progress and Retry live in the issue.

What GitHub tells Molt arrives in the stream ``molt:github:inbox`` (bot/github/webhook.py
from the HTTP process, the poller from here) and is handled on one thread of this process,
read in the consumer group ``github`` and acknowledged once handled. Each happening is taken
once (``molt:github:taken:<key>``), whichever source saw it first. Before anything is handed
to the desk, GitHub itself is asked whether the person may write to the repository; the
desk then checks MOLT_AUTHORISED_USERS and the other lists as for every platform.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import redis
import structlog
from github import GithubException

from bot.base import Adapter
from bot.github import comments
from bot.github.client import PERMISSION_RETRIES, Permissions, Writer, connect
from bot.github.delivery import Delivery
from bot.github.following import Following
from bot.github.happenings import PULL_EVENTS, Happening
from bot.github.poller import Poller
from bot.github.pulls import Pulls
from bot.messages import Message
from bot.rendering import refusal_line, render
from pipeline import audit, keyspace
from pipeline.config import Settings
from pipeline.exceptions import ConfigError, UnknownRequest
from pipeline.keyspace import GITHUB_INBOX as INBOX
from pipeline.requests import authorisation
from pipeline.requests.decisions import ALLOWED, Decision
from pipeline.requests.states import RequestState as S
from pipeline.requests.steps import ROLLOUT
from pipeline.requests.store import Origin, Request, RequestStore
from pipeline.streams import StreamReader

if TYPE_CHECKING:
    from bot.base import Front

log = structlog.get_logger(__name__)
GROUP = "github"
CONSUMER = "bot"
#: How long an issue or comment stays taken (longer than anyone edits an old comment).
TAKEN_TTL = 90 * 86400
#: Seconds during which one person refused on one issue is not answered again.
REFUSAL_QUIET = 3600
#: The boxes and commands that act on an issue's request rather than make one.
PRESSES = frozenset({"approve", "reject", "retry"})


class GitHub(Adapter):
    platform = "github"

    def __init__(self, settings: Settings, store: RequestStore) -> None:
        if not settings.github.enabled:
            raise ConfigError(
                "GitHub needs MOLT_GITHUB_REPOS and GITHUB_TOKEN (or GITHUB_APP_ID, "
                "GITHUB_APP_PRIVATE_KEY and GITHUB_APP_INSTALLATION_ID)"
            )
        self.settings = settings
        self.store = store
        self.conn: redis.Redis = store.conn
        self.client = connect(settings)
        self.writer = Writer()
        # A client of its own: a refusal when GitHub errs comes after one retry, not five.
        self.permissions = Permissions(connect(settings, retries=PERMISSION_RETRIES))
        self.delivery = Delivery(settings, self.client, self.writer, store)
        self.pulls = Pulls(settings, self.client, self.writer, store)
        self.following = Following(settings, self.client, self.pulls)
        self.poller = Poller(settings, self.client, self.conn, self.put, self.following.poll)
        self.desk: Front | None = None
        self._stopping = threading.Event()
        self.inbox = StreamReader(
            self.conn, INBOX, GROUP, CONSUMER, self._read, stopping=self._stopping
        )
        self._threads: list[threading.Thread] = []

    # -- life cycle ----------------------------------------------------------

    def start(self) -> None:
        self.inbox.join_group()
        loops: list[Callable[[], None]] = [self._introduce, self.inbox.run]
        if self.settings.github.poll > 0:
            loops.append(lambda: self.poller.run(self._stopping))
        for loop in loops:
            thread = threading.Thread(target=loop, name="molt-github", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stopping.set()
        self.following.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def _introduce(self) -> None:
        """Who Molt is in GitHub (its own comments are never requests), and its labels."""
        if self.settings.github.token:
            try:
                self.delivery.login = self.client.get_user().login
            except GithubException as exc:
                log.error("GITHUB_TOKEN refused by GitHub", status=exc.status)
            except Exception as exc:
                log.warning("github unreachable at start", error=str(exc)[:200])
        for repo in self.settings.github.repos:
            try:
                self.delivery.ensure_labels(repo)
            except Exception as exc:
                log.warning("github labels not made", repo=repo, error=str(exc)[:200])
        log.info("github connected", login=self.delivery.login, repos=self.settings.github.repos)

    # -- what GitHub says ------------------------------------------------------

    def put(self, happening: Happening) -> None:
        """Hand a happening to the inbox (the poller's way in; the webhook's is the same)."""
        self.conn.xadd(INBOX, {"happening": happening.dumps()}, maxlen=10_000, approximate=True)

    def _read(self, entry_id: str, fields: dict[str, str]) -> None:
        """One inbox entry; one that fails is dropped (the taken keys keep a redelivered
        happening from acting twice, so nothing is gained by keeping it)."""
        self.handle(Happening.loads(fields["happening"]))

    def handle(self, happening: Happening) -> None:
        """Act on one happening, unless it is Molt's own, a bot's, or already taken."""
        if happening.event in PULL_EVENTS:  # whoever merged or pushed: it happened
            self.following.handle(happening)
            return
        login = happening.login.lower()
        if happening.bot or login.endswith("[bot]") or login == self.delivery.login.lower():
            return
        if happening.repo.lower() not in {r.lower() for r in self.settings.github.repos}:
            return
        if happening.event == "issues":
            self._issue(happening)
        elif happening.action == "created":
            self._comment(happening)
        elif happening.action == "edited" and happening.source == "webhook":
            self._tick(happening)

    def _take(self, happening: Happening) -> bool:
        """Whether this process is the first to act on it. An issue stays taken for good: a
        labelled issue that comes back into a poll years later is not a new request."""
        lasts = None if happening.event == "issues" else TAKEN_TTL
        return bool(self.conn.set(keyspace.github_taken(happening.key), 1, nx=True, ex=lasts))

    def _origin(self, happening: Happening) -> Origin:
        return Origin("github", happening.login, happening.channel, happening.login)

    def _issue(self, happening: Happening) -> None:
        """A labelled issue: its title deploys a ref, or the title and body ask for a change."""
        label = self.settings.github.label.lower()
        labelled = (
            happening.label.lower() == label
            if happening.action == "labeled"
            else label in {x.lower() for x in happening.labels}
        )
        if not labelled or not self._take(happening):
            return
        title = " ".join(comments.untrusted(happening.title).split())
        body = comments.untrusted(happening.body).strip()
        head = title.partition(" ")[0].lower()
        text = title if head in ("deploy", "rollback") else f"{title}\n\n{body}".strip()
        origin = self._origin(happening)
        if self._may(origin, happening):
            self._front.say(origin, text)

    def _comment(self, happening: Happening) -> None:
        """``/molt …`` anywhere; a plain reply by the requester answers the planner's questions."""
        text = comments.untrusted(happening.body).strip()
        first = text.split("\n", 1)[0].strip()
        origin = self._origin(happening)
        if first == "/molt" or first.startswith("/molt "):
            if not self._take(happening):
                return
            self._command(origin, happening, text[len("/molt") :].strip())
            return
        waiting = self._request_on(happening.channel)
        if (
            waiting is not None
            and waiting.state is S.NEEDS_INFO
            and waiting.requester == origin.principal
            and text
            and self._take(happening)
            and self._may(origin, happening)
        ):
            self._front.answer(origin, waiting.id, text)

    def _command(self, origin: Origin, happening: Happening, command: str) -> None:
        if not self._may(origin, happening):
            return
        verb, _, rest = command.partition(" ")
        verb = verb.lower()
        if verb == "deploy" and not rest.strip() and happening.pull_request:
            self._deploy_pull(origin, happening)
            return
        if verb in PRESSES or verb == "answer":
            request = self._request_on(happening.channel)
            if request is not None and verb in PRESSES:
                self._front.press(origin, verb, request.id)
                return
            if request is not None and request.state is S.NEEDS_INFO and rest.strip():
                self._front.answer(origin, request.id, rest.strip())
                return
            if verb in PRESSES:
                self._answer(origin, "not_allowed", reason="there is no Molt request on this issue")
                return
        self._front.say(origin, command)

    def _deploy_pull(self, origin: Origin, happening: Happening) -> None:
        """``/molt deploy`` on a pull request: its head commit, once its checks passed when
        MOLT_REQUIRE_CHECKS says they must."""
        head, waiting = self.pulls.head(happening.repo, happening.number)
        if waiting:
            reason = f"{happening.channel} has checks that have not passed: {', '.join(waiting)}"
            self._answer(origin, "not_allowed", reason=f"blocked: {reason}")
            return
        self._front.say(origin, f"deploy {head}")

    def _tick(self, happening: Happening) -> None:
        """A box ticked on a status comment: acted on for the right person, else unticked."""
        request_id = self.conn.get(keyspace.github_status(happening.repo, happening.comment_id))
        action = comments.ticked(happening.previous_body, happening.body)
        if not request_id or action is None or not self._take(happening):
            return
        request_id = request_id.decode() if isinstance(request_id, bytes) else str(request_id)
        try:
            request = self.store.get(request_id)
        except UnknownRequest:
            return
        origin = self._origin(happening)
        decision = self.permissions.may_write(happening.repo, happening.login)
        if decision:
            decision = self._listed_for(action, origin, request)
        if not decision:
            self._untick(happening, action)
            self._refuse(origin, happening, decision, f"tick {action}")
            return
        before = request.state
        pressed = self._front.press(origin, action, request_id)
        pressed.add_done_callback(lambda _: self._untick_if_unmoved(happening, action, before))

    def _listed_for(self, action: str, origin: Origin, request: Request) -> Decision:
        if request.command == ROLLOUT:  # its own approvers decide, at the desk
            return ALLOWED
        settings = self.settings.for_target(request.target)  # a fleet's target's own lists
        if action == "retry":
            return authorisation.may_request(settings, origin)
        risk = str(((request.plan or {}).get("risk") or {}).get("level", "low"))
        return authorisation.may_approve(settings, origin, request.requester, risk)

    def _untick_if_unmoved(self, happening: Happening, action: str, before: S) -> None:
        """A press the pipeline refused (too late, already decided) leaves its box unticked."""
        try:
            if self.store.get(self._request_id(happening)).state is before:
                self._untick(happening, action)
        except Exception:
            log.exception("github untick")

    def _request_id(self, happening: Happening) -> str:
        raw = self.conn.get(keyspace.github_status(happening.repo, happening.comment_id)) or b""
        return raw.decode() if isinstance(raw, bytes) else str(raw)

    def _untick(self, happening: Happening, action: str) -> None:
        """Clear the box on the comment as it is now (the request may have moved since)."""
        comment = self.delivery.issue(happening.channel).get_comment(happening.comment_id)
        now = comment.body or ""  # a GET: the lazy comment is read here
        if comments.ticked_now(now, action):
            self.writer.write(lambda: comment.edit(comments.untick(now, action)))

    def _request_on(self, channel: str) -> Request | None:
        """The newest request made on an issue."""
        request_id = self.conn.get(keyspace.github_issue(channel))
        if not request_id:
            return None
        try:
            return self.store.get(
                request_id.decode() if isinstance(request_id, bytes) else request_id
            )
        except UnknownRequest:
            return None

    # -- who may ---------------------------------------------------------------

    def _may(self, origin: Origin, happening: Happening) -> bool:
        """GitHub's own answer: write or admin on the repository. Anyone else is refused."""
        decision = self.permissions.may_write(happening.repo, happening.login)
        if not decision:
            self._refuse(origin, happening, decision, "request")
        return bool(decision)

    def _refuse(self, origin: Origin, happening: Happening, decision: Decision, what: str) -> None:
        """Audited every time; answered in a comment once an hour per person and issue, so
        that nobody can make Molt spend GitHub's write limits by asking again and again."""
        audit.append(
            self.conn,
            actor=origin.principal,
            action="github_refused",
            detail={"where": happening.channel, "what": what, "reason": decision.reason},
        )
        told = keyspace.github_told(origin.principal, happening.channel)
        if not self.conn.set(told, 1, nx=True, ex=REFUSAL_QUIET):
            return
        line = refusal_line(self.settings.refusal_theme, f"{origin.principal}:{happening.key}")
        self._answer(origin, "refused", refusal_line=line, message=decision.reason)

    def _answer(self, origin: Origin, template: str, **context: Any) -> None:
        self.reply(origin, render(template, {"request_id": "", **context}))

    @property
    def _front(self) -> Front:
        if self.desk is None:
            raise RuntimeError("the GitHub adapter has no desk")
        return self.desk

    # -- out -------------------------------------------------------------------

    def act_on(self, request: Request, template: str) -> bool:
        """A proposed change's pull request is opened here, wherever it was asked for. If
        GitHub will not have it, the message still says which branch the change is on."""
        if template != "proposed":
            return False
        try:
            if not self.pulls.open(request):
                return False
        except GithubException as exc:
            log.error("pull request not opened", request_id=request.id, status=exc.status)
            return False
        self.following.opened(self.store.get(request.id))
        return True

    def deliver(self, request: Request, message: Message) -> None:
        self.delivery.deliver(request, message)

    def reply(self, origin: Origin, message: Message) -> None:
        self.delivery.reply(origin, message)

    def announce(self, channel: str, message: Message, thread: str = "") -> None:
        self.delivery.announce(channel, message, thread)
