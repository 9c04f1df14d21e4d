"""The GitHub front end: labelled issues and ``/molt`` comments, a webhook with a polling
fallback, and the status of each request back in its issue (the adapter: bot/github/adapter.py;
how Molt builds it: bot/github/platform.py). This module names its people."""

from __future__ import annotations

import re

from bot.people import Naming

_ID = re.compile(r"[A-Za-z0-9](?:-?[A-Za-z0-9])*")


def _person(user: str) -> str | None:
    return f"@{user}" if _ID.fullmatch(user) else None


#: People are named by login (``@octocat``).
NAMING = Naming("github", _person)
