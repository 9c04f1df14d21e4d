"""Messages as GitHub comments: GitHub-flavoured Markdown from the same rendered message,
with task-list boxes for buttons and a hidden marker naming the request.

The marker (``<!-- molt {"request": …, "kind": …} -->``) lets Molt find a comment it may have
posted after an error (so it never posts one twice) and tells its own comments from people's.
A box is ``- [ ] Approve <!-- molt:box:approve -->``: ticking it in GitHub's page changes
only the ``[ ]``, so the edited body still says which box it was.

Only the people Molt names are mentioned (bot/people.py); an ``@`` anywhere else, as in the
request text, is broken with a zero-width joiner so what a requester writes pings nobody.
"""

from __future__ import annotations

import json
import re

from bot import people
from bot.fitting import clip, double_bold
from bot.github import NAMING
from bot.messages import Button, Message

#: GitHub refuses comment bodies over 65,536 characters.
BODY_LIMIT = 65_000
#: The buttons a box can stand for (others, like Request changes, need words: a comment).
BOXED = ("approve", "reject", "retry")
_BOX = re.compile(r"^- \[(?P<tick>[ xX])\] .*<!-- molt:box:(?P<action>[a-z]+) -->\s*$", re.M)
_MARKER = re.compile(r"<!-- molt (\{.*?\}) -->")
_HTML_COMMENT = re.compile(r"<!--.*?(?:-->|$)", re.DOTALL)
_INVISIBLE = re.compile("[\u200b-\u200f\u2060-\u2064\ufeff\u202a-\u202e\u2066-\u2069]")


def marker(request_id: str, kind: str) -> str:
    return "<!-- molt " + json.dumps({"request": request_id, "kind": kind}, sort_keys=True) + " -->"


def marked(body: str) -> dict[str, str] | None:
    """The marker Molt left in a comment body, or None."""
    found = _MARKER.search(body or "")
    if not found:
        return None
    try:
        value = json.loads(found.group(1))
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def untrusted(text: str) -> str:
    """A person's issue or comment text as Molt reads it: HTML comments (hidden in GitHub's
    page) and invisible characters removed before any parsing."""
    return _INVISIBLE.sub("", _HTML_COMMENT.sub("", text or ""))


def _markdown(text: str) -> str:
    """Template text in GitHub's Markdown, the marked people mentioned and nobody else."""
    quiet = text.replace("@", "@\u200d")
    return people.address(double_bold(quiet), NAMING)


def status(message: Message, *, boxes: bool) -> str:
    """The body of a request's status comment (edited in place as the request moves)."""
    parts = [marker(message.request_id, "status"), *_parts(message), _buttons(message, boxes)]
    named = ("Molt", message.target, message.request_id, message.template)
    footer = " · ".join(p for p in named if p)
    parts.append(f"<sub>{footer}</sub>")
    return clip("\n\n".join(p for p in parts if p), BODY_LIMIT)


def document(message: Message, request_id: str, kind: str) -> str:
    """A message as a document of its own (a pull request's body): its text and fields."""
    parts = [marker(request_id, kind), *_parts(message, title=False)]
    return clip("\n\n".join(p for p in parts if p), BODY_LIMIT)


def _parts(message: Message, *, title: bool = True) -> list[str]:
    parts = []
    heading = " ".join(people.unmarked(message.title).split())
    if heading and title:
        parts.append(f"### {_markdown(heading)}")
    text = _markdown(message.text).strip()
    if text:
        parts.append(text)
    for field in message.fields:
        value = _markdown(field.value).strip()
        if value:
            name = " ".join(people.unmarked(field.name).split())
            parts.append(f"**{name}**\n{value}" if "\n" in value else f"**{name}:** {value}")
    return parts


def _buttons(message: Message, boxes: bool) -> str:
    actions = [b for b in message.buttons if b.action in BOXED]
    if not actions:
        return ""
    if boxes:
        lines = [f"- [ ] {b.label} <!-- molt:box:{b.action} -->" for b in actions]
        return "\n".join(lines) + "\n\nTick a box, or comment " + _commands(actions) + "."
    return "Comment " + _commands(actions) + " to answer."


def _commands(actions: list[Button]) -> str:
    return " or ".join(f"`/molt {b.action}`" for b in actions)


def milestone(message: Message, link: str, kind: str) -> str:
    """A short new comment, so that the issue's watchers are notified."""
    title = " ".join(people.unmarked(message.title).split()) or message.template
    where = f" — [details]({link})" if link else ""
    return f"{marker(message.request_id, kind)}\n{_markdown(title)}{where}"


def reply(message: Message, login: str, kind: str) -> str:
    """An answer to one person, mentioning them."""
    title = " ".join(people.unmarked(message.title).split())
    head = f"@{login} **{_markdown(title)}**" if title else f"@{login}"
    text = _markdown(message.text).strip()
    body = "\n\n".join(p for p in (head, text) if p)
    return clip(f"{marker(message.request_id, kind)}\n{body}", BODY_LIMIT)


def ticked(before: str, after: str) -> str | None:
    """The one box an edit ticked (its action), or None when no single box was ticked."""
    was = {m.group("action"): m.group("tick") != " " for m in _BOX.finditer(before or "")}
    now = {m.group("action"): m.group("tick") != " " for m in _BOX.finditer(after or "")}
    newly = [action for action, on in now.items() if on and not was.get(action, False)]
    return newly[0] if len(newly) == 1 else None


def ticked_now(body: str, action: str) -> bool:
    """Whether the box for ``action`` is ticked in ``body``."""
    return any(m.group("action") == action and m.group("tick") != " " for m in _BOX.finditer(body))


def untick(body: str, action: str) -> str:
    """``body`` with the box for ``action`` cleared again."""
    return _BOX.sub(
        lambda m: (
            m.group(0).replace("[x]", "[ ]").replace("[X]", "[ ]", 1)
            if m.group("action") == action
            else m.group(0)
        ),
        body,
    )
