"""Landing files into a real DuckDB file: every row accounted for, loads idempotent, newest contact wins."""

from __future__ import annotations

import os
import shutil
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import duckdb
import orjson
import polars as pl
import pytest

import dagster_project.ingest as ingest_module
from dagster_project.ingest import (
    CONTACTS_KEY,
    EVENTS_KEY,
    INGEST_ASSETS,
    REJECT_SHARE_CHECK,
    LandingFiles,
    RAW_EVENTS_COLUMNS,
    ensure_raw_tables,
    ingest_contacts,
    ingest_events,
)
from dagster_project.sample_data import generate
from dagster_project.warehouse import Warehouse

EVENT_COLUMNS = "event_id, contact_id, anonymous_id, name, occurred_at, properties, is_syncing"
CONTACT_COLUMNS = "contact_id, email, status, first_name, last_name, timezone, properties, updated_at"


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    out = tmp_path_factory.mktemp("sample")
    return out, generate(out, contacts=200, days=7, seed=3)


@pytest.fixture
def landing(sample, tmp_path) -> Path:
    """A private copy of the sample, so a test can change its files."""
    source, _ = sample
    copy = tmp_path / "landing"
    shutil.copytree(source, copy)
    return copy


@pytest.fixture
def con(tmp_path):
    connection = duckdb.connect(str(tmp_path / "warehouse.duckdb"))
    yield connection
    connection.close()


def table(con, sql: str) -> pl.DataFrame:
    return con.sql(sql).pl()


def count(con, sql: str) -> int:
    return one(con, sql)


def one(con, sql: str, params: list | None = None):
    """The single value (or row) a query returns; fetched completely, as DuckDB wants before the next query."""
    (row,) = con.execute(sql, params or []).fetchall()
    return row[0] if len(row) == 1 else row


def lines_of(path: Path) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def write_jsonl(path: Path, records: list[dict | str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join((r if isinstance(r, str) else orjson.dumps(r).decode()) + "\n" for r in records)
    path.write_text(text, encoding="utf-8")
    return path


def parseable_records(folder: Path) -> list[dict]:
    records = []
    for path in sorted(folder.glob("*.jsonl")):
        for line in lines_of(path):
            try:
                records.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                pass
    return records


def contact(contact_id: str, updated_at: str, plan: str, **extra) -> dict:
    return {
        "contact_id": contact_id,
        "email": f"{contact_id}@example.com",
        "status": "subscribed",
        "first_name": "Zoë",
        "last_name": "李",
        "timezone": "Europe/Berlin",
        "properties": {"plan": plan},
        "updated_at": updated_at,
        **extra,
    }


# --- every line accounted for --------------------------------------------------------------------


def test_every_event_line_is_loaded_rejected_or_a_counted_duplicate(landing, sample, con):
    _, summary = sample
    report = ingest_events(con, landing)

    total_lines = sum(len(lines_of(path)) for path in (landing / "events").glob("*.jsonl"))
    assert report.files_loaded == len(list((landing / "events").glob("*.jsonl")))
    assert report.rows_read == total_lines == summary.event_rows
    assert report.rows_loaded == summary.events == count(con, "select count(*) from raw.events")
    assert report.rows_rejected == summary.bad_event_rows == count(con, "select count(*) from raw.rejected_rows")
    assert report.rows_duplicate == summary.duplicate_event_rows
    assert report.rows_loaded + report.rows_rejected + report.rows_duplicate == report.rows_read
    assert report.reject_share == pytest.approx(summary.bad_event_rows / total_lines)

    # each rejection points at its file and line, and quotes that line as written
    file_lines = {str(p.resolve()): p.read_text(encoding="utf-8").split("\n") for p in (landing / "events").iterdir()}
    rejections = con.execute("select source_file, line, raw, reason from raw.rejected_rows").fetchall()
    for source_file, line, raw, reason in rejections:
        assert file_lines[source_file][line - 1] == raw
        assert reason
    # and every id in the files is in the table unless its line was rejected
    rejected = {(f, line) for f, line in con.execute("select source_file, line from raw.rejected_rows").fetchall()}
    loaded = set(con.sql("select event_id from raw.events").pl()["event_id"])
    for source_file, texts in file_lines.items():
        for number, text in enumerate(texts, start=1):
            if text.strip() and (source_file, number) not in rejected:
                assert orjson.loads(text)["event_id"] in loaded


def test_rejections_name_the_problem(landing, con):
    report = ingest_events(con, landing)
    reasons = [r for (r,) in con.execute("select reason from raw.rejected_rows").fetchall()]
    assert any(r.startswith("line is not valid JSON") for r in reasons)
    assert any(r.startswith("event_id is missing") for r in reasons)
    assert any(r.startswith("occurred_at 'yesterday' is not an ISO 8601 timestamp with offset") for r in reasons)
    assert any("has no UTC offset" in r and "an offset is required" in r for r in reasons)
    assert any(r.startswith("properties must be a JSON object") for r in reasons)
    assert any(r.startswith("neither contact_id nor anonymous_id is set") for r in reasons)
    expected_kinds = {
        "not_json",
        "missing_event_id",
        "missing_contact_id_and_anonymous_id",
        "missing_name",
        "bad_occurred_at",
    }
    assert expected_kinds <= set(report.reject_reasons)


def test_event_values_are_converted(landing, con):
    ingest_events(con, landing)
    records = parseable_records(landing / "events")
    local = next(r for r in records if r["occurred_at"].endswith("+01:00") or r["occurred_at"].endswith("+09:00"))
    stored = one(con, "select occurred_at from raw.events where event_id = ?", [local["event_id"]])
    assert stored == datetime.fromisoformat(local["occurred_at"]).astimezone(UTC).replace(tzinfo=None)

    bare = next(r for r in records if "properties" not in r and "name" in r)
    assert one(con, "select properties from raw.events where event_id = ?", [bare["event_id"]]) == "{}"
    with_properties = next(r for r in records if isinstance(r.get("properties"), dict) and r["properties"])
    stored_properties = one(con, "select properties from raw.events where event_id = ?", [with_properties["event_id"]])
    assert orjson.loads(stored_properties) == with_properties["properties"]

    synced = {r["event_id"] for r in records if r.get("is_syncing") and "event_id" in r}
    loaded = set(con.sql("select event_id from raw.events").pl()["event_id"])
    flagged = set(con.sql("select event_id from raw.events where is_syncing").pl()["event_id"])
    assert len(flagged) > 10
    assert flagged == synced & loaded  # and every other event defaults to false
    column_types = dict(
        con.execute("select column_name, data_type from duckdb_columns() where table_name = 'events'").fetchall()
    )
    assert column_types["occurred_at"] == "TIMESTAMP" and column_types["is_syncing"] == "BOOLEAN"


# --- idempotence ---------------------------------------------------------------------------------


def snapshot(con) -> dict[str, pl.DataFrame]:
    return {
        "events": table(con, "select * from raw.events order by event_id"),
        "contacts": table(con, "select * from raw.contacts order by contact_id"),
        "rejected": table(con, "select * from raw.rejected_rows order by source_file, line"),
    }


def test_loading_the_same_files_twice_changes_nothing(landing, con):
    ingest_events(con, landing)
    ingest_contacts(con, landing)
    before = snapshot(con)

    again = ingest_events(con, landing)
    assert (again.files_loaded, again.rows_read, again.rows_loaded) == (0, 0, 0)
    assert again.files_skipped == len(list((landing / "events").iterdir()))
    assert ingest_contacts(con, landing).files_skipped == 1

    # a touched file is read again, and still nothing changes
    for path in (landing / "events").iterdir():
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000_000))
    reread = ingest_events(con, landing)
    assert reread.files_loaded == len(list((landing / "events").iterdir()))
    assert reread.rows_loaded == 0
    assert reread.rows_rejected > 0  # still bad, still reported, but stored once
    after = snapshot(con)
    for name in before:
        assert after[name].equals(before[name]), name


