"""Molt's settings: one validated object built from the environment and molt.toml.

Every key is spelt the same way in both places (``MOLT_PHASE_TIMEOUT`` in the
environment or in molt.toml). The environment wins over the file. A bad value
stops start-up with a ``ConfigError`` naming the variable and what it expected.
The key settings are decoded here (``key_bytes``, ``private_key``), so that a key that
cannot be read stops start-up too; pipeline/releases/keys.py holds the keys themselves.
"""

from __future__ import annotations

import base64
import binascii
import getpass
import hashlib
import json
import os
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, time
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, ClassVar
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from pipeline.exceptions import ConfigError

#: Molt's own checkout: the default target, and where templates/ lives.
MOLT_HOME = Path(__file__).resolve().parent.parent
TEMPLATES_DIR = MOLT_HOME / "templates"

UserList = Annotated[list[str], NoDecode]

#: The model change requests are planned, written and reviewed with (MOLT_MODEL).
DEFAULT_MODEL = "claude-sonnet-4-6"

#: Where test commands run (pipeline/sandbox/confinement.py builds the sandbox).
SANDBOX_AUTO, SANDBOX_BWRAP, SANDBOX_OFF = "auto", "bwrap", "off"
SANDBOX_MODES = (SANDBOX_AUTO, SANDBOX_BWRAP, SANDBOX_OFF)
NETWORK_NONE, NETWORK_HOST = "none", "host"
NETWORK_MODES = (NETWORK_NONE, NETWORK_HOST)


@dataclass(frozen=True)
class Limits:
    """What one test command may use (``test_limits``): memory per process in MiB, processes
    (threads count) in all, and open files per process. The defaults fit a 2-core, 8 GiB
    host running Molt's own suite three tests at a time."""

    memory: int = 4096
    processes: int = 2048
    open_files: int = 4096

    @classmethod
    def parse(cls, value: Any) -> Limits:
        """From molt.toml's table (``{memory = 2048, processes = 300}``) or MOLT_TEST_LIMITS
        (``memory=2048,processes=300``); a key left out keeps its default."""
        if isinstance(value, Limits):
            return value
        if isinstance(value, str):
            pairs = [p.partition("=") for p in value.split(",") if p.strip()]
            if any(not sep for _, sep, _ in pairs):
                raise ValueError("expected name=number entries, e.g. memory=4096,processes=512")
            value = {k.strip(): v.strip() for k, _, v in pairs}
        if not isinstance(value, dict):
            raise ValueError("expected a table of memory, processes and open_files")
        known = cls.__dataclass_fields__
        unknown = sorted(set(value) - set(known))
        if unknown:
            raise ValueError(f"{unknown[0]}: expected one of {', '.join(known)}")
        numbers = {}
        for key, number in value.items():
            try:
                numbers[key] = int(number)
            except (TypeError, ValueError):
                raise ValueError(f"{key}: expected a whole number, got {number!r}") from None
            if numbers[key] < 16:
                raise ValueError(f"{key}: expected at least 16, got {numbers[key]}")
        return cls(**numbers)

    def describe(self) -> str:
        return (
            f"memory {self.memory} MiB a process, {self.processes} processes, "
            f"{self.open_files} open files"
        )


#: The keys of one ``[[watch.queries]]`` table (``for``: breaches in a row that count).
WATCH_QUERY_KEYS = ("name", "query", "max", "min", "for", "required")


@dataclass(frozen=True)
class WatchQuery:
    """A PromQL query the watch window reads from Prometheus, and the bounds its value must
    keep: ``consecutive`` readings out of bounds in a row end the watch if it is
    ``required``; an optional one is only reported."""

    name: str
    query: str
    max: float | None = None
    min: float | None = None
    consecutive: int = 2
    required: bool = True

    def bound(self, value: float) -> str:
        """The bound ``value`` breaks ("> max 0.05"), or "" when it is within bounds."""
        if self.max is not None and value > self.max:
            return f"> max {self.max:g}"
        if self.min is not None and value < self.min:
            return f"< min {self.min:g}"
        return ""

    def table(self) -> dict[str, Any]:
        """As molt.toml spells it."""
        raw = {"name": self.name, "query": self.query, "max": self.max, "min": self.min}
        raw |= {"for": self.consecutive, "required": self.required}
        return {key: value for key, value in raw.items() if value is not None}


@dataclass(frozen=True)
class WatchTable:
    """molt.toml's ``[watch]`` table (or a target's ``[targets.<name>.watch]``): the
    service's metrics the watch window reads."""

    queries: tuple[WatchQuery, ...] = ()

    @classmethod
    def parse(cls, value: Any) -> WatchTable:
        """From the table; a wrong key or value is named by its place (``queries[1].max``)."""
        if isinstance(value, WatchTable):
            return value
        if isinstance(value, str):  # MOLT_WATCH in the environment: the table as JSON
            try:
                value = json.loads(value)
            except ValueError:
                value = None
        if not isinstance(value, dict):
            raise ValueError("expected a table with [[watch.queries]] in it (JSON in MOLT_WATCH)")
        unknown = sorted(set(value) - {"queries"})
        if unknown:
            raise ValueError(f"{unknown[0]}: not a watch setting (expected queries)")
        listed = value.get("queries", [])
        if not isinstance(listed, list):
            raise ValueError("queries: expected [[watch.queries]] tables")
        queries = tuple(_watch_query(f"queries[{i}]", raw) for i, raw in enumerate(listed))
        names = [query.name for query in queries]
        for index, name in enumerate(names):
            if name in names[:index]:
                raise ValueError(f"queries[{index}].name: {name!r} is used twice")
        return cls(queries)

    def table(self) -> dict[str, Any]:
        return {"queries": [query.table() for query in self.queries]}


def _watch_query(where: str, raw: Any) -> WatchQuery:
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a table of {', '.join(WATCH_QUERY_KEYS)}")
    unknown = sorted(set(raw) - set(WATCH_QUERY_KEYS))
    if unknown:
        raise ValueError(
            f"{where}.{unknown[0]}: not a query setting (expected one of "
            f"{', '.join(WATCH_QUERY_KEYS)})"
        )
    for key in ("name", "query"):
        if not isinstance(raw.get(key), str) or not raw[key].strip():
            raise ValueError(f"{where}.{key}: expected a string that is not empty")
    name = raw["name"].strip()
    if len(name) > 64:
        raise ValueError(f"{where}.name: expected at most 64 characters")
    bounds: dict[str, float] = {}
    for key in ("max", "min"):
        given = raw.get(key)
        if given is None:
            continue
        if isinstance(given, bool) or not isinstance(given, int | float) or given != given:
            raise ValueError(f"{where}.{key}: expected a number, got {given!r}")
        bounds[key] = float(given)
    if not bounds:
        raise ValueError(f"{where}: expected max, min or both")
    if "max" in bounds and "min" in bounds and bounds["min"] > bounds["max"]:
        raise ValueError(f"{where}.min: expected at most max ({bounds['max']:g})")
    consecutive = raw.get("for", 2)
    if isinstance(consecutive, bool) or not isinstance(consecutive, int) or consecutive < 1:
        raise ValueError(f"{where}.for: expected a whole number of at least 1, got {consecutive!r}")
    required = raw.get("required", True)
    if not isinstance(required, bool):
        raise ValueError(f"{where}.required: expected true or false, got {required!r}")
    return WatchQuery(
        name,
        raw["query"].strip(),
        bounds.get("max"),
        bounds.get("min"),
        consecutive,
        required,
    )


