from datetime import datetime, timedelta

from datetime import time

import pytest

from dagster_project.automations import Policy, automation_from_node
from dagster_project.ledger import Reason, Status
from dagster_project.policies import Candidate, TickState, decide, in_holdout

AS_OF = datetime(2026, 11, 1, 12)


def automation(**meta):
    meta.setdefault("send_window", "24h")
    return automation_from_node(
        {"unique_id": "model.nudge.trg_cart_abandoned", "resource_type": "model", "name": "trg_cart_abandoned",
         "schema": "triggers", "config": {"meta": {"nudge": meta}}}
    )


def candidate(**overrides):
    values = dict(
        contact_id="c_1", trigger_key="e_1", qualified_at=AS_OF - timedelta(hours=1), due_at=AS_OF - timedelta(hours=1),
        context="{}", has_contact=True, email="a@b.example", contact_status="subscribed", first_name="Ann",
        last_name="Lee", timezone="Europe/Berlin", properties="{}", last_entered_at=None, ledger_status=None, attempts=0,
    )
    values.update(overrides)
    return Candidate(**values)


def verdict(c, a=None, entered=None, *, policy=None, state=None, as_of=AS_OF):
    state = state or TickState(entered={} if entered is None else entered)
    return decide(c, a or automation(), as_of=as_of, policy=policy or Policy(), state=state)


def test_a_due_reachable_candidate_is_sent():
    assert verdict(candidate()).status == Status.PENDING


def test_past_the_send_window_is_stale_even_at_the_edge():
    at_edge = candidate(due_at=AS_OF - timedelta(hours=24))
    past = candidate(due_at=AS_OF - timedelta(hours=24, seconds=1))
    assert verdict(at_edge).status == Status.PENDING
    stale = verdict(past)
    assert (stale.status, stale.reason) == (Status.SKIPPED, Reason.STALE)
    assert "past the send window" in stale.detail


def test_marketing_goes_only_to_subscribed_contacts_with_an_email():
    for status in ("unsubscribed", "cleaned", "pending"):
        v = verdict(candidate(contact_status=status))
        assert (v.status, v.reason) == (Status.SKIPPED, Reason.NOT_SUBSCRIBED)
        assert status in v.detail
    assert verdict(candidate(email=None)).reason == Reason.NO_EMAIL
    assert verdict(candidate(has_contact=False, email=None)).reason == Reason.UNKNOWN_CONTACT


def test_transactional_mail_ignores_marketing_consent_but_needs_an_address():
    transactional = automation(category="transactional")
    assert verdict(candidate(contact_status="unsubscribed"), transactional).status == Status.PENDING
    assert verdict(candidate(email=None), transactional).reason == Reason.NO_EMAIL


def test_reentry_period_counts_earlier_ticks_and_this_tick():
    cart = automation(reentry="24h")
    recent = candidate(last_entered_at=AS_OF - timedelta(hours=23))
    assert verdict(recent, cart).reason == Reason.REENTRY
    assert verdict(candidate(last_entered_at=AS_OF - timedelta(hours=24)), cart).status == Status.PENDING
    entered: dict = {}
    assert verdict(candidate(trigger_key="e_1"), cart, entered).status == Status.PENDING
    assert verdict(candidate(trigger_key="e_2"), cart, entered).reason == Reason.REENTRY
    assert verdict(candidate(contact_id="c_2", trigger_key="e_3"), cart, entered).status == Status.PENDING


def test_reentry_once_and_every_time():
    seen_before = candidate(last_entered_at=AS_OF - timedelta(days=300))
    assert verdict(seen_before, automation(reentry="once")).reason == Reason.REENTRY
    assert verdict(seen_before, automation(reentry="every_time")).status == Status.PENDING


def test_a_leftover_claim_is_only_stopped_by_the_contact():
    claimed = candidate(ledger_status="pending", due_at=AS_OF - timedelta(days=30), last_entered_at=AS_OF)
    assert verdict(claimed).status == Status.PENDING
    assert verdict(candidate(ledger_status="pending", contact_status="unsubscribed")).reason == Reason.NOT_SUBSCRIBED


def test_holdout_is_deterministic_and_near_its_share():
    members = [f"c_{i}" for i in range(20_000)]
    held = [m for m in members if in_holdout("cart_abandoned", m, 10)]
    assert held == [m for m in members if in_holdout("cart_abandoned", m, 10)]
    assert 0.09 < len(held) / len(members) < 0.11
    assert not any(in_holdout("cart_abandoned", m, 0) for m in members[:1000])
    v = verdict(candidate(contact_id=held[0]), automation(holdout_percent=10))
    assert v.status == Status.HELD_OUT


