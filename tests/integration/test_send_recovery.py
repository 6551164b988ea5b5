"""What a send does with the claims a dead run left behind, per backend.

A crash between claim and mark leaves `pending` rows. The file backend
deduplicates by Message-ID, so those are delivered again (the same file); SMTP
cannot, so they become `unknown` and are never handed over again.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import duckdb
import pytest
import send_warehouse
from send_warehouse import AS_OF, send

from dagster_project.backends import FileBackend, backend_from_url
from dagster_project.backends.base import BackendUnavailable
from dagster_project.ledger import Entry, ensure_ledger, record
from dagster_project.messages import message_id


@pytest.fixture(autouse=True)
def batches_of_two(monkeypatch):
    # The file backend's batches are larger by default; these tests follow the file backend's
    # claims, flushes and marks batch by batch, in batches of two as over SMTP.
    monkeypatch.setattr(send_warehouse, "CONFIG", dataclasses.replace(send_warehouse.CONFIG, local_batch_size=2))


@pytest.fixture
def con(tmp_path):
    """A warehouse with five welcome qualifications, two of them claimed by a run that died."""
    connection = duckdb.connect(str(tmp_path / "warehouse.duckdb"))
    connection.execute(
        """
        create schema triggers; create schema staging;
        create table staging.stg_contacts as
            select 'c_' || i as contact_id, 'person' || i || '@example.com' as email, 'subscribed' as status,
                   'Person' as first_name, 'No' || i as last_name, 'UTC' as timezone, '{}' as properties,
                   timestamp '2026-10-01' as updated_at
            from range(5) t(i);
        create table triggers.trg_welcome as
            select contact_id, contact_id as trigger_key, timestamp '2026-11-01 11:00' as qualified_at,
                   timestamp '2026-11-01 11:00' as due_at, '{}' as context
            from staging.stg_contacts;
        """
    )
    ensure_ledger(connection)
    claimed = [
        Entry("welcome", key, key, f"person{key[-1]}@example.com", message_id("welcome", key, "nudge.example"),
              "pending", None, None, AS_OF - timedelta(hours=1), AS_OF - timedelta(hours=1), "Welcome")
        for key in ("c_0", "c_1")
    ]
    record(connection, claimed, as_of=AS_OF - timedelta(hours=1), now=AS_OF)
    yield connection
    connection.close()


def statuses(con):
    return dict(con.execute("select trigger_key, status from nudge.messages order by 1").fetchall())


def test_smtp_never_resends_an_ambiguous_claim(con, smtp_sink):
    with backend_from_url(smtp_sink.url) as backend:
        report = send(con, backend, AS_OF)
    assert report.interrupted == 2
    assert statuses(con) == {"c_0": "unknown", "c_1": "unknown", "c_2": "sent", "c_3": "sent", "c_4": "sent"}
    received = sorted(m.rcpt_tos[0] for m in smtp_sink.messages)
    assert received == ["person2@example.com", "person3@example.com", "person4@example.com"]
    error = con.execute("select error from nudge.messages where trigger_key = 'c_0'").fetchone()[0]
    assert "cannot deduplicate" in error

    with backend_from_url(smtp_sink.url) as backend:  # and a later tick leaves them alone too
        again = send(con, backend, AS_OF + timedelta(hours=1))
    assert (again.due, again.sent, again.interrupted) == (0, 0, 0)
    assert len(smtp_sink.messages) == 3


def test_a_deduplicating_backend_gets_the_ambiguous_claims_again_under_the_same_message_id(con, tmp_path):
    outbox = tmp_path / "outbox"
    with backend_from_url(f"file://{outbox}") as backend:
        report = send(con, backend, AS_OF)
    assert (report.due, report.sent, report.interrupted) == (5, 5, 0)
    assert set(statuses(con).values()) == {"sent"}
    files = sorted(outbox.rglob("*.eml"))
    assert len(files) == 5
    expected = {message_id("welcome", f"c_{i}", "nudge.example") for i in range(5)}
    assert {row[0] for row in con.execute("select message_id from nudge.messages").fetchall()} == expected


def test_claims_are_written_in_batches_and_all_marked(con, tmp_path):
    con.execute("delete from nudge.messages")
    with backend_from_url(f"file://{tmp_path / 'outbox'}") as backend:
        report = send(con, backend, AS_OF)
    assert report.sent == 5
    assert con.execute("select count(*), min(attempts), max(attempts) from nudge.messages").fetchone() == (5, 1, 1)
    assert con.execute("select count(*) from nudge.messages where status = 'pending'").fetchone()[0] == 0


class FlushWatcher(FileBackend):
    """The file backend, noting the ledger at each flush; the flush of batch `fail_at` fails."""

    def __init__(self, root, con, fail_at: int | None = None) -> None:
        super().__init__(root)
        self.con, self.fail_at, self.seen = con, fail_at, []

    def flush(self) -> None:
        self.seen.append(statuses(self.con.cursor()))
        if len(self.seen) == self.fail_at:
            raise BackendUnavailable("the disk went away")
        super().flush()


def test_a_batch_is_flushed_to_the_backend_before_it_is_marked_sent(con, tmp_path):
    con.execute("delete from nudge.messages")
    backend = FlushWatcher(tmp_path / "outbox", con)
    with backend:
        assert send(con, backend, AS_OF).sent == 5
    # batches of two: at each flush its own claims are still pending, the ones before already sent
    assert backend.seen == [
        {"c_0": "pending", "c_1": "pending"},
        {"c_0": "sent", "c_1": "sent", "c_2": "pending", "c_3": "pending"},
        {"c_0": "sent", "c_1": "sent", "c_2": "sent", "c_3": "sent", "c_4": "pending"},
    ]


def test_a_failed_flush_marks_nothing_sent_and_the_next_tick_writes_the_batch_again(con, tmp_path):
    con.execute("delete from nudge.messages")
    outbox = tmp_path / "outbox"
    with pytest.raises(BackendUnavailable, match="the disk went away"), FlushWatcher(outbox, con, fail_at=2) as backend:
        send(con, backend, AS_OF)
    assert statuses(con) == {"c_0": "sent", "c_1": "sent", "c_2": "pending", "c_3": "pending"}

    with backend_from_url(f"file://{outbox}") as backend:
        send(con, backend, AS_OF)
    assert set(statuses(con).values()) == {"sent"}
    assert len(list(outbox.rglob("*.eml"))) == 5
