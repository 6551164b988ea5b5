"""`nudge explain` on a real ticked warehouse: the sentences say what the ledger and the triggers hold."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from typer.testing import CliRunner

from dagster_project.cli import app
from dagster_project.explain import DECIDED, NEVER_QUALIFIED, NOT_DECIDED, explain_contact
from dagster_project.sample_data import DEFAULT_END, generate
from tests.nudge_env import make_env

AS_OF = DEFAULT_END.replace(tzinfo=None)
AUTOMATIONS = (
    "browse_abandoned", "cart_abandoned", "clicked_no_purchase", "first_login_nudge", "post_purchase",
    "upgrade_moment", "welcome", "winback", "workout_completed",
)


@pytest.fixture(scope="module")
def env(tmp_path_factory, dbt_manifest):
    env = make_env(tmp_path_factory.mktemp("explain"))
    generate(env.settings.landing_dir, contacts=300, seed=11)
    tick = env.tick(AS_OF)
    assert tick.success, tick.failures
    return env


@pytest.fixture
def cli(env, monkeypatch) -> CliRunner:
    monkeypatch.setenv("NUDGE_WAREHOUSE", str(env.settings.warehouse))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    return CliRunner()


def one(env, sql: str, params: list | None = None) -> tuple:
    rows = env.query(sql + " order by 1, 2 limit 1", params)
    assert rows, sql
    return rows[0]


def test_a_sent_message_is_explained_with_its_time_and_message_id(env):
    contact_id, trigger_key, message_id, sent_at = one(
        env, "select contact_id, trigger_key, message_id, sent_at from nudge.messages "
        "where automation = 'welcome' and status = 'sent'",
    )
    [explanation] = explain_contact(env.settings, contact_id, "welcome").explanations
    assert explanation.state == DECIDED and explanation.trigger_key == trigger_key
    assert explanation.sentence.startswith("welcome: qualified ")
    assert explanation.sentence.endswith(f"; sent {sent_at:%Y-%m-%d %H:%M} UTC as {message_id}")


@pytest.mark.parametrize(("reason", "words"), [("stale", "— stale: due "), ("not_subscribed", "— not subscribed: ")])
def test_a_skip_is_explained_with_its_reason(env, reason, words):
    automation, contact_id, trigger_key = one(
        env, "select automation, contact_id, trigger_key from nudge.messages where status = 'skipped' and reason = ?",
        [reason],
    )
    explanations = explain_contact(env.settings, contact_id, automation).explanations
    [explanation] = [e for e in explanations if e.trigger_key == trigger_key]
    assert (explanation.status, explanation.reason) == ("skipped", reason)
    assert f"skipped {AS_OF:%Y-%m-%d %H:%M} UTC {words}" in explanation.sentence


def test_every_ledger_row_of_a_contact_is_one_explanation(env):
    contacts = [row[0] for row in env.query("select distinct contact_id from nudge.messages order by 1 limit 25")]
    for contact_id in contacts:
        found = explain_contact(env.settings, contact_id)
        decided = sorted(
            (e.automation, e.trigger_key, e.status, e.reason, e.message_id)
            for e in found.explanations
            if e.state == DECIDED
        )
        assert decided == sorted(
            env.query(
                "select automation, trigger_key, status, reason, message_id from nudge.messages where contact_id = ?",
                [contact_id],
            )
        )
        assert {e.automation for e in found.explanations} == set(AUTOMATIONS)


def test_an_automation_the_contact_never_qualified_for(env):
    contact_id = one(
        env, "select contact_id, email from staging.stg_contacts "
        "where contact_id not in (select contact_id from triggers.trg_cart_abandoned)",
    )[0]
    [explanation] = explain_contact(env.settings, contact_id, "cart_abandoned").explanations
    assert explanation.state == NEVER_QUALIFIED
    assert explanation.sentence == (
        f"cart_abandoned: never qualified (no row in trg_cart_abandoned as of the last build at "
        f"{AS_OF:%Y-%m-%d %H:%M} UTC)"
    )


def test_as_of_before_the_decision_shows_it_undecided(env):
    contact_id, trigger_key, qualified_at = one(
        env, "select contact_id, trigger_key, qualified_at from nudge.messages "
        "where automation = 'cart_abandoned' and status = 'sent' and qualified_at < decided_at",
    )
    asked = qualified_at + timedelta(seconds=1)
    explanations = explain_contact(env.settings, contact_id, "cart_abandoned", as_of=asked).explanations
    [explanation] = [e for e in explanations if e.trigger_key == trigger_key]
    assert explanation.state == NOT_DECIDED
    assert f"not decided as of {asked:%Y-%m-%d %H:%M} UTC" in explanation.sentence
    # Before it qualified, there is nothing to explain about it.
    earlier = explain_contact(env.settings, contact_id, "cart_abandoned", as_of=qualified_at - timedelta(seconds=1))
    assert trigger_key not in {e.trigger_key for e in earlier.explanations}


def test_a_contact_that_does_not_exist(env):
    found = explain_contact(env.settings, "c_nobody")
    assert found.contact is None and "not in stg_contacts" in found.headline
    assert {e.state for e in found.explanations} == {NEVER_QUALIFIED}


def test_an_unknown_automation_lists_the_real_ones(env):
    with pytest.raises(LookupError, match="no automation 'nope'; there are: " + ", ".join(AUTOMATIONS)):
        explain_contact(env.settings, "c_000001", "nope")


def test_the_command_prints_the_headline_and_one_sentence_per_qualification(env, cli):
    contact_id = one(env, "select contact_id, trigger_key from nudge.messages where status = 'sent'")[0]
    result = cli.invoke(app, ["explain", contact_id])
    assert result.exit_code == 0, result.output
    found = explain_contact(env.settings, contact_id)
    assert result.output.splitlines() == [found.headline] + [e.sentence for e in found.explanations]


def test_the_command_prints_json(env, cli):
    contact_id = one(env, "select contact_id, trigger_key from nudge.messages where status = 'sent'")[0]
    result = cli.invoke(app, ["explain", contact_id, "welcome", "--as-of", "2026-11-01T00:00:00Z", "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert document == explain_contact(env.settings, contact_id, "welcome", as_of=AS_OF).to_json()
    assert document["contact"]["contact_id"] == contact_id and document["as_of"] == "2026-11-01T00:00:00"


def test_the_command_refuses_what_it_cannot_explain(env, cli, tmp_path):
    unknown = cli.invoke(app, ["explain", "c_000001", "nope"])
    assert unknown.exit_code == 1 and "no automation 'nope'" in unknown.output
    bad_time = cli.invoke(app, ["explain", "c_000001", "--as-of", "yesterday"])
    assert bad_time.exit_code == 2 and "ISO 8601" in bad_time.output
    missing = cli.invoke(app, ["explain", "c_000001", "--warehouse", str(tmp_path / "none.duckdb")])
    assert missing.exit_code == 1 and "there is no warehouse at" in missing.output
    assert not (tmp_path / "none.duckdb").exists()
