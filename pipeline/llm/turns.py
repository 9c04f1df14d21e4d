"""One conversation with the model and its tools: the loop the planner and the implementer share.

Each turn moves the prompt cache's breakpoint to the newest block, calls the model, and hands
the reply to the task's ``respond``, which answers with the next user message (tool results,
a nudge) or ends the conversation with its result. A task that has no result after its limit
of model calls fails with LLMError.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pipeline.exceptions import LLMError
from pipeline.llm.client import Claude, Reply
from pipeline.llm.prompts import CACHE

T = TypeVar("T")


def tool(
    name: str, description: str, properties: dict[str, Any], required: list[str]
) -> dict[str, Any]:
    """A tool the model may call, whose input is one object."""
    return {
        "name": name,
        "description": description,
        "input_schema": {"type": "object", "properties": properties, "required": required},
    }


def text(body: str) -> dict[str, Any]:
    return {"type": "text", "text": body}


def tool_result(use: dict[str, Any], content: str, *, error: bool = False) -> dict[str, Any]:
    """The answer to one tool call; ``error`` tells the model the call was refused or failed."""
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": use["id"], "content": content}
    if error:
        block["is_error"] = True
    return block


def mark_last(messages: list[dict[str, Any]]) -> None:
    """Move the conversation's cache breakpoint to its newest block."""
    for message in messages:
        if isinstance(message["content"], list):
            for block in message["content"]:
                block.pop("cache_control", None)
    last = messages[-1]["content"]
    if isinstance(last, list) and last:
        last[-1]["cache_control"] = CACHE


@dataclass(frozen=True)
class Done(Generic[T]):
    """What ``respond`` returns to end the conversation with ``value``."""

    value: T


def converse(
    claude: Claude,
    *,
    system: list[dict[str, Any]],
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]],
    tool_choice: dict[str, Any],
    max_output: int,
    limit: int,
    respond: Callable[[int, Reply], Done[T] | list[dict[str, Any]]],
    what: str,
    setting: str = "",
    last_call: str = "",
    before: Callable[[], None] = lambda: None,
) -> T:
    """Take turns until ``respond`` is done, at most ``limit`` model calls.

    ``what`` and ``setting`` name the task and the limit's setting in the failure;
    ``last_call`` is said to the model before its last call; ``before`` runs before each
    call and may raise to stop the conversation.
    """
    for turn in range(1, limit + 1):
        before()
        if turn == limit and last_call:
            messages[-1]["content"].append(text(last_call))
        if turn > 1:
            mark_last(messages)
        reply = claude.send(
            system=system,
            messages=messages,
            tools=tools,
            tool_choice=tool_choice,
            max_output=max_output,
        )
        messages.append({"role": "assistant", "content": reply.content})
        answer = respond(turn, reply)
        if isinstance(answer, Done):
            return answer.value
        messages.append({"role": "user", "content": answer})
    named = f" ({setting})" if setting else ""
    raise LLMError(f"{what} did not finish within {limit} model calls{named}")
