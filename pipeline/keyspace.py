"""Every Redis key Molt keeps for one target, named in one place.

``<id>`` is the target's id (``Settings.target_id``):

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

Keys shared by every target (requests, audit, events, codenames, the bot's registration)
are named by the module that owns them; but one, kept by the bot (bot/groups.py):

  molt:group:<group>:<principal>   "1" or "0": whether the person is in the group (a user
                                   list's ``slack:@oncall``), as its platform last said;
                                   expires after MOLT_GROUP_TTL
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
