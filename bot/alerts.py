"""The alert endpoints of the HTTP server: /alerts/alertmanager, /alerts/sentry and
/alerts/webhook.

Each verifies its sender (a wrong or missing token or signature: 401), reads the payload
into signals (pipeline/incidents/alerts.py; a payload that does not fit its source's model: 400
naming the field), drops redeliveries and hands the rest to the bot process through Redis
(pipeline/incidents/oncall.py), then answers at once: nothing is acted on in the HTTP process, so an
ack never waits behind a rollback (Sentry allows 1 s). The body's size and time to arrive
are bounded, and refusals counted and audited, for every route alike (bot/server.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import redis
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pipeline.config import Settings
from pipeline.incidents import alerts, oncall


def _secret(value: object) -> str:
    get = getattr(value, "get_secret_value", None)
    return str(get()) if get else ""


class AlertEndpoints:
    def __init__(self, settings: Settings, conn: redis.Redis) -> None:
        self.settings = settings
        self.conn = conn
        self.secrets = settings.secrets()
        self.projects = alerts.sentry_projects(settings.sentry_projects)

    def routes(self) -> list[Route]:
        return [
            Route("/alerts/alertmanager", self.alertmanager, methods=["POST"]),
            Route("/alerts/sentry", self.sentry, methods=["POST"]),
            Route("/alerts/webhook", self.webhook, methods=["POST"]),
        ]

    async def alertmanager(self, request: Request) -> Response:
        token = _secret(self.settings.alert_token)
        header = request.headers.get("authorization", "")
        return await self._take(
            request,
            "alertmanager",
            lambda body: alerts.verified_bearer(header, token),
            lambda body: alerts.from_alertmanager(body, self.secrets),
        )

    async def sentry(self, request: Request) -> Response:
        secret = _secret(self.settings.sentry_secret)
        signature = request.headers.get("sentry-hook-signature", "")
        resource = request.headers.get("sentry-hook-resource", "")
        return await self._take(
            request,
            "sentry",
            lambda body: alerts.verified_sentry(signature, secret, body),
            lambda body: alerts.from_sentry(resource, body, self.projects, self.secrets),
        )

    async def webhook(self, request: Request) -> Response:
        secret = _secret(self.settings.alert_secret)
        signature = request.headers.get("x-molt-signature", "")
        return await self._take(
            request,
            "webhook",
            lambda body: alerts.verified_webhook(signature, secret, body),
            lambda body: alerts.from_webhook(body, self.secrets),
        )

    async def _take(
        self,
        request: Request,
        source: str,
        verified: Callable[[bytes], bool],
        read: Callable[[bytes], list[alerts.Signal]],
    ) -> Response:
        body = await request.body()
        if not verified(body):
            return JSONResponse({"error": "unauthorised"}, status_code=401)
        try:
            signals = read(body)
        except alerts.UnreadableAlert as exc:
            return JSONResponse({"error": f"unreadable {source} delivery: {exc}"}, status_code=400)
        try:
            taken, duplicates = await asyncio.to_thread(oncall.hand_over, self.conn, signals)
        except redis.RedisError:
            return JSONResponse({"error": "Redis unreachable: send again"}, status_code=503)
        return JSONResponse({"accepted": taken, "duplicates": duplicates})
