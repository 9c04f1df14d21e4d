"""Generated service repositories for the benchmarks.

``generate_repo`` builds, under ``root``, a bare origin (``origin.git``), the
upstream work copy that pushes to it (``work``) and the live clone Molt manages
(``live``): about 2,000 files and 20 MB by default (Python packages whose
modules import each other, plus CSV and JSON data), a test command that takes a
few tens of milliseconds, and a second commit on origin's main changing
``change`` files. The live clone stays on the first commit.

With ``break_live=True`` the second commit's test script fails when it runs in
the live checkout (it compares its working directory with the live path written
into it) and passes anywhere else: phase 1 (sandbox) passes, phase 2 fails.

Run it to time the generation: ``python bench/repo.py --runs 3``.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

#: Who commits in the generated repositories.
GIT_ENV = {
    "GIT_AUTHOR_NAME": "Bench Person",
    "GIT_AUTHOR_EMAIL": "bench@example.invalid",
    "GIT_COMMITTER_NAME": "Bench Person",
    "GIT_COMMITTER_EMAIL": "bench@example.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
}

#: The service's test command, run from the checkout's root.
TEST_COMMAND = "python quick_tests.py"

PY_SHARE = 0.75  # share of the files that are Python modules
PY_BYTES = 5_000  # rough size of one module
MODULES_PER_PACKAGE = 50

QUICK_TESTS = '''\
"""The service's tests: import two modules of the service and check them."""
import os
import sys

from svc.pkg00 import mod_0000, mod_0001

LIVE = {live!r}  # the live checkout; "" when the tests run the same everywhere

passed = 0
for module in (mod_0000, mod_0001):
    assert module.value() == module.NUMBER
    passed += 1
assert mod_0001.DEPENDS == (mod_0000,)
passed += 1
if LIVE and os.path.realpath(os.getcwd()) == LIVE:
    print("test_live_only: this build refuses to run in the live checkout")
    print(f"{{passed - 1}} passed, 1 failed")
    sys.exit(1)
