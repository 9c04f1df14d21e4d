"""Every Redis key is named once, in pipeline/keyspace.py: no two names share a key, and no
other module spells one of them again or builds a key inline in a function."""

from __future__ import annotations

import ast
import inspect
import re
from collections.abc import Callable, Iterator
from pathlib import Path

from pipeline import keyspace
from pipeline.keyspace import FORMATS, TargetKeys

ROOT = Path(__file__).resolve().parents[2]
#: Stands for an argument, so a key function's result shows its format.
SLOT = "\x00"
#: A string shaped like a key: ``molt:<word>:``.
KEY_SHAPED = re.compile(r"^molt:[a-z][\w-]*:")
#: Key-shaped strings that are not Redis keys: Discord component ids (a button's, the
#: Request changes modal's), which Discord gives back on a click.
NOT_KEYS = {("bot/discord/views.py", "molt:revision:")}


def _format(make: Callable[..., str], *before: str) -> str:
    """The format a key function follows, its arguments written ``{}``."""
    arity = len(inspect.signature(make).parameters) - len(before)
    return make(*before, *[SLOT] * arity).replace(SLOT, "{}")


def _formats() -> dict[str, str]:
    """Every name keyspace gives → the key, or the format of the keys, it names."""
    named: dict[str, str] = {}
    for name, value in vars(keyspace).items():
        if isinstance(value, str) and value.startswith("molt:"):
            named[name] = value
        elif inspect.isfunction(value) and value.__module__ == keyspace.__name__:
            named[name] = _format(value)
    for attr, key in FORMATS.items():
        named[f"TargetKeys.{attr}"] = key.replace("{id}", "{}")
    for name, method in vars(TargetKeys).items():
        if inspect.isfunction(method) and not name.startswith("_"):
            named[f"TargetKeys.{name}"] = _format(method, TargetKeys(SLOT))
    return named


def _heads() -> set[str]:
    """What every named key begins with: up to its first argument, or all of it."""
    return {f.split("{}", 1)[0] for f in _formats().values()}


def _strings(node: ast.AST) -> Iterator[tuple[int, str]]:
    """Each string literal under ``node``; of an f-string, its text before the first value."""
    parts = {id(part) for f in ast.walk(node) if isinstance(f, ast.JoinedStr) for part in f.values}
    for found in ast.walk(node):
        if isinstance(found, ast.JoinedStr):
            first = found.values[0] if found.values else None
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                yield found.lineno, first.value
        elif (
            isinstance(found, ast.Constant)
            and isinstance(found.value, str)
            and id(found) not in parts
        ):
            yield found.lineno, found.value


def _modules() -> Iterator[tuple[str, ast.Module]]:
    for package in ("bot", "pipeline"):
        for path in sorted((ROOT / package).rglob("*.py")):
            where = str(path.relative_to(ROOT))
            if where != "pipeline/keyspace.py":
                yield where, ast.parse(path.read_text(), filename=where)


def _in_functions(tree: ast.Module) -> Iterator[tuple[int, str]]:
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            yield from _strings(node)


def test_every_name_in_keyspace_is_a_key_of_its_own() -> None:
    named = _formats()
    by_format: dict[str, list[str]] = {}
    for name, key in named.items():
        by_format.setdefault(key, []).append(name)
    assert {k: v for k, v in by_format.items() if len(v) > 1} == {}
    assert {"REQUESTS", "github_told", "TargetKeys.lock", "TargetKeys.tests"} <= set(named)


def test_keys_keep_the_strings_data_in_redis_is_found_by() -> None:
    assert keyspace.request("r1") == "molt:request:r1"
    assert keyspace.github_pull("Owner/Repo", 4) == "molt:github:pull:owner/repo#4"
    assert (
        keyspace.github_told("GitHub:Ana", "Owner/Repo#4")
        == "molt:github:told:github:ana:owner/repo#4"
    )
    assert keyspace.alert_delivery("alertmanager", "d1") == "molt:alerts:delivered:alertmanager:d1"
    assert TargetKeys("api").occurrences("fp") == "molt:incidents:api:seen:fp"


def test_no_module_spells_a_key_keyspace_names() -> None:
    heads = _heads()
    spelled = [
        f"{where}:{line} {text!r}"
        for where, tree in _modules()
        for line, text in _strings(tree)
        if any(text.startswith(head) for head in heads)
    ]
    assert spelled == []


def test_no_function_builds_a_key_inline() -> None:
    inline = []
    for where, tree in _modules():
        for line, text in _in_functions(tree):
            shaped = KEY_SHAPED.match(text)
            if shaped and (where, shaped[0]) not in NOT_KEYS:
                inline.append(f"{where}:{line} {text!r}")
    assert inline == []
