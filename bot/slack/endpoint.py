"""POST /slack/events: what Slack sends, checked before Bolt sees it.

Bolt verifies every request's signature but raises (a 500) on headers its verifier cannot
read and on bodies of shapes it does not expect. Such requests are answered here: 401 when
unsigned, else 400 naming what is wrong (logged with every refusal, bot/refusals.py).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Mapping
from typing import Any

from slack_bolt import App
from slack_bolt.adapter.starlette.handler import to_bolt_request, to_starlette_response
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, Response

from pipeline.redaction import same_secret

#: Slack signs each request; an older timestamp may be a replay.
SIGNATURE_MAX_AGE = 300

#: Top-level keys Bolt's middleware reads as objects, ids or lists: other shapes make it raise.
#: Bolt dereferences ``event`` and ``view`` whenever the key is there, even when null.
_STRICT_OBJECTS = ("event", "view")
_OBJECTS = ("container", "message", "state", "function_data")
_OBJECTS_OR_IDS = ("user", "channel", "team", "enterprise")
_LISTS = ("actions", "authorizations")
_TIMESTAMP = re.compile(r"[0-9]{1,12}")  # int() would take more, then overflow a float


class Endpoint:
    """The Starlette endpoint in front of Bolt's ``dispatch`` (``serve``: a method, as
    Starlette would take any other callable for an ASGI app)."""

    def __init__(self, app: App, secret: str) -> None:
        self.app = app
        self._secret = secret.encode()
        #: ``auth.test`` has been answered: Bolt's dispatch no longer waits on it.
        self.authorised = False

    async def serve(self, request: HttpRequest) -> Response:
        """Bolt answers, unless the body is malformed where Bolt would raise."""
        body = await request.body()
        if not _verifiable(request.headers):
            return JSONResponse({"error": "invalid request"}, status_code=401)
        try:
            bolt_request = to_bolt_request(request, body)
        except Exception as exc:  # parsing only: bad UTF-8, bad JSON, odd shapes
            problem: str | None = f"unreadable body ({type(exc).__name__})"
        else:
            problem = _malformed(bolt_request.body)
        if problem is not None:
            if not self._signed(body, request.headers):
                return JSONResponse({"error": "invalid request"}, status_code=401)
            return JSONResponse({"error": problem}, status_code=400)
        if self.authorised:
            # The listeners only ack and hand over: cheaper in place than through a thread.
            return to_starlette_response(self.app.dispatch(bolt_request))
        # Off the event loop: the first request may still wait on auth.test.
        bolt_response = await run_in_threadpool(self.app.dispatch, bolt_request)
        return to_starlette_response(bolt_response)

    def _signed(self, body: bytes, headers: Mapping[str, str]) -> bool:
        """Slack's signature check over the raw bytes (Bolt's needs a body it can decode)."""
        timestamp = headers.get("x-slack-request-timestamp", "")
        signature = headers.get("x-slack-signature", "")
        if not timestamp or not signature or abs(time.time() - int(timestamp)) > SIGNATURE_MAX_AGE:
            return False
        signed = b"v0:" + timestamp.encode() + b":" + body
        expected = "v0=" + hmac.new(self._secret, signed, hashlib.sha256).hexdigest()
        return same_secret(signature, expected)


def _malformed(body: Any) -> str | None:
    """Why a parsed body cannot be handled, for the shapes Molt listens to; None if fine."""
    if not isinstance(body, dict):
        return "the body is not an object"
    if not body:
        return "empty body"
    return _misshapen(body) or _malformed_command(body) or _malformed_actions(body)


def _misshapen(body: dict[str, Any]) -> str | None:
    """A top-level key Bolt reads, holding a shape it would raise on."""
    for name in _STRICT_OBJECTS:
        if name in body and not isinstance(body[name], dict):
            return f"{name} is not an object"
    for name in _OBJECTS:
        if body.get(name) is not None and not isinstance(body[name], dict):
            return f"{name} is not an object"
    for name in _OBJECTS_OR_IDS:
        if body.get(name) is not None and not isinstance(body[name], dict | str):
            return f"{name} is neither an object nor an id"
    for name in _LISTS:
        value = body.get(name)
        if value is not None and not (
            isinstance(value, list) and all(isinstance(v, dict) for v in value)
        ):
            return f"{name} is not a list of objects"
    return None


def _malformed_command(body: dict[str, Any]) -> str | None:
    if "command" in body:
        for name in ("command", "user_id", "channel_id"):
            if not isinstance(body.get(name), str) or not body[name]:
                return f"slash command without {name}"
        if not isinstance(body.get("text", ""), str):
            return "slash command text is not a string"
    return None


def _malformed_actions(body: dict[str, Any]) -> str | None:
    kind = body.get("type")
    if kind in ("block_actions", "interactive_message") and not body.get("actions"):
        return f"{kind} without actions"
    if kind == "block_actions":
        user = body.get("user")
        if not isinstance(user, dict) or not isinstance(user.get("id"), str) or not user["id"]:
            return "block_actions without user.id"
        for action in body["actions"]:
            if not isinstance(action.get("action_id"), str):
                return "block_actions with an action that has no action_id"
            if not isinstance(action.get("value", ""), str):
                return "block_actions with a value that is not a string"
    return None


def _verifiable(headers: Mapping[str, str]) -> bool:
    """False for signature headers that would make slack_sdk's verifier raise (a 500)."""
    timestamp = headers.get("x-slack-request-timestamp")
    if timestamp is not None and not _TIMESTAMP.fullmatch(timestamp):
        return False
    signature = headers.get("x-slack-signature")
    return signature is None or signature.isascii()