def test_a_modified_file_is_reread_and_dedupes(landing, con):
    ingest_events(con, landing)
    events_before = count(con, "select count(*) from raw.events")
    rejected_before = count(con, "select count(*) from raw.rejected_rows")
    path = sorted((landing / "events").glob("*.jsonl"))[-1]
    existing = lines_of(path)[0]
    new_events = [
        {"event_id": "e_new_1", "contact_id": "c_000001", "name": "logged_in", "occurred_at": "2026-10-31T23:00:00Z"},
        {
            "event_id": "e_new_2",
            "contact_id": "c_000001",
            "name": "logged_in",
            "occurred_at": "2026-10-31T23:30:00+01:00",
        },
    ]
    with path.open("a", encoding="utf-8") as handle:
        for record in new_events:
            handle.write(orjson.dumps(record).decode() + "\n")
        handle.write(existing + "\n")  # a late retry of an event already loaded
        handle.write('{"event_id": "e_new_3", "contact_id": "c_000001"\n')

    report = ingest_events(con, landing)
    assert report.files_loaded == 1 and report.files_skipped == len(list((landing / "events").iterdir())) - 1
    assert report.rows_loaded == 2
    assert count(con, "select count(*) from raw.events") == events_before + 2
    assert count(con, "select count(*) from raw.rejected_rows") == rejected_before + 1
    assert one(con, "select occurred_at from raw.events where event_id = 'e_new_2'") == datetime(2026, 10, 31, 22, 30)
    assert count(con, f"select count(*) from raw.loaded_files where path = '{path.resolve()}'") == 2


def test_a_duplicate_id_inside_one_file_keeps_the_first(tmp_path, con):
    landing = tmp_path / "landing"
    write_jsonl(
        landing / "events" / "a.jsonl",
        [
            {"event_id": "e_1", "contact_id": "c_1", "name": "first", "occurred_at": "2026-10-31T10:00:00Z"},
            {"event_id": "e_1", "contact_id": "c_1", "name": "second", "occurred_at": "2026-10-31T11:00:00Z"},
        ],
    )
    report = ingest_events(con, landing)
    assert (report.rows_loaded, report.rows_duplicate) == (1, 1)
    assert con.execute("select name, source_line from raw.events").fetchall() == [("first", 1)]


@pytest.fixture
def small_units(monkeypatch):
    """Every path of the bulk insert at a size a test can reach: an insert per chunk, each deduped
    against the rows the ones before stored in the same transaction."""
    monkeypatch.setattr(ingest_module, "INSERT_EVERY_ROWS", 1)


def distinct_ids(con) -> bool:
    """raw.events has no key: only the ingest keeps its ids unique."""
    ((rows, ids),) = con.execute("select count(*), count(distinct event_id) from raw.events").fetchall()
    return rows == ids


def test_an_insert_per_chunk_dedupes_like_one_bulk_insert(landing, sample, con, tmp_path, small_units, monkeypatch):
    _, summary = sample
    report = ingest_events(con, landing)
    assert (report.rows_loaded, report.rows_duplicate) == (summary.events, summary.duplicate_event_rows)
    with duckdb.connect(str(tmp_path / "bulk.duckdb")) as bulk, monkeypatch.context() as defaults:
        defaults.setattr(ingest_module, "INSERT_EVERY_ROWS", 250_000)
        ingest_events(bulk, landing)
        stored = "select * exclude (loaded_at) from raw.events order by event_id"
        assert table(con, stored).equals(table(bulk, stored))
        assert distinct_ids(con) and distinct_ids(bulk)
    before = snapshot(con)
    # a re-sent file and a grown one against the stored table: only the new lines count
    path = sorted((landing / "events").glob("*.jsonl"))[-1]
    with path.open("a", encoding="utf-8") as handle:
        handle.write(lines_of(path)[0] + "\n")
        handle.write('{"event_id": "e_late", "contact_id": "c_000001", "name": "x", "occurred_at": "2026-10-31T23:59:00Z"}\n')
    for each in (landing / "events").iterdir():
        os.utime(each, ns=(each.stat().st_atime_ns, each.stat().st_mtime_ns + 1_000_000_000))
    again = ingest_events(con, landing)
    assert again.rows_loaded == 1
    assert count(con, "select count(*) from raw.events") == before["events"].height + 1
    assert distinct_ids(con)


