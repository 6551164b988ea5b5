"""Landing files to messages, through the same Definitions the schedule runs."""

from __future__ import annotations

import gc
import json
from datetime import timedelta

import pytest

from dagster_project.sample_data import DEFAULT_END, generate
from tests.nudge_env import make_env

pytestmark = pytest.mark.e2e

AS_OF = DEFAULT_END.replace(tzinfo=None)
EARLIER = AS_OF - timedelta(hours=5)


@pytest.fixture(scope="module")
def env(tmp_path_factory, dbt_manifest):
    env = make_env(tmp_path_factory.mktemp("e2e"))
    generate(env.settings.landing_dir, contacts=300, seed=11)
    return env


@pytest.fixture(scope="module")
def first_tick(env):
    # The first tick renders the bigger automations in a compose worker, as a big send does
    # (from 1,000 candidates): every test below holds for messages made in another process.
    import dagster_project.send as send_module
    from dagster_project.composing import Composers

    started: list[int] = []
    frozen_during: list[int] = []

    def composers(processes: int) -> Composers:
        started.append(processes)
        frozen_during.append(gc.get_freeze_count())
        # Ready before the first batch: a send would make its first batches itself while they start.
        return Composers(processes).wait_until_ready()

    env.settings = env.settings.model_copy(update={"compose_processes": 1})
    frozen_before = gc.get_freeze_count()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(send_module, "COMPOSE_IN_PROCESSES_FROM", 20)
        patch.setattr(send_module, "Composers", composers)
        tick = env.tick(EARLIER)
    assert tick.success, tick.failures
    assert started and set(started) == {1}
    # What was loaded before the tick is out of the collector's way during it, and back after.
    assert min(frozen_during) > frozen_before and gc.get_freeze_count() == frozen_before
    return tick


def sent_rows(env, automation=None):
    sql = "select automation, trigger_key, contact_id, email, message_id from nudge.messages where status = 'sent'"
    return env.query(sql + (f" and automation = '{automation}'" if automation else ""))


def test_a_tick_sends_several_automations_and_files_one_eml_per_sent_row(env, first_tick):
    rows = sent_rows(env)
    automations = {row[0] for row in rows}
    assert {"welcome", "cart_abandoned", "workout_completed"} <= automations <= set(env.categories())
    emails = env.emails()
    assert len(emails) == len(rows)
    assert {m["Message-ID"] for m in emails} == {row[4] for row in rows}
    assert first_tick.metadata("send_welcome", "sent") == len(sent_rows(env, "welcome"))


def test_every_due_qualification_has_a_ledger_row_none_silently_dropped(env, first_tick):
    for automation in env.categories():
        due = env.scalar(f"select count(*) from triggers.trg_{automation} where due_at <= ?", [EARLIER])
        decided = env.scalar("select count(*) from nudge.messages where automation = ?", [automation])
        assert due == decided, automation
    reasons = dict(env.query("select reason, count(*) from nudge.messages where status = 'skipped' group by 1"))
    assert reasons.get("stale", 0) > 0  # history past the send window is recorded, never blasted
    assert reasons.get("not_subscribed", 0) > 0


def test_marketing_never_reaches_a_contact_who_is_not_subscribed(env, first_tick):
    not_subscribed = {
        row[0] for row in env.query("select email from staging.stg_contacts where status <> 'subscribed' and email is not null")
    }
    categories = env.categories()
    recipients = {
        m["To"].addresses[0].addr_spec for m in env.emails() if categories[m["X-Nudge-Automation"]] == "marketing"
    }
    assert recipients and not recipients & not_subscribed


def test_messages_carry_the_required_headers(env, first_tick):
    categories = env.categories()
    for message in env.emails():
        assert message["X-Nudge-Automation"] in categories
        if categories[message["X-Nudge-Automation"]] == "transactional":
            assert message["List-Unsubscribe"] is None
            continue
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert "<https://" in message["List-Unsubscribe"] and "<mailto:" in message["List-Unsubscribe"]
        assert message.get_body(("plain",)) is not None and message.get_body(("html",)) is not None
        assert env.settings.postal_address in message.get_body(("plain",)).get_content()


