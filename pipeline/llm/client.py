"""The model API: one client per task, every request redacted, every token counted.

``anthropic`` is imported when the first call is made, never at module import: it takes over
a second to import, and the bot and its workers load pipeline/ at start-up. Errors the SDK
retries (connection errors, timeouts, 408, 409, 429, 5xx and 529) are retried by the SDK,
honouring ``retry-after``; what still fails becomes an ``LLMError`` saying what happened.
"""

from __future__ import annotations

import ssl
import time
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import structlog

from pipeline.config import Settings
from pipeline.exceptions import LLMError
from pipeline.redaction import redact, redact_data
from pipeline.usage import Usage, tokens

log = structlog.get_logger(__name__)

#: The SDK's own default; each retry waits as ``retry-after`` says, or backs off up to 8 s.
MAX_RETRIES = 2
#: One call never waits longer than this for an answer, whatever time is left.
CALL_TIMEOUT = 600.0


@dataclass(frozen=True)
class Reply:
    """One answer of the model, as plain blocks ({type: text, text} / {type: tool_use, ...})."""

    content: list[dict[str, Any]]
    stop_reason: str
    usage: Usage

    def tool_uses(self) -> list[dict[str, Any]]:
        return [block for block in self.content if block["type"] == "tool_use"]

    def text(self) -> str:
        return "\n".join(b["text"] for b in self.content if b["type"] == "text").strip()


@dataclass
class Claude:
    """The model for one task (planning one request, implementing one, reviewing one).

    Limits hold across all calls of the task: ``max_tokens`` tokens in all (input, cached
    and output) and, when ``deadline`` (``time.monotonic()``) is set, the time left.
    """

    settings: Settings
    task: str  # "planning", "implementation", "review": for messages and the audit
    max_tokens: int = 0  # 0: MOLT_LLM_MAX_TOKENS
    deadline: float | None = None
    usage: Usage = field(default_factory=Usage)
    client: Any = None  # an ``anthropic.Anthropic``; built on the first call

    def __post_init__(self) -> None:
        self.max_tokens = self.max_tokens or self.settings.llm_max_tokens
        self._secrets = tuple(self.settings.secrets())

    @property
    def model(self) -> str:
        return self.settings.model

    def _sdk(self) -> Any:
        if self.client is None:
            self.client = make_client(self.settings)
        return self.client

    def close(self) -> None:
        """Close the SDK client's connections, if one was built."""
        if self.client is not None:
            self.client.close()
            self.client = None

    def _timeout(self) -> float:
        if self.deadline is None:
            return min(CALL_TIMEOUT, self.settings.llm_timeout)
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise LLMError(
                f"{self.task} ran out of time (MOLT_LLM_TIMEOUT={self.settings.llm_timeout:.0f}s)"
            )
        return max(1.0, min(CALL_TIMEOUT, left))

    def send(
        self,
        *,
        system: list[dict[str, Any]],
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        tool_choice: dict[str, Any],
        max_output: int,
    ) -> Reply:
        """One Messages API call; what goes out is redacted first, what comes back is counted."""
        if self.usage.total >= self.max_tokens:
            raise LLMError(
                f"{self.task} used its budget of {self.max_tokens:,} tokens "
                f"(MOLT_LLM_MAX_TOKENS) before it was done"
            )
        timeout = self._timeout()
        body = redact_data({"system": system, "messages": messages, "tools": tools}, self._secrets)
        sdk = self._sdk()
        errors = _errors()
        try:
            message = sdk.messages.create(
                model=self.model,
                max_tokens=max_output,
                system=body["system"],
                messages=body["messages"],
                tools=body["tools"],
                tool_choice=tool_choice,
                timeout=timeout,
            )
        except errors.APIStatusError as exc:
            raise self._failed(exc, exc.status_code) from exc
        except errors.APITimeoutError as exc:
            raise LLMError(
                f"the model API did not answer within {timeout:.0f}s "
                f"(tried {MAX_RETRIES + 1} times)"
            ) from exc
        except errors.APIConnectionError as exc:
            raise LLMError(
                f"the model API could not be reached (tried {MAX_RETRIES + 1} "
                f"times): {redact(str(exc), self._secrets)[:200]}"
            ) from exc
        usage = Usage(
            input_tokens=tokens(message.usage.input_tokens),
            output_tokens=tokens(message.usage.output_tokens),
            cache_read_input_tokens=tokens(getattr(message.usage, "cache_read_input_tokens", 0)),
            cache_creation_input_tokens=tokens(
                getattr(message.usage, "cache_creation_input_tokens", 0)
            ),
            calls=1,
        )
        self.usage.add(usage)
        content = [_plain(block) for block in message.content]
        reply = Reply([c for c in content if c], str(message.stop_reason or ""), usage)
        log.info(
            "model call",
            task=self.task,
            model=self.model,
            stop_reason=reply.stop_reason,
            tools=[b["name"] for b in reply.tool_uses()],
            **usage.to_dict(),
        )
        return reply

    def _failed(self, exc: Any, status: int) -> LLMError:
        kind, text = "", ""
        body = getattr(exc, "body", None)
        if isinstance(body, dict):
            inner = body.get("error")
            error: dict[str, Any] = inner if isinstance(inner, dict) else body
            kind = str(error.get("type") or "")
            text = str(error.get("message") or "")
        detail = redact(" ".join(f"{kind} {text}".split()), self._secrets)[:200]
        if status in (408, 409, 429) or status >= 500:
            return LLMError(
                f"the model API answered {status} {detail} (tried {MAX_RETRIES + 1} times)",
                status=status,
            )
        return LLMError(f"the model API refused the call: {status} {detail}", status=status)

    def count_tokens(
        self,
        *,
        system: list[dict[str, Any]],
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
    ) -> int:
        """The API's count of a prompt (``messages.count_tokens``), redacted as ``send`` would."""
        body = redact_data({"system": system, "messages": messages, "tools": tools}, self._secrets)
        counted = self._sdk().messages.count_tokens(model=self.model, **body)
        return int(counted.input_tokens)


def make_client(settings: Settings) -> Any:
    """The SDK client for ``settings``: its retries, our base URL and key."""
    import anthropic  # deferred: see the module docstring

    if not settings.anthropic_api_key:
        raise LLMError("change requests in words need ANTHROPIC_API_KEY, which is not set")
    return anthropic.Anthropic(
        api_key=settings.anthropic_api_key.get_secret_value(),
        base_url=settings.anthropic_base_url or None,
        max_retries=MAX_RETRIES,
        timeout=min(CALL_TIMEOUT, settings.llm_timeout),
        http_client=anthropic.DefaultHttpxClient(verify=_tls()),
    )


@cache
def _tls() -> ssl.SSLContext:
    """One verifying TLS context for every client this process makes: building one reads
    the system's certificates, which costs more than the rest of a client."""
    return ssl.create_default_context()


def _errors() -> Any:
    import anthropic

    return anthropic


def _plain(block: Any) -> dict[str, Any]:
    if block.type == "text":
        return {"type": "text", "text": str(block.text)}
    if block.type == "tool_use":
        given = block.input if isinstance(block.input, dict) else {}
        return {"type": "tool_use", "id": str(block.id), "name": str(block.name), "input": given}
    return {}
