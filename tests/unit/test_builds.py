"""The dbt step's record of which models were built, and tested clean, for which as_of."""

from __future__ import annotations

from datetime import datetime

import duckdb
import pytest

from dagster_project.builds import NotBuiltError, model_outcomes, passed_test_counts, record_builds, require_built

HOUR = datetime(2026, 11, 1, 10)
NEXT_HOUR = datetime(2026, 11, 1, 11)


@pytest.fixture
def con(tmp_path):
    connection = duckdb.connect(str(tmp_path / "warehouse.duckdb"))
    yield connection
    connection.close()


def test_a_build_records_every_model_and_the_send_gate_reads_each_one(con) -> None:
    record_builds(con, {
        "model.nudge.trg_welcome": ("success", []),
        "model.nudge.trg_winback": ("success", ["unique_trg_winback_trigger_key"]),
        "model.nudge.trg_post_purchase": ("error", []),
    }, as_of=HOUR, now=HOUR)

    require_built(con, "model.nudge.trg_welcome", HOUR)
    with pytest.raises(NotBuiltError, match="unique_trg_winback_trigger_key"):
        require_built(con, "model.nudge.trg_winback", HOUR)
    with pytest.raises(NotBuiltError, match="error"):
        require_built(con, "model.nudge.trg_post_purchase", HOUR)
    with pytest.raises(NotBuiltError, match="never been built"):
        require_built(con, "model.nudge.trg_cart_abandoned", HOUR)


def test_the_next_build_replaces_the_models_it_ran_and_keeps_the_others(con) -> None:
    record_builds(con, {
        "model.nudge.trg_welcome": ("success", []),
        "model.nudge.trg_winback": ("error", []),
    }, as_of=HOUR, now=HOUR)
    # a retry of one model, an hour on
    record_builds(con, {"model.nudge.trg_winback": ("success", [])}, as_of=NEXT_HOUR, now=NEXT_HOUR)

    rows = con.execute("select unique_id, as_of, status from nudge.model_builds order by unique_id").fetchall()
    assert rows == [("model.nudge.trg_welcome", HOUR, "success"), ("model.nudge.trg_winback", NEXT_HOUR, "success")]
    require_built(con, "model.nudge.trg_winback", NEXT_HOUR)
    with pytest.raises(NotBuiltError, match="last built for"):
        require_built(con, "model.nudge.trg_welcome", NEXT_HOUR)


def test_a_build_of_nothing_records_nothing_and_leaves_the_table_ready(con) -> None:
    record_builds(con, {}, as_of=HOUR, now=HOUR)

    assert con.execute("select count(*) from nudge.model_builds").fetchall() == [(0,)]


def test_each_failed_test_is_charged_to_the_models_it_reads() -> None:
    manifest = {"nodes": {
        "test.nudge.unique_trg_welcome_trigger_key": {"name": "unique_trg_welcome_trigger_key",
                                                      "depends_on": {"nodes": ["model.nudge.trg_welcome"]}},
        "test.nudge.not_null_stg_contacts_contact_id": {"name": "not_null_stg_contacts_contact_id",
                                                        "depends_on": {"nodes": ["model.nudge.stg_contacts"]}},
    }}
    run_results = {"results": [
        {"unique_id": "model.nudge.stg_contacts", "status": "success"},
        {"unique_id": "model.nudge.trg_welcome", "status": "success"},
        {"unique_id": "test.nudge.unique_trg_welcome_trigger_key", "status": "fail"},
        {"unique_id": "test.nudge.not_null_stg_contacts_contact_id", "status": "pass"},
    ]}

    assert model_outcomes(run_results, manifest) == {
        "model.nudge.stg_contacts": ("success", []),
        "model.nudge.trg_welcome": ("success", ["unique_trg_welcome_trigger_key"]),
    }


def test_the_tests_that_passed_are_counted_for_every_model_they_read() -> None:
    manifest = {"nodes": {
        "test.nudge.unique_trg_welcome_trigger_key": {"depends_on": {"nodes": ["model.nudge.trg_welcome"]}},
        "test.nudge.trigger_contract_trg_welcome_": {"depends_on": {"nodes": ["model.nudge.trg_welcome"]}},
        "test.nudge.relationships_stg_contacts_timezone": {
            "depends_on": {"nodes": ["model.nudge.stg_contacts", "seed.nudge.iana_timezones"]}},
    }}
    run_results = {"results": [
        {"unique_id": "model.nudge.trg_welcome", "status": "success"},
        {"unique_id": "test.nudge.unique_trg_welcome_trigger_key", "status": "pass"},
        {"unique_id": "test.nudge.trigger_contract_trg_welcome_", "status": "fail"},
        {"unique_id": "test.nudge.relationships_stg_contacts_timezone", "status": "pass"},
    ]}

    assert passed_test_counts(run_results, manifest) == {
        "model.nudge.trg_welcome": 1, "model.nudge.stg_contacts": 1, "seed.nudge.iana_timezones": 1,
    }


def test_a_record_of_before_gains_the_invocation_and_the_tests_passed_and_keeps_its_rows(con) -> None:
    # the table as ticks before the data tests over rebuilt rows made it
    con.execute("create schema nudge")
    con.execute("""create table nudge.model_builds (unique_id varchar primary key, as_of timestamp not null,
                   status varchar not null, failed_tests varchar not null, recorded_at timestamp not null)""")
    con.execute("insert into nudge.model_builds values ('model.nudge.trg_winback', ?, 'success', '', ?)", [HOUR, HOUR])

    record_builds(con, {"model.nudge.trg_welcome": ("success", [])}, as_of=NEXT_HOUR, now=NEXT_HOUR,
                  invocation_id="an-invocation", passed={"model.nudge.trg_welcome": 2})

    rows = con.execute("select unique_id, as_of, invocation_id, tests_passed from nudge.model_builds order by 1").fetchall()
    assert rows == [("model.nudge.trg_welcome", NEXT_HOUR, "an-invocation", 2),
                    ("model.nudge.trg_winback", HOUR, None, None)]
    require_built(con, "model.nudge.trg_winback", HOUR)
