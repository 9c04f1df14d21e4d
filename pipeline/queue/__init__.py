"""Whose turn it is: the targets, their locks and waiting lines, and the workers.

``targets`` hands out what Redis keeps for one target; ``locking`` is the update lock and
the waiting line; ``queueing`` puts an approved request in line and a job on RQ;
``workers`` is the registry of RQ workers (the worker process is pipeline/update/worker.py).

Imports the leaves, requests/, sandbox/ (test records) and releases/ (boot records).
"""
