import dataclasses
from datetime import datetime

import duckdb
import pytest

from dagster_project.ledger import (
    LEDGER_COLUMNS,
    LEDGER_TABLE,
    DuplicateKeys,
    Entry,
    NotClaimed,
    Outcome,
    ensure_ledger,
    mark,
    mark_interrupted,
    pending_keys,
    record,
    status_counts,
)
from dagster_project.migrations import has_primary_key

AS_OF = datetime(2026, 11, 1, 12)
NOW = datetime(2026, 11, 1, 12, 0, 5)


@pytest.fixture
def con(tmp_path):
    connection = duckdb.connect(str(tmp_path / "ledger.duckdb"))
    ensure_ledger(connection)
    yield connection
    connection.close()


def entry(key, status="pending", reason=None):
    return Entry("welcome", key, f"c_{key}", "a@b.example", f"<{key}@x>", status, reason, None, AS_OF, AS_OF, "Hi")


def row(con, key):
    return con.execute(
        "select status, reason, attempts, sent_at, decided_at from nudge.messages where trigger_key = ?", [key]
    ).fetchone()


def test_claim_then_mark_sent_counts_one_attempt(con):
    record(con, [entry("k1"), entry("k2", "skipped", "stale")], as_of=AS_OF, now=NOW)
    assert pending_keys(con, "welcome") == ["k1"]
    mark(con, [Outcome("welcome", "k1", "sent")], as_of=AS_OF, now=NOW)
    assert row(con, "k1") == ("sent", None, 1, AS_OF, AS_OF)
    assert row(con, "k2") == ("skipped", "stale", 0, None, AS_OF)
    assert pending_keys(con, "welcome") == []


def test_a_retried_failure_keeps_its_attempts_and_first_decision(con):
    record(con, [entry("k1")], as_of=AS_OF, now=NOW)
    mark(con, [Outcome("welcome", "k1", "failed", "temporary", "451 try later")], as_of=AS_OF, now=NOW)
    later = datetime(2026, 11, 1, 13)
    record(con, [entry("k1")], as_of=later, now=later)
    mark(con, [Outcome("welcome", "k1", "sent")], as_of=later, now=later)
    assert row(con, "k1") == ("sent", None, 2, later, AS_OF)


def test_decisions_naming_a_key_twice_are_refused_and_nothing_of_them_is_written(con):
    with pytest.raises(DuplicateKeys, match="welcome/k1"):
        record(con, [entry("k1"), entry("k2"), entry("k1", "skipped", "stale")], as_of=AS_OF, now=NOW)
    assert con.execute("select count(*) from nudge.messages").fetchone()[0] == 0
    # The same key in two automations is two keys.
    record(con, [entry("k1"), Entry("cart_abandoned", "k1", "c_k1", None, "<k1@y>", "pending", None, None, AS_OF,
                                    AS_OF)], as_of=AS_OF, now=NOW)
    assert con.execute("select count(*) from nudge.messages").fetchone()[0] == 2


def test_interrupted_claims_become_unknown_with_an_explanation(con):
    record(con, [entry("k1"), entry("k2")], as_of=AS_OF, now=NOW)
    mark(con, [Outcome("welcome", "k2", "sent")], as_of=AS_OF, now=NOW)
    assert mark_interrupted(con, "welcome", pending_keys(con, "welcome"), now=NOW) == 1
    status, reason, attempts, _, _ = row(con, "k1")
    assert (status, reason, attempts) == ("unknown", "interrupted", 0)
    assert row(con, "k2")[0] == "sent"
    assert ("welcome", "unknown", "interrupted", 1) in status_counts(con)


def test_a_temporary_failure_on_the_last_attempt_is_attempts_exhausted_with_the_servers_words(con):
    from dagster_project.ledger import MAX_ATTEMPTS

    record(con, [entry("k1")], as_of=AS_OF, now=NOW)
    for attempt in range(1, MAX_ATTEMPTS + 1):
        record(con, [entry("k1")], as_of=AS_OF, now=NOW)
        mark(con, [Outcome("welcome", "k1", "failed", "temporary", f"451 try later ({attempt})")], as_of=AS_OF, now=NOW)
        status, reason, attempts, _, _ = row(con, "k1")
        assert attempts == attempt
        assert (status, reason) == (("failed", "temporary") if attempt < MAX_ATTEMPTS else ("failed", "attempts_exhausted"))
    error = con.execute("select error from nudge.messages where trigger_key = 'k1'").fetchone()[0]
    assert error == f"451 try later ({MAX_ATTEMPTS})"
    # A final rejection on the last attempt stays what the server said.
    record(con, [entry("k2")], as_of=AS_OF, now=NOW)
    con.execute("update nudge.messages set attempts = ? where trigger_key = 'k2'", [MAX_ATTEMPTS - 1])
    mark(con, [Outcome("welcome", "k2", "failed", "rejected", "550 no such user")], as_of=AS_OF, now=NOW)
    assert row(con, "k2")[:3] == ("failed", "rejected", MAX_ATTEMPTS)


