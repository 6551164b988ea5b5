"""The verdicts decided in SQL are the ones policies.decide gives, row for row and word for word.

send_automation writes every verdict that needs only the data (stale, before start, exited, no
contact, no email, suppressed, unsubscribed, not subscribed) in one SQL statement and hands only the
rest to policies.decide. Here a seeded mix of candidates planted around every rule and edge (the send
window to the microsecond, missing values, earlier ledger rows, an unsubscribe still in the journal)
goes through send_automation on a real DuckDB file. The reference is policies.decide over the same
candidates, read before the send and in the order the send reads them: how the send decided every
row before those verdicts moved to SQL. Every ledger row must be what decide said.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from datetime import datetime, timedelta

import duckdb
import pytest
from send_warehouse import CONFIG

from dagster_project.automations import Policy, automation_from_node
from dagster_project.backends.file import FileBackend
from dagster_project.ledger import Reason, Status, ensure_ledger
from dagster_project.messages import message_id, sender_domain
from dagster_project.policies import Candidate, TickState, decide
from dagster_project.due_scope import DueScope
from dagster_project.send import _candidate_params, _candidates_sql, _params_of, _write_due, send_automation
from dagster_project.suppressions import UnsubscribeJournal, ensure_unsubscribes, move_to_warehouse

SQL_REASONS = {
    Reason.BEFORE_START, Reason.STALE, Reason.EXITED, Reason.UNKNOWN_CONTACT, Reason.NO_EMAIL,
    Reason.SUPPRESSED, Reason.UNSUBSCRIBED, Reason.NOT_SUBSCRIBED,
}
# Transactional mail has no start_at or exits here, and no unsubscribe or subscription rules.
TRANSACTIONAL_SQL_REASONS = {Reason.STALE, Reason.UNKNOWN_CONTACT, Reason.NO_EMAIL, Reason.SUPPRESSED}
WINDOW = timedelta(hours=48)
# Ages around every edge of the send window and of str(timedelta): microseconds, one day, days.
AGES = [
    timedelta(0), timedelta(hours=1), WINDOW - timedelta(microseconds=1), WINDOW, WINDOW + timedelta(microseconds=1),
    WINDOW + timedelta(seconds=1), timedelta(days=3, hours=4, minutes=5, seconds=6),
    timedelta(days=40, microseconds=123456), timedelta(days=1, hours=23, minutes=59, seconds=59, microseconds=999999),
    timedelta(days=400, hours=10), timedelta(hours=-2),  # not due yet
]
NOT_DUE = timedelta(hours=-2)

AUTOMATIONS = {
    # marketing: start_at, exits, hold-out, quiet hours, the cap, re-entry every time
    "welcome": {"send_window": "48h", "reentry": "every_time", "exit_events": ["purchased", "cancelled"],
                "start_at": "2026-10-25T06:30:00Z", "holdout_percent": 20},
    # transactional: no unsubscribe or subscription rules, no quiet hours, re-entry after 24h
    "receipt": {"template": "welcome", "category": "transactional", "send_window": "48h", "reentry": "24h"},
}


def _automation(name: str):
    return automation_from_node({
        "unique_id": f"model.nudge.trg_{name}", "resource_type": "model", "name": f"trg_{name}",
        "schema": "triggers", "config": {"meta": {"nudge": AUTOMATIONS[name]}},
    })


def _plant(con: duckdb.DuckDBPyConnection, journal: UnsubscribeJournal, as_of: datetime, seed: int) -> None:
    rng = random.Random(seed)
    con.execute("create schema triggers; create schema staging; create schema intermediate")
    contacts = []
    for i in range(120):
        email = rng.choices([f"p{i}@example.com", None, "", f" P{i}@Example.COM "], [80, 5, 5, 10])[0]
        contacts.append((
            f"c_{i}", email, rng.choices(["subscribed", "unsubscribed", None, "bounced"], [70, 15, 10, 5])[0],
            rng.choice(["Sam", None, "Zoë"]), "Lee",
            rng.choice(["UTC", "Asia/Tokyo", "Europe/London", None, "Mars/Olympus_Mons"]), '{"plan": "free"}',
        ))
    con.execute("create table staging.stg_contacts (contact_id varchar, email varchar, status varchar, first_name varchar,"
                " last_name varchar, timezone varchar, properties varchar)")
    con.executemany("insert into staging.stg_contacts values (?, ?, ?, ?, ?, ?, ?)", contacts)

    suppressions = {}
    for contact_id, email, *_ in contacts:
        if email and rng.random() < 0.12:
            suppressions[email.strip().lower()] = (
                rng.choice(["hard_bounce", "complaint"]),
                rng.choice([None, as_of - timedelta(days=rng.randint(0, 30), seconds=rng.randint(0, 86399))]),
                rng.choice([None, f"ev_{contact_id}"]),
            )
    con.execute("create table intermediate.int_email_suppressions (email varchar, reason varchar, occurred_at timestamp,"
                " event_id varchar)")
    con.executemany("insert into intermediate.int_email_suppressions values (?, ?, ?, ?)",
                    [(email, *rest) for email, rest in suppressions.items()])

    ensure_unsubscribes(con)
    for contact_id, *_ in contacts:
        roll = rng.random()
        if roll < 0.08:
            con.execute("insert into nudge.unsubscribes values (?, ?, ?, 'one_click', ?, null)",
                        [contact_id, rng.choice(["marketing", "marketing", "other"]),
                         as_of - timedelta(days=2, microseconds=rng.randint(0, 10**6)), as_of])
        elif roll < 0.11:
            # Still in the journal: the send moves it into the warehouse before it decides.
            journal.record(contact_id, "marketing", source="one_click", at=as_of - timedelta(minutes=rng.randint(1, 90)))

    events = []
    ensure_ledger(con)
    for name in AUTOMATIONS:
        triggers = []
        for j in range(300):
            contact_id = f"c_{rng.randint(0, 139)}"  # c_120.. have no contact row
            due_at = as_of - rng.choice(AGES)
            qualified_at = due_at - timedelta(minutes=rng.choice([0, 0, 30]))
            key = f"{name}_{j}"
            triggers.append((contact_id, key, qualified_at, due_at, "{}"))
            if rng.random() < 0.15:
                # an exit event: before qualifying (ignored), after it, after the tick (ignored), or syncing history
                occurred = qualified_at + rng.choice([timedelta(minutes=-5), timedelta(minutes=20), timedelta(days=5)])
                events.append((contact_id, rng.choice(["purchased", "cancelled", "viewed"]), occurred,
                               rng.random() < 0.2))
            prior = rng.random()
            if prior < 0.04:
                _ledger_row(con, name, contact_id, key, "held", "quiet_hours", 0, qualified_at, due_at, as_of)
            elif prior < 0.07:
                _ledger_row(con, name, contact_id, key, "failed", "temporary", 1, qualified_at, due_at, as_of)
            elif prior < 0.09:
                _ledger_row(con, name, contact_id, key, "pending", None, 0, qualified_at, due_at, as_of)
            elif prior < 0.11:
                _ledger_row(con, name, contact_id, key, "sent", None, 1, qualified_at, due_at, as_of)
        con.execute(f"create table triggers.trg_{name} (contact_id varchar, trigger_key varchar, qualified_at timestamp,"
                    " due_at timestamp, context varchar)")
        con.executemany(f"insert into triggers.trg_{name} values (?, ?, ?, ?, ?)", triggers)
    # Earlier marketing mail and entries, for the cap and re-entry.
    for i in range(0, 140, 3):
        _ledger_row(con, rng.choice(["promo", "welcome", "receipt"]), f"c_{i}", f"old_{i}", "sent", None, 1,
                    as_of - timedelta(days=3), as_of - timedelta(days=3), as_of - timedelta(hours=rng.randint(1, 200)))
    con.execute("create table intermediate.int_events (contact_id varchar, event_name varchar, occurred_at timestamp,"
                " is_syncing boolean)")
    con.executemany("insert into intermediate.int_events values (?, ?, ?, ?)", events)


def _ledger_row(con, automation, contact_id, key, status, reason, attempts, qualified_at, due_at, decided_at) -> None:
    con.execute(
        "insert into nudge.messages (automation, trigger_key, contact_id, email, message_id, status, reason, error,"
        " attempts, qualified_at, due_at, decided_at, sent_at, updated_at)"
        " values (?, ?, ?, null, ?, ?, ?, 'earlier', ?, ?, ?, ?, ?, ?)",
        [automation, key, contact_id, message_id(automation, key, "nudge.example"), status, reason, attempts,
         qualified_at, due_at, decided_at - timedelta(hours=1), decided_at if status == "sent" else None,
         decided_at - timedelta(hours=1)],
    )


def _reference(con, automation, as_of, policy, marketing):
    """policies.decide over every candidate, in the send's order: (candidate, verdict) by trigger key."""
    params = _candidate_params(automation, as_of, True, marketing)
    sql = _candidates_sql(automation, "staging.stg_contacts", "intermediate.int_events",
                          "intermediate.int_email_suppressions")
    _write_due(con, automation, params, DueScope.all_of_it(as_of))
    relation = con.sql(sql + " order by t.due_at, t.trigger_key", params=_params_of(sql, params))
    columns = relation.columns
    state = TickState()
    decided = {}
    for row in relation.fetchall():
        # The candidates query carries no context (the send reads it for the rows it composes);
        # no verdict depends on it.
        candidate = Candidate(**dict(zip(columns, row, strict=True)), context=None)
        decided[candidate.trigger_key] = (candidate, decide(candidate, automation, as_of=as_of, policy=policy,
                                                            state=state))
    return decided


