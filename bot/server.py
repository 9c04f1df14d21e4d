"""The bot's HTTP server: /slack/events, /healthz, /metrics, under uvicorn."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from pipeline import events
from pipeline.locking import WaitingLine
from pipeline.releases import running_version
from pipeline.requests import RequestStore

Endpoint = Callable[[Request], Awaitable[Response]]


class HttpServer:
    def __init__(
        self,
        host: str,
        port: int,
        conn: redis.Redis,
        target_id: str,
        boot_id: str,
        slack_endpoint: Endpoint | None = None,
    ) -> None:
        self.conn = conn
        self.target_id = target_id
        self.boot_id = boot_id
        self.started_at = time.time()
        routes = [
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/metrics", self.metrics, methods=["GET"]),
        ]
        if slack_endpoint is not None:
            routes.append(Route("/slack/events", slack_endpoint, methods=["POST"]))
        self.app = Starlette(routes=routes)
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

    async def healthz(self, request: Request) -> Response:
        body: dict[str, Any] = {
            "status": "ok",
            "version": running_version(),
            "boot_id": self.boot_id,
            "uptime": round(time.time() - self.started_at, 1),
        }
        try:
            await asyncio.to_thread(self.conn.ping)
        except redis.RedisError:
            body["status"] = "degraded"
            body["redis"] = "unreachable"
            return JSONResponse(body, status_code=503)
        return JSONResponse(body)

    async def metrics(self, request: Request) -> Response:
        return PlainTextResponse(await asyncio.to_thread(self._metrics))

    def _metrics(self) -> str:
        counts: dict[str, int] = {}
        for found in RequestStore(self.conn).recent(1000):
            counts[found.state.value] = counts.get(found.state.value, 0) + 1
        lines = ["# TYPE molt_requests gauge"]
        lines += [f'molt_requests{{state="{state}"}} {n}' for state, n in sorted(counts.items())]
        lines += [
            "# TYPE molt_queue_length gauge",
            f"molt_queue_length {len(WaitingLine(self.conn, self.target_id))}",
        ]
        pending = 0
        try:
            info = self.conn.xpending(events.STREAM, events.GROUP)
            pending = int(info.get("pending", 0)) if isinstance(info, dict) else 0
        except redis.ResponseError:
            pass
        lines += ["# TYPE molt_events_pending gauge", f"molt_events_pending {pending}"]
        lines += [
            "# TYPE molt_uptime_seconds gauge",
            f"molt_uptime_seconds {time.time() - self.started_at:.1f}",
        ]
        return "\n".join(lines) + "\n"
