"""On call: what Molt does when production signals trouble. Roll back first.

Signals reach the bot process through the stream ``molt:alerts``: the HTTP process
verifies an alert delivery, drops a redelivery and appends its signals (``hand_over``),
acknowledging the sender at once; the log watcher and the idle health probes append to
it too. ``SignalReader`` (a thread of the bot) takes each into the incident book
(pipeline/incidents/book.py) and acknowledges it once taken; entries taken but unfinished
when the bot stopped are taken again at start.

A newly opened incident may act, once per target per MOLT_INCIDENT_COOLDOWN
(``respond``): when an update landed on the target within MOLT_SUSPECT_WINDOW before
the incident began, it is the suspect, and Molt plans a rollback to the release before
it through the normal pipeline, a request of command ``rollback`` raised by
``molt:incident``, which joins the waiting line ahead of ordinary requests. Under
MOLT_AUTONOMY=auto it is approved by ``molt:auto`` as soon as its plan is ready
(pipeline/intake/flow.py, wherever the target's planning runs); otherwise the incident's
message carries Approve rollback. An update still under way on the target is left to
its watch window, which rolls it back on its own. Alert text never reaches a plan: a
rollback's text is Molt's own. An incident that still fires once its rollback landed is
diagnosed (pipeline/incidents/diagnosis.py ``after_rollback``), told what the rollback did.

The cooldown bounds what Molt does on its own, not what it offers a person: within it,
an update that landed after the last action is a new suspect, whose rollback is planned
for an approver to press (``_offer``); under MOLT_AUTONOMY=auto, which would approve it
at once, the incident says instead how a person rolls it back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import redis
import structlog

from pipeline import keyspace
from pipeline.config import Settings
from pipeline.git import Git
from pipeline.incidents import diagnosis
from pipeline.incidents.alerts import Signal
from pipeline.incidents.book import DELIVERY_TTL, Incident, IncidentBook
from pipeline.intake import autonomy
from pipeline.intake import flow as intake
from pipeline.queue.targets import Target, of_target
from pipeline.requests.authorisation import RECOVERY_USER, raised_by_molt
from pipeline.requests.states import UNDER_WAY
from pipeline.requests.states import RequestState as S
from pipeline.requests.store import Origin, Request, RequestStore
from pipeline.streams import StreamReader

log = structlog.get_logger(__name__)
GROUP = "oncall"
CONSUMER = "bot"
MAXLEN = 100_000


#: One round trip per delivery: each signal whose delivery key is new (or which has none,
#: KEYS[i] = "") is appended to the stream. Returns how many were.
_HAND_OVER = """
local taken = 0
for i, key in ipairs(KEYS) do
  if key == '' or redis.call('SET', key, '1', 'NX', 'EX', ARGV[1]) then
    redis.call('XADD', ARGV[2], 'MAXLEN', '~', ARGV[3], '*', 'signal', ARGV[i + 3])
    taken = taken + 1
  end
end
return taken
"""


def hand_over(conn: redis.Redis, signals: list[Signal]) -> tuple[int, int]:
    """Queue signals for the bot, dropping redeliveries; returns (taken, duplicates)."""
    if not signals:
        return 0, 0
    keys = [keyspace.alert_delivery(s.source, s.delivery) if s.delivery else "" for s in signals]
    args = [DELIVERY_TTL, keyspace.ALERTS, MAXLEN, *(s.to_json() for s in signals)]
    taken = int(conn.eval(_HAND_OVER, len(keys), *keys, *args))  # type: ignore[arg-type]
    return taken, len(signals) - taken


def target_of(settings: Settings, name: str) -> Settings | None:
    """The settings of the target an alert names: its name (or id), or none when there is
    only one target; None for a target Molt does not manage."""
    if not settings.fleet:
        known = name in ("", settings.target_id, settings.target_dir.name)
        return settings if known else None
    names = settings.target_names()
    if not name and len(names) == 1:
        name = names[0]
    return settings.for_target(name) if name in names else None


def incident_origin(settings: Settings, incident: Incident) -> Origin:
    """Where an incident's rollback lives and is shown: MOLT_INCIDENT_CHANNEL."""
    platform, _, channel = settings.incident_channel.partition(":")
    return Origin(platform, RECOVERY_USER, channel, user_name=f"incident {incident.id}")


def raised_for(request: Request) -> str:
    """The incident a rollback Molt raised is for ("" for any other request): its origin's
    name says it (``incident_origin``)."""
    if not raised_by_molt(request.origin):
        return ""
    return request.origin.user_name.removeprefix("incident ").strip()


