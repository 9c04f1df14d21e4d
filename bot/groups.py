"""Groups of people in the user lists (MOLT_AUTHORISED_USERS, MOLT_APPROVERS, MOLT_OPERATORS,
and a target's own), asked of the platform that keeps them.

==================================  ====================  ======================================
entry                               a member is           asked with
==================================  ====================  ======================================
``slack:@<handle>``                 in the user group     ``usergroups.list``, then
                                                          ``usergroups.users.list``
``github:@<org>/<team-slug>``       an active member      GET /orgs/{org}/teams/{team}/
                                                          memberships/{login} (404: not one)
``discord:@&<role id>``             holding the role in   GET /channels/{channel} for its guild,
                                    the channel's guild   GET /guilds/{guild}/members/{user}
==================================  ====================  ======================================

Each answer (yes or no) is kept in Redis for MOLT_GROUP_TTL under ``keyspace.group_answer``:
Redis rather than this process's memory because Molt restarts itself on every update it
lands, and a cache that outlives the restart keeps the next click from waiting on the
platform. A platform that cannot be asked is never cached: the check refuses with its
reason, and the next click asks again. A worker asks no platform (``resolvers={}``): there
a group counts only as the bot last kept its answer.

The platforms' clients are imported on first use: every ``molt`` process imports this
module for ``check``, and a restart is no faster than what it imports.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from typing import Any

import redis
import structlog

from pipeline import keyspace
from pipeline.config import Settings
from pipeline.exceptions import ConfigError, MembershipUnknown
from pipeline.requests.authorisation import is_group
from pipeline.requests.store import Origin

log = structlog.get_logger(__name__)

#: The group entries each platform has, and how each is written.
FORMS = {
    "slack": re.compile(r"slack:@(?P<handle>[a-z0-9][a-z0-9._-]{0,79})"),
    "github": re.compile(
        r"github:@(?P<org>[A-Za-z0-9](?:-?[A-Za-z0-9]){0,38})/(?P<team>[A-Za-z0-9][\w.-]{0,99})"
    ),
    "discord": re.compile(r"discord:@&(?P<role>\d{1,20})"),
}
EXPECTED = {
    "slack": "slack:@<user group handle>",
    "github": "github:@<org>/<team slug>",
    "discord": "discord:@&<role id>",
}
#: The settings holding people (also the keys of a ``[targets.<name>]`` table), and their
#: variables.
LISTS = {
    "authorised_users": "MOLT_AUTHORISED_USERS",
    "approvers": "MOLT_APPROVERS",
    "operators": "MOLT_OPERATORS",
}
#: Seconds a platform has to answer one question.
TIMEOUT = 10

#: Whether ``who`` is in the group ``found`` matched; raises MembershipUnknown if it cannot say.
Resolver = Callable[[Origin, re.Match[str]], bool]


def check(settings: Settings) -> None:
    """Refuse to start with a group entry no platform could answer for, naming its key."""
    for key, entry in _entries(settings):
        platform = entry.partition(":")[0]
        form = FORMS.get(platform)
        if form is None:
            known = ", ".join(EXPECTED.values())
            raise ConfigError(
                f"invalid configuration: {key}: {entry!r} names a group, which {platform} "
                f"does not have (groups are {known})"
            )
        if not form.fullmatch(entry):
            raise ConfigError(
                f"invalid configuration: {key}: expected {EXPECTED[platform]}, got {entry!r}"
            )


def _entries(settings: Settings) -> Iterator[tuple[str, str]]:
    """Every group entry of the user lists, with the key that set it."""
    for name, variable in LISTS.items():
        yield from ((variable, e) for e in getattr(settings, name) if is_group(e))
    for target in settings.target_names() if settings.fleet else ():
        table = settings.targets[target]
        view = settings.for_target(target)
        for name in LISTS:
            if isinstance(table, dict) and name in table:
                key = f"targets.{target}.{name}"
                yield from ((key, e) for e in getattr(view, name) if is_group(e))


class Groups:
    """The membership authorisation asks (``authorisation.ask_groups_with``): the answer kept
    in Redis, else the platform's resolver's, kept for MOLT_GROUP_TTL."""

    def __init__(
        self,
        settings: Settings,
        conn: redis.Redis,
        resolvers: dict[str, Resolver] | None = None,
    ) -> None:
        self.settings = settings
        self.conn = conn
        self._resolvers = resolvers
        self._lock = threading.Lock()

    def __call__(self, who: Origin, group: str) -> bool:
        key = keyspace.group_answer(group, who.principal)
        kept = self.conn.get(key)
        if kept is not None:
            return _text(kept) == "1"
        platform = group.partition(":")[0]
        form = FORMS.get(platform)
        found = form.fullmatch(group) if form else None
        if found is None:
            raise MembershipUnknown(group, f"expected {EXPECTED.get(platform, 'no group')}")
        resolver = self.resolvers.get(platform)
        if resolver is None:
            raise MembershipUnknown(group, f"{platform.title()} is not asked from this process")
        member = resolver(who, found)
        log.info("group asked", group=group, who=who.principal, member=member)
        ttl = int(self.settings.group_ttl * 1000)
        if ttl > 0:
            self.conn.set(key, "1" if member else "0", px=ttl)
        return member

    @property
    def resolvers(self) -> dict[str, Resolver]:
        """One resolver per configured platform, made on first use (their clients import
        slowly, and most deployments name no group)."""
        with self._lock:
            if self._resolvers is None:
                self._resolvers = resolvers_for(self.settings)
            return self._resolvers


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def resolvers_for(settings: Settings) -> dict[str, Resolver]:
    made: dict[str, Resolver] = {}
    if settings.slack.bot_token:
        made["slack"] = SlackGroups(settings)
    if settings.github.token or settings.github.app_id:
        made["github"] = GitHubTeams(settings)
    if settings.discord.token:
        made["discord"] = DiscordRoles(settings)
    return made


class SlackGroups:
    """A Slack user group by its handle: its id from ``usergroups.list``, its members from
    ``usergroups.users.list`` (the bot token needs ``usergroups:read``)."""

    def __init__(self, settings: Settings) -> None:
        from slack_sdk import WebClient

        token = settings.slack.bot_token.get_secret_value() if settings.slack.bot_token else ""
        self.client = WebClient(token=token, base_url=settings.slack.api_url, timeout=TIMEOUT)

    def __call__(self, who: Origin, found: re.Match[str]) -> bool:
        from slack_sdk.errors import SlackApiError

        group, handle = found.group(0), found["handle"]
        try:
            listed = self.client.usergroups_list()
            ids = [g.get("id") for g in listed.get("usergroups") or [] if g.get("handle") == handle]
            if not ids:
                raise MembershipUnknown(group, f"Slack has no user group @{handle}")
            members = self.client.usergroups_users_list(usergroup=str(ids[0]))
        except SlackApiError as exc:
            raise MembershipUnknown(group, f"Slack answered {exc.response.get('error')}") from exc
        except OSError as exc:
            said = f"Slack could not be reached ({type(exc).__name__})"
            raise MembershipUnknown(group, said) from exc
        return who.user in (members.get("users") or [])


class GitHubTeams:
    """A GitHub team: an active membership is a member; 404 (no membership, or a team the
    token cannot see) is not. The token needs ``read:org``."""

    def __init__(self, settings: Settings) -> None:
        from bot.github.client import PERMISSION_RETRIES, connect

        self.github = connect(settings, retries=PERMISSION_RETRIES)

    def __call__(self, who: Origin, found: re.Match[str]) -> bool:
        import requests
        from github import GithubException, UnknownObjectException

        group, org, team = found.group(0), found["org"], found["team"]
        path = f"/orgs/{org}/teams/{team}/memberships/{who.user}"
        try:
            _, membership = self.github.requester.requestJsonAndCheck("GET", path)
        except UnknownObjectException:
            return False
        except GithubException as exc:
            raise MembershipUnknown(group, f"GitHub answered {exc.status}") from exc
        except requests.exceptions.RetryError as exc:  # errors until the retries ran out
            status = re.search(r"too many (\d{3}) error", str(exc))
            said = f"GitHub answered {status[1]}" if status else "GitHub kept failing"
            raise MembershipUnknown(group, said) from exc
        except (OSError, requests.RequestException) as exc:
            said = f"GitHub could not be reached ({type(exc).__name__})"
            raise MembershipUnknown(group, said) from exc
        return bool(membership) and membership.get("state") == "active"


class DiscordRoles:
    """A Discord role held in the guild of the channel the person wrote in: the channel's
    guild, then the member's roles. A direct message is in no guild: there the check refuses,
    saying so, rather than keeping a "no" that would refuse the same person in the guild."""

    def __init__(self, settings: Settings) -> None:
        import requests

        token = settings.discord.token.get_secret_value() if settings.discord.token else ""
        self.api = settings.discord.api_url.rstrip("/")
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bot {token}"

    def __call__(self, who: Origin, found: re.Match[str]) -> bool:
        group = found.group(0)
        channel = self._get(group, f"/channels/{who.channel}") if who.channel else None
        guild = channel.get("guild_id") if channel else None
        if not guild:  # not "no": the same person may ask in the guild (and is not kept)
            raise MembershipUnknown(group, "a role is held in a server, and this is not in one")
        member = self._get(group, f"/guilds/{guild}/members/{who.user}") or {}
        return found["role"] in [str(r) for r in member.get("roles") or []]

    def _get(self, group: str, path: str) -> dict[str, Any] | None:
        """The JSON Discord answers ``path`` with; None for 404 (no such member)."""
        import requests

        try:
            answer = self.session.get(self.api + path, timeout=TIMEOUT)
        except requests.RequestException as exc:
            said = f"Discord could not be reached ({type(exc).__name__})"
            raise MembershipUnknown(group, said) from exc
        if answer.status_code == 404:
            return None
        if answer.status_code != 200:
            raise MembershipUnknown(group, f"Discord answered {answer.status_code}")
        body = answer.json()
        return body if isinstance(body, dict) else None