def test_the_first_row_of_an_id_wins_across_files_and_inserts(tmp_path, con, small_units):
    landing = tmp_path / "landing"
    row = {"event_id": "e_1", "contact_id": "c_1", "occurred_at": "2026-10-31T10:00:00Z"}
    write_jsonl(landing / "events" / "a.jsonl", [{**row, "name": "first"}, {**row, "name": "second"}])
    write_jsonl(landing / "events" / "b.jsonl", [{**row, "name": "third"}, {**row, "event_id": "e_2", "name": "x"}])
    report = ingest_events(con, landing)
    assert (report.rows_loaded, report.rows_duplicate) == (2, 2)
    assert con.execute("select event_id, name, source_line from raw.events order by 1").fetchall() == [
        ("e_1", "first", 1),
        ("e_2", "x", 2),
    ]
    per_file = con.execute("select rows_loaded, rows_rejected from raw.loaded_files order by path").fetchall()
    assert per_file == [(1, 0), (1, 0)]


@pytest.mark.parametrize("later_by", [timedelta(hours=1), timedelta(0), timedelta(hours=-1)],
                         ids=["a later run", "a run under the same loaded_at", "a run with the clock gone back"])
def test_an_id_stored_by_an_earlier_run_is_a_duplicate_whenever_the_next_runs(tmp_path, con, small_units, later_by):
    # A run asks the earlier runs' rows by their loaded_at when all are older than its own; the
    # others (same loaded_at, or older than what is stored) must still find every stored id.
    first_at = datetime(2026, 11, 1, 12, 0)
    landing = tmp_path / "landing"
    row = {"event_id": "e_1", "contact_id": "c_1", "name": "first", "occurred_at": "2026-10-31T10:00:00Z"}
    write_jsonl(landing / "events" / "a.jsonl", [row, {**row, "event_id": "e_2"}])
    assert ingest_events(con, landing, loaded_at=first_at).rows_loaded == 2
    write_jsonl(landing / "events" / "b.jsonl", [{**row, "event_id": "e_3"}, {**row, "event_id": "e_2", "name": "again"},
                                                 {**row, "event_id": "e_4"}])
    report = ingest_events(con, landing, loaded_at=first_at + later_by)
    assert (report.rows_loaded, report.rows_duplicate) == (2, 1)
    assert con.execute("select event_id, name from raw.events order by 1").fetchall() == [
        ("e_1", "first"), ("e_2", "first"), ("e_3", "first"), ("e_4", "first")
    ]


def test_an_id_whose_hash_the_run_has_seen_is_still_loaded_when_the_table_lacks_it(landing, sample, con, small_units,
                                                                                   monkeypatch):
    # The hashes of a run's ids only say which ids to look up: were every hash a hit (two ids can
    # share one), the table decides and the same rows load.
    _, summary = sample
    monkeypatch.setattr(ingest_module._IdsOfThisRun, "may_hold", lambda self, hashes: pl.repeat(True, hashes.len(),
                                                                                                   eager=True))
    report = ingest_events(con, landing)
    assert (report.rows_loaded, report.rows_duplicate) == (summary.events, summary.duplicate_event_rows)
    assert distinct_ids(con)


# Rows the parse must repair (a value to strip, a timestamp spelled another way, a numeric id, a "yes")
# mixed with rows that need nothing: each loads as the clean row it stands for, and the first row of an id
# wins whichever kind it is (a faster path for clean rows must keep both).
CLEAN = {"event_id": "e_1", "contact_id": "c_1", "name": "viewed", "occurred_at": "2026-10-31T10:00:00+01:00",
         "properties": {"sku": "A"}, "is_syncing": True}
RESPELLED = [
    {**CLEAN, "event_id": " e_2\t"},
    {**CLEAN, "event_id": "e_3", "name": "viewed\u00a0"},
    {**CLEAN, "event_id": "e_4", "occurred_at": "2026-10-31 10:00+01:00"},
    {**CLEAN, "event_id": "e_5", "contact_id": 7},
    {**CLEAN, "event_id": "e_6", "is_syncing": "yes"},
    {**CLEAN, "event_id": "e_7", "contact_id": "", "anonymous_id": "a_1"},
    {**CLEAN, "event_id": "e_8", "occurred_at": "2026-10-31T09:00:00.1234567Z"},
]


