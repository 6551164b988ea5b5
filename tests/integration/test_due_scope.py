"""A send looks for due rows only among the trigger rows that can hold one, and finds the rows it would over every row.

Real ticks through the Definitions the schedule runs, on the sample app: every time a send
narrows what it reads (due_scope.py), the due rows are worked out over every trigger row as
well, in the same transaction, and the two are compared. Between the ticks a late event lands
(a workout three hours old, whose email is due before the last send's clock: only the rows its
contact's rebuild rewrote bring it), a send's record is taken away (as a send stopped by the
circuit breaker leaves it), the clock passes a day and moves back.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import duckdb
import orjson
import pytest

import dagster_project.send as send_module
from dagster_project.due_scope import SEND_PROGRESS_TABLE, DueScope, due_scope
from dagster_project.sample_data import DEFAULT_END, generate
from tests.nudge_env import make_env

pytestmark = pytest.mark.e2e

FIRST = DEFAULT_END.replace(tzinfo=None) - timedelta(hours=6)
LATE_WORKOUT = "e_due_scope_late_workout"
SIGNUP = "e_due_scope_signup"


class Watched:
    """What each send read: automation -> (narrowed or not, due rows, due rows over every row)."""

    def __init__(self) -> None:
        self.sends: dict[str, tuple[bool, list[tuple], list[tuple]]] = {}

    def __call__(self, con, automation, params, scope: DueScope) -> None:
        def due(of: DueScope) -> list[tuple]:
            WRITE_DUE(con, automation, params, of)
            return con.execute(f"select * from {send_module._DUE} order by trigger_key").fetchall()

        everything = due(DueScope.all_of_it(scope.every_row_as_of, scope.trigger_build))
        narrowed = everything if scope.every_row else due(scope)
        self.sends[automation.name] = (not scope.every_row, narrowed, everything)


WRITE_DUE = send_module._write_due


@pytest.fixture(scope="module")
def env(tmp_path_factory, dbt_manifest):
    env = make_env(tmp_path_factory.mktemp("due_scope"))
    generate(env.settings.landing_dir, contacts=300, seed=17)
    return env


def tick(env, as_of) -> dict[str, tuple[bool, list[tuple], list[tuple]]]:
    watched = Watched()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(send_module, "_write_due", watched)
        result = env.tick(as_of)
    assert result.success, result.failures
    return watched.sends


def narrowed(sends) -> set[str]:
    return {automation for automation, (narrow, _, _) in sends.items() if narrow}


def assert_same_rows(sends) -> None:
    for automation, (_, rows, every_row) in sends.items():
        assert rows == every_row, automation


@pytest.fixture(scope="module")
def history(env):
    """automation -> what each tick's send read, by tick."""
    ticks = {"first": tick(env, FIRST)}
    ticks["hour_on"] = tick(env, FIRST + timedelta(hours=1))

    # A new contact's workout of two hours before the last send's clock, both landing now.
    landing = Path(env.settings.landing_dir)
    contact = {"contact_id": "c_due_scope_late", "email": "late@example.com", "status": "subscribed",
               "first_name": "Late", "last_name": "Comer", "timezone": "UTC", "properties": {"plan": "free"},
               "updated_at": (FIRST - timedelta(days=1)).isoformat() + "Z"}
    workout = {"event_id": LATE_WORKOUT, "contact_id": contact["contact_id"], "name": "workout_completed",
               "occurred_at": (FIRST - timedelta(hours=2)).isoformat() + "Z", "properties": {}}
    # And a signup whose login nudge (24 hours on) comes due half an hour after this tick, with
    # nothing new for its contact by then: only its due_at brings it to the next send.
    newcomer = dict(contact, contact_id="c_due_scope_newcomer", email="newcomer@example.com")
    signup = {"event_id": SIGNUP, "contact_id": newcomer["contact_id"], "name": "signed_up",
              "occurred_at": (FIRST + timedelta(hours=2, minutes=30) - timedelta(days=1)).isoformat() + "Z",
              "properties": {}}
    (landing / "contacts" / "late.jsonl").write_bytes(orjson.dumps(contact) + b"\n" + orjson.dumps(newcomer) + b"\n")
    (landing / "events" / "late.jsonl").write_bytes(orjson.dumps(workout) + b"\n" + orjson.dumps(signup) + b"\n")
    ticks["late_event"] = tick(env, FIRST + timedelta(hours=2))

    with duckdb.connect(str(env.settings.warehouse)) as con:
        con.execute(f"delete from {SEND_PROGRESS_TABLE} where automation = 'welcome'")
    ticks["welcome_unfinished"] = tick(env, FIRST + timedelta(hours=3))
    ticks["a_day_on"] = tick(env, FIRST + timedelta(hours=24))
    ticks["clock_back"] = tick(env, FIRST + timedelta(hours=23))
    return ticks


def test_every_send_finds_the_due_rows_it_would_over_every_row(history):
    for sends in history.values():
        assert_same_rows(sends)


def test_sends_after_one_that_finished_read_only_what_can_be_due(history, env):
    every = set(env.categories())
    assert narrowed(history["first"]) == set()  # nothing before it
    assert narrowed(history["hour_on"]) == every
    assert narrowed(history["late_event"]) == every


def test_a_late_event_is_found_among_the_rows_its_contacts_rebuild_rewrote(history, env):
    narrow, rows, _ = history["late_event"]["workout_completed"]
    assert narrow and LATE_WORKOUT in {row[1] for row in rows}
    # decided by that send (sent, or held for quiet hours): never left behind
    assert env.query("select automation from nudge.messages where trigger_key = ?", [LATE_WORKOUT]) == [
        ("workout_completed",)]


def test_a_row_that_came_due_since_the_last_send_is_found_by_its_due_at(history, env):
    def login_nudges(tick: str) -> list[tuple]:
        narrow, rows, _ = history[tick]["first_login_nudge"]
        assert narrow
        return [row for row in rows if row[0] == "c_due_scope_newcomer"]

    assert login_nudges("late_event") == []  # written by that build, due half an hour later
    assert len(login_nudges("welcome_unfinished")) == 1
    assert env.query("select count(*) from nudge.messages where automation = 'first_login_nudge'"
                     " and contact_id = 'c_due_scope_newcomer'") == [(1,)]


def test_a_send_that_did_not_finish_makes_the_next_one_read_every_row(history, env):
    assert narrowed(history["welcome_unfinished"]) == set(env.categories()) - {"welcome"}


def test_every_row_is_read_a_day_on_and_when_the_clock_moves_back(history):
    # welcome's send read every row 21 hours ago
    assert narrowed(history["a_day_on"]) == {"welcome"}
    assert narrowed(history["clock_back"]) == set()


def test_a_trigger_table_no_build_records_is_read_whole(tmp_path):
    # A trigger model that is not per-contact (a plain table, rebuilt every tick) has no record of
    # what its build rewrote.
    from dagster_project.automations import Automation

    automation = Automation(
        name="plain", model_unique_id="model.nudge.trg_plain", model_name="trg_plain", relation='"triggers"."trg_plain"',
        template="plain", category="transactional", sender=None, delay=timedelta(0), send_window=timedelta(hours=48),
        reentry="once", holdout_percent=0.0, conversion_event=None, conversion_window=None,
    )
    with duckdb.connect(str(tmp_path / "warehouse.duckdb")) as con:
        con.execute("create schema triggers")
        con.execute("create table triggers.trg_plain (contact_id varchar, trigger_key varchar, due_at timestamp)")
        assert due_scope(con, automation, FIRST).every_row
