from datetime import datetime, timedelta

from dagster_project.automations import automation_from_node
from dagster_project.ledger import Reason, Status
from dagster_project.policies import Candidate, decide, in_holdout

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


def verdict(c, a=None, entered=None):
    return decide(c, a or automation(), as_of=AS_OF, entered_this_tick={} if entered is None else entered)


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
