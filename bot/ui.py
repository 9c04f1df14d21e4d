"""The status page: a read-only view of Molt on its HTTP port, off unless ``MOLT_UI=true``.

``GET /`` shows each target (what runs now, the waiting line, open incidents), recent
updates, releases with their signature status and whether the audit chain holds;
``GET /requests/<id>``
one request with its update's timeline (pipeline/requests/timeline.py) and checks. Pages are
rendered on the server from templates/ui/*.html; they refresh themselves while an
update runs. Request text is shown redacted as in chat; no setting's value is shown.

Every page asks for ``MOLT_UI_TOKEN``: as ``Authorization: Bearer <token>``, or a session
cookie given by a one-time link (``molt ui-link``). Keys:
  molt:ui:link:<key>          a link not yet used (expires after LINK_SECONDS)
  molt:ui:session:<id>        a session a link opened (expires after SESSION_SECONDS)
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from datetime import datetime
from functools import cache
from typing import Any
from urllib.parse import quote

import redis
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from bot.rendering import as_html, duration, short, timestamp
from pipeline import audit, keyspace
from pipeline.config import TEMPLATES_DIR, Settings
from pipeline.incidents.book import OPEN, IncidentBook
from pipeline.intake import control
from pipeline.redaction import redact, same_secret
from pipeline.releases import ledger, manifests
from pipeline.requests import timeline
from pipeline.requests.store import RequestStore

LINK_SECONDS = 600
SESSION_SECONDS = 12 * 3600
COOKIE = "molt_ui"
#: Seconds between reloads of a page while an update runs.
REFRESH_SECONDS = 3
RECENT = 15
RELEASES = 10
DENIED = (
    "The status page needs MOLT_UI_TOKEN: send it as `Authorization: Bearer <token>`, "
    "or open a link from `molt ui-link`.\n"
)


def _signed_at(at: str) -> str:
    """A manifest's ISO time as the page shows times: to the minute, in UTC."""
    try:
        moment = datetime.fromisoformat(at.replace("Z", "+00:00"))
    except ValueError:
        return at
    return timestamp(moment.timestamp())


def new_link(conn: redis.Redis, host: str, port: int, page: str = "/") -> str:
    """A link that opens the status page (at ``page``) once, within LINK_SECONDS."""
    key = secrets.token_urlsafe(24)
    conn.set(keyspace.ui_link(key), "1", ex=LINK_SECONDS)
    then = f"&next={quote(page, safe='/')}" if page != "/" else ""
    return f"http://{host}:{port}/ui/login?key={key}{then}"


@cache
def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES_DIR / "ui"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(duration=duration, short=short, timestamp=timestamp, markup=as_html)
    return env


