"""Turns a template from templates/ and a context dict into a platform-neutral ``Message``.

Templates are data (one TOML file per outcome, every string a Jinja2 template) so the
wording can change without touching code. Missing context keys render empty, at any depth,
because events carry only what the step knew; fields whose value renders empty are dropped.
The people Molt names in a message are marked (bot/people.py) for each adapter to name.
"""

from __future__ import annotations

import hashlib
import re
import time
import tomllib
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

from jinja2 import ChainableUndefined, Environment, Template, Undefined
from markupsafe import Markup, escape

from bot import people
from bot.messages import Button, Message, MessageField
from pipeline.config import TEMPLATES_DIR

__all__ = ["as_html", "as_text", "refusal_line", "render", "template_names", "themes"]

_BLANK_RUNS = re.compile(r"\n{3,}")
#: The light chat markup templates write (``*bold*``, ```code```, fenced blocks), which
#: Slack, Discord and GitHub show as such; a terminal and a web page each need their own.
_BOLD = re.compile(r"(?<![\w*])\*([^*\n]+)\*(?![\w*])")
_CODE = re.compile(r"(`+)([^`\n]+?)\1")
_FENCE = re.compile(r"^[ \t]*```[\w-]*[ \t]*\n?", re.MULTILINE)
_TRAILING_SPACE = re.compile(r"[ \t]+$", re.MULTILINE)


def as_text(text: str) -> str:
    """Chat markup as plain text shows it (a terminal, the shell): no bold marks or fences;
    code keeps one pair of backticks, as plain text quotes a command."""
    return _BOLD.sub(r"\1", _CODE.sub(r"`\2`", _FENCE.sub("", text)))


def as_html(text: Any) -> Markup:
    """Chat markup as the status page shows it: escaped, with code and bold as HTML."""
    if text is None or isinstance(text, Undefined):
        return Markup("")
    shown = str(escape(_FENCE.sub("", str(text))))
    shown = _CODE.sub(r"<code>\2</code>", shown)
    return Markup(_BOLD.sub(r"<strong>\1</strong>", shown))


def duration(seconds: Any) -> str:
    """Seconds as a person reads them: "850 ms", "12.3 s", "4 min 5 s", "1 h 2 min"."""
    if seconds is None or isinstance(seconds, Undefined | bool):
        return ""
    try:
        value = float(seconds)
    except (TypeError, ValueError):
        return str(seconds)
    if value != value or value < 0:  # NaN or a clock that went backwards
        return ""
    if value < 1:
        return f"{round(value * 1000)} ms"
    if value < 60:
        return f"{value:.1f} s"
    whole = round(value)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    return f"{minutes} min {secs} s" if secs else f"{minutes} min"


def short(sha: Any) -> str:
    """A commit as people quote it: the first 7 characters."""
    if sha is None or isinstance(sha, Undefined):
        return ""
    return str(sha)[:7]


