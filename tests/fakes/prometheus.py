"""Prometheus's HTTP API, the instant queries of ``/api/v1/query`` (GET, or POST with a form
body), answering as the real one does: ``{"status": "success", "data": {"resultType":
"vector", "result": [{"metric": {...}, "value": [<time>, "<value>"]}]}}``, and errors as
``{"status": "error", "errorType": "bad_data", "error": "..."}`` with 400, 422 or 503.

A test says what each query answers, in turn (the last answer repeats); a query it did not
set answers a parse error. With a token set, a request without ``Authorization: Bearer
<token>`` gets 401 (a proxy's plain text), as Prometheus behind an authenticating proxy does.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.fakes.loopback import HttpFake


@dataclass(frozen=True)
class Failure:
    """An error answer: Prometheus's error object with its HTTP status."""

    error: str
    error_type: str = "bad_data"
    status: int = 400


#: What a query answers: a value (one series), several values (one series each), a failure.
Answer = float | str | list[float] | Failure


@dataclass
class Asked:
    query: str
    authorization: str


@dataclass
class FakePrometheus(HttpFake):
    token: str = ""
    #: An error that repeats the request's Authorization header, as some proxies' do.
    echo_authorization: bool = False
    answers: dict[str, list[Answer]] = field(default_factory=dict)
    asked: list[Asked] = field(default_factory=list)
    name = "fake prometheus"

    def __post_init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def answer(self, query: str, *answers: Answer) -> None:
        """``query`` answers these in turn, then the last one again and again."""
        with self._lock:
            self.answers[query] = list(answers)

    def queries(self, query: str) -> int:
        """How often ``query`` was asked."""
        with self._lock:
            return sum(1 for asked in self.asked if asked.query == query)

    def reply(self, query: str, authorization: str) -> tuple[int, dict[str, Any] | str]:
        with self._lock:
            self.asked.append(Asked(query, authorization))
            if self.token and authorization != f"Bearer {self.token}":
                return 401, "Unauthorized\n"
            if self.echo_authorization:
                said = f"cannot parse request (Authorization: {authorization})"
                return 400, {"status": "error", "errorType": "bad_data", "error": said}
            if not query:
                return 400, _error(Failure('invalid parameter "query": unknown expression'))
            answers = self.answers.get(query)
            if answers is None:
                return 400, _error(Failure(f'1:1: parse error: unknown query "{query}"'))
            answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if isinstance(answer, Failure):
            return answer.status, _error(answer)
        values = answer if isinstance(answer, list) else [answer]
        now = round(time.time(), 3)
        result = [
            {"metric": {"instance": f"app-{index}"}, "value": [now, _number(value)]}
            for index, value in enumerate(values)
        ]
        return 200, {"status": "success", "data": {"resultType": "vector", "result": result}}

    class handler(BaseHTTPRequestHandler):
        owner: FakePrometheus

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            self._answer(url.path, urllib.parse.parse_qs(url.query))

        def do_POST(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            form = urllib.parse.parse_qs(self.rfile.read(length).decode())
            self._answer(url.path, urllib.parse.parse_qs(url.query) | form)

        def _answer(self, path: str, params: dict[str, list[str]]) -> None:
            if path != "/api/v1/query":
                self._send(404, "404 page not found\n")
                return
            query = (params.get("query") or [""])[0]
            status, body = self.owner.reply(query, self.headers.get("Authorization", ""))
            self._send(status, body)

        def _send(self, status: int, body: dict[str, Any] | str) -> None:
            json_body = not isinstance(body, str)
            raw = (json.dumps(body) if json_body else str(body)).encode()
            self.send_response(status)
            kind = "application/json" if json_body else "text/plain; charset=utf-8"
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)


def _error(failure: Failure) -> dict[str, Any]:
    return {"status": "error", "errorType": failure.error_type, "error": failure.error}


def _number(value: float | str) -> str:
    """A sample's value as Prometheus writes it: a string ("0.05", "NaN", "+Inf")."""
    if isinstance(value, str):
        return value
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))
