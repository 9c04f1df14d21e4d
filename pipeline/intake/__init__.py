"""A request's way to a plan and an approval, and the operators' controls.

``flow`` takes a request from received to plan_ready: the gates (authorisation,
``autonomy``, ``preflight``), then planning; ``approval`` lets approvers approve once,
while the plan is fresh; ``control`` is pause, resume, stop, rollback and the views behind
status, queue, history and review.

Imports everything below it: the leaves, requests/, sandbox/, releases/, queue/, service/,
planning/ and llm/; never incidents/ or update/.
"""