#: The days a weekly ``[[freeze]]`` names, Monday first (``datetime.weekday()``'s order).
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
#: The keys a ``[[freeze]]`` table may set.
FREEZE_KEYS = ("targets", "days", "from", "to", "timezone", "start", "end", "reason")


@dataclass(frozen=True)
class Freeze:
    """One ``[[freeze]]`` table of molt.toml: a weekly window (``days``, ``opens`` and
    ``closes`` in ``timezone``) or a one-off one (``start`` to ``end``), for ``targets``
    (empty: every target). pipeline/intake/freezes.py says when it is in force."""

    number: int  # its place among the tables, from 1, as errors and listings name it
    reason: str
    targets: tuple[str, ...] = ()
    days: tuple[int, ...] = ()
    opens: time | None = None
    closes: time | None = None
    timezone: str = "UTC"
    start: datetime | None = None
    end: datetime | None = None

    @property
    def weekly(self) -> bool:
        return bool(self.days)

    @classmethod
    def parse(cls, table: Any, number: int) -> Freeze:
        """A table as molt.toml gives it; anything wrong is a ConfigError naming the key."""
        where = f"freeze #{number}"

        def wrong(key: str, expected: str) -> ConfigError:
            given = table.get(key) if isinstance(table, dict) else table
            return ConfigError(
                f"invalid configuration: {where}: {key}: expected {expected}, got {given!r}"
            )

        if not isinstance(table, dict):
            raise ConfigError(f"invalid configuration: {where}: expected a [[freeze]] table")
        unknown = sorted(set(table) - set(FREEZE_KEYS))
        if unknown:
            raise wrong(unknown[0], f"one of the keys {', '.join(FREEZE_KEYS)}")
        reason = table.get("reason")
        if not isinstance(reason, str) or not reason.strip():
            raise wrong("reason", "the reason people are told, as text")
        targets = table.get("targets", [])
        if not isinstance(targets, list) or not all(
            isinstance(t, str) and TARGET_NAME.fullmatch(t) for t in targets
        ):
            raise wrong("targets", "a list of target names")
        zone = table.get("timezone", "UTC")
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError, TypeError):
            raise wrong("timezone", "an IANA time zone such as Europe/London") from None
        found = cls(number, reason.strip(), tuple(targets), timezone=zone)
        weekly = {"days", "from", "to"} & set(table)
        once = {"start", "end"} & set(table)
        if weekly and once:
            raise wrong(sorted(once)[0], "days, from and to, or start and end, not both")
        if once:
            start, end = (_instant(table, key, zone, wrong) for key in ("start", "end"))
            if end <= start:
                raise wrong("end", f"a time after start ({start.isoformat()})")
            return replace(found, start=start, end=end)
        days = table.get("days")
        if not isinstance(days, list) or not days or not all(d in WEEKDAYS for d in days):
            raise wrong("days", f"a list of days among {', '.join(WEEKDAYS)}")
        if len(set(days)) == len(WEEKDAYS):
            raise wrong("days", "fewer than all seven days (a weekly window has to end)")
        opens, closes = (_clock(table, key, wrong) for key in ("from", "to"))
        numbers = tuple(sorted({WEEKDAYS.index(d) for d in days}))
        return replace(found, days=numbers, opens=opens, closes=closes)


def _freeze(table: Any, number: int) -> Freeze:
    """A table of molt.toml, or a freeze already read (a target's view is built from the
    settings' own dump, where each is the dataclass's fields)."""
    if isinstance(table, Freeze):
        return table
    if isinstance(table, dict) and set(table) == set(Freeze.__dataclass_fields__):
        return Freeze(**table)
    return Freeze.parse(table, number)


def _clock(table: dict[str, Any], key: str, wrong: Callable[[str, str], ConfigError]) -> time:
    """A ``from``/``to`` of a weekly freeze: "HH:MM", 24-hour."""
    value = table.get(key)
    if not isinstance(value, str) or not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", value):
        raise wrong(key, 'a time of day as "HH:MM" (24-hour)')
    return time(int(value[:2]), int(value[3:]))


def _instant(
    table: dict[str, Any], key: str, zone: str, wrong: Callable[[str, str], ConfigError]
) -> datetime:
    """A ``start``/``end`` of a one-off freeze: an ISO 8601 time or a TOML date-time; one
    without an offset is in the table's ``timezone``."""
    value = table.get(key)
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise wrong(key, 'a date and time such as "2026-12-20T00:00:00Z"') from None
    if not isinstance(value, datetime):
        raise wrong(key, 'a date and time such as "2026-12-20T00:00:00Z"')
    if value.tzinfo is None:
        value = value.replace(tzinfo=ZoneInfo(zone))
    return value.astimezone(UTC)


def _var(name: str, default: Any = None, **kwargs: Any) -> Any:
    """A field read from the variable ``name`` (or the field's own name in code)."""
    return Field(default, validation_alias=AliasChoices(name, name.lower()), **kwargs)


def config_file() -> Path:
    """The settings file: MOLT_CONFIG, or molt.toml in the working directory."""
    return Path(os.environ.get("MOLT_CONFIG", "molt.toml"))


#: MOLT_TEST_COMMAND when unset; Molt's own suite runs in parallel, the way scripts/test runs it.
DEFAULT_TEST_COMMAND = "python -m pytest -q"
SELF_TEST_COMMAND = "python -m pytest -q -n 4 --dist worksteal"

#: How much Molt does on its own (MOLT_AUTONOMY); see pipeline/intake/autonomy.py.
AUTONOMY_MODES = ("observe", "assisted", "semi", "auto")

#: What tests that fail, then pass when run again, do to a phase (MOLT_FLAKY; see
#: pipeline/sandbox/reruns.py): fail it anyway, naming them as flaky, or let it pass.
FLAKY_FAIL = "fail"
FLAKY_PASS = "pass"
FLAKY_MODES = (FLAKY_FAIL, FLAKY_PASS)
#: How a change in words reaches the service (MOLT_CHANGE_DELIVERY; pipeline/update/proposals.py):
#: applied to the live checkout, or proposed as a pull request.
DELIVERY_APPLY = "apply"
DELIVERY_PULL_REQUEST = "pull-request"
DELIVERY_MODES = (DELIVERY_APPLY, DELIVERY_PULL_REQUEST)
#: How logs are written (MOLT_LOG_FORMAT; see pipeline/logs.py): "auto" is console on a
#: terminal and JSON otherwise.
LOG_FORMATS = ("auto", "json", "console")
#: Settings that take one of a few words, and the words.
_MODES = {
    "autonomy": AUTONOMY_MODES,
    "flaky": FLAKY_MODES,
    "change_delivery": DELIVERY_MODES,
    "log_format": LOG_FORMATS,
    "sandbox": SANDBOX_MODES,
    "test_network": NETWORK_MODES,
}