def test_the_cart_email_lists_the_carts_items_and_nothing_bought_before(env, first_tick):
    for automation, trigger_key, contact_id, _, message_id in sent_rows(env, "cart_abandoned"):
        (context,) = env.query(
            "select context from triggers.trg_cart_abandoned where trigger_key = ?", [trigger_key]
        )[0]
        items = json.loads(context)["items"]
        cart_adds = env.query(
            """
            select json_extract_string(properties, '$.name') from raw.events
            where contact_id = ? and name = 'added_to_cart'
              and occurred_at >= (select occurred_at from raw.events where event_id = ?)
              and occurred_at <= ?
            order by occurred_at, event_id
            """,
            [contact_id, trigger_key, EARLIER],
        )
        assert [item["name"] for item in items] == [name for (name,) in cart_adds]
        message = next(m for m in env.emails() if m["Message-ID"] == message_id)
        text = message.get_body(("plain",)).get_content()
        for item in items:
            assert item["name"] in text


def test_the_same_tick_again_sends_nothing(env, first_tick):
    before = env.query("select * from nudge.messages order by automation, trigger_key")
    files = len(env.emails())
    again = env.tick(EARLIER)
    assert again.success, again.failures
    assert all(again.metadata(f"send_{automation}", "sent") == 0 for automation in env.categories())
    assert env.query("select * from nudge.messages order by automation, trigger_key") == before
    assert len(env.emails()) == files


def test_a_later_tick_sends_only_what_became_due(env, first_tick):
    sent_before = {row[1] for row in sent_rows(env)}
    held_before = {row[0] for row in env.query("select trigger_key from nudge.messages where status = 'held'")}
    later = env.tick(AS_OF)
    assert later.success, later.failures
    new = [row for row in sent_rows(env) if row[1] not in sent_before]
    assert new, "five more hours of events should make new carts and signups due"
    due_at = dict(env.query("select trigger_key, due_at from triggers.trg_cart_abandoned"))
    for automation, trigger_key, *_ in new:
        if automation == "cart_abandoned":
            # newly due, or due earlier and held then for the contact's quiet hours
            assert EARLIER < due_at[trigger_key] <= AS_OF or trigger_key in held_before
    assert len(env.emails()) == len(sent_rows(env))
    message_ids = [m["Message-ID"] for m in env.emails()]
    assert len(message_ids) == len(set(message_ids))


def test_each_asset_shows_what_the_tick_left_behind(env, first_tick):
    # A model: how many rows it holds now, and the first few of them.
    # Later ticks of this module add rows, so the first tick's count is at most today's.
    welcome_rows = env.scalar("select count(*) from triggers.trg_welcome")
    assert 0 < first_tick.metadata("trg_welcome", "dagster/row_count", None) <= welcome_rows
    preview = first_tick.metadata("trg_welcome", "preview", None)
    assert preview is not None and 0 < len(preview.records) <= 5
    assert {"contact_id", "trigger_key", "due_at"} <= {column.name for column in preview.schema.columns}

    # A send: the decisions it took this tick, sent first, and one rendered message.
    decisions = first_tick.metadata("send_welcome", "decisions", None)
    assert decisions is not None and decisions.records
    assert decisions.records[0].data["status"] == "sent"
    assert "Subject:" in first_tick.metadata("send_welcome", "sample_message", "")
    assert first_tick.metadata("nudge/messages", "dagster/row_count", None) == env.scalar(
        "select count(*) from nudge.messages where decided_at <= ?", [EARLIER]
    )


def test_the_dbt_step_records_the_build_its_next_tests_start_from(env, first_tick):
    # The per-contact models' pre-hooks name the dbt invocation that built them; the dbt step
    # records the same invocation with every test on the model passed, which is what lets the
    # next build's unique tests look only at the rows it rewrote (macros/rebuilt_rows.sql).
    recorded = dict(env.query(
        "select b.unique_id, b.tests_passed from nudge.model_builds as b"
        " inner join intermediate.nudge_contacts_rebuilt as header"
        "   on header.contact_id is null and b.unique_id = 'model.nudge.' || header.model_name"
        "   and b.invocation_id = header.invocation_id"
    ))
    assert recorded.keys() >= {"model.nudge.int_workout_days", "model.nudge.int_carts", "model.nudge.int_purchases"}
    # unique on first_live_event_id, unique on (contact_id, workout_date), not_after_as_of
    assert recorded["model.nudge.int_workout_days"] == 3
