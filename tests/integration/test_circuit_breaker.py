"""The circuit breaker through the real send step (the Dagster multi-asset) on a DuckDB file.

Hourly ticks of one automation with a steady trickle build its history; then a surge trips
it (nothing claimed, the check fails and says why, the run still succeeds), a release from
the command line lets the next tick send, stale events trip it, a run tag releases it.
No dbt here: the trigger table is written by hand and each tick is recorded as built, as
the dbt step would.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta

import dagster as dg
import duckdb
import pytest
from typer.testing import CliRunner

from dagster_project.automations import Policy, automation_from_node
from dagster_project.breaker import CHECK_NAME, RELEASE_TAG, BreakerPolicy
from dagster_project.builds import record_builds
from dagster_project.cli import app
from dagster_project.clock import as_of_tags
from dagster_project.resources import EmailBackendResource, SendSettings
from dagster_project.send_assets import SendTarget, build_send_assets
from dagster_project.settings import PROJECT_ROOT
from dagster_project.warehouse import Warehouse

START = datetime(2026, 11, 1, 9)
NORMAL = 4  # newly due per normal tick
SURGE = 60  # over 5 x 4 and over the floor of 20
BREAKER = BreakerPolicy(surge_multiple=5, surge_floor=20, trailing_ticks=24, min_history=3,
                        max_event_age=timedelta(hours=6))
AUTOMATION = automation_from_node(
    {"unique_id": "model.nudge.trg_welcome", "resource_type": "model", "name": "trg_welcome", "schema": "triggers",
     "config": {"meta": {"nudge": {"send_window": "48h", "reentry": "once"}}}}
)
SEND_KEY = dg.AssetKey("send_welcome")


class Installation:
    def __init__(self, root):
        self.root = root
        self.warehouse = root / "warehouse.duckdb"
        self.next_contact = 0
        self.instance = dg.DagsterInstance.ephemeral()
        self.send = build_send_assets(
            [SendTarget(AUTOMATION, trigger_key=dg.AssetKey("trg_welcome"), contacts_key=dg.AssetKey("stg_contacts"),
                        events_key=dg.AssetKey("int_events"))],
            contacts_relation="staging.stg_contacts",
            events_relation="intermediate.int_events",
            policy=Policy(cap_per_day=None, cap_per_week=None, breaker=BREAKER),
        )
        with self.connect() as con:
            con.execute(
                """
                create schema triggers; create schema staging; create schema intermediate; create schema raw;
                create table staging.stg_contacts as
                    select 'c_' || i as contact_id, 'person' || i || '@example.com' as email, 'subscribed' as status,
                           'Person' as first_name, 'No' || i as last_name, 'UTC' as timezone, '{}' as properties,
                           timestamp '2026-10-01' as updated_at
                    from range(1000) t(i);
                create table triggers.trg_welcome (contact_id varchar, trigger_key varchar, qualified_at timestamp,
                                                   due_at timestamp, context varchar);
                create table intermediate.int_events (contact_id varchar, event_name varchar,
                                                      occurred_at timestamp, is_syncing boolean);
                create table raw.events (event_id varchar, loaded_at timestamp);
                """
            )

    def connect(self):
        return duckdb.connect(str(self.warehouse))

    def qualify(self, count: int, as_of: datetime, loaded: datetime | None = None) -> None:
        """`count` new welcome qualifications due half an hour before `as_of`, built for `as_of`."""
        first, self.next_contact = self.next_contact, self.next_contact + count
        due = as_of - timedelta(minutes=30)
        with self.connect() as con:
            con.execute(
                "insert into triggers.trg_welcome select 'c_' || i, 'c_' || i, ?, ?, '{}' from range(?, ?) t(i)",
                [due, due, first, first + count],
            )
            # the events behind them, loaded by this tick's ingestion (or long ago: stale)
            con.execute("insert into raw.events values (?, ?)", [f"e_{as_of:%d%H}", loaded or as_of])
        self.built(as_of)

    def not_newly_due(self, as_of: datetime) -> None:
        """Two due rows the breaker does not count: one past its send window (stale), one already in
        the ledger as a temporary failure to retry (counted the tick it came due)."""
        due = as_of - timedelta(minutes=30)
        with self.connect() as con:
            con.execute("insert into triggers.trg_welcome values ('c_900', 'c_900', ?, ?, '{}')",
                        [as_of - timedelta(days=3), as_of - timedelta(days=3)])
            con.execute("insert into triggers.trg_welcome values ('c_901', 'c_901', ?, ?, '{}')", [due, due])
            con.execute(
                "insert into nudge.messages (automation, trigger_key, contact_id, message_id, status, reason, attempts,"
                " qualified_at, due_at, decided_at, updated_at) values ('welcome', 'c_901', 'c_901', '<c_901@x>',"
                " 'failed', 'temporary', 1, ?, ?, ?, ?)",
                [due, due, due, due],
            )

    def built(self, as_of: datetime) -> None:
        """What the tick's dbt step records when the trigger model built and tested clean."""
        with self.connect() as con:
            record_builds(con, {AUTOMATION.model_unique_id: ("success", [])}, as_of=as_of, now=as_of)

    def tick(self, as_of: datetime, tags: dict[str, str] | None = None) -> dg.ExecuteInProcessResult:
        result = dg.materialize(
            [self.send],
            resources={
                "warehouse": Warehouse(path=str(self.warehouse)),
                "email": EmailBackendResource(url=f"file://{self.root / 'outbox'}"),
                "send_settings": SendSettings(
                    templates_dir=str(PROJECT_ROOT / "templates"), sender="Nudge <hello@nudge.example>",
                    postal_address="1 Example Street", unsubscribe_url="https://nudge.example/unsubscribe",
                    unsubscribe_mailto="unsubscribe@nudge.example", unsubscribe_secret="test-secret",
                ),
            },
            tags={**as_of_tags(as_of), **(tags or {})},
            instance=self.instance,
            raise_on_error=False,
        )
        assert result.success, "a tripped breaker is an alert, not a failed run"
        return result

    def scalar(self, sql: str, params: list | None = None):
        with self.connect() as con:
            return con.execute(sql, params or []).fetchone()[0]

    def sent_to(self, as_of: datetime) -> int:
        return self.scalar("select count(*) from nudge.messages where status = 'sent' and sent_at = ?", [as_of])