#: A fleet's target names, as ``[targets.<name>]`` tables of molt.toml spell them.
TARGET_NAME = re.compile(r"[a-z0-9-]{1,32}")
#: The keys a ``[targets.<name>]`` table may set → the setting each stands for; a key the
#: table leaves out is the global setting's.
TARGET_KEYS = {
    "dir": "target_dir",
    "remote": "target_remote",
    "test_command": "test_command",
    "restart_command": "restart_command",
    "health_command": "health_command",
    "phase_timeout": "phase_timeout",
    "authorised_users": "authorised_users",
    "approvers": "approvers",
    "operators": "operators",
    "channels": "channels",
    "autonomy": "autonomy",
    "max_changes_per_day": "max_changes_per_day",
    "watch_log": "watch_log",
    "watch": "watch",
    "change_delivery": "change_delivery",
    "test_env": "test_env",
    "test_network": "test_network",
    "test_limits": "test_limits",
}
#: The keys a ``[rollouts.<name>]`` table may set (pipeline/update/rollouts.py runs them).
ROLLOUT_KEYS = ("from", "soak", "steps", "on_failure", "approvers")
#: What a failed step does to the steps already done: roll them back too, or leave them.
ROLLBACK_ALL, STOP = "rollback-all", "stop"
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smh])\s*")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600}


@dataclass(frozen=True)
class Rollout:
    """One ``[rollouts.<name>]`` table: a commit's way through several targets, one after
    another, after it soaked on ``source`` (``from``)."""

    name: str
    steps: tuple[str, ...]  # target names, in order: the first is the canary
    source: str = ""  # the target a commit must have succeeded on first ("": none)
    soak: float = 0.0  # seconds it must have stayed there, watched, with no open incident
    on_failure: str = ROLLBACK_ALL
    approvers: tuple[str, ...] = ()  # who may approve it (empty: approvers of every step)


def _rollout(name: str, table: Any, targets: dict[str, Any]) -> Rollout:
    """Read one rollout table, or stop start-up naming the key that is wrong."""
    where = f"rollouts.{name}"

    def bad(key: str, expected: str, got: Any = None) -> ConfigError:
        shown = "" if got is None else f" (got {got!r})"
        return ConfigError(
            f"invalid configuration: {where}{'.' + key if key else ''}: {expected}{shown}"
        )

    if not TARGET_NAME.fullmatch(name):
        raise bad("", "expected a name of [a-z0-9-]{1,32}")
    if name in targets:
        raise bad("", "a rollout cannot have the name of a target")
    if not isinstance(table, dict):
        raise bad("", "expected a table")
    unknown = sorted(set(table) - set(ROLLOUT_KEYS))
    if unknown:
        raise bad(unknown[0], f"not a rollout setting (expected one of {', '.join(ROLLOUT_KEYS)})")
    steps = table.get("steps")
    if not isinstance(steps, list) or not steps or not all(isinstance(s, str) for s in steps):
        raise bad("steps", "expected a list of target names", steps)
    for step in steps:
        if step not in targets:
            raise bad("steps", f"no target {step!r}: known are {', '.join(sorted(targets))}")
    if len(set(steps)) != len(steps):
        raise bad("steps", "a target may be one step only", steps)
    source = table.get("from", "")
    if source and (not isinstance(source, str) or source not in targets):
        raise bad("from", f"expected a target: one of {', '.join(sorted(targets))}", source)
    if source in steps:
        raise bad("from", "the target a commit soaks on cannot also be a step", source)
    soak = table.get("soak", "0s")
    found = _DURATION.fullmatch(soak) if isinstance(soak, str) else None
    if found is None:
        raise bad("soak", "expected a duration such as 90s, 10m or 2h", soak)
    if float(found.group(1)) and not source:
        raise bad("soak", "a soak needs `from`, the target the commit soaks on")
    on_failure = table.get("on_failure", ROLLBACK_ALL)
    if on_failure not in (ROLLBACK_ALL, STOP):
        raise bad("on_failure", f"expected {ROLLBACK_ALL!r} or {STOP!r}", on_failure)
    approvers = table.get("approvers", [])
    if not isinstance(approvers, list) or not all(isinstance(a, str) for a in approvers):
        raise bad("approvers", 'expected a list such as ["slack:U123", "github:alice"]')
    return Rollout(
        name=name,
        steps=tuple(steps),
        source=source,
        soak=float(found.group(1)) * _UNIT_SECONDS[found.group(2)],
        on_failure=on_failure,
        approvers=tuple(a.strip() for a in approvers if a.strip()),
    )


#: Settings whose default is derived from others (``model_post_init``): unless set, a
#: target's view derives them again from its own values.
_DERIVED = ("test_command", "authorised_users", "approvers", "operators")


@dataclass(frozen=True)
class Secret:
    """Marks a field that holds a secret without being a ``SecretStr`` (REDIS_URL): ``part``
    is the secret in its value (the password of a URL), for redaction."""

    part: Callable[[Any], str | None]


def _url_password(url: Any) -> str | None:
    return urlsplit(url).password if isinstance(url, str) else None


#: Every process reads its settings first thing. Patterns are Python's ``re``: the default
#: engine compiled ``\w{1,100}``'s Unicode classes into automata at import, a twentieth of a
#: second at each start. ``\Z`` ends them where ``$`` would let a trailing line break through.
_MODEL_CONFIG = ConfigDict(
    extra="ignore", populate_by_name=True, frozen=True, regex_engine="python-re"
)


class PlatformSettings(BaseModel):
    """One chat platform's keys (``Settings.slack``, ``.discord``, ``.github``). Each key is
    read from its own variable, as every setting is (``SLACK_BOT_TOKEN``)."""

    model_config = ConfigDict(**_MODEL_CONFIG)

    #: How an incident channel of this platform is written (MOLT_INCIDENT_CHANNEL).
    channel: ClassVar[str]
    #: People type commands into it at any time: one enabled, ``molt run`` needs no console.
    chat: ClassVar[bool] = False

    @property
    def enabled(self) -> bool:
        """Configured enough for its front end to run."""
        raise NotImplementedError


class SlackSettings(PlatformSettings):
    channel: ClassVar[str] = r"slack:[A-Z0-9]+"
    chat: ClassVar[bool] = True

    bot_token: SecretStr | None = _var("SLACK_BOT_TOKEN")
    signing_secret: SecretStr | None = _var("SLACK_SIGNING_SECRET")
    app_token: SecretStr | None = _var("SLACK_APP_TOKEN")
    api_url: str = _var("SLACK_API_URL", "https://slack.com/api/", pattern=r"^https?://")
    command: str = _var("MOLT_SLACK_COMMAND", "/molt", pattern=r"^/[\w-]{1,31}\Z")

    @property
    def enabled(self) -> bool:
        """A bot token, and a way in: the signing secret (HTTP) or an app token (Socket Mode)."""
        return bool(self.bot_token and (self.signing_secret or self.app_token))


