"""The running service: its snapshot, its restart, the watch after it, and the way back.

``snapshots`` records the live checkout before anything changes and builds sandbox
worktrees; ``restart`` restarts the service and checks it came back; ``watching`` keeps
probing it for the watch window, and ``metricwatch`` reads its metrics from Prometheus meanwhile;
``rollback`` returns it to a snapshot, the one way back every failure takes.

Imports the leaves, requests/, sandbox/, releases/ and queue/.
"""
