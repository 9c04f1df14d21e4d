"""Untrusted JSON from the outside (alert deliveries, GitHub's webhooks) read into declared
models: each source's fields, typed. A body that does not fit is refused naming the first
field that does not (never its value); fields Molt does not read are ignored, whatever they
hold. The JSON reader bounds nesting, so no body can exhaust the stack.
"""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError


class Payload(BaseModel):
    """A part of a delivery: the fields Molt reads."""

    model_config = ConfigDict(frozen=True, populate_by_name=True)


Model = TypeVar("Model", bound=Payload)


class Misfit(ValueError):
    """A body that is not JSON, or not the shape its source declares; the message names
    the field."""


def parsed(raw: bytes | str, model: type[Model]) -> Model:
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise Misfit(misfit(exc)) from None


def fitted(value: object, model: type[Model]) -> Model:
    """``value`` (already read from JSON) as ``model``."""
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise Misfit(misfit(exc)) from None


def misfit(exc: ValidationError) -> str:
    """The first field that did not fit, and why."""
    [error, *_] = exc.errors(include_url=False, include_input=False, include_context=False)
    where = ".".join(str(part) for part in error["loc"])
    return f"{where}: {error['msg']}" if where else str(error["msg"])
