"""Every Redis key Molt keeps, named in one place, so a key is spelled once.

For one target, ``<id>`` being the target's id (``Settings.target_id``):

  molt:lock:<id>                   the update lock: JSON {request_id, codename, holder, since}
  molt:queue:<id>                  the waiting line: approved request ids, oldest first
  molt:queue:<id>:stalled          JSON {head, since}: the line was seen waiting with the lock
                                   free and no job to run it (recovery gives it one)
  molt:command:<id>                hash {request_id, pgid, started, command}: the test command
                                   an update is running, and its process group
  molt:durations:<id>              list: seconds the last 20 updates took, newest first
  molt:tests:<id>:<run>:<commit>   hash {passed, count, seconds, at, detail}: the test run at a
                                   commit; <run> names what ran (the test command and what
                                   else changes it, pipeline/sandbox/records.py ``run_identity``)
  molt:tests:<id>:<run>:<commit>:running
                                   when the pre-flight test run at a commit began, while it runs
  molt:tests:<id>:<run>:passed     seconds the last passing run took (the phases' time limit
                                   follows it)
  molt:imports:<id>:<commit>       the target's import graph at a commit (planning's cache)
  molt:flaky:<id>                  hash: test → JSON {count, last_at, codename, phase}: tests
                                   that failed, then passed when run again
  molt:started:<id>                sorted set "<request_id>:<attempt>" by when the update
                                   began (MOLT_MAX_CHANGES_PER_DAY)
  molt:paused:<id>                 who paused new updates
  molt:stop:<id>                   the emergency stop: who asked, for which update
  molt:releases:<id>               hash: release number → signed manifest (the ledger)
  molt:releases:<id>:highest       the highest release number ever seen
  molt:boot:<id>                   hash: the last boot {clean, detail, commit, at}
  molt:boot:<id>:starts            list of start ids, newest first
  molt:boot:<id>:start:<start>     hash {commit, pid, at, healthy_at, ended, ended_at, detail}
  molt:boot:<id>:good              hash: commit → when a start on it last reported healthy
  molt:boot:<id>:rollback          hash {from, to, detail, at}: the boot guard's last rollback
  molt:seen:<id>                   when a worker of the target last beat (pipeline/queue/workers.py)
  molt:queue:<id>:priority         hash: request id → its priority in the waiting line
                                   (0 incident recovery, 1 operator rollback, 2 the rest)
  molt:incidents:<id>              sorted set: the target's incident ids by first seen
  molt:incidents:<id>:current      hash: fingerprint → the incident its occurrences feed
  molt:incidents:<id>:seen:<fp>    sorted set: when a counted fingerprint was seen (the
                                   sliding window of MOLT_INCIDENT_THRESHOLD)
  molt:incidents:<id>:acted        the incident whose automatic action is the target's last,
                                   kept for MOLT_INCIDENT_COOLDOWN
  molt:incidents:<id>:signatures   hash: log fingerprint → JSON {at, summary}: when each error
                                   signature was first seen in the target's log
  molt:incidents:<id>:breaker      why automatic actions are off for the target (the circuit
                                   breaker), until an operator's `resume`
  molt:cases:<id>                  sorted set: the target's diagnosis cases by when they were
                                   diagnosed (pipeline/incidents/cases.py; bounded)

Keys shared by every target follow ``TargetKeys``, grouped by the module that owns them;
each name says what its key holds. tests/pipeline/test_keyspace.py checks that no two names
are one key and that no other module spells a key again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: Attribute of ``TargetKeys`` → its key; ``{id}`` is the target's id.
FORMATS = {
    "lock": "molt:lock:{id}",
    "queue": "molt:queue:{id}",
    "stalled": "molt:queue:{id}:stalled",
    "command": "molt:command:{id}",
    "durations": "molt:durations:{id}",
    "flaky": "molt:flaky:{id}",
    "started": "molt:started:{id}",
    "paused": "molt:paused:{id}",
    "stop": "molt:stop:{id}",
    "releases": "molt:releases:{id}",
    "highest_release": "molt:releases:{id}:highest",
    "boot": "molt:boot:{id}",
    "starts": "molt:boot:{id}:starts",
    "good_starts": "molt:boot:{id}:good",
    "guard_rollback": "molt:boot:{id}:rollback",
    "seen": "molt:seen:{id}",
    "priorities": "molt:queue:{id}:priority",
    "incidents": "molt:incidents:{id}",
    "current_incidents": "molt:incidents:{id}:current",
    "acted": "molt:incidents:{id}:acted",
    "breaker": "molt:incidents:{id}:breaker",
    "signatures": "molt:incidents:{id}:signatures",
    "cases": "molt:cases:{id}",
}


def group_answer(group: str, principal: str) -> str:
    """The key of the platform's last answer whether ``principal`` is in ``group``."""
    return f"molt:group:{group}:{principal}"


