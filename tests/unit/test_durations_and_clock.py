from datetime import datetime, timedelta

import pytest

from dagster_project.clock import format_as_of, parse_as_of
from dagster_project.dbt_assets import DBT_BUILD_ARGS, dbt_environment
from dagster_project.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0", timedelta(0)), ("0h", timedelta(0)), ("30m", timedelta(minutes=30)), ("48h", timedelta(hours=48)),
     ("7d", timedelta(days=7)), ("2w", timedelta(weeks=2)), (" 1h ", timedelta(hours=1))],
)
def test_parse_duration(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "1", "h", "1.5h", "1 hour", "-1h", "1y"])
def test_parse_duration_rejects_what_is_not_a_duration(text):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_format_duration_round_trips():
    for text in ("30m", "1h", "48h", "7d", "2w", "90s"):
        assert format_duration(parse_duration(text)) in (text, format_duration(parse_duration(text)))
    assert format_duration(timedelta(hours=48)) == "2d"


def test_as_of_is_utc_and_naive():
    assert parse_as_of("2026-11-01T09:30:00+01:00") == datetime(2026, 11, 1, 8, 30)
    assert parse_as_of("2026-11-01T09:30:00Z") == datetime(2026, 11, 1, 9, 30)
    assert parse_as_of("2026-11-01 09:30:05.123") == datetime(2026, 11, 1, 9, 30, 5)
    assert format_as_of(datetime(2026, 11, 1, 9, 30)) == "2026-11-01 09:30:00"
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_as_of("yesterday")


def test_dbt_hears_the_clock_and_the_warehouse_through_its_environment():
    assert dbt_environment(datetime(2026, 11, 1, 9), "/tmp/w.duckdb") == {
        "NUDGE_AS_OF": "2026-11-01 09:00:00",
        "NUDGE_WAREHOUSE": "/tmp/w.duckdb",
    }
    assert dbt_environment(datetime(2026, 11, 1, 9), "/tmp/w.duckdb", "512MB")["NUDGE_DUCKDB_MEMORY_LIMIT"] == "512MB"
    assert "--vars" not in DBT_BUILD_ARGS  # changing --vars makes dbt re-parse every tick
