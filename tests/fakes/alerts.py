"""Alert senders shaped like the real ones: Alertmanager's webhook (payload version 4, bearer
token from its ``http_config``), Sentry's integration webhooks (``issue``, ``event_alert``,
``metric_alert``, signed with the client secret) and a generic monitor signing its JSON.

They speak to Molt's real HTTP server the way the real senders do; an Alertmanager HA pair
is two senders posting the same notification.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

ZERO_TIME = "0001-01-01T00:00:00Z"


def alertmanager_payload(
    alerts: list[dict[str, Any]], *, status: str = "firing", group: str = "HighErrorRate"
) -> dict[str, Any]:
    """A notification as Alertmanager sends it (``version: "4"``), for one alert group."""
    common = {"alertname": group}
    return {
        "version": "4",
        "groupKey": f'{{}}:{{alertname="{group}"}}',
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "molt",
        "groupLabels": common,
        "commonLabels": common,
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.example:9093",
        "alerts": alerts,
    }


def alertmanager_alert(
    fingerprint: str,
    *,
    status: str = "firing",
    summary: str = "error rate above 5%",
    target: str = "",
    starts: str = "2026-12-02T00:00:00Z",
    description: str = "",
) -> dict[str, Any]:
    labels = {"alertname": "HighErrorRate", "severity": "critical"}
    if target:
        labels["molt_target"] = target
    return {
        "status": status,
        "labels": labels,
        "annotations": {"summary": summary, "description": description},
        "startsAt": starts,
        "endsAt": ZERO_TIME if status == "firing" else "2026-12-02T00:10:00Z",
        "generatorURL": "http://prometheus.example:9090/graph?g0.expr=errors",
        "fingerprint": fingerprint,
    }


def sentry_issue(action: str, issue_id: str = "4711", project: str = "service") -> dict[str, Any]:
    """Sentry's ``issue`` resource (created, resolved, assigned, ignored, unresolved)."""
    return {
        "action": action,
        "installation": {"uuid": "7a485448-a9e2-4c85-8a3c-4f44175783c9"},
        "data": {
            "issue": {
                "id": issue_id,
                "shortId": "SERVICE-1",
                "title": "ZeroDivisionError: division by zero",
                "culprit": "app in greet",
                "level": "error",
                "status": "resolved" if action == "resolved" else "unresolved",
                "project": {"id": "2", "name": project, "slug": project},
                "firstSeen": "2026-12-02T00:00:00.000000Z",
                "lastSeen": "2026-12-02T00:00:05.000000Z",
                "count": "3",
            }
        },
        "actor": {"type": "application", "id": "sentry", "name": "Sentry"},
    }


@dataclass
class Sender:
    """POSTs deliveries to one Molt endpoint; returns (status, JSON answer)."""

    url: str

    def post(self, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        request = urllib.request.Request(
            self.url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", **headers},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as reply:
                return reply.status, json.loads(reply.read() or b"{}")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")


@dataclass
class Alertmanager(Sender):
    token: str

    def send(self, payload: dict[str, Any], token: str | None = None) -> tuple[int, dict[str, Any]]:
        auth = {"Authorization": f"Bearer {self.token if token is None else token}"}
        return self.post(json.dumps(payload).encode(), auth)


def signature(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass
class Sentry(Sender):
    secret: str

    def send(
        self, resource: str, payload: dict[str, Any], secret: str | None = None
    ) -> tuple[int, dict[str, Any]]:
        body = json.dumps(payload).encode()
        headers = {
            "Sentry-Hook-Resource": resource,
            "Sentry-Hook-Timestamp": str(int(time.time())),
            "Sentry-Hook-Signature": signature(self.secret if secret is None else secret, body),
        }
        return self.post(body, headers)


@dataclass
class Monitor(Sender):
    """Any monitor, through the generic webhook."""

    secret: str

    def send(self, alert: dict[str, Any], secret: str | None = None) -> tuple[int, dict[str, Any]]:
        body = json.dumps(alert).encode()
        sig = "sha256=" + signature(self.secret if secret is None else secret, body)
        return self.post(body, {"X-Molt-Signature": sig})
