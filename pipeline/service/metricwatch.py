"""The service's own metrics in the watch window: PromQL queries asked of Prometheus.

Each ``[[watch.queries]]`` of molt.toml (``WatchQuery`` in pipeline/config.py) is read once
just before the restart, its baseline, then at every probe of the window
(pipeline/service/watching.py). A required query out of its bounds ``for`` readings in a
row ends the watch with ``UpdateFailed("watch", …)`` naming the query, its value, the bound
and the baseline; an optional one is reported and never acts. A reading Prometheus could
not give (unreachable, an error, no series, NaN) is *inconclusive*: it counts neither way
and ends a run of breaches, so Prometheus alone never rolls an update back; the success
message names the query instead.

MOLT_PROMETHEUS_TOKEN travels in the Authorization header only, never to a redirect's
target, and whatever Prometheus (or a proxy before it) answers is redacted before it is
shown or logged.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.config import Settings, WatchQuery
from pipeline.exceptions import UpdateFailed
from pipeline.redaction import redact

#: The longest one round of queries may take, however long the interval: a Prometheus that
#: does not answer costs the window this, not a probe's worth per query.
ROUND_TIMEOUT = 10.0
#: The most of an answer read: an instant query's few series fit many times over.
MAX_ANSWER = 1 << 20


@dataclass(frozen=True)
class Reading:
    """One answer to a query: its value, or why there is none (inconclusive)."""

    value: float | None = None
    problem: str = ""

    @property
    def conclusive(self) -> bool:
        return self.value is not None

    def shown(self) -> str:
        return f"{self.value:.4g}" if self.value is not None else "unknown"


class Prometheus:
    """Instant queries of Prometheus's HTTP API (``POST <url>/api/v1/query``)."""

    def __init__(self, url: str, token: str = "", secrets: Sequence[str] = ()) -> None:
        self.endpoint = url.rstrip("/") + "/api/v1/query"
        self._token = token
        self._secrets = [*secrets, token]

    def read(self, query: WatchQuery, timeout: float) -> Reading:
        """The query's value now; of several series, the one furthest out of bounds."""
        body = urllib.parse.urlencode({"query": query.query}).encode()
        request = urllib.request.Request(self.endpoint, data=body, method="POST")
        request.add_header("Content-Type", "application/x-www-form-urlencoded")
        request.add_header("Accept", "application/json")
        if self._token:  # unredirected: a redirect elsewhere never carries it
            request.add_unredirected_header("Authorization", f"Bearer {self._token}")
        try:
            with urllib.request.urlopen(request, timeout=max(0.1, timeout)) as reply:
                raw = reply.read(MAX_ANSWER)
        except urllib.error.HTTPError as exc:
            with exc:
                answer = _json(exc.read(MAX_ANSWER))
            said = f": {_error(answer)}" if answer else ""
            return self._inconclusive(f"Prometheus answered {exc.code}{said}")
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            said = str(reason) or type(reason).__name__
            return self._inconclusive(f"Prometheus unreachable: {said}")
        answer = _json(raw)
        if answer is None:
            return self._inconclusive("Prometheus answered something that is not its JSON")
        if answer.get("status") != "success":
            return self._inconclusive(f"the query failed: {_error(answer)}")
        values = _values(answer.get("data"))
        if isinstance(values, str):
            return self._inconclusive(values)
        numbers = [value for value in values if value == value]  # NaN: no number
        if not numbers:
            return self._inconclusive("no data: the query returned no number")
        return Reading(_furthest(query, numbers))

    def _inconclusive(self, problem: str) -> Reading:
        return Reading(None, redact(problem, self._secrets)[:300])


def _json(raw: bytes) -> dict[str, Any] | None:
    try:
        answer = json.loads(raw)
    except ValueError:
        return None
    return answer if isinstance(answer, dict) else None


def _error(answer: dict[str, Any]) -> str:
    """Prometheus's error object as one line: "bad_data: parse error at char 5"."""
    kind, error = str(answer.get("errorType") or ""), str(answer.get("error") or "")
    return ": ".join(part for part in (kind, error) if part) or "no reason given"


def _values(data: Any) -> list[float] | str:
    """The samples of a vector or scalar result, or what is wrong with it."""
    if not isinstance(data, dict):
        return "Prometheus answered without data"
    kind, result = data.get("resultType"), data.get("result")
    if kind == "scalar":
        samples = [result]
    elif kind == "vector" and isinstance(result, list):
        samples = [series.get("value") if isinstance(series, dict) else None for series in result]
    else:
        return f"expected a vector or a scalar, got {kind}"
    values = []
    for sample in samples:
        try:
            values.append(float(sample[1]))  # type: ignore[index]
        except (TypeError, ValueError, IndexError):
            return "Prometheus answered a sample that is not [time, value]"
    return values


