from datetime import datetime

import duckdb
import pytest

from dagster_project.ledger import Entry, Outcome, ensure_ledger, mark, mark_interrupted, pending_keys, record, status_counts

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


def test_the_key_is_unique(con):
    record(con, [entry("k1")], as_of=AS_OF, now=NOW)
    with pytest.raises(duckdb.ConstraintException):
        con.execute("insert into nudge.messages select * from nudge.messages")


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


def test_claims_said_to_be_new_are_inserted_and_a_key_that_has_a_row_after_all_is_upserted(con):
    record(con, [entry("k1"), entry("k2")], as_of=AS_OF, now=NOW, new=True)
    assert pending_keys(con, "welcome") == ["k1", "k2"]
    mark(con, [Outcome("welcome", "k1", "failed", "temporary", "451 try later")], as_of=AS_OF, now=NOW)
    later = datetime(2026, 11, 1, 13)
    # k1 has a row (a retry), k3 has none: the plain insert fails whole, the upsert writes both.
    record(con, [entry("k1"), entry("k3")], as_of=later, now=later, new=True)
    assert row(con, "k1") == ("pending", None, 1, None, AS_OF)
    assert row(con, "k3") == ("pending", None, 0, None, later)
    assert con.execute("select count(*) from nudge.messages").fetchone()[0] == 3
