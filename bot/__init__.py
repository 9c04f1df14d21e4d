"""Molt's front ends: platform input in, platform messages out. Nothing here knows git, RQ
or tests; the work is pipeline/'s.

One request, module by module, in the order it meets them:

1. ``cli`` is the ``molt`` command; ``molt run`` starts the bot (``app``): its adapters, the
   desk, the notifier, the workers it supervises and housekeeping. The HTTP server
   (``server``: each front end's routes, /alerts/* from ``alerts``, /healthz, /metrics, and
   with MOLT_UI the status page, ``ui``) runs in a process of its own and hands what arrives to
   the bot through ``inbox`` (alerts through pipeline/incidents/oncall.py). What it refuses is
   counted and summarised in the audit by ``refusals``.
2. An adapter behind the small interface in ``base`` (``console``, ``slack/``,
   ``discord/``, ``github/``) parses the platform's input, acks within the platform's limit
   and calls the ``desk``. ``platforms`` lists them, each declared by a ``Platform``: how it
   is built, what it serves over HTTP, how it names people.
3. The ``desk`` reads the command with the one grammar of every front end (``commands``)
   and does the work on its own threads: intake, approval, operator controls. A group in
   a user list (``slack:@oncall``) is asked of its platform by ``groups``, which the bot
   registers with pipeline/requests/authorisation.py at start.
4. Workers never talk to a platform: every step is an event on a Redis Stream. The
   ``notifier`` reads it and acknowledges each event only once it is shown.
5. Each event is rendered from templates/ (``rendering``) into one platform-neutral
   ``messages.Message``, which the adapter turns into Block Kit, a Discord embed or console
   text, cut to the platform's limits by ``fitting``. The people Molt names in it are
   marked while rendering and named by each adapter as its platform names them
   (``people``: ``<@U1ALICE>`` in Slack, the name in the console).
"""