def take(settings: Settings, conn: redis.Redis, signal: Signal) -> None:
    """Take one signal; a new incident is responded to."""
    view = target_of(settings, signal.target)
    if view is None:
        log.warning("an alert for no target Molt manages", target=signal.target[:100])
        return
    settings = view
    book = IncidentBook(settings, conn)
    taken = book.take(signal)
    if taken.opened and taken.incident is not None:
        respond(settings, conn, book, taken.incident)
    elif taken.incident is not None:  # still firing after its rollback: diagnose it again
        diagnosis.after_rollback(settings, conn, book, taken.incident)


def respond(settings: Settings, conn: redis.Redis, book: IncidentBook, incident: Incident) -> None:
    """Roll back first: plan a rollback of the suspect update, when there is one."""
    store = RequestStore(conn)
    mine = (r for r in store.active() if r.state in UNDER_WAY and of_target(settings, r))
    under_way = next(mine, None)
    if under_way is not None:
        name = under_way.codename or under_way.id
        why = f"update {name} is under way; its watch window rolls it back on its own"
        return _nothing(book, incident, why)
    acting = book.acted()
    # Cheap first: in a storm, every later incident stops here, unless an update landed
    # since the action that began the cooldown (then it is a new suspect).
    if acting is not None and _landed_since(settings, store, book, acting, incident) is None:
        return _cooling_down(book, incident)
    attempts = book.failed_attempts(incident.fingerprint)
    if len(attempts) >= settings.max_fix_attempts:
        why = (
            f"{len(attempts)} earlier actions on this fingerprint did not hold "
            f"(MOLT_MAX_FIX_ATTEMPTS={settings.max_fix_attempts}): {'; '.join(attempts)}. "
            "A person decides"
        )
        return _nothing(book, incident, why)
    suspect = find_suspect(settings, store, incident.first_seen)
    own = _own_rollback_watched(settings, store, incident.first_seen)
    if own is not None:
        why = f"it began within the watch window of Molt's own rollback {own}"
        book.trip_breaker(f"incident {incident.id}: {why}")
        return _nothing(book, incident, f"{why}: automatic actions are off until `resume`")
    if suspect is None:
        window = f"{settings.suspect_window:g} s"
        _nothing(book, incident, f"no update landed within {window} before it began")
        if settings.llm_enabled:  # diagnose second, off this thread: the model takes a while
            diagnosis.post_in_background(settings, conn, book, incident)
        return None
    incident.suspect = suspect.codename or suspect.id
    allowed = autonomy.may_act(settings)
    if not allowed:
        return _nothing(book, incident, allowed.reason)
    breaker = book.breaker()
    if breaker is not None:
        return _nothing(book, incident, f"automatic actions are off until `resume`: {breaker}")
    if acting is not None:
        return _offer(settings, conn, book, incident, suspect, acting)
    if book.claim_action(incident) is not None:
        return _cooling_down(book, incident)
    _roll_back(settings, conn, book, incident, suspect)


def _roll_back(
    settings: Settings,
    conn: redis.Redis,
    book: IncidentBook,
    incident: Incident,
    suspect: Request,
    why: str = "",
) -> None:
    """Plan the rollback of ``suspect`` and say so in the incident (``why`` it is the
    suspect, when that needs saying)."""
    request = plan_rollback(settings, conn, incident, suspect)
    book.act(incident, "rollback", {"request_id": request.id, "suspect": incident.suspect})
    waiting = request.state is S.PLAN_READY
    message = (
        f"update {incident.suspect} is the suspect{why}: a rollback to the release before it is "
        + ("planned, waiting for approval" if waiting else f"{request.state.value}")
        + _remembered_note(settings, conn, suspect)
    )
    data = {"rollback_request": request.id, "rollback_waiting": waiting, "request_id": request.id}
    book.record(incident, "incident_rollback", message, data)


def _landed_since(
    settings: Settings, store: RequestStore, book: IncidentBook, acting: str, incident: Incident
) -> Request | None:
    """The suspect of ``incident`` if it landed after the rollback of incident ``acting``,
    which began the cooldown: a new suspect, not the one already acted on. None while that
    rollback is still being planned."""
    acted_at = book.acted_at(acting)
    if acted_at is None:
        return None
    suspect = find_suspect(settings, store, incident.first_seen)
    return suspect if suspect is not None and suspect.updated_at > acted_at else None