def _as_parquet(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = ("event_id", "contact_id", "anonymous_id", "name", "occurred_at", "properties", "is_syncing")
    pl.DataFrame(
        {
            name: [
                None if r.get(name) is None
                else orjson.dumps(r[name], option=orjson.OPT_INDENT_2).decode() if name == "properties"
                else str(r[name]).lower() if name == "is_syncing"
                else str(r[name])
                for r in records
            ]
            for name in columns
        },
        schema={name: pl.String for name in columns},
    ).write_parquet(path)


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_rows_the_parse_repairs_load_like_clean_ones_and_keep_their_order(tmp_path, con, fmt, small_units):
    landing = tmp_path / "landing"
    # e_1 appears first as a row the parse repairs, then as a clean row in the same file and the next one
    records = [{**CLEAN, "name": " first "}, *RESPELLED, CLEAN, {**CLEAN, "event_id": "e_9"}]
    later = [{**CLEAN, "name": "third"}, {**CLEAN, "event_id": "e_10", "name": " padded"}]
    if fmt == "jsonl":
        write_jsonl(landing / "events" / "a.jsonl", records)
        write_jsonl(landing / "events" / "b.jsonl", later)
    else:
        _as_parquet(landing / "events" / "a.parquet", records)
        _as_parquet(landing / "events" / "b.parquet", later)
    report = ingest_events(con, landing)
    assert (report.rows_read, report.rows_loaded, report.rows_duplicate, report.rows_rejected) == (12, 10, 2, 0)
    rows = con.execute(
        "select event_id, contact_id, anonymous_id, name, occurred_at, properties, is_syncing, source_line "
        "from raw.events order by source_file, source_line"
    ).fetchall()
    at, props = datetime(2026, 10, 31, 9, 0), '{"sku":"A"}'
    assert rows == [
        ("e_1", "c_1", None, "first", at, props, True, 1),
        ("e_2", "c_1", None, "viewed", at, props, True, 2),
        ("e_3", "c_1", None, "viewed", at, props, True, 3),
        ("e_4", "c_1", None, "viewed", at, props, True, 4),
        ("e_5", "7", None, "viewed", at, props, True, 5),
        ("e_6", "c_1", None, "viewed", at, props, True, 6),
        ("e_7", None, "a_1", "viewed", at, props, True, 7),
        ("e_8", "c_1", None, "viewed", datetime(2026, 10, 31, 9, 0, 0, 123456), props, True, 8),
        ("e_9", "c_1", None, "viewed", at, props, True, 10),
        ("e_10", "c_1", None, "padded", at, props, True, 2),
    ]
    per_file = con.execute("select rows_loaded, rows_rejected from raw.loaded_files order by path").fetchall()
    assert per_file == [(9, 0), (1, 0)]


def test_a_bad_row_among_good_ones_is_rejected_with_its_line(tmp_path, con):
    landing = tmp_path / "landing"
    records = [CLEAN, {**CLEAN, "event_id": "e_2", "occurred_at": "2026-10-31T10:00:00"}, "{not json",
               {**CLEAN, "event_id": "e_3", "properties": [1]}, {**CLEAN, "event_id": "e_4"}]
    write_jsonl(landing / "events" / "a.jsonl", records)
    report = ingest_events(con, landing)
    assert (report.rows_read, report.rows_loaded, report.rows_rejected) == (5, 2, 3)
    assert [line for (line,) in con.execute("select source_line from raw.events order by 1").fetchall()] == [1, 5]
    rejected = con.execute("select line, reason from raw.rejected_rows order by line").fetchall()
    assert [line for line, _ in rejected] == [2, 3, 4]
    assert "has no UTC offset" in rejected[0][1]
    assert rejected[1][1].startswith("line is not valid JSON")
    assert rejected[2][1].startswith("properties must be a JSON object")


def test_an_error_while_checking_fails_the_load_and_commits_nothing(landing, con, monkeypatch):
    checked = 0
    check_chunk = ingest_module._check_chunk

    def failing(*args):
        nonlocal checked
        checked += 1
        if checked == 3:
            raise RuntimeError("a bug in the parse")
        return check_chunk(*args)

    monkeypatch.setattr(ingest_module, "_check_chunk", failing)
    with pytest.raises(RuntimeError, match="a bug in the parse"):
        ingest_events(con, landing)
    assert count(con, "select count(*) from raw.events") == 0  # the whole batch is rolled back
    assert count(con, "select count(*) from raw.loaded_files") == 0



def test_an_error_in_an_insert_running_beside_the_checks_fails_the_load_and_commits_nothing(
    landing, sample, con, small_units, monkeypatch
):
    """Inserts run on a thread of their own while the next chunk is checked: a failure there still
    reaches the caller, after which nothing of the batch is stored, and the next load stores it all."""
    _, summary = sample
    inserts = []
    insert_events = ingest_module._insert_events

    def failing(*args):
        inserts.append(threading.current_thread().name)
        if len(inserts) == 2:
            raise RuntimeError("the disk is full")
        return insert_events(*args)

    monkeypatch.setattr(ingest_module, "_insert_events", failing)
    with pytest.raises(RuntimeError, match="the disk is full"):
        ingest_events(con, landing)
    assert inserts[0] != threading.current_thread().name
    assert count(con, "select count(*) from raw.events") == 0
    assert count(con, "select count(*) from raw.loaded_files") == 0
    assert count(con, "select count(*) from raw.rejected_rows") == 0

    monkeypatch.setattr(ingest_module, "_insert_events", insert_events)
    report = ingest_events(con, landing)
    assert (report.rows_loaded, report.rows_duplicate) == (summary.events, summary.duplicate_event_rows)
    assert distinct_ids(con)

# --- anonymous events ----------------------------------------------------------------------------

ANONYMOUS_EVENTS = [
    # an install before the signup: only the device's id
    {"event_id": "e_install", "anonymous_id": "a_1", "name": "app_installed", "occurred_at": "2026-10-30T08:00:00Z",
     "properties": {"platform": "ios"}},
    # the signup, then the identify that links the two ids
    {"event_id": "e_signup", "contact_id": "c_1", "name": "signed_up", "occurred_at": "2026-10-30T08:05:00Z"},
    {"event_id": "e_identify", "contact_id": "c_1", "anonymous_id": "a_1", "name": "identify",
     "occurred_at": "2026-10-30T08:05:01Z"},
    # nobody's: rejected, with a reason
    {"event_id": "e_nobody", "anonymous_id": "  ", "name": "logged_in", "occurred_at": "2026-10-30T09:00:00Z"},
]
ANONYMOUS_LOADED = [
    ("e_identify", "c_1", "a_1", "identify"),
    ("e_install", None, "a_1", "app_installed"),
    ("e_signup", "c_1", None, "signed_up"),
]


def write_anonymous_events(landing: Path, fmt: str) -> None:
    folder = landing / "events"
    if fmt == "jsonl":
        write_jsonl(folder / "anonymous.jsonl", ANONYMOUS_EVENTS)
        return
    folder.mkdir(parents=True, exist_ok=True)
    frame = pl.DataFrame(
        {
            "event_id": [r["event_id"] for r in ANONYMOUS_EVENTS],
            "contact_id": [r.get("contact_id") for r in ANONYMOUS_EVENTS],
            "anonymous_id": [r.get("anonymous_id") for r in ANONYMOUS_EVENTS],
            "name": [r["name"] for r in ANONYMOUS_EVENTS],
            "occurred_at": [r["occurred_at"] for r in ANONYMOUS_EVENTS],
            "properties": [orjson.dumps(r.get("properties", {})).decode() for r in ANONYMOUS_EVENTS],
        }
    )
    if fmt == "csv":
        frame.write_csv(folder / "anonymous.csv")
    else:
        frame.write_parquet(folder / "anonymous.parquet")


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_anonymous_events_load_and_an_event_of_nobody_is_rejected(tmp_path, con, fmt):
    landing = tmp_path / "landing"
    write_anonymous_events(landing, fmt)
    report = ingest_events(con, landing)
    assert (report.rows_read, report.rows_loaded, report.rows_rejected) == (4, 3, 1)
    assert report.reject_reasons == {"missing_contact_id_and_anonymous_id": 1}
    rows = con.execute("select event_id, contact_id, anonymous_id, name from raw.events order by 1").fetchall()
    assert rows == ANONYMOUS_LOADED
    assert one(con, "select properties from raw.events where event_id = 'e_install'") == '{"platform":"ios"}'
    line, reason = one(con, "select line, reason from raw.rejected_rows")
    assert line == (5 if fmt == "csv" else 4)  # a CSV's first line is its header
    assert reason.startswith("neither contact_id nor anonymous_id is set: every event must say whose it is")
    assert "anonymous_id" in reason and "contact_id" in reason

    # idempotent as ever: the same file again, touched, changes nothing
    before = snapshot(con)
    for path in (landing / "events").iterdir():
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000_000))
    again = ingest_events(con, landing)
    assert (again.files_loaded, again.rows_loaded, again.rows_duplicate, again.rows_rejected) == (1, 0, 3, 1)
    after = snapshot(con)
    for name in before:
        assert after[name].equals(before[name]), name


