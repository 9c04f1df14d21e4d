"""POST /github/webhook: what GitHub sends, checked and handed over at once.

In the HTTP process, like POST /slack/events: the signature is checked over the raw body in
constant time (401 when missing or wrong), the payload read into GitHub's shapes (400 naming
a field that does not fit, bot/github/payloads.py), the repository must be watched (403,
whatever the signature), ``ping`` is answered 200, events and actions Molt does not act on
204. A delivery
id is taken once (a redelivery keeps its id, and is answered 200 without being acted on
again); what is left goes to the stream ``molt:github:inbox`` for the bot process, so GitHub's
10 s limit is never near.

Keys: ``molt:github:delivery:<X-GitHub-Delivery>`` (kept as long as GitHub lets a delivery be
redelivered).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import redis
from pydantic_core import from_json
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, Response

from bot.github.happenings import ACTIONS, from_webhook
from bot.github.payloads import Envelope
from pipeline import keyspace
from pipeline.payloads import Misfit, fitted
from pipeline.redaction import same_secret

INBOX_MAXLEN = 10_000
#: GitHub redelivers by hand or through its API for three days.
DELIVERY_TTL = 3 * 86400


def signature(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


class Webhook:
    """The Starlette endpoint (``serve``) for one webhook secret and set of repositories."""

    def __init__(self, conn: redis.Redis, secret: str, repos: list[str]) -> None:
        self.conn = conn
        self._secret = secret.encode()
        self._repos = {r.lower() for r in repos}

    async def serve(self, request: HttpRequest) -> Response:
        body = await request.body()
        given = request.headers.get("x-hub-signature-256", "")
        if not same_secret(given, signature(self._secret, body)):
            return JSONResponse({"error": "invalid signature"}, status_code=401)
        event = request.headers.get("x-github-event", "")
        delivery = request.headers.get("x-github-delivery", "")
        try:
            payload = from_json(body)
            envelope = fitted(payload, Envelope)
        except ValueError as exc:  # not JSON (nested past the reader's bound too), or misfit
            return JSONResponse({"error": f"unreadable {event} delivery: {exc}"}, status_code=400)
        full_name = envelope.repository.full_name if envelope.repository else ""
        if full_name.lower() not in self._repos:
            return JSONResponse({"error": "this repository is not watched"}, status_code=403)
        if event == "ping":
            return JSONResponse({"ok": True})
        if (envelope.action or "") not in ACTIONS.get(event, ()):
            return Response(status_code=204)
        if not delivery:
            return JSONResponse({"error": "no X-GitHub-Delivery"}, status_code=400)
        return await run_in_threadpool(self._hand_over, event, payload, delivery)

    def _hand_over(self, event: str, payload: dict[str, Any], delivery: str) -> Response:
        try:
            happening = from_webhook(event, payload, delivery)
        except Misfit as exc:
            return JSONResponse({"error": f"malformed {event} delivery: {exc}"}, status_code=400)
        if happening is None:
            return Response(status_code=204)
        if not self.conn.set(keyspace.github_delivery(delivery), 1, nx=True, ex=DELIVERY_TTL):
            return JSONResponse({"ok": True, "duplicate": True})
        self.conn.xadd(
            keyspace.GITHUB_INBOX,
            {"happening": happening.dumps()},
            maxlen=INBOX_MAXLEN,
            approximate=True,
        )
        return JSONResponse({"ok": True})
