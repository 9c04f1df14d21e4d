"""Alert deliveries read into signals: Alertmanager, Sentry and any monitor's webhook.

Each source is authenticated first (``verified_*``: constant-time compares of bytes), then
its payload is read into the model its source declares (a field of another type is an
``UnreadableAlert`` naming it) and into ``Signal``s, one per alert it carries; nothing in a
payload is trusted beyond its shape: texts are cut short and redacted, never interpreted.

  Alertmanager  webhook version 4, ``Authorization: Bearer <MOLT_ALERT_TOKEN>``; one
                signal per ``alerts[]``; delivery key groupKey + fingerprint + startsAt +
                status (an HA pair sends each twice)
  Sentry        ``Sentry-Hook-Signature`` = hex HMAC-SHA256 of the body with
                MOLT_SENTRY_SECRET; ``issue`` (created, unresolved, regressed: firing;
                resolved), ``event_alert`` and ``metric_alert``; key issue id + action
  webhook       ``X-Molt-Signature: sha256=<hex HMAC of the body with MOLT_ALERT_SECRET>``,
                JSON {target, fingerprint, severity, summary, details, status}; counted
                against MOLT_INCIDENT_THRESHOLD, grouped by fingerprint
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from dataclasses import asdict, dataclass
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, StringConstraints

from pipeline import payloads
from pipeline.payloads import Payload
from pipeline.redaction import redact, same_secret

FIRING = "firing"
RESOLVED = "resolved"
#: The longest summary and details a signal keeps.
MAX_SUMMARY = 300
MAX_DETAILS = 2000


class UnreadableAlert(ValueError):
    """A delivery whose body is not the payload its source sends."""


@dataclass(frozen=True)
class Signal:
    """One occurrence of a problem, from any source, as incidents take it."""

    source: str  # alertmanager | sentry | webhook | log | health
    fingerprint: str  # what groups occurrences into one incident
    status: str  # firing | resolved
    target: str = ""  # the target's name as the source gave it ("" = the only one)
    summary: str = ""
    details: str = ""
    severity: str = ""
    #: Identifies one delivery of one alert: a second delivery with the same key is a
    #: duplicate. "" when every occurrence counts (logs, the generic webhook).
    delivery: str = ""
    #: Counted against MOLT_INCIDENT_THRESHOLD before an incident opens (logs, webhook);
    #: a monitor's alert already passed its own threshold.
    counted: bool = False
    at: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, raw: str) -> Signal:
        data = json.loads(raw)
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


#: Characters chat platforms read as markup (mentions, links, code spans): dropped from
#: alert text, which is shown as data and never as markup of its own.
_MARKUP = str.maketrans("", "", "<>`*_~|@")


def _text(value: str | None, limit: int, secrets: list[str]) -> str:
    return redact((value or "")[:limit], secrets).translate(_MARKUP)


# -- the payloads, as each source declares them ---------------------------------------------


def parsed(raw: bytes, model: type[payloads.Model]) -> payloads.Model:
    """``raw`` as ``model``; what does not fit is an UnreadableAlert naming the field."""
    try:
        return payloads.parsed(raw, model)
    except payloads.Misfit as exc:
        raise UnreadableAlert(str(exc)) from None


Labels = dict[str, str]


class AlertmanagerAlert(Payload):
    status: str = FIRING
    labels: Labels | None = None
    annotations: Labels | None = None
    starts_at: str = Field("", alias="startsAt")
    fingerprint: str | None = None


class AlertmanagerNotice(Payload):
    """Alertmanager's webhook, version 4."""

    group_key: str = Field("", alias="groupKey")
    common_labels: Labels | None = Field(None, alias="commonLabels")
    alerts: list[AlertmanagerAlert]


Ident = Annotated[str, BeforeValidator(lambda v: str(v) if isinstance(v, int) else v)]


class SentryProject(Payload):
    slug: str = ""


class SentryIssue(Payload):
    id: Ident
    title: str | None = None
    culprit: str | None = None
    project: SentryProject | None = None


class SentryEvent(Payload):
    issue_id: Ident = ""
    title: str | None = None
    project_slug: str | None = None
    project: Ident | None = None


class SentryRule(Payload):
    projects: list[str] = []


class SentryMetricAlert(Payload):
    id: Ident = ""
    alert_rule: SentryRule | None = None


class SentryIssueData(Payload):
    issue: SentryIssue


class SentryEventData(Payload):
    event: SentryEvent
    triggered_rule: str | None = None


class SentryMetricData(Payload):
    metric_alert: SentryMetricAlert
    description_title: str | None = None
    description_text: str | None = None


class SentryIssueDelivery(Payload):
    action: str = ""
    data: SentryIssueData


class SentryEventDelivery(Payload):
    action: str = ""
    data: SentryEventData


class SentryMetricDelivery(Payload):
    action: str = ""
    data: SentryMetricData