def _offer(
    settings: Settings,
    conn: redis.Redis,
    book: IncidentBook,
    incident: Incident,
    suspect: Request,
    acting: str,
) -> None:
    """Within the cooldown, a new suspect's rollback is planned for a person to approve;
    this incident takes over the rest of the cooldown, so that the storm that follows offers
    it once. Under MOLT_AUTONOMY=auto the plan would be approved by Molt at once: the
    incident says how a person rolls it back instead."""
    name = incident.suspect
    if settings.autonomy == "auto":
        target = f"{settings.target_name} " if settings.fleet else ""
        return _nothing(
            book,
            incident,
            f"incident {acting} acted on this target within MOLT_INCIDENT_COOLDOWN, and Molt "
            f"acts on its own once per cooldown. Update {name} landed after that and is the "
            f"suspect: an operator's `rollback {target}{name}` plans the return to the release "
            "before it",
        )
    # The cooldown may have ended meanwhile: then this is an ordinary first action.
    if not book.take_over(incident, acting) and book.claim_action(incident) is not None:
        return _cooling_down(book, incident)
    _roll_back(
        settings, conn, book, incident, suspect, f" (it landed after incident {acting} acted)"
    )


def _remembered_note(settings: Settings, conn: redis.Redis, suspect: Request) -> str:
    base = str((suspect.plan or {}).get("base_commit", ""))
    record = Target(settings, conn).tests.at(base) if base else None
    if record is None or not record.passed:
        return ""
    return f"; its tests passed here at {base[:7]} before, so it takes that result"


def _cooling_down(book: IncidentBook, incident: Incident) -> None:
    taken_by = book.acted() or "another incident"
    _nothing(
        book, incident, f"incident {taken_by} acted on this target within MOLT_INCIDENT_COOLDOWN"
    )


def _nothing(book: IncidentBook, incident: Incident, why: str) -> None:
    book.act(incident, "nothing", {"reason": why})
    book.record(incident, "incident_nothing", f"no automatic action: {why}")


def _landed_last(settings: Settings, store: RequestStore) -> Request | None:
    """The update that landed last on this target."""
    landed = (r for r in store.recent(50) if r.state is S.SUCCEEDED and of_target(settings, r))
    return next((r for r in landed if r.plan), None)


def find_suspect(settings: Settings, store: RequestStore, began: float) -> Request | None:
    """The update that landed last, if within MOLT_SUSPECT_WINDOW before ``began`` and still
    live; a rollback Molt raised itself is never a suspect (a person decides then). A
    fleet's bot holds no checkout of its targets: there the last landed is taken as live."""
    landed = _landed_last(settings, store)
    if landed is None or raised_by_molt(landed.origin):
        return None
    if not (
        landed.updated_at <= began + 1 and began - landed.updated_at <= settings.suspect_window
    ):
        return None
    if settings.fleet:
        return landed
    live = Git(settings.target_dir).head()
    return landed if (landed.plan or {}).get("target_commit") == live else None


def _own_rollback_watched(settings: Settings, store: RequestStore, began: float) -> str | None:
    """The rollback Molt raised itself that landed last, if ``began`` is within its watch
    window (MOLT_WATCH_SECONDS, at least a minute): the trouble outlived the recovery."""
    window = max(settings.watch_seconds, 60.0)
    landed = _landed_last(settings, store)
    if landed and raised_by_molt(landed.origin) and 0 <= began - landed.updated_at <= window:
        return landed.codename or landed.id
    return None


def plan_rollback(
    settings: Settings, conn: redis.Redis, incident: Incident, suspect: Request
) -> Request:
    """A rollback request of Molt's own, through pre-flight and planning like any other."""
    base = str((suspect.plan or {}).get("base_commit", ""))
    name = suspect.codename or suspect.id
    text = f"rollback {name} (incident {incident.id})"
    target = settings.target_name if settings.fleet else ""
    origin = incident_origin(settings, incident)
    request = RequestStore(conn).create(origin, text, "rollback", base, target=target)
    return intake.advance(settings, conn, request.id)


def news_since(settings: Settings, conn: redis.Redis, since: float) -> Callable[[], list[str]]:
    """The incidents opened on the target since ``since``, for a watch window; for Molt
    itself also the error signatures its log shows for the first time."""
    book = IncidentBook(settings, conn)

    def opened() -> list[str]:
        found = [f"incident {i.id}: {i.summary}" for i in book.opened_since(since)]
        if settings.manages_itself:  # the new Molt must add no new error signature either
            found += [f"a new error in Molt's log: {s}" for s in book.new_signatures(since)]
        return found

    return opened


@dataclass
class SignalReader:
    """The consumer side of ``molt:alerts``: a thread in the bot process. A signal that
    cannot be read or taken is logged and dropped: the next one still comes."""

    settings: Settings
    conn: redis.Redis

    def __post_init__(self) -> None:
        self.reader = StreamReader(
            self.conn, keyspace.ALERTS, GROUP, CONSUMER, self._take, name="molt-oncall"
        )

    def start(self) -> None:
        self.reader.start()

    def stop(self) -> None:
        self.reader.stop()

    def _take(self, entry_id: str, fields: dict[str, str]) -> None:
        take(self.settings, self.conn, Signal.from_json(fields["signal"]))