OLD_RAW_EVENTS_DDL = """
create schema raw;
create table raw.events (
    event_id varchar primary key,
    contact_id varchar not null,
    name varchar not null,
    occurred_at timestamp not null,
    properties varchar not null,
    is_syncing boolean not null,
    source_file varchar,
    source_line integer,
    loaded_at timestamp
);
insert into raw.events values
    ('e_old', 'c_1', 'signed_up', '2026-10-01 10:00:00', '{}', false, '/old/file.jsonl', 1, '2026-10-01 11:00:00');
"""


def columns_of(con, table_name: str) -> list[tuple]:
    return con.execute(
        "select column_name, data_type, is_nullable from information_schema.columns "
        "where table_schema = 'raw' and table_name = ? order by ordinal_position",
        [table_name],
    ).fetchall()


def constraints_of(con, table_name: str) -> list[tuple]:
    return con.execute(
        "select constraint_type, constraint_column_names from duckdb_constraints() "
        "where schema_name = 'raw' and table_name = ? order by constraint_index",
        [table_name],
    ).fetchall()


def test_a_warehouse_from_before_anonymous_events_is_migrated_in_place(tmp_path, con):
    con.execute(OLD_RAW_EVENTS_DDL)
    landing = tmp_path / "landing"
    write_anonymous_events(landing, "jsonl")

    report = ingest_events(con, landing)
    assert (report.rows_loaded, report.rows_rejected) == (3, 1)
    # the old row is kept, with no anonymous id; the new rows sit beside it
    assert con.execute(
        "select event_id, contact_id, anonymous_id, name, source_file from raw.events where event_id = 'e_old'"
    ).fetchall() == [("e_old", "c_1", None, "signed_up", "/old/file.jsonl")]
    rows = con.execute(
        "select event_id, contact_id, anonymous_id, name from raw.events where event_id <> 'e_old' order by 1"
    ).fetchall()
    assert rows == ANONYMOUS_LOADED

    # a migrated warehouse has exactly the shape of a new one: its constraints too (the old primary
    # key is gone), and a re-sent old id is still a duplicate
    with duckdb.connect(str(tmp_path / "fresh.duckdb")) as fresh:
        ensure_raw_tables(fresh)
        assert columns_of(con, "events") == columns_of(fresh, "events")
        assert constraints_of(con, "events") == constraints_of(fresh, "events") == [
            ("NOT NULL", ["event_id"]), ("NOT NULL", ["name"]), ("NOT NULL", ["occurred_at"]),
            ("NOT NULL", ["properties"]), ("NOT NULL", ["is_syncing"]),
        ]
    write_jsonl(landing / "events" / "resent.jsonl", [
        {"event_id": "e_old", "contact_id": "c_2", "name": "again", "occurred_at": "2026-10-02T10:00:00Z"}])
    resent = ingest_events(con, landing)
    assert (resent.rows_loaded, resent.rows_duplicate) == (0, 1)
    ensure_raw_tables(con)  # and migrating again is a no-op
    assert count(con, "select count(*) from raw.events") == 4
    assert con.execute("select name from raw.events where event_id = 'e_old'").fetchall() == [("signed_up",)]


def test_a_keyed_raw_events_is_rebuilt_without_its_key_keeping_every_row(tmp_path, con, landing, sample):
    """Warehouses made before session 11 have a primary key on raw.events.event_id."""
    ingest_events(con, landing)
    before = table(con, "select * from raw.events order by event_id")
    keyed = RAW_EVENTS_COLUMNS.replace("event_id varchar not null", "event_id varchar primary key")
    con.execute("create table raw.keyed as select * from raw.events; drop table raw.events;"
                f"create table raw.events ({keyed}); insert into raw.events select * from raw.keyed;"
                "drop table raw.keyed")
    assert ("PRIMARY KEY", ["event_id"]) in constraints_of(con, "events")

    ensure_raw_tables(con)
    assert ("PRIMARY KEY", ["event_id"]) not in constraints_of(con, "events")
    assert table(con, "select * from raw.events order by event_id").equals(before)


# --- contacts ------------------------------------------------------------------------------------


