"""Molt's core: requests, their one state machine, and the update engine. Nothing here
knows a chat platform; bot/ turns platform input into calls on these modules.

One request, module by module, in the order it meets them:

1. Intake (``intake``). ``requests`` creates the request; its state changes only through
   ``RequestStore.transition`` (the states and legal moves are in ``states``), which writes
   the audit entry (``audit``) and the event the notifier shows (``events``) in the same
   step. ``authorisation`` decides who may ask from configuration alone; ``autonomy``
   (switches, daily limit, observe mode) and ``preflight`` may block it. Every refusal is a
   ``decisions.Decision`` with the reason a person reads.
2. Planning. ``planning`` plans ``deploy <ref>`` from real git: the changed files and
   protected paths (``diffs``), the risk (``risk``), the time it should take
   (``estimates``) and the worker's steps (``tasks``), into a ``plans.Plan``. A change in
   words is planned by the model (``llm``).
3. Approval (``approval``): approvers only, once, while the plan is fresh. ``queueing`` puts
   the approved request in its target's waiting line and on the RQ queue.
4. The update (``jobs``, run by RQ workers, ``workers``). It takes its target's lock
   (``locking``; a ``targets.Target`` hands out the lock, the line and the records kept for
   the target, under the keys ``keyspace`` names), snapshots the live checkout
   (``snapshots``), writes a change in words in the sandbox (``change``), validates it there
   (``validation``, phase 1; ``progress`` reports a long run as it goes, ``reruns`` runs
   failed tests once more to tell flaky ones from broken ones), applies it, validates the
   live checkout (phase 2), signs the release (``releases``, with ``manifests``, ``keys``,
   ``trees`` and ``ledger``), restarts the service and verifies it came back (``restart``).
5. Failure. ``rollback.undo`` is the one way back to the snapshot, for the job, for an
   update whose worker died (``recovery``, also ``molt recover``) and for the boot guard
   (``bootguard``), which checks each start of Molt (``verification``) and keeps the boot
   records (``boots``). An operator's return to an earlier release is ``release_rollback``.
6. Operators (``control``): pause, resume, stop, rollback, and the status, queue, history
   and review views.
7. Incidents. Alerts are read into signals (``alerts``), the service's log and idle health
   probes give more (``logwatch``); ``oncall`` hands them to the bot and answers a new
   incident (``incidents``: records, thresholds, cooldowns, outcomes) by rolling back the
   suspect update through the same intake, approval and jobs as any request; with no
   suspect, ``diagnosis`` asks the model and offers its fix as a change request.

Beneath them all: ``config`` (the settings, a leaf), ``store`` (Redis; ``store_watch``
stops the embedded server once no Molt process is left), ``git``, ``exceptions`` (faults, as
opposed to refusals), ``codenames``, ``redaction``, ``payloads`` (untrusted JSON read into
declared models), ``records``, ``processes``, ``retries``, ``usage`` (model use per
request), ``imports`` (import graphs) and ``logs``. What an
operator watches: ``metrics`` (every Prometheus metric, recorded where it happens, in every
process) and ``timeline`` (an update's phases, read back from its audit trail, for the
status page).
"""