class DiscordSettings(PlatformSettings):
    channel: ClassVar[str] = r"discord:\d+"
    chat: ClassVar[bool] = True

    token: SecretStr | None = _var("DISCORD_TOKEN")
    prefix: str = _var("MOLT_DISCORD_PREFIX", "!molt", pattern=r"^\S{1,32}\Z")
    #: Channel ids Discord commands are taken in; empty: every channel the bot can read.
    channels: UserList = _var("MOLT_DISCORD_CHANNELS", [])
    api_url: str = _var("DISCORD_API_URL", "https://discord.com/api/v10", pattern=r"^https?://")

    @property
    def enabled(self) -> bool:
        return bool(self.token)

    @field_validator("channels", mode="before")
    @classmethod
    def _split_channels(cls, value: Any) -> Any:
        channels = _as_list(value)
        if any(not channel.isdigit() for channel in channels or []):
            raise ValueError("expected comma-separated numeric channel ids")
        return value if channels is None else channels


class GitHubSettings(PlatformSettings):
    """The GitHub front end (bot/github/): a token or an App, the repositories it watches."""

    channel: ClassVar[str] = r"github:[\w.-]+/[\w.-]+"

    token: SecretStr | None = _var("GITHUB_TOKEN")
    app_id: str | None = _var("GITHUB_APP_ID", pattern=r"^\d{1,20}\Z")
    app_private_key: SecretStr | None = _var("GITHUB_APP_PRIVATE_KEY")
    app_installation_id: str | None = _var("GITHUB_APP_INSTALLATION_ID", pattern=r"^\d{1,20}\Z")
    api_url: str = _var("GITHUB_API_URL", "https://api.github.com", pattern=r"^https?://")
    #: Signs webhook deliveries; unset, GitHub is polled only (no public URL needed).
    webhook_secret: SecretStr | None = _var("GITHUB_WEBHOOK_SECRET")
    repos: UserList = _var("MOLT_GITHUB_REPOS", [])
    label: str = _var("MOLT_GITHUB_LABEL", "molt", pattern=r"^[^,\s][^,]{0,49}\Z")
    #: Seconds between polls for labelled issues and comments a webhook may have missed; 0 off.
    poll: float = _var("MOLT_GITHUB_POLL", 60.0, ge=0)
    deployments: bool = _var("MOLT_GITHUB_DEPLOYMENTS", False)
    environment: str = _var("MOLT_GITHUB_ENVIRONMENT", "production", min_length=1)
    #: Seconds between two writes to GitHub (GitHub asks for at least one).
    write_interval: float = _var("MOLT_GITHUB_WRITE_INTERVAL", 1.0, ge=0)

    @property
    def enabled(self) -> bool:
        """Watched repositories, and a token or a whole GitHub App to act in them with."""
        app = self.app_id and self.app_private_key and self.app_installation_id
        return bool(self.repos and (self.token or app))

    @field_validator("repos", mode="before")
    @classmethod
    def _split_repos(cls, value: Any) -> Any:
        repos = _as_list(value)
        for repo in repos or []:
            if not re.fullmatch(r"[\w.-]{1,100}/[\w.-]{1,100}", repo):
                raise ValueError(f"expected comma-separated owner/name entries, got {repo!r}")
        return value if repos is None else repos


#: Each platform's settings by the field of ``Settings`` that holds them.
PLATFORM_SETTINGS: dict[str, type[PlatformSettings]] = {
    "slack": SlackSettings,
    "discord": DiscordSettings,
    "github": GitHubSettings,
}


def _names(info: FieldInfo) -> tuple[str, ...]:
    """The names a field is read by: its variable first."""
    alias = info.validation_alias
    return tuple(str(c) for c in alias.choices) if isinstance(alias, AliasChoices) else ()


def _is_secret(info: FieldInfo) -> bool:
    """Typed ``SecretStr``, or marked ``Secret``."""
    return info.annotation in (SecretStr, SecretStr | None) or any(
        isinstance(m, Secret) for m in info.metadata
    )


def _secret_fields(model: type[BaseModel]) -> list[tuple[str, FieldInfo]]:
    """The fields of ``model`` that hold a secret."""
    return [(name, info) for name, info in model.model_fields.items() if _is_secret(info)]


def _secret_values(model: BaseModel) -> list[str]:
    """The secrets ``model`` holds, and those of the models in its fields."""
    values: list[str] = []
    for name, info in _secret_fields(type(model)):
        value = getattr(model, name)
        if isinstance(value, SecretStr):
            values.append(value.get_secret_value())
        for marker in (m for m in info.metadata if isinstance(m, Secret)):
            values.append(marker.part(value) or "")
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            values += _secret_values(value)
    return values


def _fold(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with each platform's keys, given by their flat names (SLACK_BOT_TOKEN, or
    slack_bot_token in code), moved into that platform's table; a flat key wins."""
    folded = dict(values)
    for field, model in PLATFORM_SETTINGS.items():
        given = folded.get(field)
        table = dict(given) if isinstance(given, dict) else {}
        for name, info in model.model_fields.items():
            for key in (*_names(info), f"{field}_{name}"):
                if key in folded:
                    table[name] = folded.pop(key)
                    break
        if table or isinstance(given, dict):
            folded[field] = table
    return folded


class _Environment(PydanticBaseSettingsSource):
    """The environment as pydantic-settings reads it, with each platform's keys read by their
    own variables (case aside, as for every other setting)."""

    def __init__(self, settings_cls: type[BaseSettings], flat: PydanticBaseSettingsSource):
        super().__init__(settings_cls)
        self.flat = flat

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # everything is read in __call__

    def __call__(self) -> dict[str, Any]:
        values = {k: v for k, v in self.flat().items() if k not in PLATFORM_SETTINGS}
        environ = {k.lower(): v for k, v in os.environ.items()}
        for field, model in PLATFORM_SETTINGS.items():
            table = {}
            for name, info in model.model_fields.items():
                found = [environ[n.lower()] for n in _names(info) if n.lower() in environ]
                if found:
                    table[name] = found[0]
            if table:
                values[field] = table
        return values


class _File(TomlConfigSettingsSource):
    """molt.toml, where each platform's keys are written by their flat names too."""

    def __call__(self) -> dict[str, Any]:
        return _fold(super().__call__())


