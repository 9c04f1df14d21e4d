"""The update itself, run by RQ workers, and everything that finishes or undoes one.

``worker`` is the RQ worker process; ``jobs`` is the approved update, step by step
(snapshot, phase 1 in the sandbox, apply, phase 2, sign, restart, verify, watch), with
``change`` writing a change in words, ``reproduction`` proving a Fix it's test fails on the
base as production did and passes on the fix, and ``proposals`` delivering a change as a
pull request.
``recovery`` finishes what a dead worker left and keeps the waiting line moving; ``repair``
is ``molt recover``, and ``backups`` the config file's backups it restores; ``bootguard``
checks each start of Molt and returns to the last good release; ``release_rollback`` is
an operator's return to an earlier release; ``rollouts`` takes one commit through several
targets in turn, each step an ordinary update of its target. Every return of the live
checkout to a commit takes the one way back (pipeline/service/rollback.py ``return_to``).

The top of pipeline/: it may import every other package; none imports it.
"""
