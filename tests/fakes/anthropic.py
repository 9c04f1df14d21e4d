"""The Anthropic Messages API on loopback, for the real ``anthropic.Anthropic(base_url=...)``.

``POST /v1/messages`` answers from a script of turns, in order: messages with text and
``tool_use`` blocks (ids made up here) and a stop reason, or errors such as 529 with
``retry-after-ms``; a turn may also be a function of the request body.
``POST /v1/messages/count_tokens`` counts a prompt. Both check the API key (``x-api-key``, or
``Authorization: Bearer`` as newer SDKs send it) and the shape of what they get (alternating
roles, a result for every tool use, a forced tool that exists, at most four cache
breakpoints), as the API does, and every request is recorded for assertions.

Tokens are estimated as the characters of each block's JSON / 4. Prompt caching is simulated
the way the API describes it: a ``cache_control`` breakpoint writes the prompt up to it to the
cache (if it is at least 1,024 tokens); a later prompt that starts with a written prefix (at
any block boundary up to 20 blocks before a breakpoint) reads it from the cache. The order is
tools, then system, then messages.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.fakes.loopback import HttpFake

API_KEY = "sk-ant-api03-molt-test-key-0000000000"
CHARS_PER_TOKEN = 4
MIN_CACHEABLE = 1024
LOOKBACK = 20


@dataclass
class Turn:
    """One scripted answer: a message (``content``), or an error (``status`` ≠ 200)."""

    content: list[dict[str, Any]] = field(default_factory=list)
    stop_reason: str = ""
    status: int = 200
    error_type: str = ""
    error_message: str = ""
    retry_after_ms: int | None = None
    output_tokens: int = 40


def text(words: str) -> dict[str, Any]:
    return {"type": "text", "text": words}


def tool(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """A tool_use block; the fake gives it an id when it is sent."""
    return {"type": "tool_use", "name": name, "input": arguments}


def reply(*blocks: dict[str, Any], stop_reason: str = "", output_tokens: int = 40) -> Turn:
    uses = any(b["type"] == "tool_use" for b in blocks)
    return Turn(
        content=list(blocks),
        stop_reason=stop_reason or ("tool_use" if uses else "end_turn"),
        output_tokens=output_tokens,
    )


def overloaded(retry_after_ms: int = 10) -> Turn:
    return Turn(
        status=529,
        error_type="overloaded_error",
        error_message="Overloaded",
        retry_after_ms=retry_after_ms,
    )


def rate_limited(retry_after_ms: int = 10) -> Turn:
    return Turn(
        status=429,
        error_type="rate_limit_error",
        error_message="Number of request tokens has exceeded your per-minute rate limit",
        retry_after_ms=retry_after_ms,
    )


@dataclass(frozen=True)
class Call:
    """One request the fake answered."""

    path: str
    headers: dict[str, str]
    raw: bytes
    body: dict[str, Any]
    status: int
    response: dict[str, Any]
    at: float

    def user_text(self) -> str:
        """Every text and tool result the request sends in user turns, joined."""
        parts = []
        for message in self.body.get("messages", []):
            if message.get("role") != "user":
                continue
            content = message["content"]
            if isinstance(content, str):
                parts.append(content)
                continue
            for block in content:
                if block.get("type") == "text":
                    parts.append(block["text"])
                elif block.get("type") == "tool_result":
                    inner = block.get("content")
                    parts.append(inner if isinstance(inner, str) else json.dumps(inner))
        return "\n".join(parts)

    def tool_results(self) -> list[dict[str, Any]]:
        """The tool results of the newest user turn."""
        last = self.body.get("messages", [])[-1]
        content = last["content"] if isinstance(last.get("content"), list) else []
        return [b for b in content if b.get("type") == "tool_result"]


def _tokens(value: Any) -> int:
    return math.ceil(len(json.dumps(value, sort_keys=True)) / CHARS_PER_TOKEN)


def _blocks(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The prompt as the cache sees it: tools, system blocks, then every message block."""
    out: list[dict[str, Any]] = []
    out.extend(body.get("tools") or [])
    system = body.get("system") or []
    out.extend([{"type": "text", "text": system}] if isinstance(system, str) else system)
    for message in body.get("messages") or []:
        content = message.get("content")
        if isinstance(content, str):
            out.append({"role": message.get("role"), "type": "text", "text": content})
        else:
            out.extend({"role": message.get("role"), **block} for block in content or [])
    return out