class Settings(BaseSettings):
    model_config = SettingsConfigDict(**_MODEL_CONFIG)

    data_dir: Path = _var("MOLT_DATA_DIR", Path(".molt"))
    redis_url: Annotated[str | None, Secret(_url_password)] = _var("REDIS_URL")
    #: Redis Sentinel (host:port of each sentinel, and the name of the primary they watch):
    #: every process follows a failover of the primary. Set, it is used instead of REDIS_URL.
    redis_sentinels: UserList = _var("REDIS_SENTINELS", [])
    redis_sentinel_master: str = _var(
        "REDIS_SENTINEL_MASTER", "mymaster", pattern=r"^[\w.-]{1,64}\Z"
    )
    target_dir: Path = _var("MOLT_TARGET_DIR", MOLT_HOME)
    target_remote: str = _var("MOLT_TARGET_REMOTE", "origin", min_length=1)
    test_command: str = _var("MOLT_TEST_COMMAND", "", min_length=1, validate_default=False)
    restart_command: str | None = _var("MOLT_RESTART_COMMAND")
    health_command: str | None = _var("MOLT_HEALTH_COMMAND")
    phase_timeout: float = _var("MOLT_PHASE_TIMEOUT", 900.0, gt=0)
    #: Seconds between refreshes of a running phase's status message; at least 2, so one
    #: update's edits stay well inside Slack's chat.update limit (about 50 a minute).
    progress_interval: float = _var("MOLT_PROGRESS_INTERVAL", 15.0, ge=2)
    flaky: str = _var("MOLT_FLAKY", FLAKY_FAIL)
    # Where test commands run (pipeline/sandbox/confinement.py): a sandbox (auto: if the host can
    # make one), the variables of Molt's environment they get, their network and limits.
    sandbox: str = _var("MOLT_SANDBOX", SANDBOX_AUTO)
    test_env: UserList = _var("MOLT_TEST_ENV", [])
    test_network: str = _var("MOLT_TEST_NETWORK", NETWORK_NONE)
    test_limits: Annotated[Limits, NoDecode] = _var("MOLT_TEST_LIMITS", Limits())
    restart_timeout: float = _var("MOLT_RESTART_TIMEOUT", 120.0, gt=0)
    boot_timeout: float = _var("MOLT_BOOT_TIMEOUT", 60.0, gt=0)
    queue_max: int = _var("MOLT_QUEUE_MAX", 10, ge=0)
    plan_ttl: float = _var("MOLT_PLAN_TTL", 3600.0, gt=0)
    lock_ttl: float = _var("MOLT_LOCK_TTL", 15.0, ge=1)
    #: In a fleet, how long a target's job (pre-flight and planning, or an update's turn)
    #: may wait with no worker of the target there to take it before its request ends.
    worker_wait: float = _var("MOLT_WORKER_WAIT", 30.0, gt=0)
    #: In a fleet, how long after its last beat (every 2 s) a worker no longer counts as
    #: running: a worker killed with -9 is taken for gone this long after it died.
    worker_stale: float = _var("MOLT_WORKER_STALE", 10.0, ge=4)
    #: How long a stopping bot leaves its workers to finish their job before RQ kills it (and
    #: recovery rolls its update back): with the 3 s the kill is then given, well within the
    #: 10 s supervisors (supervisord, docker stop) give before SIGKILL by default.
    worker_grace: float = _var("MOLT_WORKER_GRACE", 5.0, ge=0)
    authorised_users: UserList = _var("MOLT_AUTHORISED_USERS", [])
    approvers: UserList = _var("MOLT_APPROVERS", [])
    operators: UserList = _var("MOLT_OPERATORS", [])
    #: Seconds a platform's answer about a group of people (``slack:@oncall`` in a user
    #: list; bot/groups.py) is kept; 0 asks on every check.
    group_ttl: float = _var("MOLT_GROUP_TTL", 300.0, ge=0)
    console_wait: float = _var("MOLT_CONSOLE_WAIT", 3600.0, gt=0)
    console_user: str = _var("MOLT_CONSOLE_USER", "", pattern=r"^[\w.@-]*\Z")
    http_host: str = _var("MOLT_HTTP_HOST", "127.0.0.1", min_length=1)
    http_port: int = _var("MOLT_HTTP_PORT", 3000, ge=0, le=65535)
    #: A port on which ``molt worker`` serves its host's metrics (a fleet's workers on hosts
    #: without the bot); unset: the bot's /metrics serves them.
    metrics_port: int | None = _var("MOLT_METRICS_PORT", None, ge=1, le=65535)
    workers: int = _var("MOLT_WORKERS", 1, ge=0, le=16)
    refusal_theme: str = _var("MOLT_REFUSAL_THEME", "moult")
    min_free_disk_mb: int = _var("MOLT_MIN_FREE_DISK_MB", 200, ge=0)
    min_free_memory_mb: int = _var("MOLT_MIN_FREE_MEMORY_MB", 100, ge=0)
    log_level: str = _var("MOLT_LOG_LEVEL", "info", pattern=r"^(?i:debug|info|warning|error)\Z")
    log_format: str = _var("MOLT_LOG_FORMAT", "auto")
    #: The read-only status page at / on the HTTP port (bot/ui.py), and the token it asks.
    ui_token: SecretStr | None = _var("MOLT_UI_TOKEN")
    ui: bool = _var("MOLT_UI", False)
    # The chat front ends (bot/platforms.py), each platform's keys in a model of its own;
    # their variables keep their names (SLACK_BOT_TOKEN, MOLT_GITHUB_REPOS).
    slack: SlackSettings = Field(default_factory=lambda: SlackSettings())
    discord: DiscordSettings = Field(default_factory=lambda: DiscordSettings())
    github: GitHubSettings = Field(default_factory=lambda: GitHubSettings())
    # Changes delivered as pull requests (pipeline/update/proposals.py, bot/github/pulls.py).
    change_delivery: str = _var("MOLT_CHANGE_DELIVERY", DELIVERY_APPLY)
    #: A merge by an approver counts as the approval of the deploy it plans.
    merge_approves: bool = _var("MOLT_MERGE_APPROVES", False)
    #: ``/molt deploy`` on a pull request waits for its checks to pass.
    require_checks: bool = _var("MOLT_REQUIRE_CHECKS", False)
    #: An SSH private key (a path, or the key itself) Molt's commits are signed with.
    commit_signing_key: SecretStr | None = _var("MOLT_COMMIT_SIGNING_KEY")
    # Change requests in words. Limits per planning and per implementation: model calls
    # (turns), tokens through all of its calls (input, cached and output), seconds; and the
    # size of the first plan prompt (instructions, tools, repository map and request).
    anthropic_api_key: SecretStr | None = _var("ANTHROPIC_API_KEY")
    anthropic_base_url: str | None = _var("ANTHROPIC_BASE_URL", pattern=r"^https?://")
    model: str = _var("MOLT_MODEL", DEFAULT_MODEL, pattern=r"^[\w.:@/-]{1,100}\Z")
    llm_max_turns: int = _var("MOLT_LLM_MAX_TURNS", 40, ge=1, le=500)
    llm_max_tokens: int = _var("MOLT_LLM_MAX_TOKENS", 2_000_000, ge=10_000)
    llm_timeout: float = _var("MOLT_LLM_TIMEOUT", 1200.0, gt=0)
    llm_prompt_budget: int = _var("MOLT_LLM_PROMPT_BUDGET", 24_000, ge=12_000, le=400_000)
    # Signed releases (pipeline/releases/signing.py, keys in pipeline/releases/keys.py) and
    # the boot guard (pipeline/update/bootguard.py).
    #: The Ed25519 key releases are signed with: PEM, or base64 of its 32 raw bytes. Unset:
    #: a key created on first run under MOLT_DATA_DIR/keys/.
    signing_key: SecretStr | None = _var("MOLT_SIGNING_KEY")
    #: Public keys (base64 or hex of 32 raw bytes) whose signatures are accepted, besides
    #: the key releases are signed with now: the old key while keys are rotated.
    trusted_keys: UserList = _var("MOLT_TRUSTED_KEYS", [])
    #: "<starts>/<seconds>": that many failed starts of one release within that many seconds
    #: is a crash loop, and the boot guard returns to the last release that started well.
    crash_loop: str = _var("MOLT_CRASH_LOOP", "3/60", pattern=r"^\s*[1-9]\d*\s*/\s*[1-9]\d*\s*\Z")
    #: Seconds a supervisor takes to start Molt again after it exited (systemd's RestartSec):
    #: a failed start that nothing replaced within this long is not waited for any more.
    restart_grace: float = _var("MOLT_RESTART_GRACE", 3.0, gt=0)
    # Autonomy and limits (pipeline/intake/autonomy.py): what runs without a person, how much a day,
    # and which kinds of request are taken at all.
    autonomy: str = _var("MOLT_AUTONOMY", "assisted")
    max_changes_per_day: int = _var("MOLT_MAX_CHANGES_PER_DAY", 0, ge=0)
    require_tests: bool = _var("MOLT_REQUIRE_TESTS", True)
    allow_deploys: bool = _var("MOLT_ALLOW_DEPLOYS", True)
    allow_changes: bool = _var("MOLT_ALLOW_CHANGES", True)
    allow_github: bool = _var("MOLT_ALLOW_GITHUB", True)
    # A fleet (``for_target``): the ``[targets.<name>]`` tables of molt.toml, and the
    # channels a target's requests may be asked in (empty: any).
    targets: dict[str, dict[str, Any]] = Field(
        {}, validation_alias=AliasChoices("targets", "MOLT_TARGETS")
    )
    channels: UserList = _var("MOLT_CHANNELS", [])
    # Freeze windows (pipeline/intake/freezes.py): the ``[[freeze]]`` tables of molt.toml,
    # checked into ``Freeze``s as they load; a bad one stops start-up naming its key.
    freeze: Annotated[list[Freeze], NoDecode] = Field(
        [], validation_alias=AliasChoices("freeze", "MOLT_FREEZE")
    )
    #: Rollouts (``rollout``): the ``[rollouts.<name>]`` tables, a commit's way through
    #: several of the fleet's targets in turn.
    rollouts: dict[str, dict[str, Any]] = Field(
        {}, validation_alias=AliasChoices("rollouts", "MOLT_ROLLOUTS")
    )
    #: The target this is the view of (``for_target``); empty for the settings as loaded.
    _target_name: str = PrivateAttr("")
    _views: dict[str, Settings] = PrivateAttr(default_factory=dict)
    # The watch window after every restart (pipeline/service/watching.py): the health command every
    # MOLT_WATCH_INTERVAL seconds for MOLT_WATCH_SECONDS (0: off); MOLT_WATCH_FAILURES failed
    # probes, or an incident on the target, roll the update back.
    watch_seconds: float = _var("MOLT_WATCH_SECONDS", 60.0, ge=0)
    watch_interval: float = _var("MOLT_WATCH_INTERVAL", 5.0, gt=0)
    watch_failures: int = _var("MOLT_WATCH_FAILURES", 2, ge=1)
    #: The service's metrics in the window (pipeline/service/metricwatch.py): Prometheus's
    #: HTTP API, its bearer token, and the ``[[watch.queries]]`` of molt.toml.
    prometheus_url: str | None = _var("MOLT_PROMETHEUS_URL")
    prometheus_token: SecretStr | None = _var("MOLT_PROMETHEUS_TOKEN")
    watch: Annotated[WatchTable, NoDecode, PlainSerializer(WatchTable.table)] = Field(
        WatchTable(), validation_alias=AliasChoices("watch", "MOLT_WATCH")
    )
    # Incidents (pipeline/incidents/book.py): where they come from, when they count, where they
    # are posted, and what Molt does about them.
    #: "<occurrences>/<seconds>": a log signature or webhook fingerprint opens an incident
    #: once seen that often within that many seconds.
    incident_threshold: str = _var(
        "MOLT_INCIDENT_THRESHOLD", "5/300", pattern=r"^\s*[1-9]\d*\s*/\s*[1-9]\d*\s*\Z"
    )
    incident_cooldown: float = _var("MOLT_INCIDENT_COOLDOWN", 900.0, ge=0)
    incident_channel: str = _var(
        "MOLT_INCIDENT_CHANNEL",
        "console",
        pattern=rf"^(console|{'|'.join(m.channel for m in PLATFORM_SETTINGS.values())})\Z",
    )
    suspect_window: float = _var("MOLT_SUSPECT_WINDOW", 1800.0, ge=0)
    #: An incident Molt acted on held if resolved within this many seconds of the action.
    resolve_window: float = _var("MOLT_RESOLVE_WINDOW", 900.0, gt=0)
    #: Actions on one fingerprint that did not hold before Molt stops acting on it.
    max_fix_attempts: int = _var("MOLT_MAX_FIX_ATTEMPTS", 2, ge=1)
    #: A diagnosis (pipeline/incidents/diagnosis.py) offers Fix it at this confidence or
    #: above; under MOLT_AUTONOMY=auto Molt asks for the fix itself, as a pull request, at
    #: MOLT_AUTO_FIX_CONFIDENCE or above.
    fix_confidence: float = _var("MOLT_FIX_CONFIDENCE", 0.6, ge=0, le=1)
    auto_fix_confidence: float = _var("MOLT_AUTO_FIX_CONFIDENCE", 0.8, ge=0, le=1)
    #: How long an incident's signature must stay quiet after a fix's watch window for the
    #: incident to be marked held.
    fix_hold: float = _var("MOLT_FIX_HOLD", 900.0, ge=0)
    alert_token: SecretStr | None = _var("MOLT_ALERT_TOKEN")
    alert_secret: SecretStr | None = _var("MOLT_ALERT_SECRET")
    sentry_secret: SecretStr | None = _var("MOLT_SENTRY_SECRET")
    #: "project-slug=target,…": the target each Sentry project's alerts are about.
    sentry_projects: UserList = _var("MOLT_SENTRY_PROJECTS", [])
    #: The managed service's log files (a path or a glob); for Molt itself its own logs.
    watch_log: str = _var("MOLT_WATCH_LOG", "")
    health_interval: float = _var("MOLT_HEALTH_INTERVAL", 60.0, ge=0)
    health_failures: int = _var("MOLT_HEALTH_FAILURES", 3, ge=1)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            _Environment(settings_cls, env_settings),
            _File(settings_cls, toml_file=config_file()),
        )

    @model_validator(mode="before")
    @classmethod
    def _platform_tables(cls, values: Any) -> Any:
        """Platform keys given by their flat names (``Settings(slack_bot_token=...)``)."""
        return _fold(values) if isinstance(values, dict) else values

    @field_validator("authorised_users", "approvers", "operators", mode="before")
    @classmethod
    def _split_users(cls, value: Any) -> Any:
        users = _as_list(value)
        for user in users or []:
            platform, sep, ident = user.partition(":")
            if not sep or not platform or not ident:
                raise ValueError(f"expected platform:id entries, got {user!r}")
        return value if users is None else users

    @field_validator("freeze", mode="before")
    @classmethod
    def _freezes(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, str):  # MOLT_FREEZE, the tables as JSON
            try:
                value = json.loads(value)
            except ValueError:
                raise ConfigError(
                    "invalid configuration: MOLT_FREEZE: expected a JSON list of freeze "
                    "tables, as [[freeze]] in molt.toml"
                ) from None
        if not isinstance(value, list):
            return value  # pydantic refuses it, naming the setting
        freezes = [_freeze(table, number) for number, table in enumerate(value, start=1)]
        known = info.data.get("targets") or {}
        for freeze in freezes if known else ():
            unknown = sorted(set(freeze.targets) - set(known))
            if unknown:
                raise ConfigError(
                    f"invalid configuration: freeze #{freeze.number}: targets: no target "
                    f"{unknown[0]!r} (known are {', '.join(sorted(known))})"
                )
        return freezes

    @field_validator("redis_sentinels", mode="before")
    @classmethod
    def _split_sentinels(cls, value: Any) -> Any:
        sentinels = _as_list(value)
        for entry in sentinels or []:
            host, _, port = entry.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"expected comma-separated host:port entries, got {entry!r}")
        return value if sentinels is None else sentinels

    @field_validator("channels", mode="before")
    @classmethod
    def _split_names(cls, value: Any) -> Any:
        names = _as_list(value)
        return value if names is None else names

    @field_validator("sentry_projects", mode="before")
    @classmethod
    def _split_projects(cls, value: Any) -> Any:
        projects = _as_list(value)
        for entry in projects or []:
            slug, sep, target = entry.partition("=")
            if not sep or not slug.strip() or not target.strip():
                raise ValueError(f"expected project-slug=target entries, got {entry!r}")
        return value if projects is None else projects

    @field_validator("ui", mode="after")
    @classmethod
    def _ui_needs_token(cls, value: bool, info: ValidationInfo) -> bool:
        token = info.data.get("ui_token")
        if value and not (token and token.get_secret_value()):
            raise ValueError("the status page needs MOLT_UI_TOKEN set too")
        return value

    @field_validator("prometheus_url", mode="after")
    @classmethod
    def _prometheus_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if not re.fullmatch(r"https?://[^\s@/]+(/\S*)?", value.strip()):
            raise ValueError(
                "expected http(s)://host[:port][/path] of Prometheus, its token in "
                "MOLT_PROMETHEUS_TOKEN rather than in the URL"
            )
        return value.strip().rstrip("/")

    @field_validator("watch", mode="before")
    @classmethod
    def _watch_table(cls, value: Any) -> WatchTable:
        return WatchTable.parse(value)

    @field_validator("watch", mode="after")
    @classmethod
    def _queries_need_prometheus(cls, value: WatchTable, info: ValidationInfo) -> WatchTable:
        if value.queries and not info.data.get("prometheus_url"):
            raise ValueError("queries need MOLT_PROMETHEUS_URL set too")
        return value

    @field_validator("test_env", mode="before")
    @classmethod
    def _split_test_env(cls, value: Any) -> Any:
        names = _as_list(value)
        for name in names or []:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,127}", name):
                raise ValueError(f"expected comma-separated variable names, got {name!r}")
            if name in SECRET_VARIABLES:
                raise ValueError(f"{name} is a secret of Molt's: it is never given to tests")
        return value if names is None else names

    @field_validator("test_limits", mode="before")
    @classmethod
    def _limits(cls, value: Any) -> Limits:
        return Limits.parse(value)

    @field_validator(
        "autonomy",
        "flaky",
        "change_delivery",
        "log_format",
        "sandbox",
        "test_network",
        mode="before",
    )
    @classmethod
    def _known_mode(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, str):
            value = value.strip().lower()
            modes = _MODES[info.field_name or ""]
            if value not in modes:
                raise ValueError(f"expected one of {', '.join(modes)}")
        return value

    @field_validator("trusted_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        keys = _as_list(value)
        if keys is None:
            return value
        for key in keys:
            if key_bytes(key) is None:
                raise ValueError(
                    f"expected comma-separated Ed25519 public keys (base64 or hex of 32 "
                    f"bytes), got {key[:16]!r}"
                )
        return keys

    @field_validator("signing_key", mode="after")
    @classmethod
    def _readable_key(cls, value: SecretStr | None) -> SecretStr | None:
        text = value.get_secret_value() if value is not None else ""
        if text.strip() and private_key(text) is None:
            raise ValueError("expected an Ed25519 private key: PEM, or base64 of its 32 bytes")
        return value

    @field_validator("data_dir", "target_dir", mode="after")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("refusal_theme", mode="after")
    @classmethod
    def _known_theme(cls, value: str) -> str:
        themes = sorted(p.stem for p in (TEMPLATES_DIR / "refusals").glob("*.txt"))
        if value not in themes:
            raise ValueError(f"expected one of {', '.join(themes)}, got {value!r}")
        return value

    def model_post_init(self, __context: Any) -> None:
        # Fill the defaults that depend on other fields; the model is frozen.
        if not self.test_command:
            default = SELF_TEST_COMMAND if self.manages_itself else DEFAULT_TEST_COMMAND
            object.__setattr__(self, "test_command", default)
        if not self.console_user:
            object.__setattr__(self, "console_user", _login_name())
        if not self.authorised_users:
            object.__setattr__(self, "authorised_users", [f"console:{self.console_user}"])
        if not self.approvers:
            object.__setattr__(self, "approvers", list(self.authorised_users))
        if not self.operators:
            object.__setattr__(self, "operators", list(self.approvers))

    def platforms(self) -> list[PlatformSettings]:
        """Each platform's settings."""
        return [getattr(self, field) for field in PLATFORM_SETTINGS]

    @property
    def chat_enabled(self) -> bool:
        """A chat is configured (Slack, Discord): ``molt run`` then starts no console."""
        return any(platform.chat and platform.enabled for platform in self.platforms())

    @property
    def llm_enabled(self) -> bool:
        """Change requests in plain words need a key for the model API."""
        return bool(self.anthropic_api_key and self.anthropic_api_key.get_secret_value())

    @cached_property
    def target_id(self) -> str:
        """A short stable name for the target, used in Redis keys and paths: a fleet's
        target's own name, else the directory's name and a digest of its path."""
        if self._target_name:
            return self._target_name
        digest = hashlib.sha256(str(self.target_dir).encode()).hexdigest()[:10]
        return f"{self.target_dir.name}-{digest}"

    @property
    def target_name(self) -> str:
        """What people call the target: its ``[targets.<name>]``, or its directory's name."""
        return self._target_name or self.target_dir.name

    @property
    def sentinels(self) -> list[tuple[str, int]]:
        """REDIS_SENTINELS as (host, port) pairs."""
        pairs = (entry.rpartition(":") for entry in self.redis_sentinels)
        return [(host, int(port)) for host, _, port in pairs]

    @property
    def fleet(self) -> bool:
        """More than the one target of MOLT_TARGET_DIR: ``[targets.<name>]`` tables."""
        return bool(self.targets)

    def target_names(self) -> list[str]:
        return sorted(self.targets) if self.fleet else [self.target_name]

    def rollout_names(self) -> list[str]:
        return sorted(self.rollouts) if self.fleet else []

    def rollout(self, name: str) -> Rollout:
        """The rollout ``name``, read from its table (checked at start-up)."""
        if name not in self.rollouts or not self.fleet:
            raise ConfigError(f"no rollout {name!r}: known are {', '.join(self.rollout_names())}")
        return _rollout(name, self.rollouts[name], self.targets)

    def for_target(self, name: str) -> Settings:
        """The settings as target ``name`` sees them: its table's keys over the global ones,
        so that code written for one target runs unchanged for each. Without a fleet every
        name (a request's, or none) is the one target."""
        if not self.fleet:
            return self
        if name not in self._views:
            self._views[name] = self._target_view(name)
        return self._views[name]

    def _target_view(self, name: str) -> Settings:
        if name not in self.targets:
            raise ConfigError(f"no target {name!r}: known are {', '.join(self.target_names())}")
        where = f"targets.{name}"
        if not TARGET_NAME.fullmatch(name):
            raise ConfigError(
                f"invalid configuration: {where}: expected a name of [a-z0-9-]{{1,32}}"
            )
        table = self.targets[name]
        if not isinstance(table, dict):
            raise ConfigError(f"invalid configuration: {where}: expected a table")
        unknown = sorted(set(table) - set(TARGET_KEYS))
        if unknown:
            raise ConfigError(
                f"invalid configuration: {where}.{unknown[0]}: not a target setting "
                f"(expected one of {', '.join(TARGET_KEYS)})"
            )
        values = self.model_dump(exclude={f for f in _DERIVED if f not in self.model_fields_set})
        fields = type(self).model_fields
        values |= {TARGET_KEYS[k]: v for k, v in table.items() if TARGET_KEYS[k] in fields}
        try:
            view = type(self).model_validate(values)
        except ValidationError as exc:
            by_field = {field: key for key, field in TARGET_KEYS.items()}
            named = _config_error(exc, lambda field: f"{where}.{by_field.get(field, field)}")
            raise named from None
        view._target_name = name
        view._views = self._views  # a view's for_target finds its fellow targets
        return view

    @property
    def manages_itself(self) -> bool:
        return self.target_dir == MOLT_HOME

    @property
    def crash_loop_limit(self) -> tuple[int, float]:
        """MOLT_CRASH_LOOP as (failed starts, within seconds)."""
        starts, seconds = self.crash_loop.split("/")
        return int(starts), float(seconds)

    @property
    def incident_threshold_limit(self) -> tuple[int, float]:
        """MOLT_INCIDENT_THRESHOLD as (occurrences, within seconds)."""
        count, seconds = self.incident_threshold.split("/")
        return int(count), float(seconds)

    @property
    def watched_logs(self) -> str:
        """MOLT_WATCH_LOG, or for Molt itself the logs of its bot and workers."""
        if self.watch_log or not self.manages_itself:
            return self.watch_log
        return str(self.data_dir / "*.log")

    @property
    def updates_dir(self) -> Path:
        return self.data_dir / "updates"

    @property
    def worktrees_dir(self) -> Path:
        return self.data_dir / "worktrees" / self.target_id

    def secrets(self) -> list[str]:
        """Every configured credential, for redaction: each secret-typed value (a ``SecretStr``,
        or a field marked ``Secret``), in these settings and in each platform's."""
        return [value for value in _secret_values(self) if value]


#: Variables that hold Molt's secrets or reach its Redis: ``test_env`` may not list them.
SECRET_VARIABLES = frozenset(
    {_names(info)[0] for _, info in _secret_fields(Settings)}
    | {_names(info)[0] for model in PLATFORM_SETTINGS.values() for _, info in _secret_fields(model)}
    | {"REDIS_SENTINELS"}
)


def _as_list(value: Any) -> list[str] | None:
    """A comma-separated string or a list (molt.toml) as clean items; None for other types,
    which pydantic then refuses with its own message."""
    if isinstance(value, str):
        value = value.split(",")
    if isinstance(value, list):
        return [str(item).strip() for item in value if str(item).strip()]
    return None


def key_bytes(text: str) -> bytes | None:
    """32 raw bytes from hex or base64 (either alphabet, padding optional): a trusted key
    of MOLT_TRUSTED_KEYS, or the seed of MOLT_SIGNING_KEY. None if it is not that."""
    text = text.strip()
    if re.fullmatch(r"[0-9a-fA-F]{64}", text):
        return bytes.fromhex(text)
    padded = text + "=" * (-len(text) % 4)
    for decode in (base64.b64decode, base64.urlsafe_b64decode):
        try:
            raw = decode(padded.encode())
        except (binascii.Error, ValueError):
            continue
        if len(raw) == 32:
            return raw
    return None


def private_key(text: str) -> Ed25519PrivateKey | None:
    """An Ed25519 private key as MOLT_SIGNING_KEY or the key file holds it: PEM (PKCS#8), or
    base64/hex of the 32-byte seed. None if it is not one."""
    text = text.strip()
    if "-----BEGIN" in text:
        try:
            key = serialization.load_pem_private_key(text.encode(), password=None)
        except (ValueError, TypeError):
            return None
        return key if isinstance(key, Ed25519PrivateKey) else None
    raw = key_bytes(text)
    return Ed25519PrivateKey.from_private_bytes(raw) if raw else None


def _login_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "operator"


def _field_info(field: str) -> FieldInfo | None:
    """The field a setting's path names: ``ui_token``, or a platform's ``slack.bot_token``."""
    table, _, name = field.partition(".")
    if name and table in PLATFORM_SETTINGS:
        return PLATFORM_SETTINGS[table].model_fields.get(name)
    return Settings.model_fields.get(field)


def _variable_for(field: str) -> str:
    info = _field_info(field)
    names = _names(info) if info else ()
    return names[0] if names else field.upper()


def load_settings(**overrides: Any) -> Settings:
    """Build the settings, turning validation errors into one readable ConfigError; each
    target of a fleet is checked too, so that a bad table stops start-up."""
    try:
        settings = Settings(**overrides)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid configuration: {config_file()} is not TOML: {exc}") from None
    except ValidationError as exc:
        raise _config_error(exc, _variable_for) from None
    for name in settings.target_names() if settings.fleet else ():
        settings.for_target(name)
    if settings.rollouts and not settings.fleet:
        raise ConfigError(
            "invalid configuration: rollouts: a rollout needs [targets.<name>] tables"
        )
    for name in settings.rollout_names():
        settings.rollout(name)
    return settings


def _config_error(exc: ValidationError, name_of: Callable[[str], str]) -> ConfigError:
    """One readable ConfigError naming each setting (``name_of`` its field) that is wrong."""
    problems = []
    for error in exc.errors():
        loc = [str(part) for part in error["loc"][:2]]
        field = ".".join(loc if loc and loc[0] in PLATFORM_SETTINGS else loc[:1]) or "?"
        info = _field_info(field)
        given = error.get("input")
        hidden = (
            isinstance(given, dict)
            or given is None
            or field.startswith("slack.")
            or (info is not None and _is_secret(info))
            or field.lower().endswith("prometheus_url")  # may hold credentials it must not
        )
        shown = "" if hidden else f" (got {given!r})"
        message = error["msg"].removeprefix("Value error, ")
        problems.append(f"{name_of(field)}: {message}{shown}")
    return ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