def breaker_check(result: dg.ExecuteInProcessResult) -> dg.AssetCheckEvaluation:
    (evaluation,) = [e for e in result.get_asset_check_evaluations() if e.check_name == CHECK_NAME]
    assert evaluation.asset_key == SEND_KEY
    return evaluation


def materialized(result: dg.ExecuteInProcessResult) -> dict[str, object]:
    (event,) = [e for e in result.get_asset_materialization_events() if e.asset_key == SEND_KEY]
    return {name: getattr(value, "value", value) for name, value in event.materialization.metadata.items()}


def warnings(place: Installation, result: dg.ExecuteInProcessResult) -> list[str]:
    return [entry.user_message for entry in place.instance.all_logs(result.run_id)
            if entry.level == logging.WARNING]


@pytest.fixture(scope="module")
def story(tmp_path_factory):
    """Four normal ticks, a surge, the surge again, a release, the release's tick, a normal tick."""
    place = Installation(tmp_path_factory.mktemp("breaker"))
    ticks = [START + timedelta(hours=h) for h in range(8)]
    results = {}
    for as_of in ticks[:4]:
        place.qualify(NORMAL, as_of)
        results[as_of] = place.tick(as_of)
    place.qualify(SURGE, ticks[4])
    results[ticks[4]] = place.tick(ticks[4])
    place.qualify(NORMAL, ticks[5])
    place.not_newly_due(ticks[5])
    results[ticks[5]] = place.tick(ticks[5])
    return place, ticks, results


def test_normal_ticks_send_and_pass_the_check(story):
    place, ticks, results = story
    for as_of in ticks[:4]:
        assert place.sent_to(as_of) == NORMAL
        check = breaker_check(results[as_of])
        assert check.passed
        assert materialized(results[as_of])["breaker_tripped"] is False
    assert place.scalar("select count(*) from nudge.tick_history where not tripped") == 4


