"""Segment membership history over real `dbt build`s at successive as_of values.

A temporary DuckDB file gets a few contacts' events; dbt builds the segments, their
append-only history (segment_membership_changes) and the winback trigger at one as_of,
then again later, then replays: the history records who entered and who exited, once.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import duckdb
import pytest
from dbt.cli.main import dbtRunner

from dagster_project.ingest import ensure_raw_tables
from dagster_project.ledger import ensure_ledger
from dagster_project.settings import PROJECT_ROOT

FIRST = "2026-11-01 00:00:00"
SECOND = "2026-11-20 00:00:00"

CONTACTS = [
    # contact_id, plan
    ("dora", "premium"),  # dormant since Oct 15; comes back on Nov 10
    ("rita", "premium"),  # three workouts in the week before FIRST; none after
    ("sam", "premium"),  # last active Oct 20: dormant from Nov 19
]

EVENTS = [
    # event_id, contact_id, name, occurred_at, is_syncing
    ("d1", "dora", "logged_in", "2026-09-15 08:00:00", False),
    ("d2", "dora", "logged_in", "2026-11-10 08:00:00", False),
    ("r1", "rita", "workout_completed", "2026-10-27 07:00:00", False),
    ("r2", "rita", "workout_completed", "2026-10-29 07:00:00", False),
    ("r3", "rita", "workout_completed", "2026-10-31 07:00:00", False),
    ("s1", "sam", "product_viewed", "2026-10-20 18:30:00", False),
    # imported history: never makes anyone active, dormant or a power user
    ("h1", "sam", "workout_completed", "2026-10-30 07:00:00", True),
]


def ts(text: str) -> datetime:
    return datetime.fromisoformat(text)


@pytest.fixture
def warehouse(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "warehouse.duckdb"
    con = duckdb.connect(str(path))
    try:
        ensure_raw_tables(con)
        ensure_ledger(con)
        for contact_id, plan in CONTACTS:
            con.execute(
                "insert into raw.contacts (contact_id, email, status, first_name, properties, updated_at)"
                " values (?, ?, 'subscribed', ?, ?, timestamp '2026-09-01 00:00:00')",
                [contact_id, f"{contact_id}@example.com", contact_id.title(), f'{{"plan": "{plan}"}}'],
            )
        for event_id, contact_id, name, occurred_at, is_syncing in EVENTS:
            con.execute(
                "insert into raw.events (event_id, contact_id, name, occurred_at, properties, is_syncing)"
                " values (?, ?, ?, ?, '{}', ?)",
                [event_id, contact_id, name, ts(occurred_at), is_syncing],
            )
    finally:
        con.close()
    monkeypatch.setenv("NUDGE_WAREHOUSE", str(path))
    return path


def build(tmp_path: Path, monkeypatch, as_of: str, *extra: str) -> None:
    monkeypatch.setenv("NUDGE_AS_OF", as_of)
    project = str(PROJECT_ROOT / "dbt_project")
    result = dbtRunner().invoke(
        [
            "build", "--select", "+trg_winback", "--exclude-resource-type", "unit_test", *extra,
            "--project-dir", project, "--profiles-dir", project,
            # the repository's target folder belongs to the Dagster code, not to this test
            "--target-path", str(tmp_path / "target"),
        ]
    )
    assert result.success, [(r.node.name, r.status, r.message) for r in (result.result or [])]


def query(warehouse: Path, sql: str) -> list[tuple]:
    # dbt-duckdb keeps its connection to the file open in this process: open it the same way
    con = duckdb.connect(str(warehouse))
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def changes(warehouse: Path) -> set[tuple]:
    return set(
        query(
            warehouse,
            "select segment, contact_id, change_type, changed_at, recorded_as_of"
            " from segments.segment_membership_changes",
        )
    )


def test_membership_history_records_entries_and_exits_once(warehouse, tmp_path, monkeypatch):
    build(tmp_path, monkeypatch, FIRST)
    first = {
        ("seg_dormant", "dora", "entered", ts("2026-10-15 08:00:00"), ts(FIRST)),
        ("seg_power_users", "rita", "entered", ts("2026-10-31 07:00:00"), ts(FIRST)),
    }
    assert changes(warehouse) == first

    # the same hour again, and an earlier hour replayed: nothing appended
    build(tmp_path, monkeypatch, FIRST)
    build(tmp_path, monkeypatch, "2026-10-25 00:00:00")
    assert changes(warehouse) == first

    build(tmp_path, monkeypatch, SECOND)
    second = {
        ("seg_dormant", "dora", "exited", ts(SECOND), ts(SECOND)),  # came back on Nov 10
        ("seg_power_users", "rita", "exited", ts(SECOND), ts(SECOND)),
        ("seg_dormant", "sam", "entered", ts("2026-11-19 18:30:00"), ts(SECOND)),
    }
    assert changes(warehouse) == first | second

    build(tmp_path, monkeypatch, SECOND)
    assert changes(warehouse) == first | second

    # every entry into seg_dormant is a winback qualification, one per inactive stretch;
    # dora's return is an exit for the send step, not a missing row
    winback = query(warehouse, "select contact_id, trigger_key, qualified_at from triggers.trg_winback order by 1")
    assert winback == [
        ("dora", "dora:2026-10-15 08:00:00", ts("2026-10-15 08:00:00")),
        ("sam", "sam:2026-11-19 18:30:00", ts("2026-11-19 18:30:00")),
    ]


def test_a_full_refresh_enters_every_current_member(warehouse, tmp_path, monkeypatch):
    build(tmp_path, monkeypatch, FIRST)
    build(tmp_path, monkeypatch, SECOND, "--full-refresh")
    assert changes(warehouse) == {
        ("seg_dormant", "sam", "entered", ts("2026-11-19 18:30:00"), ts(SECOND)),
    }
