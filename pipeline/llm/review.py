"""The review: a second model call reads the diff against the approved plan.

The model must answer through ``submit_review`` (forced); anything else, or an answer that
does not hold up, counts as a rejection. A rejection fails phase 1 with the reviewer's reasons.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.config import Settings
from pipeline.llm import prompts
from pipeline.llm.client import Claude
from pipeline.llm.scope import Scope
from pipeline.llm.turns import text, tool
from pipeline.planning.plans import Plan
from pipeline.redaction import redact
from pipeline.requests.store import Request

REVIEW_OUTPUT = 4_000
MAX_REASONS = 10
#: The diff shown, in characters of the prompt budget (3 characters a token, see repomap).
DIFF_SHARE = 0.6

SUBMIT_REVIEW = tool(
    "submit_review",
    "Say whether the diff does what the approved plan says, and why.",
    {
        "verdict": {"type": "string", "enum": ["approve", "reject"]},
        "reasons": {
            "type": "array",
            "minItems": 1,
            "maxItems": MAX_REASONS,
            "items": {"type": "string", "maxLength": 400},
        },
    },
    ["verdict", "reasons"],
)


@dataclass(frozen=True)
class Verdict:
    approved: bool
    reasons: list[str]

    def detail(self) -> str:
        word = "approved" if self.approved else "rejected"
        return f"{word}: " + "; ".join(self.reasons)


def review(
    settings: Settings, claude: Claude, plan: Plan, request: Request, diff: str, scope: Scope
) -> Verdict:
    limit = int(settings.llm_prompt_budget * 3 * DIFF_SHARE)
    shown = diff
    if len(diff) > limit:
        shown = diff[:limit] + f"\n[diff cut here: {len(diff) - limit} more characters]"
    facts = [f"Files changed: {', '.join(scope.changed) or 'none'}."]
    if scope.unplanned:
        facts.append(f"Outside the plan's file list: {', '.join(scope.unplanned)}.")
    if len(diff) > limit:
        facts.append("The diff is cut; reject if what is shown is not enough to judge.")
    body = "\n\n".join(
        [
            "Review this change against the approved plan. " + " ".join(facts),
            prompts.fence("approved plan", prompts.describe_plan(plan.to_dict())),
            prompts.request_blocks(request.text, request.answers),
            prompts.fence("diff", shown),
        ]
    )
    reply = claude.send(
        system=[{"type": "text", "text": prompts.REVIEWER, "cache_control": prompts.CACHE}],
        messages=[{"role": "user", "content": [text(body)]}],
        tools=[SUBMIT_REVIEW],
        tool_choice={"type": "tool", "name": SUBMIT_REVIEW["name"]},
        max_output=REVIEW_OUTPUT,
    )
    answer = next((u["input"] for u in reply.tool_uses() if u["name"] == "submit_review"), None)
    return verdict(answer, tuple(settings.secrets()))


def verdict(answer: Any, known: tuple[str, ...] = ()) -> Verdict:
    """The reviewer's answer, checked: only a well-formed "approve" approves."""
    if not isinstance(answer, dict) or answer.get("verdict") not in ("approve", "reject"):
        return Verdict(False, ["the reviewer gave no well-formed verdict"])
    raw = answer.get("reasons")
    reasons = [
        redact(" ".join(r.split())[:400], known)
        for r in (raw if isinstance(raw, list) else [])[:MAX_REASONS]
        if isinstance(r, str) and r.strip()
    ]
    if answer["verdict"] == "approve":
        return Verdict(True, reasons or ["no reasons given"])
    return Verdict(False, reasons or ["no reasons given"])