def test_a_surge_trips_the_breaker_claims_nothing_and_the_check_says_why(story):
    place, ticks, results = story
    surge = results[ticks[4]]
    check = breaker_check(surge)
    assert not check.passed
    assert check.severity == dg.AssetCheckSeverity.ERROR
    assert f"surge: {SURGE} newly due" in check.description
    assert "median of 4 over the last 4 ticks" in check.description
    assert "nudge breaker release welcome" in check.description
    assert any(line.startswith("welcome: circuit breaker tripped, nothing sent: surge")
               for line in warnings(place, surge))
    metadata = materialized(surge)
    assert (metadata["breaker_tripped"], metadata["sent"], metadata["breaker_due"]) == (True, 0, SURGE)
    assert metadata["breaker_trailing_median"] == NORMAL
    # nothing claimed: no ledger row for any of the surge's qualifications, no email
    assert place.scalar("select count(*) from nudge.messages where decided_at = ?", [ticks[4]]) == 0
    assert place.scalar("select count(*) from nudge.messages where trigger_key <> 'c_901'") == 4 * NORMAL


def test_a_lasting_surge_stays_tripped_it_does_not_become_the_normal(story):
    place, ticks, results = story
    check = breaker_check(results[ticks[5]])
    assert not check.passed
    # the surge is still due (nothing was claimed) plus this tick's own, not the stale row nor the
    # retry; the tripped tick is not history
    assert f"surge: {SURGE + NORMAL} newly due" in check.description
    assert "median of 4 over the last 4 ticks" in check.description
    assert place.scalar("select count(*) from nudge.messages where trigger_key <> 'c_901'") == 4 * NORMAL


def test_a_release_from_the_command_line_lets_the_next_tick_send_once(story, monkeypatch):
    place, ticks, _ = story
    monkeypatch.setenv("NUDGE_WAREHOUSE", str(place.warehouse))
    runner = CliRunner()
    released = runner.invoke(app, ["breaker", "release", "welcome", "--reason", "a real import", "--by", "ops@x"])
    assert released.exit_code == 0, released.output
    shown = runner.invoke(app, ["breaker", "status", "--json"])
    assert shown.exit_code == 0, shown.output
    (welcome,) = json.loads(shown.output)
    assert welcome["tripped"] is True and welcome["due"] == SURGE + NORMAL
    assert welcome["pending_release"]["released_by"] == "ops@x"

    place.qualify(NORMAL, ticks[6])
    result = place.tick(ticks[6])
    check = breaker_check(result)
    assert check.passed
    assert "released by ops@x (a real import)" in check.description
    # and the retry planted in the lasting surge's tick (not_newly_due)
    assert place.sent_to(ticks[6]) == SURGE + 2 * NORMAL + 1
    assert place.scalar("select count(*) from nudge.breaker_releases where consumed_as_of = ?", [ticks[6]]) == 1
    assert place.scalar("select released from nudge.tick_history where as_of = ?", [ticks[6]]) is True

    # used up: the next surge trips again (the released tick counts as history: median still 4)
    place.qualify(SURGE, ticks[7])
    assert not breaker_check(place.tick(ticks[7])).passed


def test_a_replayed_tick_is_one_row_of_history(story):
    place, ticks, _ = story
    place.built(ticks[3])  # the replay's dbt step builds the models for that hour again
    again = place.tick(ticks[3])  # everything of that tick was sent: nothing new is due on replay
    assert breaker_check(again).passed
    assert place.scalar("select count(*) from nudge.tick_history where as_of = ?", [ticks[3]]) == 1
    assert place.scalar("select due from nudge.tick_history where as_of = ?", [ticks[3]]) == NORMAL


def test_stale_events_trip_it_and_a_run_tag_releases_it(tmp_path):
    place = Installation(tmp_path)
    as_of = START
    place.qualify(NORMAL, as_of, loaded=as_of - timedelta(hours=7))
    stale = place.tick(as_of)
    check = breaker_check(stale)
    assert not check.passed
    assert "stale inputs: the newest event was loaded 7h 00m before this tick" in check.description
    assert "over the limit of 6h" in check.description
    assert place.scalar("select count(*) from nudge.messages") == 0

    place.built(as_of + timedelta(hours=1))  # no new events: staler still
    released = place.tick(as_of + timedelta(hours=1), tags={RELEASE_TAG: "welcome, other"})
    check = breaker_check(released)
    assert check.passed and "released by run" in check.description
    assert place.sent_to(as_of + timedelta(hours=1)) == NORMAL
    assert place.scalar("select count(*) from nudge.breaker_releases where consumed_as_of is not null") == 1
