"""Adding an automation is a SQL model, a few lines of YAML and a template: no Python.

On a scratch copy of the project: a third automation appears as its own send
asset and sends; a failing dbt test on one trigger stops that automation's
send (the send asset's own gate) while the others still go.
"""

from __future__ import annotations

import dagster as dg
import pytest

from dagster_project.sample_data import DEFAULT_END
from tests.nudge_env import copy_project, env_for_copy

AS_OF = DEFAULT_END.replace(tzinfo=None)

FIRST_WORKOUT_SQL = """
with

workouts as (

    select * from {{ ref('stg_events') }}
    where event_name = 'workout_completed'
      and occurred_at <= {{ nudge_as_of() }}

),

numbered as (

    select
        *,
        row_number() over (partition by contact_id order by occurred_at, event_id) as workout_number
    from workouts

),

final as (

    select
        contact_id,
        contact_id as trigger_key,
        occurred_at as qualified_at,
        {{ nudge_due_at('occurred_at') }} as due_at,
        properties as context
    from numbered
    where workout_number = 1 and not is_syncing

)

select * from final
"""

FIRST_WORKOUT_YAML = """
version: 2
models:
  - name: trg_first_workout
    description: One row per contact, at their first completed workout.
    config:
      meta:
        nudge:
          category: marketing
          send_window: 24h
          reentry: once
    columns:
      - name: trigger_key
        data_tests: [unique, not_null]
"""

# A singular test that fails whenever anyone qualifies for the welcome email.
FAILING_WELCOME_TEST = "select * from {{ ref('trg_welcome') }}"


@pytest.fixture(scope="module")
def env(tmp_path_factory, dbt_manifest):
    root = tmp_path_factory.mktemp("new_automation")
    dbt_dir, templates_dir = copy_project(root)
    (dbt_dir / "models/triggers/trg_first_workout.sql").write_text(FIRST_WORKOUT_SQL)
    (dbt_dir / "models/triggers/_first_workout.yml").write_text(FIRST_WORKOUT_YAML)
    (dbt_dir / "tests/welcome_nobody.sql").write_text(FAILING_WELCOME_TEST)
    template = templates_dir / "first_workout"
    template.mkdir()
    (template / "subject.txt").write_text("Nice {{ context.workout_type }}, {{ contact.first_name | default('friend', true) }}!")
    (template / "body.html").write_text(
        '{% extends "_base.html" %}{% block content %}<p>{{ context.duration_min }} minutes of '
        "{{ context.workout_type }}. Same time tomorrow?</p>{% endblock %}"
    )
    (template / "body.txt").write_text(
        '{% extends "_base.txt" %}{% block content %}{{ context.duration_min }} minutes of '
        "{{ context.workout_type }}. Same time tomorrow?{% endblock %}"
    )
    return env_for_copy(root, contacts=200, seed=3)


@pytest.fixture(scope="module")
def tick(env):
    return env.tick(AS_OF)


def test_the_new_model_gets_its_own_send_asset(env):
    graph = env.defs().resolve_asset_graph()
    send = graph.get(dg.AssetKey("send_first_workout"))
    assert dg.AssetKey("trg_first_workout") in send.parent_keys
    assert send.group_name == "send"
    assert dg.AssetKey("send_first_workout") in graph.get(dg.AssetKey(["nudge", "messages"])).parent_keys


def test_the_new_automation_sends_with_its_template(env, tick):
    assert tick.metadata("send_first_workout", "sent") > 0
    sent = env.scalar("select count(*) from nudge.messages where automation = 'first_workout' and status = 'sent'")
    mails = [m for m in env.emails() if m["X-Nudge-Automation"] == "first_workout"]
    assert len(mails) == sent
    assert all(m["Subject"].startswith("Nice ") for m in mails)
    assert "minutes of" in mails[0].get_body(("plain",)).get_content()


def test_a_failing_dbt_test_stops_only_the_automation_it_guards(env, tick):
    assert not tick.success
    assert any("send_welcome" in failure and "trg_welcome" in failure for failure in tick.failures)
    assert env.scalar("select count(*) from nudge.messages where automation = 'welcome'") == 0
    assert env.scalar("select count(*) from nudge.messages where automation = 'cart_abandoned' and status = 'sent'") > 0
    status, failed_tests = env.query(
        "select status, failed_tests from nudge.model_builds where unique_id = 'model.nudge.trg_welcome'"
    )[0]
    assert status == "success" and "welcome_nobody" in failed_tests
