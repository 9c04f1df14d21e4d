"""Change requests in words: Claude plans them, writes them in the sandbox and reviews them.

``client`` talks to the model API (and is the only module that imports ``anthropic``, on the
first call); ``prompts`` holds the instructions and fences untrusted text; ``repomap`` draws a
compact map of the target; ``tools`` are the narrow, sandbox-confined file tools; ``planner``
turns a request into a ``Plan`` or questions; ``agent`` writes an approved plan; ``scope``
checks what was written against the plan; ``review`` has a second look at the diff.

Imports the leaves, requests/, sandbox/ and planning/.
"""
