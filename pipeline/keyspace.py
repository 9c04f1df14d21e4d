"""Every Redis key Molt keeps for one target, named in one place.

``<id>`` is the target's id (``Settings.target_id``):

  molt:lock:<id>                   the update lock: JSON {request_id, codename, holder, since}
  molt:queue:<id>                  the waiting line: approved request ids, oldest first
  molt:queue:<id>:stalled          JSON {head, since}: the line was seen waiting with the lock
                                   free and no job to run it (recovery gives it one)
  molt:command:<id>                hash {request_id, pgid, started, command}: the test command
                                   an update is running, and its process group
  molt:durations:<id>              list: seconds the last 20 updates took, newest first
  molt:tests:<id>:<commit>         hash {passed, count, seconds}: the test run at a commit
  molt:imports:<id>:<commit>       the target's import graph at a commit (planning's cache)
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

Keys shared by every target (requests, audit, events, codenames, the bot's registration)
are named by the module that owns them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TargetKeys:
    target_id: str

    def _key(self, kind: str, *more: str) -> str:
        return ":".join(("molt", kind, self.target_id, *more))

    @property
    def lock(self) -> str:
        return self._key("lock")

    @property
    def queue(self) -> str:
        return self._key("queue")

    @property
    def stalled(self) -> str:
        return self._key("queue", "stalled")

    @property
    def command(self) -> str:
        return self._key("command")

    @property
    def durations(self) -> str:
        return self._key("durations")

    def tests(self, commit: str) -> str:
        return self._key("tests", commit)

    def imports(self, commit: str) -> str:
        return self._key("imports", commit)

    @property
    def started(self) -> str:
        return self._key("started")

    @property
    def paused(self) -> str:
        return self._key("paused")

    @property
    def stop(self) -> str:
        return self._key("stop")

    @property
    def releases(self) -> str:
        return self._key("releases")

    @property
    def highest_release(self) -> str:
        return self._key("releases", "highest")

    @property
    def boot(self) -> str:
        return self._key("boot")

    @property
    def starts(self) -> str:
        return self._key("boot", "starts")

    def start(self, start_id: str) -> str:
        return self._key("boot", "start", start_id)

    @property
    def good_starts(self) -> str:
        return self._key("boot", "good")

    @property
    def guard_rollback(self) -> str:
        return self._key("boot", "rollback")
