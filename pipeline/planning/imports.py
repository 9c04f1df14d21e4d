"""The import graph of one commit, read backwards: which modules a change can reach.

Read from git in two processes (one ``ls-tree``, one ``cat-file --batch``) and
parsed with regular expressions rather than ast: it has to be fast on thousands
of files, and a file that does not parse still has imports worth following.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field

from pipeline.git import Git

#: Bigger files are generated code or data; their imports are not worth the read.
MAX_FILE_BYTES = 1_000_000

_IMPORT = re.compile(
    r"^[ \t]*(?:"
    # from a.b import c / from . import (x, y) / from .m import z
    r"from(?:[ \t]+|(?=\.))(?P<source>\.*[\w.]*)[ \t]*(?<=[\s.])import\b[ \t]*"
    r"(?P<names>\([^)]*\)|[^\n\\]*(?:\\[\s\S][^\n\\]*)*)"
    # import a.b, c as d
    r"|import[ \t]+(?P<modules>[^\n\\]*(?:\\[\s\S][^\n\\]*)*)"
    r")",
    re.MULTILINE,
)
_COMMENT = re.compile(r"#[^\n]*")
_DOTTED = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")

#: Imports of these never point into the repository (unless it has a module of that name).
_STDLIB = frozenset(sys.stdlib_module_names)


def module_name(path: str, src_layout: bool = False) -> str | None:
    """``pkg/sub/mod.py`` → ``pkg.sub.mod``; ``pkg/__init__.py`` → ``pkg``; None if not Python."""
    if not path.endswith(".py"):
        return None
    parts = path[:-3].split("/")
    if src_layout and len(parts) > 1 and parts[0] == "src":
        parts = parts[1:]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    if not parts or not all(part.isidentifier() for part in parts):
        return None  # not importable: a script, or a file under .github/ or the like
    return ".".join(parts)


def _names(text: str) -> list[str]:
    """The dotted names in an import list, without aliases, comments or continuations."""
    text = _COMMENT.sub("", text)
    if not text.lstrip().startswith("("):
        text = text.split(";", 1)[0]
    text = text.replace("\\\n", " ").replace("(", " ").replace(")", " ")
    names = []
    for item in text.split(","):
        words = item.split()
        if words and _DOTTED.fullmatch(words[0]):
            names.append(words[0])
    return names


def _absolute(source: str, package: str) -> str | None:
    """Resolve ``..mod`` against the importing module's package; None if it climbs out."""
    level = len(source) - len(source.lstrip("."))
    rest = source[level:]
    if level == 0:
        return rest or None
    parts = package.split(".") if package else []
    if level - 1 > len(parts):
        return None
    base = parts[: len(parts) - (level - 1)]
    if rest:
        base.append(rest)
    return ".".join(base) or None


def parse_imports(source: str, module: str, is_package: bool = False) -> set[str]:
    """Absolute names a module imports: ``from a import b`` gives both ``a`` and ``a.b``.

    ``a.b`` may be an attribute rather than a module; the graph keeps only names
    (or their prefixes) that turn out to be modules of the repository.
    """
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for match in _IMPORT.finditer(source):
        if match.group("modules") is not None:
            found.update(_names(match.group("modules")))
            continue
        base = _absolute(match.group("source"), package)
        if base is None:
            continue
        found.add(base)
        found.update(f"{base}.{name}" for name in _names(match.group("names")))
    return {name for name in found if name.split(".", 1)[0] not in _STDLIB}


@dataclass
class ImportGraph:
    """Every Python module of one commit and the names each one imports."""

    src_layout: bool = False
    modules: dict[str, str] = field(default_factory=dict)  # module -> path
    imports: dict[str, list[str]] = field(default_factory=dict)  # module -> absolute names

    def module_for(self, path: str) -> str | None:
        return module_name(path, self.src_layout)

    def importers(self, changed: Iterable[str]) -> set[str]:
        """The changed modules and every module that imports one of them, transitively.

        Importing ``a.b`` runs ``a/__init__.py`` too, so a name depends on each
        of its prefixes that is a module. Changed modules that no longer exist
        (deleted or renamed away) still count: what imports them is affected.
        """
        start = set(changed)
        known = set(self.modules) | start
        reverse: dict[str, set[str]] = {}
        for importer, names in self.imports.items():
            for name in names:
                prefix = ""
                for part in name.split("."):
                    prefix = f"{prefix}.{part}" if prefix else part
                    if prefix in known and prefix != importer:
                        reverse.setdefault(prefix, set()).add(importer)
        reached = set(start)
        todo = list(start)
        while todo:
            for importer in reverse.get(todo.pop(), ()):
                if importer not in reached:
                    reached.add(importer)
                    todo.append(importer)
        return reached

    def to_json(self) -> str:
        return json.dumps(
            {"src_layout": self.src_layout, "modules": self.modules, "imports": self.imports},
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> ImportGraph:
        data = json.loads(text)
        return cls(
            src_layout=bool(data["src_layout"]),
            modules={str(k): str(v) for k, v in data["modules"].items()},
            imports={str(k): [str(n) for n in v] for k, v in data["imports"].items()},
        )


def _python_blobs(git: Git, commit: str) -> list[tuple[str, str]]:
    """(path, blob id) of every regular .py file at ``commit`` small enough to read."""
    listing = git.run_bytes("ls-tree", "-r", "-l", "-z", "--end-of-options", commit)
    blobs = []
    for entry in listing.split(b"\0"):
        meta, tab, raw_path = entry.partition(b"\t")
        if not tab or not raw_path.endswith(b".py"):
            continue
        fields = meta.split()
        if len(fields) != 4 or fields[1] != b"blob" or fields[0] not in (b"100644", b"100755"):
            continue
        if not fields[3].isdigit() or int(fields[3]) > MAX_FILE_BYTES:
            continue
        blobs.append((raw_path.decode("utf-8", "replace"), fields[2].decode("ascii")))
    return blobs


def read_blobs(git: Git, oids: list[str]) -> dict[str, bytes]:
    """Contents of many blobs from a single ``cat-file --batch``."""
    if not oids:
        return {}
    request = "".join(f"{oid}\n" for oid in oids).encode("ascii")
    out = git.run_bytes("cat-file", "--batch", input=request, timeout=120)
    contents: dict[str, bytes] = {}
    pos = 0
    for oid in oids:
        end = out.find(b"\n", pos)
        if end < 0:
            break
        header = out[pos:end].split()
        pos = end + 1
        if len(header) != 3 or not header[2].isdigit():
            continue  # "<oid> missing"
        size = int(header[2])
        contents[oid] = out[pos : pos + size]
        pos += size + 1
    return contents


def read_graph(git: Git, commit: str) -> ImportGraph:
    """Build the import graph of ``commit`` (a full sha) from the repository at ``git``."""
    blobs = _python_blobs(git, commit)
    paths = {path for path, _ in blobs}
    src_layout = any(p.startswith("src/") for p in paths) and "src/__init__.py" not in paths
    contents = read_blobs(git, sorted({oid for _, oid in blobs}))
    graph = ImportGraph(src_layout=src_layout)
    for path, oid in blobs:
        module = module_name(path, src_layout)
        if module is None:
            continue
        graph.modules[module] = path
        data = contents.get(oid, b"")
        if b"import" not in data:
            continue
        names = parse_imports(data.decode("utf-8", "replace"), module, path.endswith("__init__.py"))
        names.discard(module)
        if names:
            graph.imports[module] = sorted(names)
    return graph
