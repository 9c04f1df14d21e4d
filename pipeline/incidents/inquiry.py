"""What the diagnosis may read: the target at the live commit, the suspect's diff, the
incident's own text. Nothing here writes.

``Inquiry`` is the planner's view of a repository at one commit (pipeline/llm/tools.py
``CommitFiles``, with its confinement: repository-relative paths only, no ``..``, nothing
under .git, symlinks refused, size caps) plus a fixed-string search and two tools of its
own: ``suspect_diff``, the diff of the update suspected (if any), and ``incident_log``, the
alert and log excerpt, fenced as untrusted as the prompt fences them. With no commit (a
fleet's bot holds no checkout of its targets) the file tools say so.
"""

from __future__ import annotations

import copy
from typing import Any

from pipeline.exceptions import GitError
from pipeline.git import Git
from pipeline.llm.prompts import fence
from pipeline.llm.tools import READ_TOOLS, CommitFiles, Refused

MAX_DIFF_CHARS = 40_000
_NO_INPUT = {"type": "object", "properties": {}, "required": [], "additionalProperties": False}


def _tools() -> list[dict[str, Any]]:
    tools = copy.deepcopy(READ_TOOLS)
    search = next(t for t in tools if t["name"] == "search")
    search["description"] += " With fixed=true the pattern is a plain string, not a regex."
    search["input_schema"]["properties"]["fixed"] = {"type": "boolean"}
    return [
        *tools,
        {
            "name": "suspect_diff",
            "description": "The diff of the update suspected of causing the incident, if any.",
            "input_schema": _NO_INPUT,
        },
        {
            "name": "incident_log",
            "description": "The incident's alert and log excerpt, as received (untrusted).",
            "input_schema": _NO_INPUT,
        },
    ]


class Inquiry(CommitFiles):
    """The diagnosis's read-only tools; ``diff`` is the suspect's (base, target) commits."""

    tools = _tools()

    def __init__(
        self,
        git: Git,
        commit: str,
        *,
        source: str,
        excerpt: str,
        diff: tuple[str, str] | None = None,
        suspect: str = "",
    ) -> None:
        super().__init__(git, commit)
        self.source = source
        self.excerpt = excerpt
        self.diff = diff
        self.suspect = suspect
        self._fixed = False

    def entries(self) -> dict[str, tuple[str, int]]:
        if not self.commit:
            raise Refused("the target's files cannot be read on this host")
        try:
            return super().entries()
        except GitError as exc:
            raise Refused(f"commit {self.commit[:7]} is not in the target's repository") from exc

    def _tool_search(self, args: dict[str, Any]) -> str:
        self._fixed = bool(args.get("fixed"))
        return super()._tool_search({k: v for k, v in args.items() if k != "fixed"})

    def grep(self, pattern: str, where: str) -> list[str]:
        if not self.commit:
            raise Refused("the target's files cannot be read on this host")
        spec = [f":(literal){where}"] if where else []
        kind = "-F" if self._fixed else "-E"
        args = ["-n", "-I", kind, "--no-color", "-e", pattern, self.commit, "--", *spec]
        return self._grep(self.git, args, prefix=f"{self.commit}:")

    def _tool_suspect_diff(self, args: dict[str, Any]) -> str:
        if self.diff is None:
            return "no update is suspected: none landed shortly before the incident began"
        base, target = self.diff
        try:
            text = self.git.run("diff", "--no-color", "--end-of-options", base, target)
        except GitError as exc:
            raise Refused(f"the diff {base[:7]}..{target[:7]} cannot be read here") from exc
        cut = len(text) > MAX_DIFF_CHARS
        shown = text[:MAX_DIFF_CHARS] + ("\n… (cut)" if cut else "")
        return fence("diff", shown, update=self.suspect, range=f"{base[:7]}..{target[:7]}")

    def _tool_incident_log(self, args: dict[str, Any]) -> str:
        return fence(self.source, self.excerpt, kind="alert")