@pytest.mark.parametrize(("as_of", "seed"), [(datetime(2026, 11, 1, 12), 1), (datetime(2026, 11, 1, 12, 0, 0, 250000), 2)],
                         ids=["on_the_second", "with_microseconds"])
def test_every_ledger_row_is_the_verdict_policies_decide_gives(tmp_path, as_of, seed):
    con = duckdb.connect(str(tmp_path / "warehouse.duckdb"))
    journal = UnsubscribeJournal(tmp_path / "journal.sqlite")
    _plant(con, journal, as_of, seed)
    config = dataclasses.replace(CONFIG, batch_size=7, unsubscribe_journal=journal.path)
    policy = Policy()
    marketing = ["welcome", "promo"]
    move_to_warehouse(journal, con)  # what the send does first; it then finds nothing new to move

    with FileBackend(tmp_path / "outbox") as backend:
        for name in AUTOMATIONS:  # in priority order, like the send step: the cap sees the first one's sends
            automation = _automation(name)
            expected = _reference(con, automation, as_of, policy, marketing)
            before = {row[0]: row[1:] for row in con.execute(
                "select trigger_key, decided_at, attempts from nudge.messages where automation = ?", [name]).fetchall()}
            report = send_automation(
                con, automation, contacts_relation="staging.stg_contacts", events_relation="intermediate.int_events",
                backend=backend, config=config, as_of=as_of, policy=policy, marketing_automations=marketing,
                suppressions_relation="intermediate.int_email_suppressions",
            )
            ledger = {row[0]: row[1:] for row in con.execute(
                "select trigger_key, contact_id, email, message_id, status, reason, error, qualified_at, due_at,"
                " decided_at, attempts from nudge.messages where automation = ?", [name]).fetchall()}

            in_sql = Counter(v.reason for _, v in expected.values() if v.reason in SQL_REASONS)
            # the plant reaches every rule that applies
            assert set(in_sql) == (SQL_REASONS if automation.is_marketing else TRANSACTIONAL_SQL_REASONS), in_sql
            assert report.decided_in_sql == sum(in_sql.values())
            assert report.due == len(expected)
            domain = sender_domain(automation.sender or config.sender)
            for key, (candidate, verdict) in expected.items():
                contact_id, email, msg_id, status, reason, error, qualified_at, due_at, decided_at, attempts = ledger[key]
                assert (contact_id, email, qualified_at, due_at) == (
                    candidate.contact_id, candidate.email, candidate.qualified_at, candidate.due_at), key
                assert msg_id == message_id(name, key, domain), key
                if key in before:
                    assert decided_at == before[key][0], key  # a re-decided row keeps its first decision
                else:
                    assert (decided_at, attempts) == (as_of, 0 if status != Status.SENT else 1), key
                if verdict.status == Status.PENDING:
                    assert (status, reason) == (Status.SENT, None), key
                else:
                    assert (status, reason, error) == (verdict.status, verdict.reason, verdict.detail), key
            skipped = Counter(v.reason for _, v in expected.values() if v.status == Status.SKIPPED)
            assert report.skipped == skipped
            assert report.sent == sum(v.status == Status.PENDING for _, v in expected.values()) > 0
    con.close()
