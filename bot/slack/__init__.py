"""The Slack front end: a slash command and three buttons in, Block Kit messages out.

- ``platform``: how Molt builds it (bot/platforms.py); this module names its people.
- ``adapter``: the ``Slack`` adapter, its Bolt app and Web API client, and their life cycle.
- ``endpoint``: POST /slack/events, refusing forged or malformed requests before Bolt.
- ``listeners``: acks within Slack's 3 s, then hands the work to the desk, once a delivery.
- ``delivery``: a request's status as one message, posted once and edited in place.
- ``blocks``: messages as Block Kit and the Request changes modal.

Text is cut to Slack's limits by bot/fitting.py, as for every platform.
"""

from __future__ import annotations

import re

from bot.people import Naming

_ID = re.compile(r"[UW][A-Z0-9]+")


def _person(user: str) -> str | None:
    return f"<@{user}>" if _ID.fullmatch(user) else None


#: People are named by mention (``<@U1ALICE>``), which Slack shows as their name.
NAMING = Naming("slack", _person)
