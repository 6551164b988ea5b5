"""An incremental build gives the full refresh's answer: int_events_stitched and everything read from it.

Real components: sample landing files split into two loads, the real ingest into one DuckDB
file, and real `dbt build` subprocesses with the tick's own arguments and environment. Load 1
arrives a day's file at a time (as hourly ticks would bring it), load 2 at once. The
warehouse is built at T1 after load 1, incrementally at T2 after load 2, incrementally again
at an earlier T0 (a replay), back at TR and forward to T0 again (as a backtest goes), on to T3
three hours later, to T4 without the rebuild scope the per-contact models share (each works out
its own), then with --full-refresh at T2, T0, T3 and T4; a copy of the file is
kept after each build and every model of the staging, intermediate, segments and triggers
folders is compared row for row between the incremental and the full-refresh copies.

Load 2 carries what makes an incremental build of int_events_stitched hard: identifies that
link anonymous events of load 1 (some of them happened before T1 and arrive late), an earlier
identify of an already stitched device to another contact (its history moves), and a new
anonymous event of a device stitched in load 1. The per-contact models (PER_CONTACT_MODELS) rebuild at T2 only the contacts with something new, and everyone when the
clock moves back to T0. Planted contacts (WAKING) change between T0 and T3 only because time
passes: a browse goes quiet, a contact turns dormant, a purchase leaves its 30 days. The
first-per-key models (FIRST_PER_KEY_MODELS) read only the events since their last build: load 2
brings an earlier and a later report for addresses load 1 already suppressed (FIRST_REPORTS, LATE_REPORTS), and a bounce
that only the clock brings in, between T0 and T3.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import orjson
import pytest

from dagster_project.dbt_assets import DBT_BUILD_ARGS, dbt_environment
from dagster_project.ingest import ingest_contacts, ingest_events
from dagster_project.ledger import ensure_ledger
from dagster_project.sample_data import generate
from dagster_project.settings import PROJECT_ROOT
from tests.nudge_env import copy_project

PROJECT = PROJECT_ROOT / "dbt_project"
DBT = Path(sys.executable).parent / "dbt"

# Load 1 is the landing files of the days before SPLIT_DAY, loaded and built at T1; load 2 the
# rest, loaded and built at T2 (the sample's end). T0 is an hour between them, replayed last.
SPLIT_DAY = "2026-10-28"
T1 = datetime(2026, 10, 28, tzinfo=UTC)
T2 = datetime(2026, 11, 1, tzinfo=UTC)
T0 = datetime(2026, 10, 30, 12, tzinfo=UTC)
TR = datetime(2026, 10, 26, tzinfo=UTC)
# Three hours after T0, built incrementally straight after it: nothing new is loaded and no planted
# contact has an event in between, so only the time rules (wakes) can change their answers.
T3 = T0 + timedelta(hours=3)
# An hour after T3, built without the rebuild scope (int_contacts_to_rebuild and
# int_events_to_rebuild, still at T3): each per-contact model works out its own contacts.
T4 = T3 + timedelta(hours=1)

COMPARED_FOLDERS = ("staging", "intermediate", "segments", "triggers")
# An append-only record of what each tick saw: by design it differs from one rebuilt in a
# single run (compared below by the membership it ends at, not row for row).
HISTORY = "segment_membership_changes"
# What a build works out for the per-contact models to rebuild: by design empty on a full refresh.
REBUILD_SCOPE = {"int_contacts_to_rebuild", "int_events_to_rebuild"}
# How many load-1 identifies are held back to arrive late, in load 2.
LATE_IDENTIFIES = 4
NO_DATA_TESTS = ("--exclude-resource-type", "test")
RELINK_EVENT_ID = "e_inctest_relink"
ANONYMOUS_AFTER_EVENT_ID = "e_inctest_anonymous_after"
GUEST_CART_EVENT_ID = "e_inctest_guest_cart"


def plain(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(tzinfo=None)


def parse_time(text: object) -> datetime | None:
    try:
        moment = datetime.fromisoformat(str(text))
    except ValueError:
        return None
    return plain(moment) if moment.tzinfo else None



def _event(event_id: str, contact_id: str, name: str, at: datetime, **properties: object) -> dict:
    return {"event_id": event_id, "contact_id": contact_id, "name": name,
            "occurred_at": plain(at).isoformat() + "Z", "properties": properties}


# Contacts whose answer changes between T0 and T3 only because time passes: model -> (contact,
# whether they are in it at T3 rather than at T0). Each has these events and nothing else.
WAKE = T0 + timedelta(hours=1)  # inside (T0, T3]
WAKING = {
    "trg_browse_abandoned": ("c_inctest_browser", True),  # quiet 2 hours after the last view
    "trg_clicked_no_purchase": ("c_inctest_clicker", True),  # 72 hours after the click
    "seg_dormant": ("c_inctest_sleeper", True),  # 30 days after the last activity
    "trg_winback": ("c_inctest_sleeper", True),  # the same rule: the entry into seg_dormant qualifies
    "seg_recent_buyers": ("c_inctest_buyer", False),  # 30 days after the purchase
    "seg_power_users": ("c_inctest_athlete", False),  # 7 days after the first of three workouts
    "seg_free_plan_engaged": ("c_inctest_free", False),  # 14 days after the first of two workouts
    "trg_cart_abandoned": ("c_inctest_carter", True),  # an hour after the last add
}
WAKING_EVENTS = [
    _event("e_inctest_view_1", "c_inctest_browser", "product_viewed", WAKE - timedelta(hours=2, minutes=30),
           product_id="p_inctest"),
    _event("e_inctest_view_2", "c_inctest_browser", "product_viewed", WAKE - timedelta(hours=2), product_id="p_inctest"),
    _event("e_inctest_click", "c_inctest_clicker", "email_clicked", WAKE - timedelta(hours=72),
           automation="welcome", url="https://nudge.example/start"),
    _event("e_inctest_login", "c_inctest_sleeper", "logged_in", WAKE - timedelta(days=30)),
    _event("e_inctest_purchase", "c_inctest_buyer", "purchased", WAKE - timedelta(days=30), order_id="o_inctest",
           products=[]),
    *(_event(f"e_inctest_workout_{i}", "c_inctest_athlete", "workout_completed",
             WAKE - timedelta(days=7) + timedelta(minutes=10 * i), workout_type="run") for i in range(3)),
    *(_event(f"e_inctest_free_workout_{i}", "c_inctest_free", "workout_completed",
             WAKE - timedelta(days=14) + timedelta(minutes=10 * i), workout_type="run") for i in range(2)),
    _event("e_inctest_add", "c_inctest_carter", "added_to_cart", WAKE - timedelta(hours=1), product_id="p_inctest",
           category="equipment", price=9.5, quantity=1),
]
# Bounces and complaints for int_email_suppressions, whose rows are the first permanent failure of
# each address at or before the clock. Two addresses' first reports arrive in load 1; in load 2, an
# earlier complaint of the first (it must replace the row held) and a later one of the second (it
# must not: only the row held says it came later), and a hard bounce of a third address at WAKE,
# loaded at T2 (only the clock brings it, at T3).
BOUNCED = "bounced@example.com"
HELD = "held@example.com"
WAKING_BOUNCE = "waking-bounce@example.com"
FIRST_REPORTS = [
    _event("e_inctest_bounce_first", "c_inctest_bounced", "email_bounced", datetime(2026, 10, 26, 12, tzinfo=UTC),
           email=" Bounced@Example.com", type="hard", message_id="<first@nudge.example>"),
    _event("e_inctest_bounce_held", "c_inctest_bounced", "email_bounced", datetime(2026, 10, 26, 12, tzinfo=UTC),
           email=HELD, type="hard"),
]
LATE_REPORTS = [
    _event("e_inctest_complaint_earlier", "c_inctest_bounced", "email_complained", datetime(2026, 10, 26, 11, tzinfo=UTC),
           email=BOUNCED, message_id="<earlier@nudge.example>"),
    _event("e_inctest_complaint_later", "c_inctest_bounced", "email_complained", datetime(2026, 10, 29, tzinfo=UTC),
           email=HELD),
    _event("e_inctest_bounce_waking", "c_inctest_bounced", "email_bounced", WAKE, email=WAKING_BOUNCE, type="Hard"),
    _event("e_inctest_bounce_soft", "c_inctest_bounced", "email_bounced", datetime(2026, 10, 29, tzinfo=UTC),
           email="soft-bounce@example.com", type="soft"),
]
FREE_CONTACT = {
    "contact_id": "c_inctest_free", "email": "free@example.com", "status": "subscribed", "first_name": "Free",
    "last_name": "Plan", "timezone": "UTC", "properties": {"plan": "free"}, "updated_at": "2026-10-01T00:00:00Z",
}


# --- the two loads ---------------------------------------------------------------------------------


@dataclass
class Split:
    """The landing files of each load (path under the landing folder -> bytes) and the cases planted.

    Load 1 arrives a day at a time, each day's file at the end of its day (as hourly ticks
    would bring it); load 2 at once, at T2. An incremental build reads again the events of
    the last load before it (its loaded_at is the table's newest), so the cases below link
    events of the earlier days: only the relinking can bring those back."""

    load1: dict[str, bytes] = field(default_factory=dict)
    load2: dict[str, bytes] = field(default_factory=dict)
    # anonymous ids of load 1's earlier days whose identify in load 2 happened on or after the split day
    natural: set[str] = field(default_factory=set)
    # anonymous ids of load 1's earlier days whose identify (in load 1's days) is held back to load 2
    late: set[str] = field(default_factory=set)
    # (anonymous id, contact of its load-1 identify, contact of the earlier identify in load 2)
    relinked: tuple[str, str, str] | None = None
    # (anonymous id, contact) of a device stitched in load 1 that sends an anonymous event in load 2
    anonymous_after: tuple[str, str] | None = None
    # (contact id, its load-1 row, its newer row in load 2: another address and timezone)
    moved: tuple[str, dict, dict] | None = None


def _rows(lines: list[bytes]) -> list[dict | None]:
    parsed: list[dict | None] = []
    for line in lines:
        try:
            row = orjson.loads(line)
        except orjson.JSONDecodeError:
            row = None  # a bad row the generator planted: it goes with its file
        parsed.append(row if isinstance(row, dict) else None)
    return parsed


def split_sample(sample: Path) -> Split:
    split = Split()
    files = {path.name: path.read_bytes().splitlines(keepends=True) for path in sorted((sample / "events").iterdir())}
    rows = {name: _rows(lines) for name, lines in files.items()}
    early = [name for name in files if name.removeprefix("events-")[:10] < SPLIT_DAY]
    every_row = [row for name in files for row in rows[name] if row]
    id_count: dict[str, int] = {}
    for row in every_row:
        id_count[str(row.get("event_id"))] = id_count.get(str(row.get("event_id")), 0) + 1

    early_rows = [row for name in early for row in rows[name] if row]
    anonymous_early = {
        row["anonymous_id"] for name in early[:-1] for row in rows[name]
        if row and row.get("anonymous_id") and not row.get("contact_id")
    }
    identifies_early = sorted(
        (row for row in early_rows
         if row.get("name") == "identify" and row.get("anonymous_id") in anonymous_early
         and id_count[row["event_id"]] == 1 and parse_time(row.get("occurred_at"))),
        key=lambda row: row["event_id"],
    )
    held_back = identifies_early[:LATE_IDENTIFIES]
    split.late = {row["anonymous_id"] for row in held_back}
    held_ids = {row["event_id"] for row in held_back}

    # One device stitched in load 1 gets an identify to another contact, an hour before its
    # own, arriving in load 2: the earliest link wins, so its whole history moves.
    kept, other = identifies_early[LATE_IDENTIFIES], identifies_early[LATE_IDENTIFIES + 1]
    split.relinked = (kept["anonymous_id"], kept["contact_id"], other["contact_id"])
    relink = {
        "event_id": RELINK_EVENT_ID, "contact_id": other["contact_id"], "anonymous_id": kept["anonymous_id"],
        "name": "identify",
        "occurred_at": (parse_time(kept["occurred_at"]) - timedelta(hours=1)).isoformat() + "Z",
    }
    # Before its own identify, that device filled a cart as a guest: in load 1 it is the first
    # contact's cart; once load 2 moves the device, it is the earlier contact's, and the first
    # contact, with nothing new of their own, must lose it.
    guest_cart = {
        "event_id": GUEST_CART_EVENT_ID, "anonymous_id": kept["anonymous_id"], "name": "added_to_cart",
        "occurred_at": (parse_time(kept["occurred_at"]) - timedelta(minutes=30)).isoformat() + "Z",
        "properties": {"product_id": "p_inctest", "name": "Guest cart", "price": 20.0, "quantity": 1},
    }
    # Another device stitched in load 1 browses once more without logging in, after T1.
    browsing = identifies_early[LATE_IDENTIFIES + 2]
    split.anonymous_after = (browsing["anonymous_id"], browsing["contact_id"])
    anonymous_after = {
        "event_id": ANONYMOUS_AFTER_EVENT_ID, "anonymous_id": browsing["anonymous_id"], "name": "product_viewed",
        "occurred_at": "2026-10-29T10:00:00Z", "properties": {"product_id": "p_inctest"},
    }

    for name, lines in files.items():
        target = split.load1 if name in early else split.load2
        target[f"events/{name}"] = b"".join(
            line for line, row in zip(lines, rows[name], strict=True)
            if not (row and row.get("event_id") in held_ids)
        )
    (kept_file,) = [name for name in early if kept in rows[name]]
    split.load1[f"events/{kept_file}"] += b"".join(orjson.dumps(row) + b"\n" for row in [guest_cart, *FIRST_REPORTS])
    late_lines = [
        line for name in early for line, row in zip(files[name], rows[name], strict=True)
        if row and row.get("event_id") in held_ids
    ]
    late_lines += [orjson.dumps(relink) + b"\n", orjson.dumps(anonymous_after) + b"\n"]
    late_lines += [orjson.dumps(event) + b"\n" for event in [*WAKING_EVENTS, *LATE_REPORTS]]
    split.load2["events/late-arrivals.jsonl"] = b"".join(late_lines)

    late_rows = [row for name in files if name not in early for row in rows[name] if row]
    split.natural = {
        row["anonymous_id"] for row in late_rows if row.get("name") == "identify" and row.get("anonymous_id") in anonymous_early
    }

    # Contacts changed before T1 come with load 1, the others (later sign-ups, updates) with load 2.
    contacts = (sample / "contacts" / "contacts.jsonl").read_bytes().splitlines(keepends=True)
    first, later = [], []
    for line, row in zip(contacts, _rows(contacts), strict=True):
        updated = parse_time(row.get("updated_at")) if row else None
        (later if updated and updated >= plain(T1) else first).append(line)
    split.load1["contacts/contacts.jsonl"] = b"".join(first)
    # A contact of load 1 moves (a new address, another timezone, spelled loosely) in load 2; the
    # ingest trims the values, staging lowercases the address and spells the zone as the seed does.
    before = next(row for row in _rows(first) if row and row.get("email") and row.get("timezone") != "Asia/Tokyo")
    after = dict(before, email=" Moved.Contact@Example.com ", timezone=" asia/tokyo ", updated_at="2026-10-30T00:00:00Z")
    split.moved = (before["contact_id"], before, after)
    split.load2["contacts/contacts-later.jsonl"] = b"".join(
        [*later, orjson.dumps(FREE_CONTACT) + b"\n", orjson.dumps(after) + b"\n"]
    )
    return split


def batches(files: dict[str, bytes]) -> list[tuple[datetime, dict[str, bytes]]]:
    """Load 1 a day's file at a time, loaded at the end of its day; the contacts with the first."""
    daily = [
        (datetime.fromisoformat(name.removeprefix("events/events-")[:10]).replace(tzinfo=UTC) + timedelta(days=1),
         {name: files[name]})
        for name in sorted(name for name in files if name.startswith("events/"))
    ]
    daily[0][1].update({name: data for name, data in files.items() if not name.startswith("events/")})
    assert daily[-1][0] == T1
    return daily


def land(landing: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        path = landing / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


# --- the builds ------------------------------------------------------------------------------------


@dataclass
class Runs:
    split: Split
    compared: dict[str, tuple[str, str]]  # model name -> (schema, relation), from the manifest
    con: duckdb.DuckDBPyConnection  # in memory: one schema per kept copy, one table per model
    compiled: dict[str, dict[str, str]]  # kept copy -> incremental model -> the SQL it ran with

    def query(self, sql: str) -> list[tuple]:
        return self.con.execute(sql).fetchall()

    def count(self, copy: str, model: str) -> int:
        return self.query(f'select count(*) from {copy}."{model}"')[0][0]


def ingest(warehouse: Path, landing: Path, files: dict[str, bytes], loaded_at: datetime) -> None:
    land(landing, files)
    with duckdb.connect(str(warehouse)) as con:
        ensure_ledger(con)  # the reporting models read the send ledger
        reports = [load(con, landing, loaded_at=loaded_at) for load in (ingest_events, ingest_contacts)]
    assert sum(report.files_loaded for report in reports) == len(files), reports


def dbt_command(warehouse: Path, work: Path, as_of: datetime, *arguments: str,
                project: Path = PROJECT) -> subprocess.CompletedProcess:
    """dbt with `arguments`, as a tick runs it (NUDGE_AS_OF and NUDGE_WAREHOUSE)."""
    return subprocess.run(
        [
            str(DBT), *arguments,
            "--project-dir", str(project), "--profiles-dir", str(PROJECT),
            # one target folder for every build of this one warehouse path: dbt parses the project once
            "--target-path", str(work / "target"), "--log-path", str(work / "logs"),
        ],
        env={**os.environ, **dbt_environment(as_of, warehouse)},
        capture_output=True,
        text=True,
        check=False,
    )


def dbt_build(warehouse: Path, work: Path, as_of: datetime, *extra: str) -> dict:
    """One `dbt build` as a tick runs it (the tick's arguments); its run results."""
    result = dbt_command(warehouse, work, as_of, *DBT_BUILD_ARGS, *extra)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    return orjson.loads((work / "target" / "run_results.json").read_bytes())


def compared_models(work: Path) -> dict[str, tuple[str, str]]:
    manifest = orjson.loads((work / "target" / "manifest.json").read_bytes())
    return {
        node["name"]: (node["schema"], node["alias"])
        for node in manifest["nodes"].values()
        if node["resource_type"] == "model" and Path(node["original_file_path"]).parts[1] in COMPARED_FOLDERS
    }


def keep(con: duckdb.DuckDBPyConnection, warehouse: Path, copy: str, models: dict[str, tuple[str, str]]) -> None:
    """Every compared model's rows as they are now, into schema `copy` of the in-memory database."""
    # The views name their database, which dbt-duckdb takes from the file's name: attach it as that.
    con.execute(f"attach '{warehouse}' as warehouse (read_only)")
    try:
        con.execute(f"create schema memory.{copy}")
        for name, (schema, relation) in models.items():
            con.execute(f'create table memory.{copy}."{name}" as select * from warehouse."{schema}"."{relation}"')
    finally:
        con.execute("detach warehouse")


PER_CONTACT_MODELS = (
    "int_carts", "int_workout_days", "int_first_signups", "int_product_mentions", "int_purchases", "seg_dormant", "seg_power_users",
    "seg_free_plan_engaged", "seg_recent_buyers", "trg_upgrade_moment", "trg_workout_completed", "trg_browse_abandoned",
    "trg_clicked_no_purchase", "trg_first_login_nudge", "trg_cart_abandoned", "trg_welcome", "trg_post_purchase",
    "trg_winback",
)
FIRST_PER_KEY_MODELS = ("int_identity_map", "int_email_suppressions")
INCREMENTAL_MODELS = ("stg_contacts", "int_events_stitched", *PER_CONTACT_MODELS, *FIRST_PER_KEY_MODELS)


def incremental_sql(run_results: dict) -> dict[str, str]:
    """The SQL each incremental model ran with in one build."""
    nodes = {r["unique_id"]: r for r in run_results["results"]}
    compiled = {}
    for model in INCREMENTAL_MODELS:
        node = nodes[f"model.nudge.{model}"]
        assert node["status"] == "success"
        compiled[model] = node["compiled_code"]
    return compiled


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Iterator[Runs]:
    root = tmp_path_factory.mktemp("incremental")
    generate(root / "sample", contacts=400, seed=7, bad_rows=True)
    split = split_sample(root / "sample")
    landing, work = root / "landing", root / "dbt"
    warehouse = root / "warehouse" / "warehouse.duckdb"
    warehouse.parent.mkdir()
    con = duckdb.connect()
    compiled: dict[str, dict[str, str]] = {}

    def build(copy: str, as_of: datetime, *extra: str) -> None:
        compiled[copy] = incremental_sql(dbt_build(warehouse, work, as_of, *extra))
        keep(con, warehouse, copy, models)

    for loaded_at, files in batches(split.load1):
        ingest(warehouse, landing, files, loaded_at)
    # The data tests run with the incremental builds under comparison; elsewhere they would only cost time.
    compiled["incremental_t1"] = incremental_sql(dbt_build(warehouse, work, T1, *NO_DATA_TESTS))
    models = compared_models(work)
    keep(con, warehouse, "incremental_t1", models)

    ingest(warehouse, landing, split.load2, T2)
    build("incremental_t2", T2)
    build("incremental_t0", T0)
    # back before T1, then forward to T0 over events loaded long before, as a backtest's
    # hourly replays go: only the clock says which of them are new
    build("rewound", TR)
    build("replayed_t0", T0)
    build("incremental_t3", T3)
    build("alone_t4", T4, "--exclude", *REBUILD_SCOPE)
    # The same warehouse rebuilt from stg_events: same raw tables, same path (no second parse).
    build("full_t2", T2, "--full-refresh", *NO_DATA_TESTS)
    build("full_t0", T0, "--full-refresh", *NO_DATA_TESTS)
    build("full_t3", T3, "--full-refresh", *NO_DATA_TESTS)
    build("full_t4", T4, "--full-refresh", *NO_DATA_TESTS)
    yield Runs(split, models, con, compiled)
    con.close()


# --- the tests -------------------------------------------------------------------------------------


def test_the_second_load_links_history_of_the_first(runs):
    split = runs.split
    assert len(split.late) == LATE_IDENTIFIES
    assert split.natural  # the generator's own: a sign-up after the split on a device used before it
    assert split.relinked and split.anonymous_after
    relinked, first_contact, earlier_contact = split.relinked
    linked = split.late | split.natural | {relinked}

    # Anonymous events of those devices loaded before T1's load, which the incremental build at T2
    # does not read again by load time: after the build at T1 unstitched (or stitched to the
    # first contact), after the build at T2 stitched (to the earlier contact).
    def stitches(copy: str) -> dict[str, tuple[str, str | None]]:
        return {
            event_id: (anonymous_id, contact)
            for event_id, anonymous_id, contact in runs.query(
                f"select event_id, anonymous_id, stitched_contact_id from {copy}.int_events_stitched "
                f"where contact_id is null and loaded_at < '{plain(T1)}' and anonymous_id in "
                f"({', '.join(repr(anonymous_id) for anonymous_id in sorted(linked))})"
            )
        }

    before, after = stitches("incremental_t1"), stitches("incremental_t2")
    assert before.keys() == after.keys()
    assert {anonymous_id for anonymous_id, _ in before.values()} == linked
    assert {event_id: contact for event_id, (anonymous_id, contact) in before.items() if contact is not None} == {
        event_id: first_contact for event_id, (anonymous_id, _) in before.items() if anonymous_id == relinked
    }
    assert all(contact is not None for _, contact in after.values())
    assert {contact for anonymous_id, contact in after.values() if anonymous_id == relinked} == {earlier_contact}
    # the device's guest cart moves with it
    def guest_cart_holders(copy: str) -> list[str]:
        return [contact for (contact,) in runs.query(f"select contact_id from {copy}.int_carts where items like '%Guest cart%'")]

    assert guest_cart_holders("incremental_t1") == [first_contact]
    assert guest_cart_holders("incremental_t2") == [earlier_contact]
    # a new anonymous event of a device stitched before: stitched as it arrives
    assert runs.query(
        "select anonymous_id, stitched_contact_id, loaded_at from incremental_t2.int_events_stitched "
        f"where event_id = '{ANONYMOUS_AFTER_EVENT_ID}'"
    ) == [(*split.anonymous_after, plain(T2))]

    # the builds after the first ran int_events_stitched incrementally (only what was loaded after the
    # newest load it held, as a constant, and the relinked devices); the first and the full refreshes did not
    newest = {copy: runs.query(f"select max(loaded_at) from {copy}.int_events_stitched")[0][0] for copy in runs.compiled}
    incremental = {copy: "relinked as (" in sql["int_events_stitched"] for copy, sql in runs.compiled.items()}
    assert incremental == {"incremental_t1": False, "incremental_t2": True, "incremental_t0": True,
                            "rewound": True, "replayed_t0": True, "incremental_t3": True, "alone_t4": True,
                            "full_t2": False, "full_t0": False, "full_t3": False, "full_t4": False}
    # at T2 it read what came after load 1's newest instant, T1
    assert f"loaded_at > cast('{plain(T1)}" in runs.compiled["incremental_t2"]["int_events_stitched"]
    assert newest["incremental_t1"] == plain(T1) and newest["incremental_t2"] == plain(T2)


@pytest.mark.parametrize("model", PER_CONTACT_MODELS)
def test_per_contact_models_rebuild_only_the_contacts_with_news_when_the_clock_moves_on(runs, model):
    # T2 after T1, and T0 after TR, read only the contacts to rebuild; the first build, a clock
    # moved back (T0 after T2, TR after T0) and the full refreshes read everyone. All agree.
    # A build of the whole project reads the contacts worked out once for all the models; one
    # without them (at T4) works out its own.
    shared = {copy: "_to_rebuild" in sql[model] for copy, sql in runs.compiled.items()}
    # (nudge_contacts_changed_since, the contacts a model works out on its own, starts so)
    own = {copy: "select coalesce(contact_id, stitched_contact_id) as contact_id" in sql[model] and not shared[copy]
           for copy, sql in runs.compiled.items()}
    assert shared == {"incremental_t1": False, "incremental_t2": True, "incremental_t0": False,
                      "rewound": False, "replayed_t0": True, "incremental_t3": True, "alone_t4": False,
                      "full_t2": False, "full_t0": False, "full_t3": False, "full_t4": False}
    assert [copy for copy, reads_own in own.items() if reads_own] == ["alone_t4"]


@pytest.mark.parametrize("copy", ["incremental_t2", "incremental_t0", "replayed_t0", "incremental_t3", "alone_t4"])
def test_incremental_builds_give_the_full_refreshs_rows(runs, copy):
    assert {"stg_events", "int_events_stitched", "int_events", "seg_dormant", "trg_welcome"} <= runs.compared.keys()
    as_of = copy.rpartition("_")[2]
    differences = {}
    for model in sorted(runs.compared.keys() - {HISTORY} - REBUILD_SCOPE):
        incremental, full = f'{copy}."{model}"', f'full_{as_of}."{model}"'
        only_incremental = runs.query(f"select * from {incremental} except all select * from {full}")
        only_full = runs.query(f"select * from {full} except all select * from {incremental}")
        if only_incremental or only_full:
            differences[model] = {"incremental only": only_incremental[:3], "full refresh only": only_full[:3],
                                  "counts": (len(only_incremental), len(only_full))}
    assert not differences, f"{copy} and the full refresh at {as_of} differ: {differences}"


@pytest.mark.parametrize("model", sorted(WAKING))
def test_time_alone_changes_the_planted_contacts_between_t0_and_t3(runs, model):
    # What makes the comparison at T3 a test of the wakes: the full refreshes disagree on this
    # contact, though nothing of theirs was loaded or happened in between.
    contact, joins = WAKING[model]
    member = {copy: runs.query(f"select count(*) from {copy}.\"{model}\" where contact_id = '{contact}'")[0][0] > 0
              for copy in ("full_t0", "full_t3", "replayed_t0", "incremental_t3")}
    assert member == {"full_t0": not joins, "full_t3": joins, "replayed_t0": not joins, "incremental_t3": joins}


@pytest.mark.parametrize("model", sorted(WAKING))
def test_a_contact_only_time_brought_back_is_rebuilt_by_the_models_with_that_rule(runs, model):
    # At T3 nothing of the planted contact's happened since T0: only time rules bring it into the
    # rebuild scope, tagged with the rule. This model rebuilds it (its own rule); a model with no
    # rules (int_carts) rebuilds only the contacts every model shares.
    contact, _ = WAKING[model]
    wakes = {wake for (wake,) in runs.query(
        f"select wake from incremental_t3.int_contacts_to_rebuild where contact_id = '{contact}'"
    )}
    assert wakes and None not in wakes
    assert any(f"'{wake}'" in runs.compiled["incremental_t3"][model] for wake in wakes)
    carts = runs.compiled["incremental_t3"]["int_carts"]
    assert "(wake is null and (event_name is null or event_name in ('added_to_cart', 'purchased')))" in carts
    assert "wake in (" not in carts


def test_the_compared_models_are_populated(runs):
    triggers = [model for model in runs.compared if model.startswith("trg_")]
    assert len(triggers) >= 9
    # the sample plants rows due in every automation's window before its end, T2
    assert [model for model in triggers if runs.count("full_t2", model) == 0] == []
    assert sum(runs.count("full_t0", model) > 0 for model in triggers) >= len(triggers) // 2
    for model in ("seg_dormant", "seg_power_users", "segment_members", "int_carts", "int_first_signups"):
        assert runs.count("full_t2", model) > 0, model
    (raw_events,) = runs.query("select count(*) from full_t2.stg_events")[0]
    assert runs.count("incremental_t2", "int_events_stitched") == raw_events > 6000
    # the clock makes the replay a different answer: fewer events, and some stitched only after T0
    assert 0 < runs.count("full_t0", "int_events") < runs.count("full_t2", "int_events")
    (stitched_after_t0,) = runs.query(
        "select count(*) from incremental_t0.int_events_stitched "
        f"where contact_id is null and occurred_at <= '{plain(T0)}' and identified_at > '{plain(T0)}'"
    )[0]
    assert stitched_after_t0 > 0


def test_the_membership_history_ends_at_the_same_members(runs):
    # The incremental warehouse recorded T1 and T2 (the replay of T0 appends nothing); the full
    # refresh recorded T2 alone. Each contact's latest change must leave the same members.
    def members(copy: str) -> set[tuple]:
        return set(runs.query(
            f"select segment, contact_id from {copy}.{HISTORY} "
            "qualify row_number() over (partition by segment, contact_id "
            "order by recorded_as_of desc, changed_at desc) = 1 and change_type = 'entered'"
        ))

    current = set(runs.query("select segment, contact_id from full_t2.segment_members"))
    assert current and members("incremental_t2") == members("full_t2") == current
    assert members("incremental_t0") == members("incremental_t2")


@pytest.mark.parametrize("copy", ["incremental_t2", "incremental_t0", "full_t0"])
def test_int_events_is_the_clocked_identity_maps_answer(runs, copy):
    # What int_events was before int_events_stitched, from stg_events alone: each anonymous id
    # belongs to the contact of its earliest link made by as_of. A replay of an earlier hour
    # must not stitch with an identify that has not happened yet at that hour.
    as_of = T2 if copy.endswith("t2") else T0
    clock = f"timestamp '{plain(as_of)}'"
    expected = f"""
        with links as (
            select anonymous_id, contact_id,
                row_number() over (partition by anonymous_id order by occurred_at, event_id) as link_number
            from {copy}.stg_events
            where anonymous_id is not null and contact_id is not null and occurred_at <= {clock}
        ),
        identity_map as (select anonymous_id, contact_id from links where link_number = 1)
        select events.event_id, coalesce(events.contact_id, identity_map.contact_id) as contact_id,
            events.anonymous_id, events.event_name, events.occurred_at, events.properties, events.is_syncing
        from {copy}.stg_events as events
        left join identity_map on events.anonymous_id = identity_map.anonymous_id
        where coalesce(events.contact_id, identity_map.contact_id) is not null and events.occurred_at <= {clock}
    """
    actual = f"select * from {copy}.int_events"
    assert runs.query(f"({actual}) except all ({expected})") == []
    assert runs.query(f"({expected}) except all ({actual})") == []
    assert runs.count(copy, "int_events") > 5000


def test_first_per_key_models_read_only_the_events_since_their_last_build(runs):
    # int_identity_map does not depend on the clock: a clock moved back reads only the new events
    # too. int_email_suppressions does: it reads everything again then (and on a first build and
    # a full refresh), and otherwise the events loaded, or reached by the clock, since.
    def reads_since(model: str) -> dict[str, bool]:
        return {copy: "loaded_at > " in sql[model] for copy, sql in runs.compiled.items()}

    incremental = {"incremental_t1": False, "incremental_t2": True, "incremental_t0": True, "rewound": True,
                   "replayed_t0": True, "incremental_t3": True, "alone_t4": True,
                   "full_t2": False, "full_t0": False, "full_t3": False, "full_t4": False}
    assert reads_since("int_identity_map") == incremental
    assert reads_since("int_email_suppressions") == {**incremental, "incremental_t0": False, "rewound": False}
    assert "occurred_at > cast(" in runs.compiled["incremental_t3"]["int_email_suppressions"]


def test_email_suppressions_keep_each_addresss_first_failure_by_the_clock(runs):
    def suppressed(copy: str) -> dict[str, tuple[str, str]]:
        rows = runs.query(f"select email, reason, event_id from {copy}.int_email_suppressions where email like '%@example.com'")
        return {email: (reason, event_id) for email, reason, event_id in rows}

    held = {HELD: ("hard_bounce", "e_inctest_bounce_held")}
    first = {BOUNCED: ("hard_bounce", "e_inctest_bounce_first"), **held}
    earlier = {BOUNCED: ("complaint", "e_inctest_complaint_earlier"), **held}
    waking = {WAKING_BOUNCE: ("hard_bounce", "e_inctest_bounce_waking")}
    assert {copy: suppressed(copy) for copy in runs.compiled} == {
        "incremental_t1": first,
        "incremental_t2": {**earlier, **waking},  # the earlier complaint replaced the row held; the later one did not
        "incremental_t0": earlier,  # the clock moved back before the waking bounce
        "rewound": {},
        "replayed_t0": earlier,
        "incremental_t3": {**earlier, **waking},  # loaded long before, brought by the clock alone
        "alone_t4": {**earlier, **waking},
        "full_t2": {**earlier, **waking}, "full_t0": earlier, "full_t3": {**earlier, **waking}, "full_t4": {**earlier, **waking},
    }


def test_stg_contacts_reads_only_the_contacts_loaded_since_its_last_build(runs):
    # A table kept up to date: every build but the first and the full refreshes reads the contacts
    # loaded after the newest it holds (at T2, load 2's), and a contact loaded again replaces its row.
    reads_since = {copy: "where source.loaded_at > (" in sql["stg_contacts"] for copy, sql in runs.compiled.items()}
    assert reads_since == {"incremental_t1": False, "incremental_t2": True, "incremental_t0": True, "rewound": True,
                           "replayed_t0": True, "incremental_t3": True, "alone_t4": True,
                           "full_t2": False, "full_t0": False, "full_t3": False, "full_t4": False}
    contact_id, before, _ = runs.split.moved

    def row(copy: str) -> list[tuple]:
        return runs.query(f"select email, timezone, timezone_raw from {copy}.stg_contacts where contact_id = '{contact_id}'")

    assert row("incremental_t1") == [(before["email"].strip().lower(), before["timezone"], before["timezone"])]
    assert row("incremental_t2") == row("full_t2") == [("moved.contact@example.com", "Asia/Tokyo", "asia/tokyo")]


def test_stg_contacts_follows_an_edited_timezone_seed(tmp_path):
    # The seed changes what a timezone as given becomes; no contact is loaded again. An incremental
    # build rebuilds the contacts whose zone it now spells differently, and gives a full refresh's rows.
    generate(tmp_path / "sample", contacts=200, seed=11)
    warehouse = tmp_path / "warehouse.duckdb"
    ingest(warehouse, tmp_path / "landing", {
        f"contacts/{path.name}": path.read_bytes() for path in (tmp_path / "sample" / "contacts").iterdir()
    }, T1)
    only_contacts = ("--select", "stg_contacts", *NO_DATA_TESTS)
    dbt_build(warehouse, tmp_path / "dbt", T1, "--select", "iana_timezones", "stg_contacts", *NO_DATA_TESTS)

    def zones() -> dict[str, int]:
        with duckdb.connect(str(warehouse), read_only=True) as con:
            return dict(con.execute("select timezone, count(*) from staging.stg_contacts group by timezone").fetchall())

    before = zones()
    assert before.get("Asia/Tokyo", 0) > 0 and before.get("Europe/London", 0) > 0
    with duckdb.connect(str(warehouse)) as con:
        con.execute("update seeds.iana_timezones set timezone_name = 'ASIA/TOKYO' where timezone_name = 'Asia/Tokyo'")
        con.execute("delete from seeds.iana_timezones where timezone_name = 'Europe/London'")
    results = dbt_build(warehouse, tmp_path / "dbt", T1, *only_contacts)
    (compiled,) = [result["compiled_code"] for result in results["results"] if result["unique_id"] == "model.nudge.stg_contacts"]
    assert "respelled_timezones" in compiled
    incremental = zones()
    assert incremental["ASIA/TOKYO"] == before["Asia/Tokyo"]
    assert "Europe/London" not in incremental and incremental["UTC"] == before.get("UTC", 0) + before["Europe/London"]

    with duckdb.connect(str(warehouse)) as con:
        kept = con.execute("select * from staging.stg_contacts order by contact_id").fetchall()
    dbt_build(warehouse, tmp_path / "dbt", T1, *only_contacts, "--full-refresh")
    with duckdb.connect(str(warehouse)) as con:
        assert con.execute("select * from staging.stg_contacts order by contact_id").fetchall() == kept


def test_a_model_rebuilds_only_the_contacts_with_new_events_of_the_names_it_reads(tmp_path):
    # Rows of three contacts in int_carts (adds and purchases) and int_workout_days (workouts) are
    # spoiled after a build, so a later build shows which contacts each model rebuilt. Then one
    # contact logs in, one adds to their cart, and one's contact row is loaded again: only the
    # models reading the new event's name rebuild its contact, and every model the reloaded one.
    generate(tmp_path / "sample", contacts=300, seed=13)
    warehouse, work, landing = tmp_path / "warehouse.duckdb", tmp_path / "dbt", tmp_path / "landing"
    sample = {f"{folder}/{path.name}": path.read_bytes()
              for folder in ("events", "contacts") for path in (tmp_path / "sample" / folder).iterdir()}
    ingest(warehouse, landing, sample, T2)
    models = ("--select", "+int_carts", "+int_workout_days", "+seg_dormant", *NO_DATA_TESTS)
    dbt_build(warehouse, work, T2, *models)

    with duckdb.connect(str(warehouse)) as con:
        (logged_in, added, reloaded) = [contact for (contact,) in con.execute(
            "select contact_id from intermediate.int_carts intersect "
            "select contact_id from intermediate.int_workout_days order by contact_id limit 3"
        ).fetchall()]
        contact_row = orjson.loads(next(
            line for line in sample["contacts/contacts.jsonl"].splitlines() if f'"{reloaded}"' in line.decode()
        ))
        for contact in (logged_in, added, reloaded):
            con.execute("update intermediate.int_carts set item_count = -1 where contact_id = ?", [contact])
            con.execute("update intermediate.int_workout_days set workout_count = -1 where contact_id = ?", [contact])
        # a login makes no one dormant: seg_dormant, which reads logins, drops this row if it rebuilds them
        con.execute("insert into segments.seg_dormant values (?, ?, ?, 'logged_in')", [logged_in, plain(T1), plain(T1)])

    before = plain(T2) - timedelta(minutes=5)
    hour = T2 + timedelta(hours=1)
    ingest(warehouse, landing, {
        "events/next-hour.jsonl": b"".join(orjson.dumps(event) + b"\n" for event in [
            _event("e_names_login", logged_in, "logged_in", before),
            _event("e_names_add", added, "added_to_cart", before, product_id="p_names", price=5.0, quantity=1),
        ]),
        "contacts/reloaded.jsonl": orjson.dumps(dict(contact_row, updated_at=plain(T2).isoformat() + "Z")) + b"\n",
    }, hour)
    dbt_build(warehouse, work, hour, *models)

    def spoiled(model: str) -> set[str]:
        with duckdb.connect(str(warehouse), read_only=True) as con:
            column = "item_count" if model == "int_carts" else "workout_count"
            return {contact for (contact,) in con.execute(
                f"select distinct contact_id from intermediate.{model} where {column} = -1").fetchall()}

    assert spoiled("int_carts") == {logged_in}  # the add and the contact row rebuilt the others
    assert spoiled("int_workout_days") == {logged_in, added}
    with duckdb.connect(str(warehouse), read_only=True) as con:
        assert con.execute("select count(*) from segments.seg_dormant where contact_id = ?", [logged_in]).fetchall() == [(0,)]
        scope = set(con.execute("select contact_id, wake, event_name from intermediate.int_contacts_to_rebuild").fetchall())
    assert {(logged_in, None, "logged_in"), (added, None, "added_to_cart"), (reloaded, None, None)} <= scope


def dbt_with_names_left_out(tmp_path: Path, trigger: str, declared: str, kept: str, *arguments: str) -> str:
    """The output of dbt failing on a copy of the project where `trigger` declares `kept`, not `declared`."""
    project, _ = copy_project(tmp_path)
    model = project / "models" / "triggers" / f"{trigger}.sql"
    assert f"events={declared}" in model.read_text()
    model.write_text(model.read_text().replace(f"events={declared}", f"events={kept}"))
    result = dbt_command(tmp_path / "warehouse.duckdb", tmp_path / "dbt", T2, *arguments, project=project)
    assert result.returncode != 0
    return result.stdout


def test_a_model_must_declare_what_the_per_contact_model_it_reads_declares(tmp_path):
    # trg_cart_abandoned reads int_carts' rows of the contacts to rebuild: without purchases among its
    # names it would miss the carts a purchase closes. The build fails, naming what to add.
    output = dbt_with_names_left_out(tmp_path, "trg_cart_abandoned", "['added_to_cart', 'purchased']",
                                     "['added_to_cart']", "compile", "--select", "trg_cart_abandoned")
    assert "trg_cart_abandoned reads the rows of int_carts for the contacts to rebuild" in output
    assert "add the event names purchased to its events" in output


def test_a_time_rule_on_an_event_the_model_does_not_read_fails_the_parse(tmp_path):
    # trg_browse_abandoned wakes 2 hours after a view: without views among its names it would never
    # see the view its rule is about.
    output = dbt_with_names_left_out(tmp_path, "trg_browse_abandoned", "['product_viewed', 'added_to_cart']",
                                     "['added_to_cart']", "parse")
    assert "trg_browse_abandoned: a time rule on product_viewed, an event it does not read: add it to events" in output
