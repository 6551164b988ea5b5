"""A per-contact model's data tests look at the rows its build rewrote only when the rest are known clean.

Real components: the sample's landing files ingested into a DuckDB file, real `dbt build`
subprocesses with the tick's arguments, and each build recorded as the tick's dbt step records
it (nudge.model_builds, with dbt's invocation id and the tests that passed). The builds select
trg_workout_completed and what it reads; the test watched is `unique` on
int_workout_days.first_live_event_id, a key another contact's row could hold.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import orjson
import pytest

from dagster_project.builds import model_outcomes, passed_test_counts, record_builds
from dagster_project.dbt_assets import DBT_BUILD_ARGS
from dagster_project.sample_data import generate
from tests.integration.test_incremental_models import T2, _event, dbt_command, ingest, plain

SELECTION = ("--select", "+trg_workout_completed")
WATCHED = "test.nudge.unique_int_workout_days_first_live_event_id"
MODEL = "model.nudge.int_workout_days"
SCOPED_TO_REBUILT_ROWS = "nudge_contacts_rebuilt"


class Warehouse:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / "warehouse.duckdb"
        self.work = root / "dbt"
        self.landing = root / "landing"

    def build(self, as_of: datetime, *, recorded: bool = True) -> dict[str, tuple[str, bool]]:
        """One `dbt build` as a tick runs it, recorded as the tick records it (unless
        `recorded` is false: a build by hand); each test's status and whether it looked only
        at the rebuilt rows."""
        result = dbt_command(self.path, self.work, as_of, *DBT_BUILD_ARGS, *SELECTION)
        run_results = orjson.loads((self.work / "target" / "run_results.json").read_bytes())
        assert run_results["results"], result.stdout[-4000:]
        if recorded:
            manifest = json.loads((self.work / "target" / "manifest.json").read_text())
            with duckdb.connect(str(self.path)) as con:
                record_builds(con, model_outcomes(run_results, manifest), as_of=plain(as_of), now=plain(as_of),
                              invocation_id=run_results["metadata"]["invocation_id"],
                              passed=passed_test_counts(run_results, manifest))
        # test.nudge.<name>.<hash>: by name
        return {
            ".".join(r["unique_id"].split(".")[:3]): (r["status"], SCOPED_TO_REBUILT_ROWS in (r.get("compiled_code") or ""))
            for r in run_results["results"] if r["unique_id"].startswith("test.")
        }

    def execute(self, sql: str, parameters: list | None = None) -> list[tuple]:
        with duckdb.connect(str(self.path)) as con:
            return con.execute(sql, parameters or []).fetchall()

    def land_workout(self, event_id: str, contact: str, at: datetime, loaded_at: datetime) -> None:
        ingest(self.path, self.landing, {
            f"events/{event_id}.jsonl": orjson.dumps(_event(event_id, contact, "workout_completed", at)) + b"\n",
        }, loaded_at)


@pytest.fixture(scope="module")
def first_build(tmp_path_factory) -> Warehouse:
    root = tmp_path_factory.mktemp("first_build")
    generate(root / "sample", contacts=300, seed=13)
    built = Warehouse(root)
    sample = {f"{folder}/{path.name}": path.read_bytes()
              for folder in ("events", "contacts") for path in (root / "sample" / folder).iterdir()}
    ingest(built.path, built.landing, sample, T2)
    first = built.build(T2)
    assert first[WATCHED] == ("pass", False)  # the first build rebuilds everyone: every row
    return built


@pytest.fixture
def warehouse(first_build, tmp_path) -> Warehouse:
    """A copy of the first build's warehouse and dbt target folder (files land in a folder of its own)."""
    for part in ("warehouse.duckdb", "dbt"):
        source = first_build.root / part
        (shutil.copytree if source.is_dir() else shutil.copy)(source, tmp_path / part)
    return Warehouse(tmp_path)


