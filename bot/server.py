"""The bot's HTTP server: /alerts/*, /healthz, /metrics and the routes each configured front
end mounts (/slack/events, /github/webhook; bot/platforms.py), under uvicorn.

It runs in a process of its own (``molt http``, started by ``molt run``), which
only verifies, acks and hands input to the inbox: acks never wait behind the
bot's work for the interpreter lock. /healthz answers for the bot process that
started it, through the bot's registration in Redis. /metrics serves every Molt
process's metrics added up (pipeline/metrics.py), with what Redis says at the time;
each front end's ack time is measured here.

Every request passes ``BodyGuard`` first, the one place a body is read: its declared
length is checked before reading (413), no more than its route's limit is read (413), and
a body that has not arrived within ``BODY_SECONDS`` is given up (408). Every 4xx answered,
there or by a route, is counted and summarised (bot/refusals.py). Paths are matched as
they are: no redirect to the same path with a slash added or removed (its Location would
be built from the request's Host header), so an unknown path is a 404.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import redis
import uvicorn
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bot.base import HttpRoute, Served
from bot.platforms import PLATFORMS
from bot.refusals import Refusals
from bot.spawner import Child, spawner
from pipeline import events, keyspace, metrics, store
from pipeline.config import Settings
from pipeline.incidents.book import OPEN, IncidentBook
from pipeline.queue.targets import Target
from pipeline.service import restart

BOOT_ID_ENV = "MOLT_BOOT_ID"


Endpoint = Callable[[Request], Awaitable[Response]]

#: Seconds a request's body may take to arrive, from the end of its headers.
BODY_SECONDS = 4.0
#: The largest body each route reads (by path, or path prefix ending in /), besides the
#: front ends' routes, which bring their own. The alert sources' deliveries are small.
BODY_LIMITS = {"/alerts/": 1_000_000}
#: The largest body of any other path (none of them reads one).
OTHER_BODY_LIMIT = 64 * 1024
#: How much of a refusal's answer its log line keeps.
ANSWER_LOGGED = 200


class BodyGuard:
    """ASGI middleware in front of every route: reads a request's body within its limits of
    size and time, hands it on whole, and notes every 4xx answer in ``refusals``."""

    def __init__(
        self,
        app: ASGIApp,
        refusals: Refusals,
        routes: frozenset[str],
        limits: dict[str, int],
        seconds: float = BODY_SECONDS,
    ) -> None:
        self.app = app
        self.refusals = refusals
        self.routes = routes
        self.limits = limits
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = str(scope["path"])
        route = path if path in self.routes else metrics.OTHER
        status, answer = 0, b""

        async def sending(message: Message) -> None:
            nonlocal status, answer
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body" and 400 <= status < 500:
                answer = (answer + message.get("body", b""))[:ANSWER_LOGGED]
                if not message.get("more_body", False):
                    # counted before the client has its answer, so a count read after
                    # an answer includes it
                    client = scope.get("client")
                    self.refusals.note(
                        route,
                        status,
                        answer.decode(errors="replace"),
                        str(client[0]) if client else "",
                    )
            await send(message)

        read = await self._body(scope, receive, body_limit(path, self.limits))
        if isinstance(read, Response):
            await read(scope, receive, sending)
        elif read is not None:
            await self.app(scope, _replay(read, receive), sending)
        else:
            return  # the client left before its body was in: nobody to answer

    async def _body(self, scope: Scope, receive: Receive, limit: int) -> bytes | Response | None:
        """The whole body; a 413 or 408 to answer instead; None if the client left."""
        headers = Headers(scope=scope)
        declared = headers.get("content-length")
        if declared is None and "chunked" not in headers.get("transfer-encoding", "").lower():
            return b""
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return _too_large(limit)
        chunks, size = [], 0
        try:
            async with asyncio.timeout(self.seconds):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return None
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > limit:
                        return _too_large(limit)
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        return b"".join(chunks)
        except TimeoutError:
            return JSONResponse(
                {"error": f"the body did not arrive within {self.seconds:g} s"}, status_code=408
            )


def body_limit(path: str, limits: dict[str, int]) -> int:
    for prefix, limit in limits.items():
        if path == prefix or (prefix.endswith("/") and path.startswith(prefix)):
            return limit
    return OTHER_BODY_LIMIT


def _too_large(limit: int) -> Response:
    return JSONResponse({"error": f"the body is over {limit} bytes"}, status_code=413)


def _replay(body: bytes, receive: Receive) -> Receive:
    """``receive`` for the route: the body already read, then whatever comes next (the
    client leaving)."""
    given = False

    async def replaying() -> Message:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replaying


def timed(front: str, endpoint: Endpoint) -> Endpoint:
    """``endpoint``, its time to answer kept as ``molt_ack_seconds{front=...}``."""

    async def acking(request: Request) -> Response:
        began = time.perf_counter()
        try:
            return await endpoint(request)
        finally:
            metrics.acked(front, time.perf_counter() - began)

    return acking


class HttpServer:
    def __init__(
        self,
        host: str,
        port: int,
        conn: redis.Redis,
        settings: Settings,
        boot_id: str,
        front_routes: Sequence[HttpRoute] = (),
        alert_routes: list[Route] | None = None,
        body_seconds: float = BODY_SECONDS,
    ) -> None:
        self.conn = conn
        self.settings = settings
        self.boot_id = boot_id
        self.started_at = time.time()
        routes = [
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/metrics", self.scrape, methods=["GET"]),
        ]
        limits = dict(BODY_LIMITS)
        for front in front_routes:
            routes.append(Route(front.path, timed(front.front, front.endpoint), methods=["POST"]))
            limits[front.path] = front.body_limit
        for alert in alert_routes or []:  # /alerts/*: acked here too
            routes.append(Route(alert.path, timed("alerts", alert.endpoint), methods=alert.methods))
        if settings.ui:
            from bot.ui import StatusPage

            page = StatusPage(settings, conn)
            routes += page.routes()
            # The first walk of a long audit chain takes a while; later pages walk what is new.
            threading.Thread(target=page.warm, name="molt-ui-warm", daemon=True).start()
        self.refusals = Refusals(conn)
        guard = Middleware(
            BodyGuard,
            refusals=self.refusals,
            routes=frozenset(r.path for r in routes),
            limits=limits,
            seconds=body_seconds,
        )
        self.app = Starlette(routes=routes, middleware=[guard])
        self.app.router.redirect_slashes = False
        config = uvicorn.Config(
            self.app,
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
            lifespan="off",
            backlog=2048,
            timeout_graceful_shutdown=5,
        )
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._serve, name="molt-http", daemon=True)

    def _serve(self) -> None:
        asyncio.run(self.server.serve())

    def start(self, timeout: float = 10) -> int:
        """Start serving; returns the bound port (useful with port 0)."""
        self.refusals.start()
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the HTTP server did not start (is the port in use?)")
            time.sleep(0.01)
        return self.port

    @property
    def port(self) -> int:
        for server in self.server.servers:
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        return 0

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=10)
        self.refusals.stop()

    async def healthz(self, request: Request) -> Response:
        """Healthy when the bot that started this server is registered and beating."""
        body: dict[str, Any] = {"boot_id": self.boot_id}
        try:
            info = await asyncio.to_thread(restart.bot_info, self.conn)
        except redis.RedisError:
            return JSONResponse(body | {"status": "degraded", "redis": "unreachable"}, 503)
        if info is None or info.boot_id != self.boot_id or not info.alive:
            return JSONResponse(body | {"status": "starting"}, status_code=503)
        body |= {
            "status": "ok",
            "version": info.version,
            "uptime": round(time.time() - self.started_at, 1),
        }
        return JSONResponse(body)

    async def scrape(self, request: Request) -> Response:
        body, media_type = await asyncio.to_thread(self._metrics)
        return Response(body, media_type=media_type)

    def _metrics(self) -> tuple[bytes, str]:
        return metrics.exposition(self._readings())

    def _readings(self) -> metrics.Readings:
        """What Redis says now: each target's line and lock, events not yet shown, and
        the requests not yet finished by state."""
        readings = metrics.Readings(uptime=time.time() - self.started_at)
        for name in self.settings.target_names():
            target = Target(self.settings.for_target(name), self.conn)
            readings.queue_length[name] = len(target.line)
            held = target.lock.holder()
            phase = ""
            if held is not None:
                phase = str(self.conn.hget(keyspace.request(held.request_id), "phase") or "update")
            readings.lock_phase[name] = phase
            book = IncidentBook(target.settings, self.conn)
            readings.incidents_open[name] = sum(i.status == OPEN for i in book.recent(50))
        try:
            info = self.conn.xpending(keyspace.EVENTS, events.GROUP)
            readings.undelivered = int(info.get("pending", 0)) if isinstance(info, dict) else 0
        except redis.ResponseError:
            pass
        pipe = self.conn.pipeline(transaction=False)
        for request_id in self.conn.smembers(keyspace.ACTIVE_REQUESTS):
            pipe.hget(keyspace.request(str(request_id)), "state")
        for state in pipe.execute():
            if state:
                readings.active[str(state)] = readings.active.get(str(state), 0) + 1
        return readings


def http_server(
    settings: Settings, conn: redis.Redis, boot_id: str
) -> tuple[HttpServer, list[Served]]:
    """The server ``molt http`` runs, not yet serving, with the routes of each configured
    front end, which hand what arrives to the inbox. Returns the server and what the front
    ends started for it, which the caller stops with the server."""
    served = [s for s in (p.serve(settings, conn) for p in PLATFORMS) if s is not None]
    from bot.alerts import AlertEndpoints

    server = HttpServer(
        settings.http_host,
        settings.http_port,
        conn,
        settings,
        boot_id,
        [route for s in served for route in s.routes],
        AlertEndpoints(settings, conn).routes(),
    )
    return server, served


def _stop(served: list[Served]) -> None:
    for each in served:
        each.stop()


def serve(settings: Settings) -> int:
    """``molt http``: serve until SIGTERM or until the bot that started it is gone."""
    boot_id = os.environ.get(BOOT_ID_ENV, "")
    parent = os.getppid()
    conn = store.connect(settings)
    server, served = http_server(settings, conn, boot_id)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    port = server.start()
    conn.set(keyspace.http_port(boot_id), port, ex=3600)
    while not stopping.wait(0.2):
        if os.getppid() != parent:
            break
    _stop(served)
    server.stop()
    return 0


class HttpThread:
    """The same server on a thread of the bot's own process (``Bot(http_thread=True)``), for
    a bot run inside another program, such as the front ends' in-process tests: its acks
    then share the interpreter lock with the bot's work, which is what the process avoids."""

    def __init__(self, settings: Settings, conn: redis.Redis, boot_id: str) -> None:
        self.settings = settings
        self.conn = conn
        self.boot_id = boot_id
        self.port = 0
        self._server: HttpServer | None = None
        self._served: list[Served] = []

    @property
    def alive(self) -> bool:
        return self._server is not None

    def start(self) -> int:
        self._server, self._served = http_server(self.settings, self.conn, self.boot_id)
        self.port = self._server.start()
        return self.port

    def stop(self) -> None:
        server, self._server = self._server, None
        served, self._served = self._served, []
        _stop(served)
        if server is not None:
            server.stop()


class HttpProcess:
    """The HTTP server's process, as ``molt run`` starts and stops it."""

    def __init__(
        self, settings: Settings, conn: redis.Redis, boot_id: str, log: Path | None
    ) -> None:
        self.settings = settings
        self.conn = conn
        self.boot_id = boot_id
        self.log = log
        self.port = 0
        self._proc: Child | None = None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 30) -> int:
        self.conn.delete(keyspace.http_port(self.boot_id))
        self._proc = spawner.popen(["http"], log_to=self.log, env={BOOT_ID_ENV: self.boot_id})
        deadline = time.monotonic() + timeout
        while True:
            port = self.conn.get(keyspace.http_port(self.boot_id))
            if port:
                self.port = int(port)
                return self.port
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                where = f" (see {self.log})" if self.log else ""
                raise RuntimeError(
                    f"the HTTP server did not start on {self.settings.http_host}:"
                    f"{self.settings.http_port}{where}"
                )
            time.sleep(0.01)

    def stop(self, timeout: float = 10) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