def test_sample_contacts_load_with_the_newest_version(landing, sample, con):
    _, summary = sample
    report = ingest_contacts(con, landing)
    assert report.rows_loaded == summary.contacts
    assert report.rows_duplicate == summary.superseded_contact_rows
    assert report.rows_rejected == summary.bad_contact_rows
    assert count(con, "select count(*) from raw.contacts where properties like '%Old Town%'") == 0
    assert count(con, "select count(*) from raw.contacts where email is null") > 0  # no address is allowed
    rows = con.execute("select reason from raw.rejected_rows where source_table = 'contacts'").fetchall()
    reasons = [r for (r,) in rows]
    assert any(r.startswith("email 'not-an-email' is not a valid address: ") for r in reasons)
    assert any(r.startswith("status 'active' is not one of") for r in reasons)


@pytest.mark.parametrize("order", [("older", "newer"), ("newer", "older")])
def test_newest_updated_at_wins_across_files_in_either_order(tmp_path, con, order):
    files = {
        "older": [contact("c_1", "2026-10-30T10:00:00Z", "free"), contact("c_2", "2026-10-30T10:00:00Z", "free")],
        "newer": [contact("c_1", "2026-10-30T12:00:00+01:00", "premium")],  # 11:00 UTC, newer than 10:00
    }
    landing = tmp_path / "landing"
    for step, name in enumerate(order):
        write_jsonl(landing / "contacts" / f"{step}-{name}.jsonl", files[name])
        ingest_contacts(con, landing)
    rows = dict(con.execute("select contact_id, properties from raw.contacts").fetchall())
    assert rows == {"c_1": '{"plan":"premium"}', "c_2": '{"plan":"free"}'}
    assert one(con, "select updated_at from raw.contacts where contact_id = 'c_1'") == datetime(2026, 10, 30, 11, 0)


@pytest.mark.parametrize("names", [("a-older", "b-newer"), ("b-older", "a-newer")])
def test_newest_updated_at_wins_when_both_files_arrive_in_one_load(tmp_path, con, names):
    landing = tmp_path / "landing"
    write_jsonl(landing / "contacts" / f"{names[0]}.jsonl", [contact("c_1", "2026-10-30T10:00:00Z", "free")])
    write_jsonl(landing / "contacts" / f"{names[1]}.jsonl", [contact("c_1", "2026-10-30T12:00:00Z", "premium")])
    report = ingest_contacts(con, landing)
    assert report.files_loaded == 2 and report.rows_loaded + report.rows_duplicate == 2
    assert one(con, "select properties from raw.contacts") == '{"plan":"premium"}'


def test_within_a_file_newest_wins_not_last_and_a_tie_keeps_the_first(tmp_path, con):
    landing = tmp_path / "landing"
    write_jsonl(
        landing / "contacts" / "export.jsonl",
        [
            contact("c_1", "2026-10-30T12:00:00Z", "premium"),
            contact("c_1", "2026-10-29T12:00:00Z", "free"),
            contact("c_2", "2026-10-30T12:00:00Z", "first"),
            contact("c_2", "2026-10-30T12:00:00Z", "second"),
        ],
    )
    report = ingest_contacts(con, landing)
    assert (report.rows_loaded, report.rows_duplicate) == (2, 2)
    rows = dict(con.execute("select contact_id, properties from raw.contacts").fetchall())
    assert rows == {"c_1": '{"plan":"premium"}', "c_2": '{"plan":"first"}'}


def test_an_older_contact_never_replaces_a_newer_one_and_equal_is_a_no_op(tmp_path, con):
    landing = tmp_path / "landing"
    write_jsonl(landing / "contacts" / "a.jsonl", [contact("c_1", "2026-10-30T12:00:00Z", "premium")])
    ingest_contacts(con, landing)
    same_time = contact("c_1", "2026-10-30T12:00:00Z", "other", status="unsubscribed")
    write_jsonl(landing / "contacts" / "b.jsonl", [same_time])
    write_jsonl(landing / "contacts" / "c.jsonl", [contact("c_1", "2026-10-01T00:00:00Z", "free")])
    report = ingest_contacts(con, landing)
    assert (report.rows_loaded, report.rows_duplicate) == (0, 2)
    assert one(con, "select properties, status, source_file from raw.contacts") == (
        '{"plan":"premium"}',
        "subscribed",
        str((landing / "contacts" / "a.jsonl").resolve()),
    )


def test_contact_fields_are_tidied(tmp_path, con):
    landing = tmp_path / "landing"
    write_jsonl(
        landing / "contacts" / "a.jsonl",
        [
            contact("c_1", "2026-10-30T12:00:00Z", "free", email="", status=" Subscribed ", timezone=""),
            {"contact_id": "c_2", "status": "pending", "updated_at": "2026-10-30T12:00:00Z"},
        ],
    )
    ingest_contacts(con, landing)
    rows = con.execute("select contact_id, email, status, timezone, properties from raw.contacts order by 1").fetchall()
    assert rows == [
        ("c_1", None, "subscribed", None, '{"plan":"free"}'),
        ("c_2", None, "pending", None, "{}"),
    ]


# --- formats -------------------------------------------------------------------------------------


def test_csv_and_parquet_load_the_same_rows_as_jsonl(tmp_path):
    loaded = {}
    for fmt in ("jsonl", "csv", "parquet"):
        landing = tmp_path / fmt
        summary = generate(landing, contacts=60, days=3, seed=9, fmt=fmt, bad_rows=False)
        with duckdb.connect(str(tmp_path / f"{fmt}.duckdb")) as connection:
            report = ingest_events(connection, landing)
            assert report.rows_loaded == summary.events and report.rows_rejected == 0
            loaded[fmt] = table(connection, f"select {EVENT_COLUMNS} from raw.events order by event_id")
    assert loaded["jsonl"].height > 100
    assert loaded["csv"].equals(loaded["jsonl"])
    assert loaded["parquet"].equals(loaded["jsonl"])