def two_workout_contacts(warehouse: Warehouse) -> tuple[str, str]:
    rows = warehouse.execute(
        "select distinct contact_id from intermediate.int_workout_days order by contact_id limit 2")
    return rows[0][0], rows[1][0]


def plant_a_day(warehouse: Warehouse, contact: str, first_live_event_id: str) -> None:
    """A copy of one of `contact`'s workout days, a year earlier, under `first_live_event_id`."""
    warehouse.execute(
        "insert into intermediate.int_workout_days select * replace ("
        " workout_date - interval 365 day as workout_date, ? as first_live_event_id)"
        " from intermediate.int_workout_days where contact_id = ? order by workout_date limit 1",
        [first_live_event_id, contact])


def test_a_key_a_rebuilt_row_shares_with_anothers_row_fails_and_stays_failed_until_mended(warehouse):
    trainer, other = two_workout_contacts(warehouse)
    hour = T2 + timedelta(hours=1)
    assert warehouse.build(hour)[WATCHED] == ("pass", True)  # nothing amiss; only the rebuilt rows

    # `other` holds a day under the id of the workout `trainer` is about to log: the rebuilt row of
    # trainer's repeats a key of a row that no build touches.
    plant_a_day(warehouse, other, "e_rebuilt_twice")
    warehouse.land_workout("e_rebuilt_twice", trainer, hour + timedelta(minutes=30), loaded_at=hour + timedelta(minutes=45))
    assert warehouse.build(hour + timedelta(hours=1))[WATCHED] == ("fail", True)

    # Nothing new for either contact: the failure is remembered, so every row is looked at again.
    assert warehouse.build(hour + timedelta(hours=2))[WATCHED] == ("fail", False)
    warehouse.execute("delete from intermediate.int_workout_days where contact_id = ? and first_live_event_id = 'e_rebuilt_twice'",
                      [other])
    assert warehouse.build(hour + timedelta(hours=3))[WATCHED] == ("pass", False)
    assert warehouse.build(hour + timedelta(hours=4))[WATCHED] == ("pass", True)


def test_a_row_changed_outside_any_build_is_found_within_a_day(warehouse):
    _, other = two_workout_contacts(warehouse)
    plant_a_day(warehouse, other, "e_by_hand")
    plant_a_day(warehouse, other, "e_by_hand")
    hours = {hours: warehouse.build(T2 + timedelta(hours=hours))[WATCHED] for hours in (1, 2, 23)}
    # no build rewrote `other`: the duplicate is not among the rows looked at
    assert hours == {1: ("pass", True), 2: ("pass", True), 23: ("pass", True)}
    # 24 hours after the first build looked at every row
    assert warehouse.build(T2 + timedelta(hours=24))[WATCHED] == ("fail", False)


def test_after_a_build_the_tick_did_not_record_every_row_is_looked_at(warehouse):
    hour = T2 + timedelta(hours=1)
    warehouse.build(hour, recorded=False)  # dbt by hand: its tests' outcome is not known to the next build
    assert warehouse.build(hour + timedelta(hours=1))[WATCHED] == ("pass", False)
    assert warehouse.build(hour + timedelta(hours=2))[WATCHED] == ("pass", True)


def test_an_hour_on_only_the_per_contact_models_unique_tests_narrow_and_a_clock_moved_back_widens_them(warehouse):
    hour = warehouse.build(T2 + timedelta(hours=1))
    narrowed = {test for test, (_, only_rebuilt) in hour.items() if only_rebuilt}
    # the two unique tests on int_workout_days and the one on trg_workout_completed; not stg_contacts'
    assert narrowed == {
        WATCHED,
        "test.nudge.unique_combination_of_columns_int_workout_days_contact_id__workout_date",
        "test.nudge.unique_trg_workout_completed_trigger_key",
    }
    assert "test.nudge.unique_stg_contacts_contact_id" in hour
    # a replay of an earlier hour rebuilds everyone
    assert warehouse.build(T2 - timedelta(hours=5))[WATCHED] == ("pass", False)
