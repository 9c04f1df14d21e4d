"""The service's metrics in the watch window (pipeline/service/metricwatch.py): PromQL queries of
molt.toml asked of a fake Prometheus before the restart and at every probe, through an
update run by an RQ worker in this process, with real git and real health commands."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline import audit, keyspace
from pipeline.config import WatchQuery, load_settings
from pipeline.exceptions import ConfigError
from pipeline.requests.states import RequestState as S
from pipeline.service.metricwatch import Prometheus
from tests.desk import Chat, StartChat
from tests.fakes.prometheus import Answer, Failure, FakePrometheus
from tests.support import ServiceRepo

ERROR_RATE = 'sum(rate(http_requests_total{code=~"5.."}[1m])) / sum(rate(http_requests_total[1m]))'
LATENCY = "histogram_quantile(0.99, sum by (le) (rate(http_request_seconds_bucket[1m])))"
QUERIES = f"""
[[watch.queries]]
name = "error rate"
query = '{ERROR_RATE}'
max = 0.05

[[watch.queries]]
name = "p99 latency"
query = '{LATENCY}'
max = 0.5
required = false
"""
TOKEN = "prom-token-9f8e7d6c5b4a"


@pytest.fixture
def prometheus() -> Iterator[FakePrometheus]:
    with FakePrometheus() as fake:
        yield fake


def _window(tmp_path: Path, url: str, seconds: int = 6, **env: str) -> dict[str, str]:
    """The environment of a watch window of ``seconds``, a reading every 0.4 s (three in a
    second's window), with QUERIES."""
    config = tmp_path / "molt.toml"
    config.write_text(QUERIES)
    return {
        "MOLT_CONFIG": str(config),
        "MOLT_PROMETHEUS_URL": url,
        "MOLT_WATCH_SECONDS": str(seconds),
        "MOLT_WATCH_INTERVAL": "0.4",
        **env,
    }


def _deploy(start_chat: StartChat, env: dict[str, str]) -> tuple[Chat, int]:
    """Deploy main, approved, its job run to its end; the chat and where its lines begin."""
    chat = start_chat(**env)
    since = chat.send("deploy main")
    chat.wait_for(r"📋 Plan ready", since=since)
    chat.send("press approve")
    chat.work()
    return chat, since


def test_a_required_query_out_of_bounds_twice_rolls_back_naming_value_bound_and_baseline(
    service: ServiceRepo, start_chat: StartChat, prometheus: FakePrometheus, tmp_path: Path
) -> None:
    old = service.live_head()
    service.commit({"app.py": "def greet():\n    return 'hello'\n\n\nV = 2\n"}, "v2")
    prometheus.answer(ERROR_RATE, 0.01, 0.2)  # the baseline, then every reading after it
    prometheus.answer(LATENCY, 0.3)
    chat, since = _deploy(start_chat, _window(tmp_path, prometheus.url))
    chat.wait_for(r"❌ Failed", since=since)
    chat.wait_for(
        r"the query error rate was out of bounds 2 times in a row in the watch window: "
        r"0\.2 > max 0\.05 \(baseline 0\.01\)",
        since=since,
    )
    assert service.live_head() == old and service.live_status() == ""
    [request] = chat.requests(1)
    assert request.state is S.FAILED and request.phase == "watch"
    assert prometheus.queries(ERROR_RATE) == 3  # the baseline and two readings


@pytest.mark.slow
def test_an_optional_query_out_of_bounds_is_reported_and_the_update_lands(
    service: ServiceRepo, start_chat: StartChat, prometheus: FakePrometheus, tmp_path: Path
) -> None:
    new = service.commit({"app.py": "def greet():\n    return 'hello'\n\n\nV = 2\n"}, "v2")
    prometheus.answer(ERROR_RATE, 0.01)
    prometheus.answer(LATENCY, 0.3, 0.9)  # slower after the restart, for good
    chat, since = _deploy(start_chat, _window(tmp_path, prometheus.url, seconds=1))
    chat.wait_for(r"✅ Live", since=since)
    chat.wait_for(
        r"watched 1 s: 3/3 probes healthy, 0 new errors; 1/2 queries within bounds; optional "
        r"query p99 latency out of bounds 3 of 3 times, last 0\.9 > max 0\.5 \(baseline 0\.3\)",
        since=since,
    )
    chat.wait_for(r"• p99 latency \(optional\): 0\.9 \(baseline 0\.3; max 0\.5\), out of bounds 3")
    chat.wait_for(r"• error rate: 0\.01 \(baseline 0\.01; max 0\.05\)")
    assert service.live_head() == new
    [request] = chat.requests(1)
    assert request.state is S.SUCCEEDED
    assert "Metrics inconclusive" not in chat.output


@pytest.mark.slow
def test_prometheus_down_is_inconclusive_the_update_lands_and_the_incident_channel_is_told(
    service: ServiceRepo, start_chat: StartChat, tmp_path: Path
) -> None:
    with FakePrometheus() as gone:
        url = gone.url  # nothing listens there once it stopped
    new = service.commit({"app.py": "def greet():\n    return 'hello'\n\n\nV = 2\n"}, "v2")
    chat, since = _deploy(start_chat, _window(tmp_path, url, seconds=1))
    chat.wait_for(r"✅ Live", since=since)
    chat.wait_for(
        r"0/2 queries within bounds; inconclusive: error rate \(3 of 3 readings: Prometheus "
        r"unreachable: .*\), p99 latency \(3 of 3 readings",
        since=since,
    )
    chat.wait_for(r"❔ Metrics inconclusive: ", since=since)  # the incident channel (console)
    chat.wait_for(r"• error rate: 3 of 3 readings unread — Prometheus unreachable", since=since)
    assert service.live_head() == new
    [request] = chat.requests(1)
    assert request.state is S.SUCCEEDED
    actions = [entry["action"] for entry in audit.entries(chat.conn, request.id)]
    assert "watch_inconclusive" in actions


def test_the_token_is_sent_as_bearer_and_never_shown_logged_or_stored(
    service: ServiceRepo,
    start_chat: StartChat,
    tmp_path: Path,
    data_dir: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    with FakePrometheus(token=TOKEN, echo_authorization=True) as prometheus:
        service.commit({"app.py": "def greet():\n    return 'hello'\n\n\nV = 2\n"}, "v2")
        env = _window(tmp_path, prometheus.url, seconds=1, MOLT_PROMETHEUS_TOKEN=TOKEN)
        chat, since = _deploy(start_chat, env)
        chat.wait_for(r"✅ Live", since=since)
        chat.wait_for(r"❔ Metrics inconclusive: ", since=since)
        chat.wait_for(r"Prometheus answered 400: bad_data: cannot parse request", since=since)
        assert {asked.authorization for asked in prometheus.asked} == {f"Bearer {TOKEN}"}
    conn = chat.conn
    seen = [
        chat.output,
        json.dumps(audit.entries(conn)),
        json.dumps(conn.xrange(keyspace.EVENTS)),
        json.dumps([r.to_hash() for r in chat.store.recent(10)]),
        *(p.read_text(errors="replace") for p in data_dir.rglob("*.log")),
        *capfd.readouterr(),
    ]
    for text in seen:
        assert TOKEN not in text


def test_a_targets_own_watch_table_replaces_the_global_queries(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "molt.toml"
    config.write_text(
        'MOLT_PROMETHEUS_URL = "http://prometheus.example:9090/"\n'
        + QUERIES
        + f"""
[targets.api]
dir = "{tmp_path / "api"}"

[[targets.api.watch.queries]]
name = "api errors"
query = "sum(rate(api_errors_total[1m]))"
min = 0
max = 3
for = 4

[targets.web]
dir = "{tmp_path / "web"}"
"""
    )
    monkeypatch.setenv("MOLT_CONFIG", str(config))
    settings = load_settings()
    api, web = settings.for_target("api"), settings.for_target("web")
    [only] = api.watch.queries
    assert (only.name, only.min, only.max, only.consecutive, only.required) == (
        "api errors",
        0.0,
        3.0,
        4,
        True,
    )
    assert [q.name for q in web.watch.queries] == ["error rate", "p99 latency"]
    assert [q.required for q in web.watch.queries] == [True, False]
    assert web.prometheus_url == "http://prometheus.example:9090"


@pytest.mark.parametrize(
    ("table", "named"),
    [
        ("[[watch.queries]]\nname = 'e'\nquery = 'up'\nmax = 'high'\n", "watch: queries[0].max"),
        ("[[watch.queries]]\nname = 'e'\nquery = 'up'\n", "watch: queries[0]: expected max, min"),
        ("[[watch.queries]]\nname = 'e'\nquery = 'up'\nmax = 1\nfor = 0\n", "queries[0].for"),
        ("[[watch.queries]]\nname = 'e'\nmax = 1\n", "watch: queries[0].query"),
        ("[[watch.queries]]\nname = 'e'\nquery = 'up'\nmax = 1\ncolour = 1\n", "[0].colour"),
        ("[[watch.queries]]\nname = 'e'\nquery = 'up'\nmax = 1\nrequired = 'no'\n", "].required"),
        ("[[watch.queries]]\nname = 'e'\nquery = 'up'\nmin = 2\nmax = 1\n", "queries[0].min"),
        ("[watch]\nquery = 'up'\n", "watch: query: not a watch setting"),
        (
            "[[watch.queries]]\nname = 'e'\nquery = 'up'\nmax = 1\n"
            "[[watch.queries]]\nname = 'e'\nquery = 'up'\nmax = 2\n",
            "watch: queries[1].name: 'e' is used twice",
        ),
        (
            "[targets.api]\ndir = '/srv/api'\n"
            "[[targets.api.watch.queries]]\nname = 'e'\nquery = 'up'\nmax = 1\nfor = 'ever'\n",
            "targets.api.watch: queries[0].for",
        ),
    ],
)
def test_a_bad_watch_table_stops_start_up_naming_the_key(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, table: str, named: str
) -> None:
    config = tmp_path / "molt.toml"
    config.write_text('MOLT_PROMETHEUS_URL = "http://127.0.0.1:9090"\n' + table)
    monkeypatch.setenv("MOLT_CONFIG", str(config))
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert named in str(caught.value)


def test_queries_without_prometheus_or_with_credentials_in_its_url_stop_start_up(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "molt.toml"
    config.write_text(QUERIES)
    monkeypatch.setenv("MOLT_CONFIG", str(config))
    with pytest.raises(ConfigError, match="watch: queries need MOLT_PROMETHEUS_URL set too"):
        load_settings()
    monkeypatch.setenv("MOLT_PROMETHEUS_URL", "https://admin:hunter22@prometheus.example")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "MOLT_PROMETHEUS_URL" in str(caught.value)
    assert "hunter22" not in str(caught.value)


@pytest.mark.parametrize(
    ("answer", "read"),
    [
        ([0.01, 0.3, 0.02], "0.3"),  # of several series, the one out of bounds
        ([0.01, 0.02], "0.02"),  # else the nearest to its bound
        ("NaN", "unknown: no data: the query returned no number"),
        ([], "unknown: no data: the query returned no number"),
        (
            Failure("query timed out in expression evaluation", "timeout", 503),
            "unknown: Prometheus answered 503: timeout: query timed out in expression evaluation",
        ),
        (
            Failure("found duplicate series for the match group", "execution", 422),
            "unknown: Prometheus answered 422: execution: found duplicate series",
        ),
    ],
)
def test_prometheus_answers_are_read_as_values_or_say_why_they_are_not(
    prometheus: FakePrometheus, answer: Answer, read: str
) -> None:
    query = WatchQuery("error rate", ERROR_RATE, max=0.05)
    prometheus.answer(ERROR_RATE, answer)
    reading = Prometheus(prometheus.url).read(query, timeout=30)
    assert f"{reading.shown()}: {reading.problem}".strip(": ").startswith(read)


def test_the_watch_table_may_come_as_json_in_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MOLT_PROMETHEUS_URL", "http://127.0.0.1:9090")
    query = {"name": "up", "query": "min(up)", "min": 1, "required": False}
    monkeypatch.setenv("MOLT_WATCH", json.dumps({"queries": [query]}))
    [up] = load_settings().watch.queries
    assert (up.name, up.min, up.max, up.required, up.consecutive) == ("up", 1.0, None, False, 2)
    monkeypatch.setenv("MOLT_WATCH", "queries=up")
    with pytest.raises(ConfigError, match=r"watch: expected a table.*JSON in MOLT_WATCH"):
        load_settings()
