"""The policies across automations, through real ticks: cap with priority, exits, quiet hours.

A handful of hand-written contacts, each planted for one rule, so a failure names the rule.
"""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from tests.nudge_env import make_env

NOON = datetime(2026, 11, 1, 12)  # 12:00 UTC: 21:00 in Tokyo, inside its quiet hours
NEXT_MORNING_IN_TOKYO = datetime(2026, 11, 1, 23)  # 08:00 in Tokyo

CONTACTS = [
    # due for welcome and a cart in the same tick: the cap keeps the higher priority (welcome)
    ("c_both", "Europe/London"),
    # bought after the cart was abandoned: the reminder is an exit, recorded
    ("c_exit", "UTC"),
    # abandoned a cart while it is night where they live: held, then sent in their morning
    ("c_night", "Asia/Tokyo"),
    # an invalid timezone counts as UTC, where noon is fine
    ("c_mars", "Mars/Olympus_Mons"),
]
EVENTS = [
    ("e1", "c_both", "signed_up", "2026-11-01T11:00:00Z", {"source": "organic"}),
    ("e2", "c_both", "added_to_cart", "2026-11-01T09:30:00Z", {"product_id": "p1", "name": "Yoga Mat", "price": 39.5}),
    ("e3", "c_exit", "added_to_cart", "2026-11-01T08:00:00Z", {"product_id": "p2", "name": "Jump Rope", "price": 12.5}),
    ("e4", "c_exit", "purchased", "2026-11-01T10:00:00Z", {"order_id": "o1", "total": 12.5, "currency": "USD"}),
    ("e5", "c_night", "added_to_cart", "2026-11-01T10:00:00Z", {"product_id": "p3", "name": "Swim Cap", "price": 9.99}),
    ("e6", "c_mars", "added_to_cart", "2026-11-01T10:00:00Z", {"product_id": "p3", "name": "Swim Cap", "price": 9.99}),
]


@pytest.fixture(scope="module")
def env(tmp_path_factory, dbt_manifest):
    env = make_env(tmp_path_factory.mktemp("policies"))
    (env.settings.landing_dir / "contacts").mkdir(parents=True)
    (env.settings.landing_dir / "events").mkdir(parents=True)
    with open(env.settings.landing_dir / "contacts" / "contacts.jsonl", "w") as out:
        for contact_id, timezone in CONTACTS:
            out.write(json.dumps({
                "contact_id": contact_id, "email": f"{contact_id}@example.com", "status": "subscribed",
                "first_name": "Sam", "last_name": "Lee", "timezone": timezone, "properties": {"plan": "free"},
                "updated_at": "2026-10-01T00:00:00Z",
            }) + "\n")
    with open(env.settings.landing_dir / "events" / "events.jsonl", "w") as out:
        for event_id, contact_id, name, occurred_at, properties in EVENTS:
            out.write(json.dumps({
                "event_id": event_id, "contact_id": contact_id, "name": name, "occurred_at": occurred_at,
                "properties": properties,
            }) + "\n")
    return env


@pytest.fixture(scope="module")
def ticks(env):
    noon = env.tick(NOON)
    assert noon.success, noon.failures
    ledger_at_noon = ledger(env)
    morning = env.tick(NEXT_MORNING_IN_TOKYO)
    assert morning.success, morning.failures
    return ledger_at_noon, ledger(env)


def ledger(env) -> dict[tuple[str, str], tuple[str, str | None]]:
    rows = env.query("select automation, contact_id, status, reason from nudge.messages")
    return {(automation, contact): (status, reason) for automation, contact, status, reason in rows}


def test_the_cap_keeps_the_higher_priority_automation(ticks):
    at_noon, _ = ticks
    assert at_noon[("welcome", "c_both")] == ("sent", None)
    assert at_noon[("cart_abandoned", "c_both")] == ("skipped", "capped")


def test_an_exit_event_after_qualifying_is_a_recorded_skip(env, ticks):
    at_noon, _ = ticks
    assert at_noon[("cart_abandoned", "c_exit")] == ("skipped", "exited")
    error = env.scalar("select error from nudge.messages where contact_id = 'c_exit'")
    assert "purchased at 2026-11-01 10:00" in error


def test_quiet_hours_hold_then_send_in_the_contacts_morning(env, ticks):
    at_noon, next_morning = ticks
    assert at_noon[("cart_abandoned", "c_night")] == ("held", "quiet_hours")
    assert next_morning[("cart_abandoned", "c_night")] == ("sent", None)
    assert at_noon[("cart_abandoned", "c_mars")] == ("sent", None)
    recipients = sorted(m["To"].addresses[0].addr_spec for m in env.emails())
    assert recipients == ["c_both@example.com", "c_mars@example.com", "c_night@example.com"]


def test_the_send_step_reports_the_holds_and_skips(ticks, env):
    at_noon, next_morning = ticks
    # decisions never change once final: the morning tick only changed the held one
    changed = {key for key in at_noon if at_noon[key] != next_morning[key]}
    assert changed == {("cart_abandoned", "c_night")}


def test_every_automation_passes_the_circuit_breaker_and_each_tick_is_on_record(env, ticks):
    history = env.query("select automation, as_of, due, tripped from nudge.tick_history order by all")
    automations = set(env.categories())
    assert {(automation, as_of) for automation, as_of, _, _ in history} == {
        (automation, as_of) for automation in automations for as_of in (NOON, NEXT_MORNING_IN_TOKYO)
    }
    assert not any(tripped for *_, tripped in history)
    due_at_noon = {automation: due for automation, as_of, due, _ in history if as_of == NOON}
    # every planted cart came due at noon, the one that exits too: the count is of candidates, not of sends
    assert (due_at_noon["welcome"], due_at_noon["cart_abandoned"]) == (1, 4)