@dataclass(frozen=True)
class TargetKeys:
    target_id: str
    lock: str = field(init=False)
    queue: str = field(init=False)
    stalled: str = field(init=False)
    command: str = field(init=False)
    durations: str = field(init=False)
    flaky: str = field(init=False)
    started: str = field(init=False)
    paused: str = field(init=False)
    stop: str = field(init=False)
    releases: str = field(init=False)
    highest_release: str = field(init=False)
    boot: str = field(init=False)
    starts: str = field(init=False)
    good_starts: str = field(init=False)
    guard_rollback: str = field(init=False)
    seen: str = field(init=False)
    priorities: str = field(init=False)
    incidents: str = field(init=False)
    current_incidents: str = field(init=False)
    acted: str = field(init=False)
    breaker: str = field(init=False)
    signatures: str = field(init=False)
    cases: str = field(init=False)

    def __post_init__(self) -> None:
        for name, key in FORMATS.items():
            object.__setattr__(self, name, key.format(id=self.target_id))

    def tests(self, run: str, commit: str) -> str:
        return f"molt:tests:{self.target_id}:{run}:{commit}"

    def tests_running(self, run: str, commit: str) -> str:
        return f"molt:tests:{self.target_id}:{run}:{commit}:running"

    def tests_passed(self, run: str) -> str:
        return f"molt:tests:{self.target_id}:{run}:passed"

    def imports(self, commit: str) -> str:
        return f"molt:imports:{self.target_id}:{commit}"

    def occurrences(self, fingerprint: str) -> str:
        return f"molt:incidents:{self.target_id}:seen:{fingerprint}"

    def start(self, start_id: str) -> str:
        return f"molt:boot:{self.target_id}:start:{start_id}"


# -- Requests (pipeline/requests/store.py) ---------------------------------------------

#: Sorted set of request ids by creation time.
REQUESTS = "molt:requests"
#: Set of the ids of requests not in a terminal state.
ACTIVE_REQUESTS = "molt:requests:active"


def request(request_id: str) -> str:
    """Hash of one request (JSON for the nested fields)."""
    return f"molt:request:{request_id}"


#: Hash of a rollout's step request id → the rollout's request id
#: (pipeline/requests/steps.py).
ROLLOUT_STEPS = "molt:rollout:steps"


def rollout_advancing(request_id: str) -> str:
    """Held by the bot process moving a rollout on, so that only one does
    (pipeline/update/rollouts.py)."""
    return f"molt:rollout:{request_id}:advancing"


# -- Audit (pipeline/audit.py) ------------------------------------------------------------

#: List of the audit's JSON entries, oldest first (index = seq).
AUDIT = "molt:audit"
#: "<seq> <hash>" of the newest audit entry.
AUDIT_HEAD = "molt:audit:head"


def audit_request(request_id: str) -> str:
    """List of the seqs of the audit entries that concern one request."""
    return f"molt:audit:request:{request_id}"


# -- Events, codenames, workers, proposals ------------------------------------------------

#: The stream every transition goes out on (pipeline/events.py).
EVENTS = "molt:events"
#: Set of every codename given (pipeline/codenames.py).
CODENAMES = "molt:codenames"
#: Hash: RQ worker name → JSON {host, pid, targets, seen} (pipeline/queue/workers.py).
WORKERS = "molt:workers"


def proposal(request_id: str) -> str:
    """Hash: the follow-up of a proposed request (pipeline/update/proposals.py)."""
    return f"molt:proposal:{request_id}"


# -- Incidents and alerts (pipeline/incidents/) ------------------------------------------

#: The stream of signals from the HTTP process to the bot's reader (incidents/oncall.py).
ALERTS = "molt:alerts"


def incident(incident_id: str) -> str:
    """Hash of one incident, JSON for its ``actions`` (pipeline/incidents/book.py)."""
    return f"molt:incident:{incident_id}"


def case(case_id: str) -> str:
    """JSON of one diagnosis case, kept for replay (pipeline/incidents/cases.py)."""
    return f"molt:case:{case_id}"


