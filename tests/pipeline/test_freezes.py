"""Freeze windows' arithmetic (pipeline/intake/freezes.py) at fixed instants: weekly windows
across midnight and across a daylight-saving change, one-off windows, windows that run into
each other, and the [[freeze]] tables of molt.toml that stop start-up naming their key."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from pipeline.config import Settings, load_settings
from pipeline.exceptions import ConfigError
from pipeline.intake import freezes
from pipeline.requests.store import Origin, Request

LONDON = ZoneInfo("Europe/London")
WEEKEND = {
    "days": ["fri", "sat", "sun"],
    "from": "16:00",
    "to": "09:00",
    "timezone": "Europe/London",
    "reason": "weekend freeze",
}
HOLIDAYS = {"start": "2026-12-20T00:00:00Z", "end": "2027-01-04T00:00:00Z", "reason": "holidays"}


def _with(*tables: dict[str, Any]) -> Settings:
    return load_settings(freeze=list(tables), target_dir=Path.cwd())


def _said(settings: Settings, at: datetime) -> str | None:
    """What a deploy at ``at`` is told, or None if it is not held."""
    found = freezes.frozen(settings, at.astimezone(UTC))
    return found.message(at.astimezone(UTC)) if found else None


def _request(command: str = "deploy", break_glass: str = "") -> Request:
    return Request("r1", Origin("console", "alice"), "x", command, "main", break_glass=break_glass)


def test_a_weekend_window_crosses_midnight_from_friday_afternoon_to_monday_morning() -> None:
    settings = _with(WEEKEND)
    name = settings.target_name
    until = f"{name} is frozen until Mon 09:00 Europe/London: weekend freeze"
    assert _said(settings, datetime(2026, 12, 4, 15, 59, tzinfo=LONDON)) is None  # Friday
    assert _said(settings, datetime(2026, 12, 4, 16, 0, tzinfo=LONDON)) == until
    assert _said(settings, datetime(2026, 12, 5, 0, 30, tzinfo=LONDON)) == until  # past midnight
    assert _said(settings, datetime(2026, 12, 6, 12, 0, tzinfo=LONDON)) == until  # Sunday noon
    assert _said(settings, datetime(2026, 12, 7, 8, 59, tzinfo=LONDON)) == until  # Monday
    assert _said(settings, datetime(2026, 12, 7, 9, 0, tzinfo=LONDON)) is None
    assert _said(settings, datetime(2026, 12, 9, 12, 0, tzinfo=LONDON)) is None  # Wednesday


def test_a_single_night_runs_into_the_next_morning_and_a_day_window_stays_within_its_day() -> None:
    night = _with({"days": ["sun"], "from": "22:00", "to": "06:00", "reason": "backups"})
    name = night.target_name
    assert _said(night, datetime(2026, 12, 6, 21, 59, tzinfo=UTC)) is None
    monday = f"{name} is frozen until Mon 06:00 UTC: backups"
    assert _said(night, datetime(2026, 12, 6, 23, 0, tzinfo=UTC)) == monday
    assert _said(night, datetime(2026, 12, 7, 5, 59, tzinfo=UTC)) == monday
    assert _said(night, datetime(2026, 12, 7, 6, 0, tzinfo=UTC)) is None
    day = _with({"days": ["wed"], "from": "09:00", "to": "17:00", "reason": "release review"})
    assert _said(day, datetime(2026, 12, 9, 8, 59, tzinfo=UTC)) is None
    assert _said(day, datetime(2026, 12, 9, 12, 0, tzinfo=UTC)) == (
        f"{name} is frozen until Wed 17:00 UTC: release review"
    )
    assert _said(day, datetime(2026, 12, 10, 12, 0, tzinfo=UTC)) is None


def test_a_window_across_the_autumn_clock_change_keeps_london_wall_clock_times() -> None:
    """Clocks go back at 02:00 BST on Sunday 25 October 2026: the window opens on Saturday
    at 16:00 BST (15:00 UTC) and closes on Monday at 09:00 GMT (09:00 UTC)."""
    settings = _with({**WEEKEND, "days": ["sat", "sun"]})
    name = settings.target_name
    until = f"{name} is frozen until Mon 09:00 Europe/London: weekend freeze"
    assert _said(settings, datetime(2026, 10, 24, 14, 59, tzinfo=UTC)) is None
    assert _said(settings, datetime(2026, 10, 24, 15, 0, tzinfo=UTC)) == until
    assert _said(settings, datetime(2026, 10, 26, 8, 59, tzinfo=UTC)) == until
    assert _said(settings, datetime(2026, 10, 26, 9, 0, tzinfo=UTC)) is None
    found = freezes.frozen(settings, datetime(2026, 10, 25, 1, 30, tzinfo=UTC))
    assert found is not None and found.until == datetime(2026, 10, 26, 9, 0, tzinfo=UTC)


def test_a_window_across_the_spring_clock_change_closes_at_the_new_wall_clock_time() -> None:
    """Clocks go forward at 01:00 GMT on Sunday 29 March 2026: 09:00 on Monday is 08:00 UTC."""
    settings = _with({**WEEKEND, "days": ["sat", "sun"]})
    assert _said(settings, datetime(2026, 3, 28, 15, 59, tzinfo=UTC)) is None  # 15:59 GMT
    assert _said(settings, datetime(2026, 3, 28, 16, 0, tzinfo=UTC)) is not None
    assert _said(settings, datetime(2026, 3, 30, 7, 59, tzinfo=UTC)) is not None
    assert _said(settings, datetime(2026, 3, 30, 8, 0, tzinfo=UTC)) is None  # 09:00 BST


def test_a_one_off_window_holds_from_its_start_to_its_end_and_names_a_distant_date() -> None:
    settings = _with(HOLIDAYS)
    name = settings.target_name
    assert _said(settings, datetime(2026, 12, 19, 23, 59, tzinfo=UTC)) is None
    assert _said(settings, datetime(2026, 12, 20, 0, 0, tzinfo=UTC)) == (
        f"{name} is frozen until Mon 4 Jan 2027 00:00 UTC: holidays"
    )
    assert _said(settings, datetime(2027, 1, 3, 12, 0, tzinfo=UTC)) == (
        f"{name} is frozen until Mon 00:00 UTC: holidays"
    )
    assert _said(settings, datetime(2027, 1, 4, 0, 0, tzinfo=UTC)) is None
    local = _with(
        {
            "start": "2026-12-24T18:00",
            "end": "2026-12-27T00:00",
            "timezone": "Europe/Paris",
            "reason": "xmas",
        }
    )
    found = freezes.frozen(local, datetime(2026, 12, 24, 17, 0, tzinfo=UTC))
    assert found is not None and found.until == datetime(2026, 12, 26, 23, 0, tzinfo=UTC)
    assert freezes.frozen(local, datetime(2026, 12, 24, 16, 59, tzinfo=UTC)) is None


def test_windows_that_run_into_each_other_are_one_freeze_until_the_last_ends() -> None:
    """The holidays end on a Monday at 00:00, inside the weekend window that ends at 09:00."""
    settings = _with(WEEKEND, HOLIDAYS)
    assert _said(settings, datetime(2026, 12, 19, 12, 0, tzinfo=UTC)) == (
        f"{settings.target_name} is frozen until Mon 4 Jan 2027 09:00 Europe/London: weekend freeze"
    )


def test_a_window_for_some_targets_leaves_the_others_free(tmp_path: Path) -> None:
    targets = {name: {"dir": str(tmp_path / name)} for name in ("web-1", "web-2", "api")}
    settings = load_settings(targets=targets, freeze=[{**WEEKEND, "targets": ["web-1", "web-2"]}])
    saturday = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
    assert _said(settings.for_target("web-1"), saturday) == (
        "web-1 is frozen until Mon 09:00 Europe/London: weekend freeze"
    )
    assert _said(settings.for_target("api"), saturday) is None


def test_the_gate_holds_deploys_and_changes_but_never_a_rollback_or_a_break_glass() -> None:
    settings = _with(HOLIDAYS)
    christmas = datetime(2026, 12, 25, 12, 0, tzinfo=UTC)
    held = freezes.gate(settings, _request(), christmas)
    assert not held and held.check == "freeze"
    assert "--break-glass <reason>" in held.reason and "a second operator" in held.reason
    assert not freezes.gate(settings, _request("change"), christmas)
    assert freezes.gate(settings, _request("rollback"), christmas)
    assert freezes.gate(settings, _request(break_glass="login is down"), christmas)
    assert freezes.gate(settings, _request(), datetime(2027, 1, 5, tzinfo=UTC))


def test_the_listing_marks_the_windows_in_force() -> None:
    settings = _with(WEEKEND, HOLIDAYS)
    listed = freezes.listing(settings, datetime(2026, 12, 5, 12, 0, tzinfo=UTC))
    assert [(w["reason"], w["in_force"], w["until"]) for w in listed["windows"]] == [
        ("weekend freeze", True, "Mon 09:00 Europe/London"),
        ("holidays", False, ""),
    ]
    assert listed["windows"][0]["when"] == "weekly, fri 16:00 to mon 09:00 Europe/London"
    assert listed["windows"][1]["when"] == "2026-12-20 00:00 to 2027-01-04 00:00 UTC"


def test_a_listing_spells_out_each_run_of_days_as_one_window() -> None:
    """Consecutive days are one window; a day apart from the others is a window of its own."""
    settings = _with({"days": ["mon", "tue", "thu"], "from": "09:00", "to": "17:00", "reason": "x"})
    [listed] = freezes.listing(settings, datetime(2026, 12, 8, 12, 0, tzinfo=UTC))["windows"]
    assert listed["when"] == "weekly, mon 09:00 to tue 17:00, thu 09:00 to 17:00 UTC"
    assert listed["in_force"] and listed["until"] == "Tue 17:00 UTC"


@pytest.mark.parametrize(
    ("table", "named"),
    [
        ({**WEEKEND, "form": "16:00"}, "freeze #1: form:"),
        ({**WEEKEND, "from": "25:00"}, "freeze #1: from: expected a time of day"),
        ({**WEEKEND, "to": 9}, "freeze #1: to: expected a time of day"),
        ({**WEEKEND, "days": ["fr"]}, "freeze #1: days: expected a list of days"),
        ({**WEEKEND, "timezone": "Mars/Olympus"}, "freeze #1: timezone: expected an IANA"),
        ({**HOLIDAYS, "end": "2026-12-01T00:00:00Z"}, "freeze #1: end: expected a time after"),
        ({**HOLIDAYS, "start": "soon"}, "freeze #1: start: expected a date and time"),
        ({"days": ["mon"], "from": "01:00", "to": "02:00"}, "freeze #1: reason:"),
        ({**WEEKEND, **HOLIDAYS}, "freeze #1: end: expected days, from and to"),
    ],
)
def test_a_bad_freeze_table_stops_start_up_naming_its_key(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, table: dict[str, Any], named: str
) -> None:
    config = tmp_path / "molt.toml"
    lines = [f"{key} = {_toml(value)}" for key, value in table.items()]
    config.write_text("[[freeze]]\n" + "\n".join(lines) + "\n")
    monkeypatch.setenv("MOLT_CONFIG", str(config))
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert named in str(caught.value)


def test_a_freeze_naming_an_unknown_target_of_a_fleet_stops_start_up(tmp_path: Path) -> None:
    targets = {"web-1": {"dir": str(tmp_path)}}
    with pytest.raises(ConfigError) as caught:
        load_settings(targets=targets, freeze=[{**WEEKEND, "targets": ["web-3"]}])
    assert "freeze #1: targets: no target 'web-3'" in str(caught.value)


def _toml(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)