class StatusPage:
    """The pages and their access check, as routes for bot/server.py."""

    def __init__(self, settings: Settings, conn: redis.Redis) -> None:
        self.settings = settings
        self.conn = conn
        token = settings.ui_token.get_secret_value() if settings.ui_token else ""
        self.token = token
        self.known = settings.secrets()
        self._audit: audit.ChainCheck | None = None

    def routes(self) -> list[Route]:
        return [
            Route("/", self.index, methods=["GET"]),
            Route("/requests/{request_id}", self.request, methods=["GET"]),
            Route("/ui/login", self.login, methods=["GET"]),
        ]

    def allowed(self, request: Request) -> bool:
        """The bearer token, or a session cookie a one-time link opened."""
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and self.token:
            return same_secret(given.strip(), self.token)
        session = request.cookies.get(COOKIE, "")
        return bool(session) and bool(self.conn.exists(keyspace.ui_session(session)))

    async def login(self, request: Request) -> Response:
        key = request.query_params.get("key", "")
        used = await asyncio.to_thread(self.conn.getdel, keyspace.ui_link(key)) if key else None
        if not used:
            return PlainTextResponse("This link was used or has expired.\n" + DENIED, 401)
        session = secrets.token_urlsafe(24)
        await asyncio.to_thread(
            self.conn.set, keyspace.ui_session(session), "1", ex=SESSION_SECONDS
        )
        page = request.query_params.get("next", "/")
        # Only a page of this server: no other host (``//host``, ``/\\host``) is sent to.
        local = page.startswith("/") and not page.startswith(("//", "/\\"))
        reply = RedirectResponse(page if local else "/", status_code=303)
        reply.set_cookie(COOKIE, session, max_age=SESSION_SECONDS, httponly=True, samesite="strict")
        return reply

    async def index(self, request: Request) -> Response:
        if not await asyncio.to_thread(self.allowed, request):
            return PlainTextResponse(DENIED, 401)
        return HTMLResponse(await asyncio.to_thread(self.render_index))

    async def request(self, request: Request) -> Response:
        if not await asyncio.to_thread(self.allowed, request):
            return PlainTextResponse(DENIED, 401)
        page = await asyncio.to_thread(self.render_request, request.path_params["request_id"])
        if page is None:
            return PlainTextResponse("No such request.\n", 404)
        return HTMLResponse(page)

    # -- what the pages show -------------------------------------------------------------

    def _shown(self, context: dict[str, Any]) -> dict[str, Any]:
        """A request as the pages show it: its text redacted as in chat."""
        return context | {"text": redact(str(context.get("text", "")), self.known)}

    def render_index(self) -> str:
        views = [self.settings.for_target(name) for name in self.settings.target_names()]
        targets = [self._target(view) for view in views]
        page = {
            "targets": targets,
            "fleet": self.settings.fleet,
            "version": manifests.running_version(),
            "recent": [self._shown(r) for r in control.history(self.conn, RECENT)],
            "releases": sorted(
                (m for view in views for m in self._releases(view)),
                key=lambda m: m["at"],
                reverse=True,
            )[:RELEASES],
            "chain": self._chain(),
            "refresh": REFRESH_SECONDS if any(t["current"] for t in targets) else 0,
        }
        return _environment().get_template("index.html").render(page)

    def _target(self, view: Settings) -> dict[str, Any]:
        """One target as the index shows it: what runs on it now and what waits."""
        status = control.status(view, self.conn)
        current = status["current"]
        if current:
            found = RequestStore(self.conn).get(current["request_id"])
            drawn = timeline.timeline(found, audit.entries(self.conn, found.id))
            current = self._shown(current) | {"elapsed": drawn.total}
        return {
            "name": view.target_name,
            "paused": status["paused"],
            "autonomy": status["autonomy"],
            "current": current,
            "waiting": [self._shown(r) for r in status["requests"]],
            "incidents": [
                i.context() | {"summary": redact(i.summary, self.known)}
                for i in IncidentBook(view, self.conn).recent(RECENT)
                if i.status == OPEN
            ],
        }

    def render_request(self, token: str) -> str | None:
        found = RequestStore(self.conn).find(token)
        if found is None:
            return None
        drawn = timeline.timeline(found, audit.entries(self.conn, found.id))
        page = {
            "request": self._shown(found.context()) | {"updated_at": found.updated_at},
            "timeline": drawn,
            "bars": drawn.scaled(),
            "checks": (found.result or {}).get("checks", []),
            "refresh": 0 if found.terminal else REFRESH_SECONDS,
        }
        return _environment().get_template("request.html").render(page)

    def _releases(self, view: Settings) -> list[dict[str, Any]]:
        """The newest releases, the one the live checkout runs marked."""
        known = ledger.read(view, self.conn)
        signed = [(m, "signed") for m in known.good]
        signed += [(m, "untrusted key") for m in known.untrusted]
        signed += [(m, "altered") for m in known.altered]
        signed.sort(key=lambda pair: pair[0].release, reverse=True)
        running = control.live(view, self.conn).get("release")
        return [
            {
                "target": view.target_name,
                "release": m.release,
                "kind": m.kind.value,
                "codename": m.codename,
                "commit": m.short,
                "at": _signed_at(m.at),
                "signature": signature,
                "live": m.release == running,
            }
            for m, signature in signed[:RELEASES]
        ]

    def warm(self) -> None:
        with contextlib.suppress(redis.RedisError):  # the first page walks it then
            self._chain()

    def _chain(self) -> audit.ChainCheck:
        """The audit chain, walked from where this page last found it holding (the whole
        walk is ``molt audit verify``), so that a long chain keeps the page quick."""
        self._audit = audit.verify(self.conn, after=self._audit)
        return self._audit
