"""Plans: what ``deploy <ref>`` would change, how risky it is and how long it takes.

``deploys`` plans a deploy from real git into a ``plans.Plan``: the changed files and
protected paths (``diffs``), the import graph (``imports``), the risk (``risk``), the time
(``estimates``) and the worker's steps (``tasks``). A change in words is planned by llm/.

Imports the leaves, sandbox/, releases/ and queue/.
"""