def alert_delivery(source: str, delivery: str) -> str:
    """Marks an alert delivery as taken, so a redelivery is seen as one."""
    return f"molt:alerts:delivered:{source}:{delivery}"


# -- The bot process (bot/, pipeline/service/restart.py) ---------------------------------

#: Hash: the running bot {pid, boot_id, version, port, argv, cwd, beat}.
BOT = "molt:bot"
#: List: what a worker asks of the bot (a restart).
BOT_CONTROL = "molt:control:bot"
#: List: pids of the workers the bot started (bot/app.py).
BOT_WORKERS = "molt:bot:workers"
#: The stream from the HTTP process to the bot: chat deliveries to act on (bot/inbox.py).
INBOX = "molt:inbox"


def http_port(boot_id: str) -> str:
    """The port the HTTP process of one boot listens on (bot/server.py)."""
    return f"molt:http:{boot_id}"


def ui_link(key: str) -> str:
    """A status page link not yet used (bot/ui.py)."""
    return f"molt:ui:link:{key}"


def ui_session(session: str) -> str:
    """A status page session a link opened (bot/ui.py)."""
    return f"molt:ui:session:{session}"


# -- Slack (bot/slack/) ---------------------------------------------------------------------


def slack_seen(delivery: str) -> str:
    """A delivery (trigger or event id) acted on, so a retry acts once (listeners.py)."""
    return f"molt:slack:seen:{delivery}"


def slack_thread(channel: str, ts: str) -> str:
    """The request whose status message that is, for answers in its thread (delivery.py)."""
    return f"molt:slack:thread:{channel}:{ts}"


def slack_replied(request_id: str, kind: str) -> str:
    """A milestone already replied in a request's thread (delivery.py)."""
    return f"molt:slack:replied:{request_id}:{kind}"


# -- GitHub (bot/github/) -------------------------------------------------------------------

#: The stream of happenings from the webhook and the poller to the adapter (webhook.py).
GITHUB_INBOX = "molt:github:inbox"
#: Set of the pull requests being followed, ``owner/name#number`` (pulls.py).
GITHUB_FOLLOWING = "molt:github:following"


def github_delivery(delivery: str) -> str:
    """A webhook delivery (X-GitHub-Delivery) taken once (webhook.py)."""
    return f"molt:github:delivery:{delivery}"


def github_taken(key: str) -> str:
    """A happening taken once, whichever source saw it first (adapter.py, poller.py)."""
    return f"molt:github:taken:{key.lower()}"


def github_poll(repo: str, listing: str) -> str:
    """The poller's cursor (ISO time) of one list of a repository (poller.py)."""
    return f"molt:github:poll:{repo.lower()}:{listing}"


def github_pull(repo: str, number: int | str) -> str:
    """The request a followed pull request belongs to (pulls.py)."""
    return f"molt:github:pull:{repo.lower()}#{number}"


def github_pull_head(repo: str, sha: str) -> str:
    """The followed pull request whose head ``sha`` is (following.py)."""
    return f"molt:github:pull-sha:{repo.lower()}:{sha}"


def github_pull_seen(followed: str) -> str:
    """What the poller last saw of a followed pull request: state, head (following.py)."""
    return f"molt:github:pull-seen:{followed.lower()}"


def github_status(repo: str, comment_id: int | str) -> str:
    """The request whose status comment that is, for its ticked boxes (delivery.py)."""
    return f"molt:github:status:{repo.lower()}:{comment_id}"


def github_issue(channel: str) -> str:
    """An issue's newest request, for ``/molt approve`` (delivery.py)."""
    return f"molt:github:issue:{channel.lower()}"


def github_incident(incident_id: str) -> str:
    """The issue opened for an incident, ``repo#number`` (delivery.py)."""
    return f"molt:github:incident:{incident_id}"


def github_posted(request_id: str, kind: str) -> str:
    """A comment posted once per request and kind, and its id (delivery.py)."""
    return f"molt:github:posted:{request_id}:{kind}"


def github_deployment(request_id: str, attempt: int) -> str:
    """The GitHub Deployment of one attempt of a request (delivery.py)."""
    return f"molt:github:deployment:{request_id}:{attempt}"


def github_told(principal: str, channel: str) -> str:
    """A refusal answered to one person on one issue, kept quiet for a while (adapter.py)."""
    return f"molt:github:told:{principal}:{channel}".lower()
