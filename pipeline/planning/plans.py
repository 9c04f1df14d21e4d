"""A plan: what an approver reads and the worker runs, for a deploy or a change in words.

Plans are stored with their request as JSON (``to_dict``) and read back by whichever version
of Molt runs the job (``from_dict``), so reading one is lenient about keys it does not know.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any


@dataclass
class Plan:
    """Everything an approver needs to decide, and the worker needs to run, one deploy."""

    kind: str  # "deploy"
    ref: str  # what the requester asked for
    target_commit: str  # full sha to deploy
    base_commit: str  # full sha live runs now: the rollback point
    base_branch: str  # branch checked out in the live checkout ("" if detached)
    summary: str  # one line a person reads first
    commits: list[dict[str, str]]  # {sha, short, subject, author}, newest first
    diffstat: dict[str, int]  # {files, insertions, deletions}
    files: list[dict[str, Any]]  # {path, status, insertions, deletions[, old_path]}
    components: list[str]  # affected modules (with their importers) and top-level dirs
    risk: dict[str, Any]  # {level, reasons}
    protected: list[str]  # protected paths the change touches
    test_command: str
    rollback_point: str  # "a1b2c3d on main" / "a1b2c3d (detached)"
    estimated_seconds: float | None
    estimate_basis: str
    success_criteria: list[str]
    tasks: list[dict[str, Any]]  # {step, name, detail, checkpoint, on_failure[, role, after]}
    downgrade: bool  # target is an ancestor of base: rolling back in history
    # A change described in words (kind "change") also has these; a deploy leaves them empty.
    # ``files`` then lists the planned files ({path, status, why}) and ``target_commit``
    # stays "" until the worker has written the change.
    scope: str = ""  # what changes, and what does not
    impact: str = ""  # who and what notices the change
    dependents: list[str] = field(default_factory=list)  # modules importing the affected ones
    prerequisites: list[str] = field(default_factory=list)
    constraints: list[str] = field(default_factory=list)
    validation: list[str] = field(default_factory=list)  # checkpoints the reviewer looks for
    rollback_points: list[str] = field(default_factory=list)
    effort: dict[str, str] = field(default_factory=dict)  # {estimate, complexity}
    allow_unplanned: bool = False  # files outside ``files`` are allowed (and reported)
    usage: dict[str, int] = field(default_factory=dict)  # model tokens spent on planning
    # A rollback's: the update it undoes, and the signed release it returns to (0: none).
    rollback_of: str = ""
    release: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        """Rebuild a stored plan; keys this version does not know are ignored, and keys
        an older version did not write take their defaults."""
        required = [f for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
        missing = [f.name for f in required if f.name not in d]
        if missing:
            raise ValueError(f"stored plan lacks {', '.join(missing)}")
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})
