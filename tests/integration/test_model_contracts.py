"""A NULL in a column a model's contract declares not_null fails that model's build.

Nudge's table models declare dbt contracts: the warehouse refuses the NULL as the table
is written, where a not_null test would have queried it afterwards. On a scratch copy of
the project, int_first_signups is broken so that most of its rows carry NULL properties,
and a test on int_carts fails, so dbt skips trg_cart_abandoned. Dagster runs nothing
downstream of a model that did not build, the send step included: the tick must fail and
say why, not pass with nothing sent.

The trigger models keep a test instead (trigger_contract: the five columns present, nothing
after as_of): a bad row in one automation's trigger stops only that automation
(tests/integration/test_new_automation.py), where a failed build would stop every send of
the tick. trg_upgrade_moment is broken here to show the test fail while the model builds.
"""

from __future__ import annotations

import json

import pytest

from dagster_project.sample_data import DEFAULT_END
from tests.nudge_env import copy_project, env_for_copy

AS_OF = DEFAULT_END.replace(tzinfo=None)

# A plausible slip: only referral signups keep their properties, the others get NULL.
GOOD_PROPERTIES = "        properties,\n"
BROKEN_PROPERTIES = "        case when json_extract_string(properties, '$.source') = 'referral' then properties end as properties,\n"

# A singular test that fails whenever anyone has a cart: dbt then skips trg_cart_abandoned.
FAILING_CARTS_TEST = "select * from {{ ref('int_carts') }}"

# A trigger that loses the key of its plan-limit moments: its trigger_contract test fails.
GOOD_KEY = "        moments.event_id as trigger_key,\n"
BROKEN_KEY = "        case when moments.reason = 'premium_feature_used' then moments.event_id end as trigger_key,\n"


@pytest.fixture(scope="module")
def env(tmp_path_factory, dbt_manifest):
    root = tmp_path_factory.mktemp("model_contracts")
    dbt_dir, _ = copy_project(root)
    model = dbt_dir / "models/intermediate/int_first_signups.sql"
    sql = model.read_text()
    assert sql.count(GOOD_PROPERTIES) == 1
    model.write_text(sql.replace(GOOD_PROPERTIES, BROKEN_PROPERTIES))
    (dbt_dir / "tests/carts_nobody.sql").write_text(FAILING_CARTS_TEST)
    trigger = dbt_dir / "models/triggers/trg_upgrade_moment.sql"
    sql = trigger.read_text()
    assert sql.count(GOOD_KEY) == 1
    trigger.write_text(sql.replace(GOOD_KEY, BROKEN_KEY))
    return env_for_copy(root, contacts=200, seed=3)


@pytest.fixture(scope="module")
def tick(env):
    return env.tick(AS_OF)


def build_status(env, model: str) -> tuple[str, str]:
    return env.query(
        "select status, failed_tests from nudge.model_builds where unique_id = ?", [f"model.nudge.{model}"]
    )[0]


def data_tests_on(manifest: dict, model: str) -> set[str]:
    return {
        node["test_metadata"]["name"]
        for node in manifest["nodes"].values()
        if node["resource_type"] == "test" and node.get("test_metadata")
        and node["depends_on"]["nodes"] == [f"model.nudge.{model}"]
    }


def test_int_first_signups_guards_its_columns_with_constraints_and_triggers_keep_tests(env):
    manifest = json.loads((env.settings.dbt_project_dir / "target" / "manifest.json").read_text())
    model = manifest["nodes"]["model.nudge.int_first_signups"]
    assert model["contract"]["enforced"]
    assert {name: column["data_type"] for name, column in model["columns"].items()} == {
        "contact_id": "string", "signup_event_id": "string", "signed_up_at": "timestamp",
        "properties": "string", "is_syncing": "boolean",
    }
    assert all({"type": "not_null"}.items() <= c["constraints"][0].items() for c in model["columns"].values())
    assert "not_null" not in data_tests_on(manifest, "int_first_signups")
    assert not manifest["nodes"]["model.nudge.trg_welcome"]["contract"]["enforced"]
    assert {"unique", "trigger_contract"} <= data_tests_on(manifest, "trg_welcome")


def test_a_trigger_row_that_breaks_the_contract_fails_its_test_not_its_build(env, tick):
    # the model built; its one trigger_contract test (not six per-column tests) failed, and
    # the send asset's gate stops that automation alone
    assert build_status(env, "trg_upgrade_moment") == ("success", "trigger_contract_trg_upgrade_moment_")
    assert env.scalar("select count(*) from triggers.trg_upgrade_moment where trigger_key is null") > 0


def test_the_warehouse_refuses_the_null_and_int_first_signups_does_not_build(env, tick):
    assert build_status(env, "int_first_signups") == ("error", "")
    # nothing was written: no table (this warehouse is new) for anything to read
    assert env.scalar(
        "select count(*) from information_schema.tables "
        "where table_schema = 'intermediate' and table_name = 'int_first_signups'"
    ) == 0
    # the rest of the project still built, except what depends on the failures
    assert build_status(env, "trg_workout_completed") == ("success", "")
    assert build_status(env, "trg_welcome") == ("skipped", "")
    assert build_status(env, "int_carts") == ("success", "carts_nobody")
    assert build_status(env, "trg_cart_abandoned") == ("skipped", "")


def test_the_tick_fails_saying_which_models_did_not_build_and_why(env, tick):
    assert not tick.success
    (failure,) = [f for f in tick.failures if f.startswith("nudge_models: ")]
    assert "dbt build failed for as_of 2026-11-01 00:00:00" in failure
    assert "model.nudge.int_first_signups: " in failure
    assert "NOT NULL constraint failed" in failure and ".properties" in failure
    assert "tests failed on model.nudge.int_carts (carts_nobody)" in failure
    assert "skipped after a failure upstream:" in failure
    assert "model.nudge.trg_cart_abandoned" in failure and "model.nudge.trg_welcome" in failure


def test_nothing_is_sent_from_models_that_did_not_build(env, tick):
    # Dagster runs no step downstream of a failed one: the send step did not run at all, so
    # not even the ledger exists in this new warehouse
    assert "send" not in tick.step_seconds
    assert not any(key.startswith("send_") for key in tick.assets)
    assert env.query("select table_name from information_schema.tables where table_schema = 'nudge'") == [
        ("model_builds",)
    ]