class MonitorAlert(Payload):
    """The generic webhook's JSON."""

    fingerprint: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)
    ]
    status: Literal["firing", "resolved"] | None = None
    target: str | None = None
    summary: str | None = None
    details: str | None = None
    severity: str | None = None


# -- authentication ------------------------------------------------------------------------


def verified_bearer(header: str, token: str) -> bool:
    scheme, _, given = header.partition(" ")
    return bool(token) and scheme.lower() == "bearer" and same_secret(given, token)


def _hex_hmac(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verified_sentry(signature: str, secret: str, body: bytes) -> bool:
    return bool(secret) and same_secret(signature.strip(), _hex_hmac(secret, body))


def verified_webhook(signature: str, secret: str, body: bytes) -> bool:
    return bool(secret) and same_secret(signature.strip(), "sha256=" + _hex_hmac(secret, body))


# -- Alertmanager --------------------------------------------------------------------------


def from_alertmanager(raw: bytes, secrets: list[str]) -> list[Signal]:
    notice = parsed(raw, AlertmanagerNotice)
    out = []
    for alert in notice.alerts:
        labels = {**(notice.common_labels or {}), **(alert.labels or {})}
        notes = alert.annotations or {}
        status = RESOLVED if alert.status == RESOLVED else FIRING
        fingerprint = alert.fingerprint or _digest(labels)
        out.append(
            Signal(
                source="alertmanager",
                fingerprint=f"alertmanager:{fingerprint}",
                status=status,
                target=labels.get("molt_target", ""),
                summary=_text(
                    notes.get("summary") or labels.get("alertname"), MAX_SUMMARY, secrets
                ),
                details=_text(notes.get("description"), MAX_DETAILS, secrets),
                severity=labels.get("severity", "")[:20],
                delivery=_digest([notice.group_key, fingerprint, alert.starts_at, status]),
                at=time.time(),
            )
        )
    return out


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


# -- Sentry --------------------------------------------------------------------------------

_ISSUE_FIRING = frozenset({"created", "unresolved", "regressed"})


def from_sentry(
    resource: str, raw: bytes, projects: dict[str, str], secrets: list[str]
) -> list[Signal]:
    """Sentry's ``issue``, ``event_alert`` and ``metric_alert`` resources; others (and
    issue actions such as assigned or archived) carry no signal."""
    if resource == "issue":
        issue_delivery = parsed(raw, SentryIssueDelivery)
        action, issue = issue_delivery.action, issue_delivery.data.issue
        if action not in _ISSUE_FIRING and action != RESOLVED:
            return []
        key, title, details = issue.id, issue.title, issue.culprit
        slug = issue.project.slug if issue.project else ""
        status = RESOLVED if action == RESOLVED else FIRING
    elif resource == "event_alert":
        event_delivery = parsed(raw, SentryEventDelivery)
        action, event = event_delivery.action, event_delivery.data.event
        key, title = event.issue_id, event.title
        slug = event.project_slug or event.project or ""
        status, details = FIRING, event_delivery.data.triggered_rule
    elif resource == "metric_alert":
        metric_delivery = parsed(raw, SentryMetricDelivery)
        action, data = metric_delivery.action, metric_delivery.data
        rule = data.metric_alert.alert_rule
        ident = data.metric_alert.id
        key, title = f"metric-{ident}" if ident else "", data.description_title
        slug = rule.projects[0] if rule and rule.projects else ""
        status = RESOLVED if action == RESOLVED else FIRING
        details = data.description_text
    else:
        return []
    if not key:
        raise UnreadableAlert(f"a Sentry {resource} delivery names its issue or alert")
    return [
        Signal(
            source="sentry",
            fingerprint=f"sentry:{key}",
            status=status,
            target=projects.get(slug, ""),
            summary=_text(title, MAX_SUMMARY, secrets),
            details=_text(details, MAX_DETAILS, secrets),
            severity="error",
            delivery=_digest([resource, key, action]),
            at=time.time(),
        )
    ]


def sentry_projects(entries: list[str]) -> dict[str, str]:
    """MOLT_SENTRY_PROJECTS as {project slug: target}."""
    pairs = (entry.partition("=") for entry in entries)
    return {slug.strip(): target.strip() for slug, _, target in pairs}


# -- any monitor ---------------------------------------------------------------------------


def from_webhook(raw: bytes, secrets: list[str]) -> list[Signal]:
    alert = parsed(raw, MonitorAlert)
    return [
        Signal(
            source="webhook",
            fingerprint=f"webhook:{alert.fingerprint}",
            status=alert.status or FIRING,
            target=(alert.target or "")[:100],
            summary=_text(alert.summary, MAX_SUMMARY, secrets),
            details=_text(alert.details, MAX_DETAILS, secrets),
            severity=(alert.severity or "")[:20],
            counted=True,
            at=time.time(),
        )
    ]
