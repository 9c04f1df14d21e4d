"""The Slack front end: a slash command and three buttons in, Block Kit messages out.

- ``adapter``: the ``Slack`` adapter, its Bolt app and Web API client, and their life cycle.
- ``endpoint``: POST /slack/events, refusing forged or malformed requests before Bolt.
- ``listeners``: acks within Slack's 3 s, then hands the work to the desk, once a delivery.
- ``delivery``: a request's status as one message, posted once and edited in place.
- ``blocks``: messages as Block Kit and the Request changes modal.

Text is cut to Slack's limits by bot/fitting.py, as for every platform.
"""

from __future__ import annotations

from bot.slack.adapter import Slack

__all__ = ["Slack"]
