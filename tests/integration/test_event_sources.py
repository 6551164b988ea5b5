"""Events read where a Segment or RudderStack loader already writes them: real tables of their
shape in a DuckDB file, a real `dbt build`, and the same stg_events / int_events as from landing files."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import duckdb
import orjson
import pytest
from dbt.cli.main import dbtRunner

from dagster_project.ingest import ensure_raw_tables
from dagster_project.settings import PROJECT_ROOT

AS_OF = "2026-11-01 00:00:00"
PROJECT = PROJECT_ROOT / "dbt_project"

# What every loader table starts with (Segment's and RudderStack's alike), then a context column.
LOADER_COLUMNS = """
    id varchar, anonymous_id varchar, user_id varchar, {event_columns}
    "timestamp" {ts}, original_timestamp {ts}, sent_at {ts}, received_at {ts}, uuid_ts timestamp,
    context_library_name varchar
"""
EVENT_COLUMNS = "event varchar, event_text varchar,"

# (id, anonymous_id, user_id, event, timestamp, {properties}) of the track calls. Timestamps are
# written with offsets: a zoned column stores the instant, a plain one gets it in UTC.
TRACKS = [
    # an install before the signup, anonymous, two hours east of UTC: 06:00 UTC
    ("m-install", "a1", None, "app_installed", "2026-10-30 08:00:00+02:00", {"platform": "ios"}),
    # the signup carries both ids: the earliest link of a1 to u1
    ("m-signup", "a1", "u1", "signed_up", "2026-10-30 08:09:00+00:00", {"source": "organic"}),
    ("m-workout", "a1", "u1", "workout_completed", "2026-10-31 07:00:00+00:00",
     {"workout_type": "run", "duration_min": 30, "calories": 310.5}),
    # an event whose table is not listed in nudge_event_tables: it comes through, without properties
    ("m-login", None, "u1", "logged_in", "2026-10-31 08:00:00+00:00", {"platform": "ios"}),
    # a device nobody identified as: stays anonymous, left out of int_events
    ("m-install-9", "a9", None, "app_installed", "2026-10-31 09:00:00+00:00", {"platform": "android"}),
    # a device identified only after as_of: not stitched yet
    ("m-install-2", "a2", None, "app_installed", "2026-10-31 10:00:00+00:00", {"platform": "web"}),
    # after as_of: has not happened yet
    ("m-workout-late", None, "u1", "workout_completed", "2026-11-01 00:00:01+00:00",
     {"workout_type": "yoga", "duration_min": 20, "calories": None}),
]
IDENTIFIES = [
    # (id, anonymous_id, user_id, timestamp, traits)
    ("m-identify", "a1", "u1", "2026-10-30 08:10:00+00:00", {"email": "u1@example.com", "plan": "free"}),
    ("m-identify-2", "a2", "u2", "2026-11-02 12:00:00+00:00", {"email": "u2@example.com", "plan": "premium"}),
]
PROPERTY_TYPES = {
    "platform": "varchar", "source": "varchar", "workout_type": "varchar", "duration_min": "bigint",
    "calories": "double", "email": "varchar", "plan": "varchar",
}
# purchased is listed but its table does not exist yet (no purchase so far): it is skipped
EVENT_TABLES = ["app_installed", "signed_up", "workout_completed", "purchased"]

STG_EVENTS_COLUMNS = [
    ("event_id", "VARCHAR"),
    ("contact_id", "VARCHAR"),
    ("anonymous_id", "VARCHAR"),
    ("event_name", "VARCHAR"),
    ("occurred_at", "TIMESTAMP"),
    ("properties", "VARCHAR"),
    ("is_syncing", "BOOLEAN"),
    ("loaded_at", "TIMESTAMP"),
]


def utc(text: str) -> datetime:
    """'2026-10-30 08:00:00+02:00' -> 2026-10-30 06:00:00, naive UTC as the models store time."""
    moment = datetime.fromisoformat(text)
    return (moment - moment.utcoffset()).replace(tzinfo=None)


def create_loader_tables(con: duckdb.DuckDBPyConnection, schema: str, timestamp_type: str) -> None:
    """tracks, identifies and one table per event name, as the loader writes them."""
    zoned = timestamp_type == "timestamptz"

    def stamp(text: str) -> str:
        return text if zoned else utc(text).isoformat(sep=" ")

    con.execute(f"create schema {schema}")
    con.execute(f"create table {schema}.tracks ({LOADER_COLUMNS.format(event_columns=EVENT_COLUMNS, ts=timestamp_type)})")
    per_event: dict[str, list[tuple]] = {}
    for message_id, anonymous_id, user_id, event, when, properties in TRACKS:
        text = event.replace("_", " ").title()
        row = [message_id, anonymous_id, user_id, event, text, stamp(when), stamp(when), stamp(when), stamp(when),
               "2026-11-01 00:00:00", "analytics-ios"]
        con.execute(f"insert into {schema}.tracks values ({', '.join('?' * len(row))})", row)
        per_event.setdefault(event, []).append((row, properties))
    # the loader delivers at least once: the workout is stored twice, in tracks and in its table
    con.execute(f"insert into {schema}.tracks select * from {schema}.tracks where id = 'm-workout'")
    for event, rows in per_event.items():
        names = list(rows[0][1])
        columns = LOADER_COLUMNS.format(event_columns=EVENT_COLUMNS, ts=timestamp_type)
        extra = "".join(f", {name} {PROPERTY_TYPES[name]}" for name in names)
        con.execute(f"create table {schema}.{event} ({columns}{extra})")
        for row, properties in rows:
            values = row + [properties[name] for name in names]
            con.execute(f"insert into {schema}.{event} values ({', '.join('?' * len(values))})", values)
    con.execute(f"insert into {schema}.workout_completed select * from {schema}.workout_completed where id = 'm-workout'")

    identify_columns = LOADER_COLUMNS.format(event_columns="", ts=timestamp_type) + ", email varchar, plan varchar"
    con.execute(f"create table {schema}.identifies ({identify_columns})")
    for message_id, anonymous_id, user_id, when, traits in IDENTIFIES:
        row = [message_id, anonymous_id, user_id, stamp(when), stamp(when), stamp(when), stamp(when),
               "2026-11-01 00:00:00", "analytics-ios", traits["email"], traits["plan"]]
        con.execute(f"insert into {schema}.identifies values ({', '.join('?' * len(row))})", row)


def dbt(tmp_path: Path, *args: str):
    return dbtRunner().invoke(
        [
            *args,
            "--project-dir", str(PROJECT),
            "--profiles-dir", str(PROJECT),
            # a private target: the project's own target/ (Dagster's manifest) stays as it is
            "--target-path", str(tmp_path / "target"),
            "--log-path", str(tmp_path / "logs"),
        ]
    )


def dbt_vars(**values) -> str:
    return orjson.dumps(values).decode()


def rows(warehouse: Path, sql: str) -> list[tuple]:
    # not read_only: dbt ran in this process and its adapter keeps the file open read-write
    with duckdb.connect(str(warehouse)) as con:
        return con.execute(sql).fetchall()


@pytest.fixture
def warehouse(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "warehouse.duckdb"
    monkeypatch.setenv("NUDGE_WAREHOUSE", str(path))
    monkeypatch.setenv("NUDGE_AS_OF", AS_OF)
    return path


@pytest.mark.parametrize(
    ("vendor", "schema", "timestamp_type"),
    [
        # Segment's default schema; zoned timestamps, as on Postgres
        ("segment", None, "timestamptz"),
        # RudderStack in a schema of the user's choosing; plain UTC timestamps
        ("rudderstack", "rudder_app", "timestamp"),
    ],
)
def test_events_from_a_loaders_tables(tmp_path, warehouse, vendor, schema, timestamp_type):
    with duckdb.connect(str(warehouse)) as con:
        create_loader_tables(con, schema or vendor, timestamp_type)
    variables = {"nudge_event_source": vendor, "nudge_event_tables": EVENT_TABLES}
    if schema:
        variables["nudge_event_schema"] = schema
    # the models and their data tests; the dbt unit tests have their own test
    result = dbt(
        tmp_path, "build", "--select", "+int_events", "--exclude-resource-type", "unit_test",
        "--vars", dbt_vars(**variables),
    )
    assert result.success, [(r.node.name, r.status, r.message) for r in result.result or []]
    built = {r.node.name for r in result.result}
    assert {f"stg_{vendor}__tracks", f"stg_{vendor}__identifies", "stg_events", "int_events_stitched", "int_events"} <= built

    # stg_events: every call once, the identifies as identify events, times in UTC
    assert rows(warehouse, "select column_name, data_type from information_schema.columns "
                           "where table_schema = 'staging' and table_name = 'stg_events' "
                           "order by ordinal_position") == STG_EVENTS_COLUMNS
    events = {
        event_id: (contact_id, anonymous_id, event_name, occurred_at, is_syncing)
        for event_id, contact_id, anonymous_id, event_name, occurred_at, is_syncing in rows(
            warehouse,
            "select event_id, contact_id, anonymous_id, event_name, occurred_at, is_syncing from staging.stg_events",
        )
    }
    expected = {
        message_id: (user_id, anonymous_id, event, utc(when), False)
        for message_id, anonymous_id, user_id, event, when, _ in TRACKS
    } | {
        message_id: (user_id, anonymous_id, "identify", utc(when), False)
        for message_id, anonymous_id, user_id, when, _ in IDENTIFIES
    }
    assert events == expected
    assert events["m-install"][3] == datetime(2026, 10, 30, 6, 0)  # 08:00+02:00

    # properties: the per-event table's own columns, typed; '{}' for an unlisted table and for identify
    properties = {
        event_id: orjson.loads(text)
        for event_id, text in rows(warehouse, "select event_id, properties from staging.stg_events")
    }
    assert properties["m-workout"] == {"workout_type": "run", "duration_min": 30, "calories": 310.5}
    assert properties["m-install"] == {"platform": "ios"}
    assert properties["m-signup"] == {"source": "organic"}
    assert properties["m-workout-late"] == {"workout_type": "yoga", "duration_min": 20, "calories": None}
    assert properties["m-login"] == {}
    assert properties["m-identify"] == {}

    # loaded_at: when the loader wrote the row to the warehouse (uuid_ts), not when its API took the call
    assert rows(warehouse, "select loaded_at from staging.stg_events where event_id = 'm-install'") == [
        (datetime(2026, 11, 1, 0, 0),)
    ]
    # stitching through identifies: the earliest event with both ids links a1 to u1; the link
    # of a2 is stored whatever the clock, and int_events leaves it out until as_of reaches it
    assert rows(
        warehouse,
        "select distinct anonymous_id, stitched_contact_id, identified_at from intermediate.int_events_stitched "
        "where stitched_contact_id is not null order by anonymous_id",
    ) == [("a1", "u1", datetime(2026, 10, 30, 8, 9)), ("a2", "u2", datetime(2026, 11, 2, 12, 0))]
    stitched = rows(warehouse, "select event_id, contact_id, event_name from intermediate.int_events order by event_id")
    assert stitched == [
        ("m-identify", "u1", "identify"),
        ("m-install", "u1", "app_installed"),  # before the signup, and it counts
        ("m-login", "u1", "logged_in"),
        ("m-signup", "u1", "signed_up"),
        ("m-workout", "u1", "workout_completed"),
    ]


def test_stg_events_has_the_same_columns_from_landing_files(tmp_path, warehouse):
    with duckdb.connect(str(warehouse)) as con:
        ensure_raw_tables(con)
    result = dbt(tmp_path, "run", "--select", "stg_events")
    assert result.success
    assert rows(warehouse, "select column_name, data_type from information_schema.columns "
                           "where table_schema = 'staging' and table_name = 'stg_events' "
                           "order by ordinal_position") == STG_EVENTS_COLUMNS


def test_an_unknown_event_source_is_refused_by_name(tmp_path, warehouse):
    result = dbt(tmp_path, "parse", "--vars", dbt_vars(nudge_event_source="mixpanel"))
    assert not result.success
    assert "var nudge_event_source must be landing, segment or rudderstack, got 'mixpanel'" in str(result.exception)
