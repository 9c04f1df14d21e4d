"""Production asking for a change: alerts, the service's log, incidents and on-call.

``alerts`` reads alert deliveries into signals (the payloads declared in
pipeline/payloads.py); ``logwatch`` finds more in the service's log and in idle health
probes; ``book`` keeps incidents (records, thresholds, cooldowns, outcomes); ``oncall``
answers a new incident by rolling back its suspect through intake, and ``diagnosis`` asks
the model for a fix when there is none (or the rollback did not stop it), reading the target
through ``inquiry``'s read-only tools and citing evidence that ``evidence`` checks; each
diagnosis is kept in ``cases``, and ``replay`` makes them again to score a model or prompt.
``failures`` is what a fix carries of its incident (the failure its test must reproduce, the
signature its watch and hold check look for).

Imports everything below it up to intake/; never update/.
"""