def test_claims_said_to_be_new_are_inserted_and_others_merged_by_key(con):
    record(con, [entry("k1"), entry("k2")], as_of=AS_OF, now=NOW, new=True)
    assert pending_keys(con, "welcome") == ["k1", "k2"]
    mark(con, [Outcome("welcome", "k1", "failed", "temporary", "451 try later")], as_of=AS_OF, now=NOW)
    later = datetime(2026, 11, 1, 13)
    # k1 has a row (a retry), k3 has none: the merge overwrites one and inserts the other.
    record(con, [entry("k1"), entry("k3")], as_of=later, now=later)
    assert row(con, "k1") == ("pending", None, 1, None, AS_OF)
    assert row(con, "k3") == ("pending", None, 0, None, later)
    assert con.execute("select count(*) from nudge.messages").fetchone()[0] == 3


def test_a_hold_decided_the_same_way_again_is_left_as_it_was(con):
    until = datetime(2026, 11, 1, 20)
    held = Entry("welcome", "k1", "c_k1", "a@b.example", "<k1@x>", "held", "quiet_hours", None, AS_OF, AS_OF,
                 held_until=until)
    record(con, [held], as_of=AS_OF, now=NOW)
    later = datetime(2026, 11, 1, 13)
    record(con, [held], as_of=later, now=later)
    assert con.execute("select updated_at from nudge.messages").fetchall() == [(NOW,)]
    record(con, [dataclasses.replace(held, held_until=datetime(2026, 11, 1, 21))], as_of=later, now=later)
    assert con.execute("select updated_at, decided_at from nudge.messages").fetchall() == [(later, AS_OF)]


def test_a_keyed_ledger_from_before_session_12_is_rebuilt_without_its_key_keeping_every_row(tmp_path):
    connection = duckdb.connect(str(tmp_path / "old.duckdb"))
    schema, table = LEDGER_TABLE.split(".")
    connection.execute(f"create schema {schema}")
    connection.execute(f"create table {LEDGER_TABLE} ({LEDGER_COLUMNS}, primary key (automation, trigger_key))")
    record(connection, [entry("k1"), entry("k2", "skipped", "stale")], as_of=AS_OF, now=NOW)
    before = connection.execute(f"select * from {LEDGER_TABLE} order by trigger_key").fetchall()
    assert has_primary_key(connection, schema, table)

    ensure_ledger(connection)

    assert not has_primary_key(connection, schema, table)
    assert connection.execute(f"select * from {LEDGER_TABLE} order by trigger_key").fetchall() == before
    ensure_ledger(connection)  # once only: a current ledger is left alone
    assert connection.execute(f"select * from {LEDGER_TABLE} order by trigger_key").fetchall() == before
    connection.close()


def test_an_answer_for_a_message_never_claimed_is_refused_and_nothing_of_its_batch_is_marked(con):
    record(con, [entry("k1"), entry("k2", "skipped", "stale")], as_of=AS_OF, now=NOW)
    with pytest.raises(NotClaimed, match="1 of 2 answers name no pending claim, among them welcome/k2"):
        mark(con, [Outcome("welcome", "k1", "sent"), Outcome("welcome", "k2", "sent")], as_of=AS_OF, now=NOW)
    assert row(con, "k1") == ("pending", None, 0, None, AS_OF)
    assert row(con, "k2") == ("skipped", "stale", 0, None, AS_OF)
    # A mark of what was claimed still goes through on the same connection.
    mark(con, [Outcome("welcome", "k1", "sent")], as_of=AS_OF, now=NOW)
    assert row(con, "k1") == ("sent", None, 1, AS_OF, AS_OF)
