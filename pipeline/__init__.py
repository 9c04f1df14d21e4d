"""Molt's core: requests, their one state machine, and the update engine. Nothing here
knows a chat platform; bot/ turns platform input into calls on these modules.

The packages, from the bottom up; each imports only those before it (and the leaves):

- ``requests/``: the request, its states, refusals (``Decision``), who may do what.
- ``sandbox/``: confined test runs, their progress, reruns and remembered results.
- ``releases/``: signed releases, the ledger, boot records, checks at each start.
- ``queue/``: targets, the update lock and waiting line, RQ queues, the worker registry.
- ``service/``: the live service's snapshot, restart, watch, and ``rollback``, the way back.
- ``planning/``: deploy plans: diffs, protected paths, risk, estimates, steps.
- ``llm/``: changes in words, planned, written and reviewed by the model.
- ``intake/``: from received to plan_ready (gates, pre-flight, planning), approval, and the
  operators' controls.
- ``incidents/``: alerts, the service's log, incidents, on-call and diagnosis.
- ``update/``: the RQ worker and the approved update, recovery of abandoned work,
  ``molt recover`` and the config backups, the boot guard, an operator's release
  rollback, and rollouts through several targets.

One request, in the order it meets them: ``intake.flow.submit`` creates it
(``requests.store``; every state change goes through ``RequestStore.transition``, which
writes the audit entry and the event the notifier shows), runs the gates and plans it;
``intake.approval`` approves it and ``queue.queueing`` puts it in its target's line and on
RQ; ``update.jobs`` runs it: snapshot, phase 1 in the sandbox, apply, phase 2 on the live
checkout, sign the release, restart, verify, watch; on any failure ``service.rollback``
returns the service to its snapshot. Production errors come in through ``incidents`` and
go the same way as any request.

The leaves everything uses stay here: ``config`` (the settings), ``store`` (Redis;
``store_watch`` stops the embedded server once no Molt process is left),
``keyspace`` (every shared Redis key), ``git``, ``exceptions`` (faults, as opposed to
refusals), ``audit``, ``events`` (the stream the notifier reads), ``streams`` (the one way
to read a stream in a consumer group), ``metrics``, ``logs``,
``redaction``, ``processes``, ``retries``, ``codenames``, ``payloads`` (untrusted JSON read
into declared models) and ``usage`` (model use per request).
"""