def test_an_exit_event_after_qualifying_skips_the_message_with_the_event_named():
    logged_in = candidate(exited_at=AS_OF - timedelta(minutes=30), exit_event="logged_in")
    v = verdict(logged_in, automation(exit_events=["logged_in"]))
    assert (v.status, v.reason) == (Status.SKIPPED, Reason.EXITED)
    assert "logged_in" in v.detail


def test_start_at_skips_what_qualified_before_it():
    starts = automation(start_at="2026-11-01T11:30:00Z")
    assert verdict(candidate(), starts).reason == Reason.BEFORE_START
    assert verdict(candidate(qualified_at=AS_OF - timedelta(minutes=10)), starts).status == Status.PENDING


@pytest.mark.parametrize(
    ("timezone", "tick_hour", "status"),
    [
        ("Europe/Berlin", 12, Status.PENDING),  # 13:00 there
        ("Europe/Berlin", 21, Status.HELD),  # 22:00 there
        ("Asia/Tokyo", 12, Status.HELD),  # 21:00 there: the window starts inclusive
        ("Asia/Tokyo", 23, Status.PENDING),  # 08:00 there: and ends exclusive
        ("Mars/Olympus_Mons", 22, Status.HELD),  # an invalid zone counts as UTC
        (None, 12, Status.PENDING),
    ],
)
def test_quiet_hours_hold_marketing_in_the_contacts_own_timezone(timezone, tick_hour, status):
    as_of = AS_OF.replace(hour=tick_hour)
    c = candidate(timezone=timezone, qualified_at=as_of - timedelta(hours=1), due_at=as_of - timedelta(hours=1))
    v = verdict(c, as_of=as_of)
    assert v.status == status
    if status == Status.HELD:
        assert v.reason == Reason.QUIET_HOURS and "held until 08:00" in v.detail
        # the next 08:00 there, in UTC: no tick decides the message again before it
        assert v.until == {"Europe/Berlin": datetime(2026, 11, 2, 7), "Asia/Tokyo": datetime(2026, 11, 1, 23),
                           "Mars/Olympus_Mons": datetime(2026, 11, 2, 8)}[timezone]


def test_transactional_mail_ignores_quiet_hours_unless_it_asks():
    night = AS_OF.replace(hour=23)
    c = candidate(qualified_at=night, due_at=night)
    assert verdict(c, automation(category="transactional"), as_of=night).status == Status.PENDING
    asks = automation(category="transactional", quiet_hours=True)
    assert verdict(c, asks, as_of=night).status == Status.HELD
    assert verdict(c, automation(quiet_hours=False), as_of=night).status == Status.PENDING


def test_a_held_message_is_decided_again_and_goes_stale_when_its_window_ends():
    held = candidate(ledger_status="held", due_at=AS_OF - timedelta(hours=25))
    assert verdict(held).reason == Reason.STALE
    assert verdict(candidate(ledger_status="held")).status == Status.PENDING


def test_the_frequency_cap_counts_earlier_messages_and_this_tick_but_not_transactional_mail():
    policy = Policy(cap_per_day=1, cap_per_week=3)
    v = verdict(candidate(marketing_last_day=1, marketing_last_week=1), policy=policy)
    assert (v.status, v.reason) == (Status.SKIPPED, Reason.CAPPED) and "24 hours" in v.detail
    assert verdict(candidate(marketing_last_week=3), policy=policy).reason == Reason.CAPPED
    assert verdict(candidate(marketing_last_week=2), policy=policy).status == Status.PENDING

    state = TickState()
    every_time = automation(reentry="every_time")
    assert verdict(candidate(trigger_key="e_1"), every_time, policy=policy, state=state).status == Status.PENDING
    assert verdict(candidate(trigger_key="e_2"), every_time, policy=policy, state=state).reason == Reason.CAPPED
    transactional = automation(category="transactional")
    capped_out = candidate(trigger_key="e_3", marketing_last_day=5, marketing_last_week=9)
    assert verdict(capped_out, transactional, policy=policy, state=state).status == Status.PENDING
    assert verdict(candidate(marketing_last_day=5), policy=Policy(cap_per_day=None, cap_per_week=None)).status == Status.PENDING


def test_quiet_hours_can_span_midnight_or_not():
    assert Policy(quiet_start=time(21), quiet_end=time(8)).in_quiet_hours(time(2))
    assert not Policy(quiet_start=time(21), quiet_end=time(8)).in_quiet_hours(time(12))
    assert Policy(quiet_start=time(1), quiet_end=time(5)).in_quiet_hours(time(3))
    assert not Policy(quiet_start=time(1), quiet_end=time(5)).in_quiet_hours(time(6))
    assert not Policy(quiet_start=time(0), quiet_end=time(0)).in_quiet_hours(time(3))
