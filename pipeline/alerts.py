"""Alert deliveries read into signals: Alertmanager, Sentry and any monitor's webhook.

Each source is authenticated first (``verified_*``: constant-time compares), then its
payload is read into ``Signal``s, one per alert it carries; nothing in a payload is
trusted beyond its shape: texts are cut short and redacted, never interpreted.

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
from typing import Any

from pipeline.redaction import redact

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


def _text(value: Any, limit: int, secrets: list[str]) -> str:
    return redact(str(value or "")[:limit], secrets).translate(_MARKUP)


def _obj(value: Any) -> dict[str, Any]:
    """A JSON object of the payload, or an empty one where the payload has none."""
    return value if isinstance(value, dict) else {}


def _body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise UnreadableAlert(f"not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise UnreadableAlert("expected a JSON object")
    return body


# -- authentication ------------------------------------------------------------------------


def verified_bearer(header: str, token: str) -> bool:
    scheme, _, given = header.partition(" ")
    return bool(token) and scheme.lower() == "bearer" and hmac.compare_digest(given, token)


def _hex_hmac(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verified_sentry(signature: str, secret: str, body: bytes) -> bool:
    return bool(secret) and hmac.compare_digest(signature.strip(), _hex_hmac(secret, body))


def verified_webhook(signature: str, secret: str, body: bytes) -> bool:
    expected = "sha256=" + _hex_hmac(secret, body) if secret else ""
    return bool(secret) and hmac.compare_digest(signature.strip(), expected)


# -- Alertmanager --------------------------------------------------------------------------


def from_alertmanager(raw: bytes, secrets: list[str]) -> list[Signal]:
    body = _body(raw)
    alerts = body.get("alerts")
    if not isinstance(alerts, list):
        raise UnreadableAlert("an Alertmanager webhook carries alerts[]")
    group_key = str(body.get("groupKey", ""))
    common = _obj(body.get("commonLabels"))
    out = []
    for alert in alerts:
        if not isinstance(alert, dict):
            raise UnreadableAlert("alerts[] holds objects")
        labels = {**common, **_obj(alert.get("labels"))}
        notes = _obj(alert.get("annotations"))
        status = RESOLVED if alert.get("status") == RESOLVED else FIRING
        fingerprint = str(alert.get("fingerprint") or "") or _digest(labels)
        starts = str(alert.get("startsAt", ""))
        out.append(
            Signal(
                source="alertmanager",
                fingerprint=f"alertmanager:{fingerprint}",
                status=status,
                target=str(labels.get("molt_target", "")),
                summary=_text(
                    notes.get("summary") or labels.get("alertname"), MAX_SUMMARY, secrets
                ),
                details=_text(notes.get("description"), MAX_DETAILS, secrets),
                severity=str(labels.get("severity", ""))[:20],
                delivery=_digest([group_key, fingerprint, starts, status]),
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
    body = _body(raw)
    action = str(body.get("action", ""))
    data = _obj(body.get("data"))
    if resource == "issue":
        issue = _obj(data.get("issue"))
        if action not in _ISSUE_FIRING and action != RESOLVED:
            return []
        key, title = str(issue.get("id", "")), issue.get("title")
        slug = (_obj(issue.get("project"))).get("slug", "")
        status = RESOLVED if action == RESOLVED else FIRING
        details = issue.get("culprit")
    elif resource == "event_alert":
        event = _obj(data.get("event"))
        key, title = str(event.get("issue_id", "")), event.get("title")
        slug = event.get("project_slug") or (event.get("project") or "")
        status, details = FIRING, (data.get("triggered_rule") or "")
    elif resource == "metric_alert":
        alert = _obj(data.get("metric_alert"))
        rule = _obj(alert.get("alert_rule"))
        ident = str(alert.get("id", ""))
        key, title = f"metric-{ident}" if ident else "", data.get("description_title")
        slug = (rule.get("projects") or [""])[0]
        status = RESOLVED if action == RESOLVED else FIRING
        details = data.get("description_text")
    else:
        return []
    if not key:
        raise UnreadableAlert(f"a Sentry {resource} delivery names its issue or alert")
    return [
        Signal(
            source="sentry",
            fingerprint=f"sentry:{key}",
            status=status,
            target=projects.get(str(slug), ""),
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
    body = _body(raw)
    fingerprint = str(body.get("fingerprint") or "").strip()
    if not fingerprint or len(fingerprint) > 200:
        raise UnreadableAlert("a webhook alert names its fingerprint (at most 200 characters)")
    status = str(body.get("status") or FIRING)
    if status not in (FIRING, RESOLVED):
        raise UnreadableAlert("status is firing or resolved")
    return [
        Signal(
            source="webhook",
            fingerprint=f"webhook:{fingerprint}",
            status=status,
            target=str(body.get("target") or "")[:100],
            summary=_text(body.get("summary"), MAX_SUMMARY, secrets),
            details=_text(body.get("details"), MAX_DETAILS, secrets),
            severity=str(body.get("severity") or "")[:20],
            counted=True,
            at=time.time(),
        )
    ]
