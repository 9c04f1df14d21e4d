"""Evidence a diagnosis cites, checked by code before anyone reads it.

Each item quotes a file of the target at the commit that was live (``{file, line, quote}``)
or the incident's own log excerpt (``{log, quote}``). A file quote must be found within
``NEAR`` lines of the line given, in the file as git holds it at that commit, read through
the diagnosis's confined view (no path out of the repository, no symlink, size caps); a log
quote must be in the excerpt the model was shown. Both are compared redacted, as the model
saw them, and runs of whitespace count as one space, so a quote may drop indentation. The
caller drops a diagnosis when one item does not check out: a cause that cites what is not
there is not shown.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from pipeline.exceptions import GitError
from pipeline.git import Git
from pipeline.llm.tools import CommitFiles, Refused, clean_path
from pipeline.redaction import redact

#: How far from the line given a file quote may be found.
NEAR = 5
MAX_ITEMS = 10
MAX_QUOTE = 400
#: A shorter quote ("0", "if") would be found almost anywhere: it proves nothing.
MIN_QUOTE = 4
#: What a ``{log, quote}`` item names: the incident's own text (alert and log excerpt).
LOG = "incident"

_GITHUB = re.compile(
    r"^(?:https?://(?:[^@/]+@)?|ssh://git@|git@)github\.com[:/]"
    r"(?P<repo>[\w.-]+/[\w.-]+?)(?:\.git)?/?$"
)


@dataclass(frozen=True)
class Cited:
    """One item of evidence that checked out; ``line`` is where the quote begins."""

    quote: str
    file: str = ""
    line: int = 0
    log: str = ""
    url: str = ""

    def where(self) -> str:
        return f"{self.file}:{self.line}" if self.file else f"the {self.log} log"

    def shown(self) -> str:
        """What a person reads: ``handlers.py:12 "return total / count" <link>``."""
        quote = self.quote if len(self.quote) <= 120 else self.quote[:119] + "…"
        link = f" {self.url}" if self.url else ""
        return f'{self.where()} "{quote}"{link}'

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Cited:
        return cls(
            quote=str(data.get("quote", "")),
            file=str(data.get("file", "")),
            line=int(data.get("line") or 0),
            log=str(data.get("log", "")),
            url=str(data.get("url", "")),
        )


def _flat(text: str) -> str:
    return " ".join(text.split())


@dataclass(frozen=True)
class Checker:
    """Checks quotes against ``files`` (the target at the live commit; None when this host
    holds no checkout of it) and the incident's ``excerpt``."""

    files: CommitFiles | None
    excerpt: str
    secrets: tuple[str, ...] = ()
    repo: str = ""  # the GitHub owner/name of the target, for links
    commit: str = ""

    def check(self, raw: Any) -> tuple[list[Cited], list[str]]:
        """The items that check out, and what is wrong with the others (none: all good)."""
        if not isinstance(raw, list) or not raw:
            return [], ["it cites no evidence"]
        cited, wrong = [], []
        for n, item in enumerate(raw[:MAX_ITEMS], start=1):
            try:
                cited.append(self._one(item))
            except Refused as exc:
                wrong.append(f"evidence {n}: {exc}")
        return cited, wrong

    def _one(self, item: Any) -> Cited:
        if not isinstance(item, dict):
            raise Refused("not an object with a quote")
        quote = item.get("quote")
        if not isinstance(quote, str) or len(_flat(quote)) < MIN_QUOTE:
            raise Refused(f"a quote of at least {MIN_QUOTE} characters is needed")
        quote = quote.strip()[:MAX_QUOTE]
        if item.get("file"):
            return self._in_file(item, quote)
        if "log" in item:
            if _flat(quote) not in _flat(redact(self.excerpt, self.secrets)):
                raise Refused(f"the quote {_flat(quote)[:80]!r} is not in the incident's log")
            return Cited(quote=quote, log=LOG)
        raise Refused("names neither a file nor the log")

    def _in_file(self, item: dict[str, Any], quote: str) -> Cited:
        path = clean_path(item.get("file"))
        line = item.get("line")
        if isinstance(line, bool) or not isinstance(line, int) or line < 1:
            raise Refused(f"{path}: a line number is needed")
        if self.files is None:
            raise Refused(f"{path}: the target's files cannot be read on this host")
        data = self.files.read(path)  # confined: Refused for what may not be read
        lines = redact(data.decode("utf-8", "replace"), self.secrets).splitlines()
        wanted = _flat(quote)
        span = quote.count("\n") + 1
        for start in range(max(1, line - NEAR), min(len(lines), line + NEAR) + 1):
            if wanted in _flat("\n".join(lines[start - 1 : start - 1 + span])):
                return Cited(quote=quote, file=path, line=start, url=self.link(path, start))
        at = f" at {self.commit[:7]}" if self.commit else ""
        raise Refused(
            f"the quote {wanted[:80]!r} is not in {path} near line {line}{at}"
            f" (lines {max(1, line - NEAR)}-{line + NEAR})"
        )

    def link(self, path: str, line: int) -> str:
        if not self.repo or not self.commit:
            return ""
        return f"https://github.com/{self.repo}/blob/{self.commit}/{path}#L{line}"


def github_repo(git: Git, remote: str) -> str:
    """The ``owner/name`` of the target's remote when it is on GitHub, else ""."""
    url = remote
    if "/" not in remote and ":" not in remote:
        try:
            url = git.run("remote", "get-url", remote).strip()
        except GitError:
            return ""
    found = _GITHUB.match(url.strip())
    return found["repo"] if found else ""