class FakeAnthropic(HttpFake):
    """The Messages API on 127.0.0.1, port 0; a context manager, or start()/stop()."""

    name = "fake Anthropic API"

    def __init__(self, *turns: Turn | Callable[[dict[str, Any]], Turn], api_key: str = API_KEY):
        super().__init__()
        self.handler = _Handler
        self.api_key = api_key
        self._script: list[Turn | Callable[[dict[str, Any]], Turn]] = list(turns)
        self._calls: list[Call] = []
        self._cached: set[str] = set()
        self._ids = itertools.count(1)
        self._changed = threading.Condition()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """The environment that points Molt at this fake."""
        return {"ANTHROPIC_API_KEY": self.api_key, "ANTHROPIC_BASE_URL": self.url}

    # -- the script and what was asked -------------------------------------

    def add(self, *turns: Turn | Callable[[dict[str, Any]], Turn]) -> None:
        with self._changed:
            self._script.extend(turns)

    @property
    def left(self) -> int:
        with self._changed:
            return len(self._script)

    def calls(self, path: str = "/v1/messages") -> list[Call]:
        with self._changed:
            return [c for c in self._calls if c.path == path]

    def answered(self) -> list[Call]:
        """Message calls answered with a message (not an error)."""
        return [c for c in self.calls() if c.status == 200]

    def wait_for_calls(self, count: int, timeout: float = 30.0) -> list[Call]:
        deadline = time.monotonic() + timeout
        with self._changed:
            while len([c for c in self._calls if c.path == "/v1/messages"]) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"fewer than {count} calls within {timeout} s")
                self._changed.wait(left)
        return self.calls()

    # -- answering -----------------------------------------------------------

    def handle(
        self, path: str, headers: dict[str, str], raw: bytes
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = {}
        status, response, extra = self._answer(path, headers, body)
        with self._changed:
            self._calls.append(
                Call(path, headers, raw, body, status, copy.deepcopy(response), time.time())
            )
            self._changed.notify_all()
        return status, response, extra

    def _answer(
        self, path: str, headers: dict[str, str], body: dict[str, Any]
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        bearer = headers.get("authorization", "").removeprefix("Bearer ")
        if self.api_key not in (headers.get("x-api-key"), bearer):
            return _error(401, "authentication_error", "invalid x-api-key")
        if not headers.get("anthropic-version"):
            return _error(400, "invalid_request_error", "anthropic-version header is required")
        problem = _invalid(body)
        if problem:
            return _error(400, "invalid_request_error", problem)
        if path == "/v1/messages/count_tokens":
            return 200, {"input_tokens": sum(_tokens(b) for b in _blocks(body))}, {}
        if path != "/v1/messages":
            return _error(404, "not_found_error", f"no route {path}")
        with self._changed:
            if not self._script:
                return _error(400, "invalid_request_error", "the fake has no scripted turn left")
            step = self._script.pop(0)
        turn = step(body) if callable(step) else step
        if turn.status != 200:
            extra = {"retry-after-ms": str(turn.retry_after_ms)} if turn.retry_after_ms else {}
            status, error, _ = _error(turn.status, turn.error_type, turn.error_message)
            return status, error, extra
        content = []
        for block in turn.content:
            block = copy.deepcopy(block)
            if block["type"] == "tool_use":
                block.setdefault("id", f"toolu_fake_{next(self._ids):04d}")
            content.append(block)
        usage = self._usage(body)
        usage["output_tokens"] = turn.output_tokens
        message = {
            "id": f"msg_fake_{next(self._ids):04d}",
            "type": "message",
            "role": "assistant",
            "model": body.get("model", ""),
            "content": content,
            "stop_reason": turn.stop_reason,
            "stop_sequence": None,
            "usage": usage,
        }
        return 200, message, {}

    def _usage(self, body: dict[str, Any]) -> dict[str, int]:
        blocks = _blocks(body)
        sizes, hashes = [], []
        digest = hashlib.sha256()
        for block in blocks:
            plain = {k: v for k, v in block.items() if k != "cache_control"}
            digest.update(json.dumps(plain, sort_keys=True).encode())
            hashes.append(digest.copy().hexdigest())
            sizes.append(_tokens(plain))
        total = sum(sizes)
        breakpoints = [i for i, b in enumerate(blocks) if b.get("cache_control")]
        read_upto = 0  # blocks [0, read_upto) come from the cache
        with self._changed:
            for point in breakpoints:
                for i in range(point, max(-1, point - LOOKBACK), -1):
                    if hashes[i] in self._cached:
                        read_upto = max(read_upto, i + 1)
                        break
            written_upto = read_upto
            for point in breakpoints:
                if sum(sizes[: point + 1]) >= MIN_CACHEABLE and point + 1 > read_upto:
                    self._cached.add(hashes[point])
                    written_upto = max(written_upto, point + 1)
        read = sum(sizes[:read_upto])
        written = sum(sizes[read_upto:written_upto])
        return {
            "input_tokens": total - read - written,
            "cache_read_input_tokens": read,
            "cache_creation_input_tokens": written,
            "output_tokens": 0,
        }


def _error(status: int, kind: str, message: str) -> tuple[int, dict[str, Any], dict[str, str]]:
    return status, {"type": "error", "error": {"type": kind, "message": message}}, {}


def _invalid(body: dict[str, Any]) -> str:
    """What the API would refuse in a request body ("" if nothing)."""
    if not isinstance(body.get("model"), str) or not body.get("model"):
        return "model: field required"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    tools = {t.get("name") for t in body.get("tools") or []}
    choice = body.get("tool_choice") or {}
    if choice.get("type") == "tool" and choice.get("name") not in tools:
        return f"tool_choice names an unknown tool {choice.get('name')!r}"
    breakpoints = sum(1 for b in _blocks(body) if b.get("cache_control"))
    if breakpoints > 4:
        return f"a maximum of 4 blocks with cache_control may be provided, found {breakpoints}"
    expected = "user"
    pending: set[str] = set()
    for n, message in enumerate(messages):
        if message.get("role") != expected:
            return f"messages.{n}: roles must alternate, starting with user"
        content = message.get("content")
        blocks = [] if isinstance(content, str) else content or []
        if expected == "user":
            answered = {b.get("tool_use_id") for b in blocks if b.get("type") == "tool_result"}
            if pending - answered:
                return f"messages.{n}: tool_use ids without tool_result: {sorted(pending)}"
            pending = set()
        else:
            pending = {b.get("id") for b in blocks if b.get("type") == "tool_use"}
        expected = "assistant" if expected == "user" else "user"
    return ""


class _Handler(BaseHTTPRequestHandler):
    owner: FakeAnthropic
    server_version = "FakeAnthropic/1.0"

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        path = self.path.split("?", 1)[0]
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, body, extra = self.owner.handle(path, headers, raw)
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("request-id", f"req_fake_{time.monotonic_ns()}")
        for name, value in extra.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the calls are recorded on the fake instead."""
