"""A compact map of the target at one commit: files, their top-level symbols, the import graph.

It is the stable part of every prompt about the repository (so the API can cache it), and
it fits a token budget whatever the size of the repository: files are listed by importance
(most imported first, then code before data, then the shallowest), with their symbols, until
their share of the budget is spent; the rest are counted per directory. Read from git
objects, never from a work tree.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass

from pipeline.git import Git
from pipeline.planning.imports import ImportGraph, read_blobs

#: Tokens are estimated as characters / 3: code and paths tokenise worse than prose (about
#: 3.5 to 4 characters a token), so the estimate errs on the large side.
CHARS_PER_TOKEN = 3.0
MAX_SYMBOLS = 12
MAX_IMPORTERS = 8
MAX_SOURCE_BYTES = 300_000
CODE_SUFFIXES = frozenset(
    {"py", "pyi", "js", "jsx", "ts", "tsx", "go", "rs", "java", "kt", "rb", "php", "c", "h"}
    | {"cc", "cpp", "hpp", "cs", "swift", "scala", "sh", "sql", "toml", "cfg", "ini", "yaml"}
    | {"yml", "md", "rst"}
)
#: Shares of the budget after the header: the import graph, then what is not listed.
GRAPH_SHARE = 0.25
SUMMARY_SHARE = 0.08

_SYMBOL = re.compile(
    r"^(?:async[ \t]+def|def|class)[ \t]+([A-Za-z_]\w*)|^([A-Z][A-Z0-9_]*)[ \t]*(?::[^=\n]*)?=",
    re.MULTILINE,
)


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


@dataclass(frozen=True)
class RepoMap:
    commit: str
    text: str
    tokens: int  # estimated, see CHARS_PER_TOKEN
    files: int  # in the repository
    listed: int  # listed by name in the map
    budget: int


@dataclass
class _File:
    path: str
    size: int
    link: bool
    symbols: list[str]
    importers: int

    def line(self, with_symbols: bool = True) -> str:
        if self.link:
            return f"{self.path} (symlink)"
        text = f"{self.path} ({_size(self.size)})"
        if with_symbols and self.symbols:
            shown = self.symbols[:MAX_SYMBOLS]
            more = len(self.symbols) - len(shown)
            text += " :: " + ", ".join(shown) + (f" +{more}" if more else "")
        return text


def _size(size: int) -> str:
    return f"{size} B" if size < 1000 else f"{size / 1000:.1f} kB"


def symbols(source: str) -> list[str]:
    """Top-level functions, classes and UPPER_CASE constants of a Python module, in order."""
    seen: dict[str, None] = {}
    for match in _SYMBOL.finditer(source):
        seen.setdefault(match.group(1) or match.group(2), None)
    return list(seen)


def _list_files(git: Git, commit: str) -> list[tuple[str, str, int, str]]:
    """(path, mode, size, blob id) of every file at ``commit``."""
    out = git.run_bytes("ls-tree", "-r", "-l", "-z", "--full-tree", "--end-of-options", commit)
    found = []
    for entry in out.split(b"\0"):
        meta, tab, raw = entry.partition(b"\t")
        parts = meta.split()
        if not tab or len(parts) != 4 or parts[1] != b"blob":
            continue  # submodules and the like
        size = int(parts[3]) if parts[3].isdigit() else 0
        found.append(
            (raw.decode("utf-8", "replace"), parts[0].decode(), size, parts[2].decode("ascii"))
        )
    return found


def _importer_counts(graph: ImportGraph) -> Counter[str]:
    """How many modules import each module (directly)."""
    counts: Counter[str] = Counter()
    for importer, names in graph.imports.items():
        hit = set()
        for name in names:
            prefix = ""
            for part in name.split("."):
                prefix = f"{prefix}.{part}" if prefix else part
                if prefix in graph.modules and prefix != importer:
                    hit.add(prefix)
        counts.update(hit)
    return counts


def _graph_lines(graph: ImportGraph) -> list[str]:
    """``module <- importers`` for every imported module, the most imported first."""
    reverse: dict[str, set[str]] = {}
    for importer, names in graph.imports.items():
        for name in names:
            if name in graph.modules and name != importer:
                reverse.setdefault(name, set()).add(importer)
    lines = []
    for module, importers in sorted(reverse.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        names = sorted(importers)
        shown = ", ".join(names[:MAX_IMPORTERS])
        more = len(names) - MAX_IMPORTERS
        lines.append(f"{module} <- {shown}" + (f" +{more}" if more > 0 else ""))
    return lines


def _take(lines: list[str], chars: float) -> list[str]:
    taken, used = [], 0
    for line in lines:
        if used + len(line) + 1 > chars:
            break
        taken.append(line)
        used += len(line) + 1
    return taken


def build(git: Git, commit: str, graph: ImportGraph, budget: int) -> RepoMap:
    """The map of ``commit`` in at most ``budget`` (estimated) tokens."""
    listing = _list_files(git, commit)
    python = {
        oid
        for path, mode, size, oid in listing
        if path.endswith(".py") and mode != "120000" and size <= MAX_SOURCE_BYTES
    }
    contents = read_blobs(git, sorted(python))
    counts = _importer_counts(graph)
    files = []
    for path, mode, size, oid in listing:
        source = contents.get(oid, b"") if path.endswith(".py") else b""
        module = graph.module_for(path)
        files.append(
            _File(
                path=path,
                size=size,
                link=mode == "120000",
                symbols=symbols(source.decode("utf-8", "replace")) if source else [],
                importers=counts.get(module, 0) if module else 0,
            )
        )
    modules = sum(1 for f in files if graph.module_for(f.path))
    header = (
        f"Repository map at commit {commit[:12]}: {len(files)} files, {modules} Python modules.\n"
        "Files: path (size) :: top-level functions, classes and constants. Files not listed "
        "by name are counted per directory at the end. Read any file with read_file.\n"
    )
    chars = budget * CHARS_PER_TOKEN - len(header) - 64
    graph_lines = _take(_graph_lines(graph), chars * GRAPH_SHARE)
    graph_chars = sum(len(line) + 1 for line in graph_lines)
    summary_chars = chars * SUMMARY_SHARE
    file_chars = chars - graph_chars - summary_chars

    ranked = sorted(files, key=lambda f: (-f.importers, _tier(f), f.path.count("/"), f.path))
    listed: dict[str, str] = {}
    used = 0.0
    for file in ranked:
        line = file.line()
        if used + len(line) + 1 > file_chars:
            line = file.line(with_symbols=False)
            if used + len(line) + 1 > file_chars:
                continue
        listed[file.path] = line
        used += len(line) + 1

    rest = [f.path for f in files if f.path not in listed]
    summary = _summary(rest, summary_chars)
    parts = [header, "## Files", *(listed[path] for path in sorted(listed))]
    if graph_lines:
        parts += ["", "## Imported by (module <- modules importing it)", *graph_lines]
    if summary:
        parts += ["", "## Not listed by name", *summary]
    text = "\n".join(parts) + "\n"
    return RepoMap(commit, text, estimate_tokens(text), len(files), len(listed), budget)


def _tier(file: _File) -> int:
    """Code and the files at the top first; data, assets and the like after."""
    if file.symbols or "/" not in file.path:
        return 0
    suffix = file.path.rsplit(".", 1)[-1].lower() if "." in file.path else ""
    return 0 if suffix in CODE_SUFFIXES else 1


def _summary(paths: list[str], chars: float) -> list[str]:
    """Unlisted files counted per directory, or per top-level directory when that is too long."""
    if not paths:
        return []
    for depth in (None, 1):
        counts: Counter[str] = Counter()
        for path in paths:
            parts = path.split("/")[:-1]
            if depth is not None:
                parts = parts[:depth]
            counts["/".join(parts) + "/" if parts else "./"] += 1
        lines = [f"{d} {n} file{'s' if n != 1 else ''}" for d, n in sorted(counts.items())]
        if sum(len(line) + 1 for line in lines) <= chars:
            return lines
    return [f"{len(paths)} more files"]
