"""Bounces and complaints, through one real tick: events -> int_email_suppressions -> the send.

Four subscribed contacts sign up and log a workout, so each is due for welcome (marketing)
and workout_completed (transactional). Before that, one address bounced hard, one complained,
one bounced soft. Hard bounces and complaints stop every automation; a soft bounce stops none.

The tick runs every step up to and including the send (ingest, the dbt models, every
automation's send) and leaves out only the reporting models: they read the ledger after the
send, nothing here looks at them, and their dbt build would be a second dbt start-up.
"""

from __future__ import annotations

import json
from datetime import datetime

import dagster as dg
import pytest

from dagster_project.tick import run_tick
from tests.nudge_env import make_env

NOON = datetime(2026, 11, 1, 12)
CONTACTS = ["c_hard", "c_complaint", "c_soft", "c_ok"]
FAILURES = [
    # the provider reports the address as it was sent to; case and spaces do not matter
    ("b1", "c_hard", "email_bounced", {"type": "hard", "message_id": "<old-1@nudge.example>", "email": " C_Hard@Example.com"}),
    ("b2", "c_complaint", "email_complained", {"message_id": "<old-2@nudge.example>", "email": "c_complaint@example.com"}),
    ("b3", "c_soft", "email_bounced", {"type": "soft", "message_id": "<old-3@nudge.example>", "email": "c_soft@example.com"}),
]


@pytest.fixture(scope="module")
def env(tmp_path_factory, dbt_manifest):
    env = make_env(tmp_path_factory.mktemp("suppressions"))
    (env.settings.landing_dir / "contacts").mkdir(parents=True)
    (env.settings.landing_dir / "events").mkdir(parents=True)
    with open(env.settings.landing_dir / "contacts" / "contacts.jsonl", "w") as out:
        for contact_id in CONTACTS:
            out.write(json.dumps({
                "contact_id": contact_id, "email": f"{contact_id}@example.com", "status": "subscribed",
                "first_name": "Sam", "last_name": "Lee", "timezone": "UTC", "properties": {"plan": "free"},
                "updated_at": "2026-10-01T00:00:00Z",
            }) + "\n")
    with open(env.settings.landing_dir / "events" / "events.jsonl", "w") as out:
        def event(event_id, contact_id, name, occurred_at, properties):
            out.write(json.dumps({"event_id": event_id, "contact_id": contact_id, "name": name,
                                  "occurred_at": occurred_at, "properties": properties}) + "\n")

        for event_id, contact_id, name, properties in FAILURES:
            event(event_id, contact_id, name, "2026-10-20T09:00:00Z", properties)
        for contact_id in CONTACTS:
            event(f"signup-{contact_id}", contact_id, "signed_up", "2026-11-01T11:00:00Z", {"source": "organic"})
            event(f"workout-{contact_id}", contact_id, "workout_completed", "2026-11-01T11:30:00Z",
                  {"workout_type": "run", "duration_min": 30, "calories": 300})
    defs = env.defs()
    tick = run_tick(defs, NOON, instance=dg.DagsterInstance.ephemeral(),
                    selection=dg.AssetSelection.all() - dg.AssetSelection.groups("reporting"))
    assert tick.success, tick.failures
    # every send ran: all automations, not only the two the data qualifies for
    assert {key for key in tick.assets if key.startswith("send_")} == {
        key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()
        if key.to_user_string().startswith("send_")
    }
    return env


def test_the_model_lists_hard_bounces_and_complaints_not_soft_bounces(env):
    rows = env.query("select email, reason, event_id, message_id from intermediate.int_email_suppressions order by 1")
    assert rows == [
        ("c_complaint@example.com", "complaint", "b2", "<old-2@nudge.example>"),
        ("c_hard@example.com", "hard_bounce", "b1", "<old-1@nudge.example>"),
    ]


@pytest.mark.parametrize("automation", ["welcome", "workout_completed"])
def test_a_suppressed_address_gets_no_automation_marketing_or_transactional(env, automation):
    rows = {
        contact: (status, reason, error)
        for contact, status, reason, error in env.query(
            "select contact_id, status, reason, error from nudge.messages where automation = ?", [automation]
        )
    }
    assert env.categories()[automation] == {"welcome": "marketing", "workout_completed": "transactional"}[automation]
    assert rows["c_hard"][:2] == ("skipped", "suppressed")
    assert rows["c_hard"][2].startswith("hard_bounce:") and "event b1" in rows["c_hard"][2]
    assert rows["c_complaint"][:2] == ("skipped", "suppressed")
    assert rows["c_complaint"][2].startswith("complaint:") and "event b2" in rows["c_complaint"][2]
    assert rows["c_soft"][:2] == ("sent", None)
    assert rows["c_ok"][:2] == ("sent", None)


def test_no_message_reaches_a_suppressed_address(env):
    recipients = sorted(str(message["To"]) for message in env.emails())
    assert recipients == sorted(["c_soft@example.com", "c_ok@example.com"] * 2)
