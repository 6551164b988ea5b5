"""Unsubscribes and suppressions as decisions, and the journal's move into the warehouse."""

from __future__ import annotations

from datetime import datetime, timedelta

import duckdb

from dagster_project.automations import Policy
from dagster_project.ledger import Reason, Status
from dagster_project.policies import TickState, decide
from dagster_project.suppressions import ONE_CLICK, UnsubscribeGuard, UnsubscribeJournal, move_to_warehouse
from tests.unit.test_policies import AS_OF, automation, candidate

MARKETING = automation(category="marketing")
TRANSACTIONAL = automation(category="transactional")


def decided(c, a):
    return decide(c, a, as_of=AS_OF, policy=Policy(), state=TickState())


def test_an_unsubscribe_stops_marketing_only_even_while_the_source_says_subscribed():
    unsubscribed = candidate(unsubscribed_at=AS_OF - timedelta(minutes=5), timezone="UTC")
    verdict = decided(unsubscribed, MARKETING)
    assert (verdict.status, verdict.reason) == (Status.SKIPPED, Reason.UNSUBSCRIBED)
    assert decided(unsubscribed, TRANSACTIONAL).status == Status.PENDING


def test_a_suppressed_address_stops_every_category_and_the_error_names_why():
    for kind, word in (("hard_bounce", "bounced hard"), ("complaint", "complained")):
        dead = candidate(suppression=kind, suppressed_at=AS_OF - timedelta(days=3), suppression_event_id="e9")
        for a in (MARKETING, TRANSACTIONAL):
            verdict = decided(dead, a)
            assert (verdict.status, verdict.reason) == (Status.SKIPPED, Reason.SUPPRESSED)
            assert verdict.detail.startswith(f"{kind}:") and word in verdict.detail and "e9" in verdict.detail


def test_a_claim_left_pending_by_a_dead_run_is_not_redelivered_after_an_unsubscribe():
    claimed = candidate(ledger_status="pending", unsubscribed_at=AS_OF)
    assert decided(claimed, MARKETING).reason == Reason.UNSUBSCRIBED


def test_moving_the_journal_is_idempotent_and_each_warehouse_keeps_its_own_place(tmp_path):
    journal = UnsubscribeJournal(tmp_path / "j.sqlite")
    assert journal.record("c_1", "marketing", source=ONE_CLICK, at=datetime(2026, 11, 1, 9))
    assert not journal.record("c_1", "marketing", source=ONE_CLICK)  # the first click counts
    real, scratch = duckdb.connect(str(tmp_path / "a.duckdb")), duckdb.connect(str(tmp_path / "b.duckdb"))
    assert move_to_warehouse(journal, real) == 1
    assert move_to_warehouse(journal, real) == 0
    assert move_to_warehouse(journal, scratch) == 1  # a backtest's copy takes nothing away from the real one
    journal.record("c_2", "marketing", source=ONE_CLICK)
    assert move_to_warehouse(journal, real) == 1
    assert real.execute(
        "select contact_id, unsubscribed_at, journal_id from nudge.unsubscribes order by 1"
    ).fetchall()[0] == ("c_1", datetime(2026, 11, 1, 9), 1)


def test_the_guard_sees_what_arrives_after_its_last_refresh(tmp_path):
    journal = UnsubscribeJournal(tmp_path / "j.sqlite")
    journal.record("c_1", "marketing", source=ONE_CLICK)
    journal.record("c_9", "another-list", source=ONE_CLICK)
    with UnsubscribeGuard(journal, "marketing") as guard:
        guard.refresh()
        assert guard.unsubscribed_at("c_1") and not guard.unsubscribed_at("c_9")
        journal.record("c_2", "marketing", source=ONE_CLICK)
        assert guard.unsubscribed_at("c_2") is None  # not in the batch's set ...
        assert guard.unsubscribed_now("c_2") is not None  # ... but the last look finds it
    with UnsubscribeGuard(None, "marketing") as nothing:
        nothing.refresh()
        assert nothing.unsubscribed_now("c_1") is None
