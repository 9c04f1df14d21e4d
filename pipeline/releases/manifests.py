"""Which code is running, and what a release manifest says about a commit.

A ``Manifest`` names one release of one target: its number, its kind, the commit it
installed and the one that ran before, a hash of the tracked tree (pipeline/releases/trees.py),
the checks it passed, and who asked for it when it goes back. It is signed over its
canonical JSON (pipeline/releases/keys.py) and stored by pipeline/releases/ledger.py.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from enum import StrEnum
from functools import cache
from importlib import metadata
from typing import Any

from pipeline.config import MOLT_HOME
from pipeline.exceptions import GitError
from pipeline.git import Git

FORMAT = "molt-release/1"


def checkout_version() -> str:
    """The commit Molt's checkout is at now (may differ from the running code)."""
    try:
        return Git(MOLT_HOME).head()
    except GitError:
        try:
            return metadata.version("molt-bot")
        except metadata.PackageNotFoundError:
            return "unknown"


@cache
def running_version() -> str:
    """The commit of the code this process started with."""
    return checkout_version()


class ReleaseKind(StrEnum):
    BASELINE = "baseline"  # the first start of an installation: what ran before Molt signed
    UPDATE = "update"  # an approved update, after phase 2
    ROLLBACK = "rollback"  # going back on purpose: an operator, or Molt undoing a failed update


@dataclass(frozen=True)
class Manifest:
    release: int
    kind: ReleaseKind
    codename: str
    target: str  # target_id: a manifest of one target is no use for another
    target_commit: str
    parent_commit: str  # what ran before ("" for a baseline)
    tree_hash: str
    checks: list[dict[str, Any]]
    at: str  # ISO 8601, UTC
    key_id: str
    operator: str = ""  # who asked for a rollback ("molt" when Molt undid a failed update)
    reason: str = ""
    request_id: str = ""
    signature: str = ""  # base64 Ed25519 over keys.DOMAIN + canonical()
    format: str = FORMAT

    def body(self) -> dict[str, Any]:
        data = asdict(self)
        data["kind"] = self.kind.value
        data.pop("signature")
        return data

    def canonical(self) -> bytes:
        """The signed bytes' JSON: sorted keys, no spaces, UTF-8."""
        return json.dumps(
            self.body(), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode()

    def to_json(self) -> str:
        return json.dumps(self.body() | {"signature": self.signature}, sort_keys=True, indent=2)

    @classmethod
    def from_json(cls, raw: str | bytes) -> Manifest:
        """Raises ValueError on anything that is not a manifest of this format."""
        data = json.loads(raw)
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError("not a Molt release manifest")
        try:
            return cls(
                release=int(data["release"]),
                kind=ReleaseKind(data["kind"]),
                codename=str(data["codename"]),
                target=str(data["target"]),
                target_commit=str(data["target_commit"]),
                parent_commit=str(data["parent_commit"]),
                tree_hash=str(data["tree_hash"]),
                checks=list(data["checks"]),
                at=str(data["at"]),
                key_id=str(data["key_id"]),
                operator=str(data.get("operator", "")),
                reason=str(data.get("reason", "")),
                request_id=str(data.get("request_id", "")),
                signature=str(data.get("signature", "")),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"incomplete manifest: {exc}") from exc

    @property
    def short(self) -> str:
        return self.target_commit[:7]

    @property
    def file_name(self) -> str:
        return f"{self.release}-{re.sub(r'[^A-Za-z0-9_.-]', '_', self.codename)}.json"

    def describe(self) -> str:
        """``release 4 (amber-otter, rollback by console:alice)``, ``release 1 (baseline)``"""
        what = self.kind.value + (f" by {self.operator}" if self.operator else "")
        if self.codename and self.codename != self.kind.value:
            what = f"{self.codename}, {what}"
        return f"release {self.release} ({what})"