def test_contacts_in_csv_and_parquet_load_like_jsonl(landing, tmp_path):
    source = landing / "contacts" / "contacts.jsonl"
    records = [orjson.loads(line) for line in lines_of(source)]
    frame = pl.DataFrame(
        {
            "contact_id": [r.get("contact_id") for r in records],
            "email": [r.get("email") for r in records],
            "status": [r.get("status") for r in records],
            "first_name": [r.get("first_name") for r in records],
            "last_name": [r.get("last_name") for r in records],
            "timezone": [r.get("timezone") for r in records],
            "properties": [orjson.dumps(r["properties"]).decode() for r in records],
            "updated_at": [r.get("updated_at") for r in records],
        }
    )
    results = {}
    for fmt in ("jsonl", "csv", "parquet"):
        folder = tmp_path / f"contacts-{fmt}"
        (folder / "contacts").mkdir(parents=True)
        if fmt == "jsonl":
            shutil.copy(source, folder / "contacts" / "contacts.jsonl")
        elif fmt == "csv":
            frame.write_csv(folder / "contacts" / "contacts.csv")
        else:
            frame.write_parquet(folder / "contacts" / "contacts.parquet")
        with duckdb.connect(str(tmp_path / f"contacts-{fmt}.duckdb")) as connection:
            report = ingest_contacts(connection, folder)
            rows = table(connection, f"select {CONTACT_COLUMNS} from raw.contacts order by 1")
            results[fmt] = (report.rows_loaded, report.rows_rejected, rows)
    assert results["csv"][:2] == results["jsonl"][:2] == results["parquet"][:2]
    assert results["csv"][2].equals(results["jsonl"][2])
    assert results["parquet"][2].equals(results["jsonl"][2])


def test_typed_parquet_columns_are_understood(tmp_path, con):
    landing = tmp_path / "landing"
    (landing / "events").mkdir(parents=True)
    pl.DataFrame(
        {
            "event_id": ["e_1", "e_2"],
            "contact_id": ["c_1", "c_1"],
            "name": ["purchased", "logged_in"],
            "occurred_at": [datetime(2026, 10, 31, 21, 0), datetime(2026, 10, 31, 22, 0)],
            "properties": [{"total": 12.5, "currency": "USD"}, None],
            "is_syncing": [True, None],
        },
        schema_overrides={"occurred_at": pl.Datetime("us", "Europe/Berlin")},
    ).write_parquet(landing / "events" / "typed.parquet")
    naive = {"event_id": ["e_3"], "contact_id": ["c_1"], "name": ["x"], "occurred_at": [datetime(2026, 10, 31)]}
    pl.DataFrame(naive).write_parquet(landing / "events" / "naive.parquet")
    report = ingest_events(con, landing)
    assert (report.rows_loaded, report.rows_rejected) == (2, 1)
    rows = con.execute("select event_id, occurred_at, properties, is_syncing from raw.events order by 1").fetchall()
    assert rows == [
        ("e_1", datetime(2026, 10, 31, 21, 0), '{"total":12.5,"currency":"USD"}', True),
        ("e_2", datetime(2026, 10, 31, 22, 0), "{}", False),
    ]
    line, raw, reason = one(con, "select line, raw, reason from raw.rejected_rows")
    assert "has no UTC offset" in reason
    # a Parquet row has no text of its own: its values, as JSON, stand in for it
    assert line == 1
    assert orjson.loads(raw) == {**{k: v[0] for k, v in naive.items()}, "occurred_at": "2026-10-31 00:00:00"}


# --- bad files -----------------------------------------------------------------------------------


def test_a_file_of_only_bad_rows_rejects_them_all_without_raising(tmp_path, con):
    landing = tmp_path / "landing"
    bad = [
        "hello",
        "[1, 2, 3]",
        '{"event_id": "e_1", "contact_id": "c_1", "name": "x", "occurred_at": "soon"}',
        '{"event_id": {"nested": true}, "contact_id": "c_1", "name": "x", "occurred_at": "2026-10-31T10:00:00Z"}',
        '{"event_id": "e_2", "contact_id": "c_1", "name": "x", "occurred_at": "2026-10-31T10:00:00Z", '
        '"is_syncing": "maybe"}',
        '{"event_id": "e_3"',
    ]
    write_jsonl(landing / "events" / "bad.jsonl", bad)
    report = ingest_events(con, landing)
    assert (report.rows_read, report.rows_loaded, report.rows_rejected) == (6, 0, 6)
    assert report.reject_share == 1.0
    rejected = dict(con.execute("select line, reason from raw.rejected_rows").fetchall())
    assert rejected[1].startswith("line is not valid JSON")
    assert rejected[2].startswith("line is a JSON list, not an object")
    assert rejected[3].startswith("occurred_at 'soon' is not an ISO 8601 timestamp")
    assert rejected[4] == 'event_id must be text, got {"nested":true}'
    assert rejected[5] == "is_syncing 'maybe' is not true or false"
    assert count(con, "select count(*) from raw.events") == 0
    assert count(con, "select count(*) from raw.loaded_files") == 1


def test_an_unreadable_file_is_one_rejection_and_does_not_stop_the_others(tmp_path, con):
    landing = tmp_path / "landing"
    (landing / "events").mkdir(parents=True)
    (landing / "events" / "broken.parquet").write_bytes(b"this is not parquet at all")
    write_jsonl(
        landing / "events" / "good.jsonl",
        [{"event_id": "e_1", "contact_id": "c_1", "name": "x", "occurred_at": "2026-10-31T10:00:00Z"}],
    )
    report = ingest_events(con, landing)
    assert (report.files_loaded, report.rows_loaded, report.rows_rejected) == (2, 1, 1)
    reason = one(con, "select reason from raw.rejected_rows")
    assert reason.startswith("the file could not be read")
    assert ingest_events(con, landing).files_skipped == 2  # not retried until it changes