def _furthest(query: WatchQuery, values: list[float]) -> float:
    """Of several series, the one that breaks a bound, or the nearest to one."""
    for value in (max(values), min(values)):
        if query.bound(value):
            return value
    return max(values) if query.max is not None else min(values)


@dataclass
class Tracked:
    """One query through the window."""

    query: WatchQuery
    baseline: Reading = field(default_factory=Reading)
    last: Reading | None = None
    readings: int = 0
    run: int = 0  # readings out of bounds in a row, up to the last
    breaches: int = 0  # readings out of bounds in all
    breach: Reading | None = None  # the last reading out of bounds
    inconclusive: int = 0
    problem: str = ""  # why the last inconclusive reading was

    def take(self, reading: Reading) -> None:
        self.last = reading
        self.readings += 1
        if not reading.conclusive:
            self.inconclusive += 1
            self.problem = reading.problem
            self.run = 0
        elif self.query.bound(reading.value or 0.0):
            self.run += 1
            self.breaches += 1
            self.breach = reading
        else:
            self.run = 0

    @property
    def acts(self) -> bool:
        """A required query out of bounds ``for`` readings in a row ends the watch."""
        return self.query.required and self.run >= self.query.consecutive

    def out_of_bounds(self) -> str:
        """The last breach beside the baseline: "0.2 > max 0.05 (baseline 0.01)"."""
        value = self.breach.value if self.breach and self.breach.value is not None else 0.0
        return (
            f"{self.breach.shown() if self.breach else '?'} {self.query.bound(value)} "
            f"(baseline {self.baseline.shown()})"
        )

    def shown(self) -> dict[str, Any]:
        """What templates see of it."""
        bounds = [f"max {self.query.max:g}" if self.query.max is not None else ""]
        bounds.append(f"min {self.query.min:g}" if self.query.min is not None else "")
        return {
            "name": self.query.name,
            "required": self.query.required,
            "bounds": ", ".join(b for b in bounds if b),
            "value": self.last.shown() if self.last else "",
            "baseline": self.baseline.shown(),
            "breaches": self.breaches,
            "readings": self.readings,
            "inconclusive": self.inconclusive,
            "problem": self.problem,
        }


class MetricWatch:
    """The window's queries, read together in rounds with one deadline."""

    def __init__(self, settings: Settings, prometheus: Prometheus | None = None) -> None:
        if prometheus is None:
            secret = settings.prometheus_token
            token = secret.get_secret_value() if secret else ""
            prometheus = Prometheus(settings.prometheus_url or "", token, settings.secrets())
        self.prometheus = prometheus
        self.tracked = [Tracked(query) for query in settings.watch.queries]
        self.budget = min(ROUND_TIMEOUT, max(1.0, settings.watch_interval))

    def _round(self) -> list[Reading]:
        deadline = time.monotonic() + self.budget
        readings = []
        for one in self.tracked:
            left = deadline - time.monotonic()
            if left <= 0:
                readings.append(Reading(None, f"no time left in the round ({self.budget:g} s)"))
                continue
            readings.append(self.prometheus.read(one.query, left))
        return readings

    def take_baseline(self) -> None:
        """Each query's value before the restart, shown beside every value after it."""
        for one, reading in zip(self.tracked, self._round(), strict=True):
            one.baseline = reading

    def read(self) -> None:
        """One round in the window; raises ``UpdateFailed("watch")`` when a required query
        has been out of bounds ``for`` readings in a row."""
        for one, reading in zip(self.tracked, self._round(), strict=True):
            one.take(reading)
        for one in self.tracked:
            if one.acts:
                raise UpdateFailed(
                    "watch",
                    f"the query {one.query.name} was out of bounds {one.run} times in a row "
                    f"in the watch window: {one.out_of_bounds()}",
                )

    def inconclusive(self) -> list[Tracked]:
        return [one for one in self.tracked if one.inconclusive]

    def summary(self) -> str:
        """What the queries showed: "3/3 queries within bounds", what was out of bounds and
        what inconclusive."""
        read = [one for one in self.tracked if one.readings]
        within = [one for one in read if one.readings > one.inconclusive and not one.breaches]
        parts = [f"{len(within)}/{len(self.tracked)} queries within bounds"]
        for one in read:
            if one.breaches:
                kind = "required" if one.query.required else "optional"
                parts.append(
                    f"{kind} query {one.query.name} out of bounds {one.breaches} of "
                    f"{one.readings} times, last {one.out_of_bounds()}"
                )
        inconclusive = [
            f"{one.query.name} ({one.inconclusive} of {one.readings} readings: {one.problem})"
            for one in self.inconclusive()
        ]
        if inconclusive:
            parts.append("inconclusive: " + ", ".join(inconclusive))
        return "; ".join(parts)

    def shown(self) -> list[dict[str, Any]]:
        return [one.shown() for one in self.tracked]
