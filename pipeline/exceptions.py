"""Faults. A refusal (not authorised, a failing pre-flight check, a plan that
expired) is not a fault: those are results carrying a reason. These are for
things that went wrong.

    MoltError
    ├── ConfigError            a setting is missing or malformed
    ├── StoreError             Redis could not be started or reached
    ├── IllegalTransition      a state change the state machine does not allow
    ├── UnknownRequest         no request with that id
    ├── MembershipUnknown      a platform could not say whether someone is in a group
    ├── GitError               a git command failed (carries the command and output)
    ├── PlanningError          a ref could not be planned (unknown ref, bad input)
    │   └── LLMError           the model API failed after its retries, or a model limit ran out
    └── UpdateFailed           an update step failed; carries the phase and reason
        └── RollbackFailed     returning to the snapshot failed as well
"""

from __future__ import annotations


class MoltError(Exception):
    """Base of every Molt fault."""


class ConfigError(MoltError):
    pass


class StoreError(MoltError):
    pass


class IllegalTransition(MoltError):
    def __init__(self, request_id: str, current: str, wanted: str) -> None:
        super().__init__(f"request {request_id}: cannot go from {current} to {wanted}")
        self.request_id = request_id
        self.current = current
        self.wanted = wanted


class UnknownRequest(MoltError):
    def __init__(self, request_id: str) -> None:
        super().__init__(f"no request {request_id!r}")
        self.request_id = request_id


class GitError(MoltError):
    def __init__(self, args: list[str], returncode: int, output: str) -> None:
        shown = " ".join(args)
        super().__init__(f"git {shown}: exit {returncode}: {output.strip()[-2000:]}")
        self.args_list = args
        self.returncode = returncode
        self.output = output


class MembershipUnknown(MoltError):
    """The platform a group entry names (``slack:@oncall``) could not be asked; ``reason``
    is what a person reads, and the check asking is refused (fail closed)."""

    def __init__(self, group: str, reason: str) -> None:
        super().__init__(f"{group}: {reason}")
        self.group = group
        self.reason = reason


class PlanningError(MoltError):
    pass


class LLMError(PlanningError):
    """``status`` is the HTTP status of the last answer (None for a timeout or a limit)."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class UpdateFailed(MoltError):
    def __init__(self, phase: str, reason: str) -> None:
        super().__init__(f"{phase}: {reason}")
        self.phase = phase
        self.reason = reason


class RollbackFailed(UpdateFailed):
    pass