@pytest.mark.parametrize("commit_every_rows", [1, 1_000_000])
def test_an_unreadable_file_between_good_ones_loses_none_of_them(tmp_path, con, monkeypatch, commit_every_rows):
    monkeypatch.setattr(ingest_module, "COMMIT_EVERY_ROWS", commit_every_rows)
    landing = tmp_path / "landing"
    for name, event_id in (("a.jsonl", "e_a"), ("c.jsonl", "e_c")):
        write_jsonl(
            landing / "events" / name,
            [{"event_id": event_id, "contact_id": "c_1", "name": "x", "occurred_at": "2026-10-31T10:00:00Z"}, "oops"],
        )
    (landing / "events" / "b.parquet").write_bytes(b"PAR1 but not really")
    report = ingest_events(con, landing)
    assert (report.files_loaded, report.rows_read, report.rows_loaded, report.rows_rejected) == (3, 5, 2, 3)
    assert sorted(r for (r,) in con.execute("select event_id from raw.events").fetchall()) == ["e_a", "e_c"]
    assert count(con, "select count(*) from raw.rejected_rows") == 3
    assert count(con, "select count(*) from raw.loaded_files") == 3


def test_a_missing_or_empty_landing_folder_still_creates_the_tables(tmp_path, con):
    report = ingest_events(con, tmp_path / "nowhere")
    assert (report.files_loaded, report.rows_read, report.reject_share) == (0, 0, 0.0)
    (tmp_path / "empty" / "contacts").mkdir(parents=True)
    (tmp_path / "empty" / "contacts" / "empty.jsonl").write_text("")
    assert ingest_contacts(con, tmp_path / "empty").files_loaded == 1
    rows = con.execute("select table_name from duckdb_tables() where schema_name = 'raw'").fetchall()
    tables = {name for (name,) in rows}
    assert tables == {"events", "contacts", "rejected_rows", "loaded_files"}
    ensure_raw_tables(con)  # idempotent


def test_unfinished_files_are_ignored(tmp_path, con):
    landing = tmp_path / "landing"
    record = {"event_id": "e_1", "contact_id": "c_1", "name": "x", "occurred_at": "2026-10-31T10:00:00Z"}
    write_jsonl(landing / "events" / ".uploading.jsonl", [record])
    write_jsonl(landing / "events" / "_tmp" / "part.jsonl", [record])
    write_jsonl(landing / "events" / "notes.txt", [record])
    assert ingest_events(con, landing).files_loaded == 0


# --- Dagster -------------------------------------------------------------------------------------


def materialize(warehouse: Path, landing: Path, max_reject_share: float = 0.05) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        INGEST_ASSETS,
        resources={
            "warehouse": Warehouse(path=str(warehouse)),
            "landing": LandingFiles(path=str(landing), max_reject_share=max_reject_share),
        },
    )


def materialization_metadata(result: dg.ExecuteInProcessResult, key: dg.AssetKey) -> dict:
    (event,) = [e for e in result.get_asset_materialization_events() if e.asset_key == key]
    return {name: value.value for name, value in event.materialization.metadata.items()}


def check_evaluation(result: dg.ExecuteInProcessResult, key: dg.AssetKey):
    (evaluation,) = [e for e in result.get_asset_check_evaluations() if e.asset_key == key]
    assert evaluation.check_name == REJECT_SHARE_CHECK
    return evaluation


def test_assets_materialize_with_metadata_and_a_passing_check(landing, sample, tmp_path):
    _, summary = sample
    warehouse = tmp_path / "warehouse.duckdb"
    result = materialize(warehouse, landing)
    assert result.success
    events = materialization_metadata(result, EVENTS_KEY)
    assert events["rows_loaded"] == summary.events == events["table_row_count"] == events["dagster/row_count"]
    assert events["rows_rejected"] == summary.bad_event_rows
    assert events["rows_duplicate"] == summary.duplicate_event_rows
    assert events["files_loaded"] == len(list((landing / "events").iterdir())) and events["files_skipped"] == 0
    assert "not_json" in events["top_reject_reasons"]
    # A glance at what landed and what was turned away, with the reason, in the UI.
    assert 0 < len(events["preview"].records) <= 5
    assert "event_id" in {column.name for column in events["preview"].schema.columns}
    rejected = events["rejected_preview"].records
    assert rejected and all(record.data["reason"] for record in rejected)
    contacts = materialization_metadata(result, CONTACTS_KEY)
    assert contacts["rows_loaded"] == summary.contacts == contacts["table_row_count"]
    for key in (EVENTS_KEY, CONTACTS_KEY):
        assert check_evaluation(result, key).passed

    again = materialize(warehouse, landing)
    events = materialization_metadata(again, EVENTS_KEY)
    assert (events["files_loaded"], events["rows_loaded"], events["table_row_count"]) == (0, 0, summary.events)


def test_reject_share_check_fails_above_the_limit(landing, tmp_path):
    result = materialize(tmp_path / "warehouse.duckdb", landing, max_reject_share=0.0001)
    assert result.success  # a failed check reports, it does not lose the good rows
    evaluation = check_evaluation(result, EVENTS_KEY)
    assert not evaluation.passed
    assert "rows read were rejected (limit 0.01%)" in evaluation.description
    assert "raw.rejected_rows" in evaluation.description
    assert evaluation.metadata["max_reject_share"].value == pytest.approx(0.0001)


def test_assets_create_empty_tables_without_landing_files(tmp_path):
    warehouse = tmp_path / "warehouse.duckdb"
    result = materialize(warehouse, tmp_path / "no-landing-yet")
    assert result.success
    assert materialization_metadata(result, EVENTS_KEY)["table_row_count"] == 0
    assert check_evaluation(result, CONTACTS_KEY).passed
    with duckdb.connect(str(warehouse), read_only=True) as connection:
        assert count(connection, "select count(*) from raw.contacts") == 0


def test_assets_are_declared_for_the_warehouse_pool():
    events, contacts = INGEST_ASSETS
    assert events.key == EVENTS_KEY and contacts.key == CONTACTS_KEY
    for asset in INGEST_ASSETS:
        assert asset.group_names_by_key[asset.key] == "ingest"
        assert {spec.name for spec in asset.check_specs} == {REJECT_SHARE_CHECK}
        assert asset.op.pool == "warehouse"
