"""A NULL in a column a model's contract declares not_null fails that model's build.

Nudge's table models declare dbt contracts: the warehouse refuses the NULL as the table
is written, where a not_null test would have queried it afterwards. On a scratch copy of
the project, trg_welcome is broken so that most of its rows carry a NULL context, and a
test on int_carts fails, so dbt skips trg_cart_abandoned. Dagster runs nothing downstream
of a model that did not build, the send step included: the tick must fail and say why,
not pass with nothing sent.
"""

from __future__ import annotations

import json

import pytest

from dagster_project.sample_data import DEFAULT_END
from tests.nudge_env import copy_project, env_for_copy

AS_OF = DEFAULT_END.replace(tzinfo=None)

# A plausible slip: only referral signups keep their properties, the others get NULL.
GOOD_CONTEXT = "properties as context"
BROKEN_CONTEXT = "case when json_extract_string(properties, '$.source') = 'referral' then properties end as context"

# A singular test that fails whenever anyone has a cart: dbt then skips trg_cart_abandoned.
FAILING_CARTS_TEST = "select * from {{ ref('int_carts') }}"


@pytest.fixture(scope="module")
def env(tmp_path_factory, dbt_manifest):
    root = tmp_path_factory.mktemp("model_contracts")
    dbt_dir, _ = copy_project(root)
    model = dbt_dir / "models/triggers/trg_welcome.sql"
    sql = model.read_text()
    assert sql.count(GOOD_CONTEXT) == 1
    model.write_text(sql.replace(GOOD_CONTEXT, BROKEN_CONTEXT))
    (dbt_dir / "tests/carts_nobody.sql").write_text(FAILING_CARTS_TEST)
    return env_for_copy(root, contacts=200, seed=3)


@pytest.fixture(scope="module")
def tick(env):
    return env.tick(AS_OF)


def build_status(env, model: str) -> tuple[str, str]:
    return env.query(
        "select status, failed_tests from nudge.model_builds where unique_id = ?", [f"model.nudge.{model}"]
    )[0]


def test_trg_welcome_guards_its_columns_with_constraints_not_tests(env):
    manifest = json.loads((env.settings.dbt_project_dir / "target" / "manifest.json").read_text())
    model = manifest["nodes"]["model.nudge.trg_welcome"]
    assert model["contract"]["enforced"]
    assert {name: column["data_type"] for name, column in model["columns"].items()} == {
        "contact_id": "string", "trigger_key": "string", "qualified_at": "timestamp",
        "due_at": "timestamp", "context": "string",
    }
    assert all({"type": "not_null"}.items() <= c["constraints"][0].items() for c in model["columns"].values())
    tests_on_it = {
        node["test_metadata"]["name"]
        for node in manifest["nodes"].values()
        if node["resource_type"] == "test" and node.get("test_metadata")
        and node["depends_on"]["nodes"] == ["model.nudge.trg_welcome"]
    }
    assert tests_on_it == {"unique", "not_after_as_of"}


def test_the_warehouse_refuses_the_null_and_trg_welcome_does_not_build(env, tick):
    assert build_status(env, "trg_welcome") == ("error", "")
    # nothing was written: no table (this warehouse is new) for anything to read
    assert env.scalar(
        "select count(*) from information_schema.tables where table_schema = 'triggers' and table_name = 'trg_welcome'"
    ) == 0
    # the rest of the project still built, except what depends on the failed test
    assert build_status(env, "trg_workout_completed") == ("success", "")
    assert build_status(env, "int_carts") == ("success", "carts_nobody")
    assert build_status(env, "trg_cart_abandoned") == ("skipped", "")


def test_the_tick_fails_saying_which_models_did_not_build_and_why(env, tick):
    assert not tick.success
    (failure,) = [f for f in tick.failures if f.startswith("nudge_models: ")]
    assert "dbt build failed for as_of 2026-11-01 00:00:00" in failure
    assert "model.nudge.trg_welcome: " in failure
    assert "NOT NULL constraint failed" in failure and ".context" in failure
    assert "tests failed on model.nudge.int_carts (carts_nobody)" in failure
    assert "skipped after a failure upstream: model.nudge.trg_cart_abandoned" in failure


def test_nothing_is_sent_from_models_that_did_not_build(env, tick):
    # Dagster runs no step downstream of a failed one: the send step did not run at all, so
    # not even the ledger exists in this new warehouse
    assert "send" not in tick.step_seconds
    assert not any(key.startswith("send_") for key in tick.assets)
    assert env.query("select table_name from information_schema.tables where table_schema = 'nudge'") == [
        ("model_builds",)
    ]