print(f"{{passed}} passed")
'''


def git(cwd: Path, *args: str) -> str:
    """Run git in ``cwd`` with the bench identity; returns stdout."""
    result = subprocess.run(
        ["git", "-C", str(cwd), *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **GIT_ENV},
    )
    if result.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed in {cwd}: {result.stderr.strip()}")
    return result.stdout.strip()


def _module_text(rng: random.Random, name: str, number: int, deps: list[str]) -> str:
    """A module of roughly PY_BYTES that imports ``deps`` (dotted module names)."""
    lines = [f'"""{name}: generated module {number}."""', "from __future__ import annotations", ""]
    aliases = []
    for i, dep in enumerate(deps):
        package, _, mod = dep.rpartition(".")
        lines.append(f"from {package} import {mod} as _dep{i}")
        aliases.append(f"_dep{i}")
    lines += ["", f"NUMBER = {number}", f"DEPENDS = ({', '.join(aliases)}{',' if aliases else ''})"]
    lines += ["", "", "def value() -> int:", "    return NUMBER"]
    size = sum(len(line) + 1 for line in lines)
    k = 0
    while size < PY_BYTES:
        a, b = rng.randrange(1, 1000), rng.randrange(1, 1000)
        block = [
            "",
            "",
            f"def helper_{k}(x: int, y: int = {a}) -> int:",
            f'    """Combine x and y (variant {k}, seed {b})."""',
            f"    total = x * {a} + y - {b}",
            f"    if total % {rng.randrange(2, 9)} == 0:",
            f"        total //= {rng.randrange(2, 9)}",
            "    return total",
        ]
        lines += block
        size += sum(len(line) + 1 for line in block)
        k += 1
    return "\n".join(lines) + "\n"


def _data_text(rng: random.Random, index: int, size: int) -> tuple[str, str]:
    """(suffix, content) of a CSV or JSON data file of about ``size`` bytes."""
    rows = []
    total = 0
    if index % 2:
        rows.append("[")
        while total < size:
            row = (
                f'  {{"id": {rng.randrange(10**9)}, "score": {rng.random():.6f}, '
                f'"tag": "t{rng.randrange(10**6):06d}"}},'
            )
            rows.append(row)
            total += len(row) + 1
        rows.append('  {"id": 0, "score": 0, "tag": "end"}')
        rows.append("]")
        return ".json", "\n".join(rows) + "\n"
    rows.append("id,score,count,tag")
    while total < size:
        row = (
            f"{rng.randrange(10**9)},{rng.random():.6f},{rng.randrange(10**5)},"
            f"t{rng.randrange(10**6):06d}"
        )
        rows.append(row)
        total += len(row) + 1
    return ".csv", "\n".join(rows) + "\n"


def _layout(files: int, megabytes: float, rng: random.Random) -> dict[str, str]:
    """Every file of the first commit but the test script, by path."""
    fixed = 3  # quick_tests.py, .gitignore, README.md
    n_py = max(3, int((files - fixed) * PY_SHARE))
    out: dict[str, str] = {"svc/__init__.py": '"""The generated service."""\n'}
    modules: list[str] = []
    i = 0
    while len(out) < n_py:
        package = f"pkg{i // MODULES_PER_PACKAGE:02d}"
        if i % MODULES_PER_PACKAGE == 0:
            out[f"svc/{package}/__init__.py"] = f'"""Package {package}."""\n'
        name = f"svc.{package}.mod_{i:04d}"
        deps = rng.sample(modules, k=min(len(modules), rng.randrange(1, 4)))
        out[f"svc/{package}/mod_{i:04d}.py"] = _module_text(rng, name, i, deps)
        modules.append(name)
        i += 1
    py_bytes = sum(len(text) for text in out.values())
    n_data = max(0, files - fixed - len(out))
    data_size = max(200, int((megabytes * 1_000_000 - py_bytes) / max(1, n_data)))
    for i in range(n_data):
        suffix, text = _data_text(rng, i, int(data_size * rng.uniform(0.5, 1.5)))
        out[f"data/set{i // 100:02d}/table_{i:04d}{suffix}"] = text
    out[".gitignore"] = "__pycache__/\n*.pyc\n"
    out["README.md"] = "# Generated service\n\nA benchmark target for Molt.\n"
    return out


def _quick_tests(live: str) -> str:
    return QUICK_TESTS.format(live=live)


def _write(base: Path, files: Mapping[str, str]) -> None:
    for rel, text in files.items():
        path = base / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def push_change(root: Path, change: int = 50, *, seed: int = 1, break_live: bool = False) -> str:
    """Commit a change of ``change`` files in ``root/work`` and push it; returns the sha.

    Python modules get a new function (so they still byte-compile), data files a
    rewritten tail. With ``break_live`` the test script is one of the changed
    files and fails in the live checkout.
    """
    work = root / "work"
    rng = random.Random(seed)
    tracked = git(work, "ls-files").splitlines()
    modules = sorted(p for p in tracked if p.startswith("svc/") and "/mod_" in p)
    data = sorted(p for p in tracked if p.startswith("data/"))
    wanted = change - 1 if break_live else change
    n_data = min(len(data), wanted // 5)
    n_py = min(len(modules), wanted - n_data)
    n_data = min(len(data), wanted - n_py)
    for rel in rng.sample(modules, n_py):
        path = work / rel
        path.write_text(
            path.read_text() + f"\n\ndef changed_{seed}() -> int:\n    return {rng.randrange(99)}\n"
        )
    for rel in rng.sample(data, n_data):
        path = work / rel
        rows = [f"{seed},{rng.random():.6f},{rng.randrange(99)},t{n:06d}" for n in range(3)]
        text = path.read_text()
        if rel.endswith(".json"):
            rows = [
                f'  {{"id": {seed}, "score": {rng.random():.6f}, "tag": "t{n}"}},' for n in range(3)
            ]
            head, end = text.rsplit("\n  {", 1)
            path.write_text(head + "\n" + "\n".join(rows) + "\n  {" + end)
        else:
            path.write_text(text + "\n".join(rows) + "\n")
    if break_live:
        (work / "quick_tests.py").write_text(_quick_tests(os.path.realpath(root / "live")))
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", f"change {change} files (seed {seed})")
    git(work, "push", "-q", "origin", "main")
    return git(work, "rev-parse", "HEAD")


def generate_repo(
    root: Path,
    files: int = 2000,
    change: int = 50,
    *,
    megabytes: float = 20.0,
    break_live: bool = False,
    seed: int = 0,
) -> tuple[Path, Path, str]:
    """Build origin, work copy and live clone under ``root``; returns (origin, live, target)."""
    root = Path(root)
    work, origin, live = root / "work", root / "origin.git", root / "live"
    work.mkdir(parents=True)
    rng = random.Random(seed)
    tree = _layout(files, megabytes, rng)
    tree["quick_tests.py"] = _quick_tests("")
    git(work, "init", "-q", "-b", "main")
    _write(work, tree)
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", "first version")
    git(root, "clone", "-q", "--bare", str(work), str(origin))
    git(work, "remote", "add", "origin", str(origin))
    git(work, "fetch", "-q", "origin")
    git(work, "branch", "-q", "--set-upstream-to=origin/main", "main")
    # Packed (without delta search, which is slow) as a long-lived origin would be.
    git(origin, "repack", "-adq", "--window=0")
    git(root, "clone", "-q", str(origin), str(live))
    target = push_change(root, change, seed=seed + 1, break_live=break_live)
    return origin, live, target


def tree_size(path: Path) -> tuple[int, int]:
    """(files, bytes) of a checkout, without .git."""
    count = size = 0
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = [d for d in dirnames if d != ".git"]
        for name in filenames:
            count += 1
            size += os.path.getsize(os.path.join(dirpath, name))
    return count, size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--change", type=int, default=50)
    args = parser.parse_args(argv)
    times = []
    for run in range(1, args.runs + 1):
        root = Path(tempfile.mkdtemp(prefix="molt-bench-repo-"))
        try:
            began = time.monotonic()
            _, live, target = generate_repo(root, args.files, args.change, seed=run)
            seconds = time.monotonic() - began
            times.append(seconds)
            count, size = tree_size(live)
            print(
                f"run {run}: {count} files, {size / 1e6:.1f} MB in the live checkout, "
                f"generated in {seconds:.2f} s; target {target[:7]}"
            )
        finally:
            shutil.rmtree(root, ignore_errors=True)
    print(f"median generation time: {statistics.median(times):.2f} s over {len(times)} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