def timestamp(at: Any) -> str:
    """An epoch time (audit entries, ``updated_at``) as "2024-05-01 12:03 UTC"."""
    if at is None or isinstance(at, Undefined | bool) or at == "":
        return ""
    try:
        moment = datetime.fromtimestamp(float(at), tz=UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return str(at)
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def ago(at: Any) -> str:
    """How long ago an epoch time was, as ``duration`` says it ("" if unknown)."""
    if at is None or isinstance(at, Undefined | bool) or at == "":
        return ""
    try:
        return duration(max(time.time() - float(at), 0.0))
    except (TypeError, ValueError):
        return ""


@cache
def _environment() -> Environment:
    env = Environment(
        undefined=ChainableUndefined,
        autoescape=False,
        keep_trailing_newline=False,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["duration"] = duration
    env.filters["short"] = short
    env.filters["timestamp"] = timestamp
    env.filters["ago"] = ago
    return env


def template_names() -> list[str]:
    """Every message template available, by name (the file stem)."""
    return sorted(p.stem for p in TEMPLATES_DIR.glob("*.toml"))


class _Compiled:
    """One template file, parsed and compiled once per process."""

    def __init__(self, name: str, raw: dict[str, Any]) -> None:
        env = _environment()
        self.name = name
        self.private = bool(raw.get("private", False))
        self.title = env.from_string(str(raw.get("title", "")))
        self.text = env.from_string(str(raw.get("text", "")))
        self.fields: list[tuple[Template, Template]] = [
            (env.from_string(str(f.get("name", ""))), env.from_string(str(f.get("value", ""))))
            for f in raw.get("fields", [])
        ]
        self.buttons: list[tuple[Template, Template, Template]] = [
            (
                env.from_string(str(b.get("label", ""))),
                env.from_string(str(b.get("action", ""))),
                env.from_string(str(b.get("style", ""))),
            )
            for b in raw.get("buttons", [])
        ]


@cache
def _template(name: str) -> _Compiled:
    path = TEMPLATES_DIR / f"{name}.toml"
    if "/" in name or "\\" in name or not path.is_file():
        known = ", ".join(template_names()) or "none"
        raise KeyError(f"no message template {name!r} in {TEMPLATES_DIR} (known: {known})")
    with path.open("rb") as handle:
        raw = tomllib.load(handle)
    return _Compiled(name, raw)


def _text(rendered: str) -> str:
    """Conditional blocks leave blank runs and trailing spaces; a message shows neither."""
    cleaned = _TRAILING_SPACE.sub("", rendered)
    return _BLANK_RUNS.sub("\n\n", cleaned).strip()


def render(template: str, context: dict[str, Any]) -> Message:
    """Render the template named ``template`` (a file stem in templates/) with ``context``."""
    compiled = _template(template)
    context = people.vouched(context)
    request_id = str(context.get("request_id") or "")
    fields: list[MessageField] = []
    for name_t, value_t in compiled.fields:
        value = _text(value_t.render(context))
        if value:
            fields.append(MessageField(name=" ".join(name_t.render(context).split()), value=value))
    buttons: list[Button] = []
    for label_t, action_t, style_t in compiled.buttons:
        label = " ".join(people.unmarked(label_t.render(context)).split())
        if label:  # a label rendering empty is how a template makes a button conditional
            buttons.append(
                Button(
                    label=label,
                    action=action_t.render(context).strip(),
                    value=request_id,
                    style=style_t.render(context).strip(),
                )
            )
    title = " ".join(compiled.title.render(context).split())
    target = str(context.get("target_name") or "")
    return Message(
        template=template,
        title=f"{title} · {target}" if target and title else title,
        text=_text(compiled.text.render(context)),
        fields=tuple(fields),
        buttons=tuple(buttons),
        request_id=request_id,
        codename=str(context.get("codename") or ""),
        target=target,
        private=compiled.private,
    )


def themes() -> list[str]:
    """The refusal themes, by name (the file stems in templates/refusals/)."""
    return sorted(p.stem for p in (TEMPLATES_DIR / "refusals").glob("*.txt"))


@cache
def _refusal_lines(theme: str) -> tuple[str, ...]:
    path = TEMPLATES_DIR / "refusals" / f"{theme}.txt"
    if "/" in theme or "\\" in theme or not path.is_file():
        raise KeyError(f"no refusal theme {theme!r} (known: {', '.join(themes()) or 'none'})")
    lines = _read_lines(path)
    if not lines:
        raise KeyError(f"refusal theme {theme!r} has no lines ({path})")
    return lines


def _read_lines(path: Path) -> tuple[str, ...]:
    """Non-empty lines; a line starting with '#' is a comment for whoever edits the file."""
    text = path.read_text(encoding="utf-8")
    return tuple(
        s for s in (line.strip() for line in text.splitlines()) if s and not s.startswith("#")
    )


def refusal_line(theme: str, seed: str) -> str:
    """A line of ``theme`` chosen by ``seed``, so one request always gets the same line.

    sha256 rather than ``hash()``: string hashes change between processes, and the bot
    and its workers must agree.
    """
    lines = _refusal_lines(theme)
    digest = hashlib.sha256(seed.encode("utf-8")).digest()
    return lines[int.from_bytes(digest[:8], "big") % len(lines)]
