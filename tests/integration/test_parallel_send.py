"""A batch handed to several SMTP connections at once, against a real aiosmtpd on loopback.

The send gives each free connection a message of the batch (SmtpBackend keeps one connection per
thread, `connections=N`); every guarantee of the one-connection send holds: each message once, the
claims before the hand-over, and after an outage no message the server took is ever sent again.
"""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest
from send_warehouse import AS_OF, CONFIG, WELCOME, ledger, welcome_warehouse
from smtp_sink import SmtpSink

from dagster_project.automations import Policy
from dagster_project.backends import backend_from_url
from dagster_project.backends.base import BackendUnavailable, Delivery, EmailBackend
from dagster_project.send import send_automation

EMAILS = [f"person{i}@example.com" for i in range(12)]


def send(con, backend, batch_size=6):
    return send_automation(con, WELCOME, contacts_relation="staging.stg_contacts",
                           events_relation="intermediate.int_events", backend=backend,
                           config=dataclasses.replace(CONFIG, batch_size=batch_size), as_of=AS_OF,
                           policy=Policy(cap_per_day=None, cap_per_week=None), marketing_automations=["welcome"])


@pytest.fixture
def con(tmp_path):
    connection = welcome_warehouse(tmp_path / "warehouse.duckdb", EMAILS)
    yield connection
    connection.close()


def test_a_batch_goes_out_over_several_connections_each_message_once(con):
    # A slow server answer keeps a connection busy, so the next message must take another one.
    with SmtpSink(stall_seconds=0.2) as sink, backend_from_url(f"{sink.url}?connections=3") as backend:
        assert backend.concurrency == 3
        report = send(con, backend)
        received = sink.messages

    assert report.sent == len(EMAILS)
    assert sorted(m.rcpt_tos[0] for m in received) == sorted(EMAILS)  # each exactly once
    assert 2 <= len({m.peer for m in received}) <= 3
    assert {row[:3] for row in ledger(con).values()} == {("sent", None, 1)}
    assert sorted(m.message_id for m in received) == sorted(
        row[0] for row in con.execute("select message_id from nudge.messages").fetchall()
    )


def test_after_an_outage_over_several_connections_nothing_the_server_took_is_sent_again(con):
    sink = SmtpSink(stall_seconds=0.1).start()

    def stop_after_four() -> None:
        deadline = time.monotonic() + 30
        while len(sink.messages) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        sink.stop()

    stopper = threading.Thread(target=stop_after_four)
    stopper.start()
    try:
        with backend_from_url(f"{sink.url}?connections=3&retries=0") as backend:
            with pytest.raises(BackendUnavailable):
                send(con, backend)
    finally:
        stopper.join()
        sink.stop()
    first = {m.rcpt_tos[0] for m in sink.messages}
    rows = ledger(con)
    email_of = dict(con.execute("select contact_id, email from staging.stg_contacts").fetchall())

    assert "pending" not in {status for status, *_ in rows.values()}
    for key, (status, reason, attempts, _error) in rows.items():
        if email_of[key] in first:
            # taken by the server: sent, or unknown if its answer was lost; never to be retried
            assert status in ("sent", "unknown"), (key, status)
        else:
            # never handed over, or handed over and refused by a server going down: retried later
            assert (status, reason) in {("failed", "temporary"), ("unknown", "interrupted")}, (key, status)
        if status == "sent":
            assert email_of[key] in first

    with SmtpSink(port=sink.port) as again, backend_from_url(f"{again.url}?connections=3") as backend:
        send(con, backend)
        second = [m.rcpt_tos[0] for m in again.messages]
    assert not first & set(second)  # nothing taken before is sent again
    assert len(second) == len(set(second))
    retried = {email_of[key] for key, (status, *_rest) in ledger(con).items() if status == "sent"} - first
    assert retried == set(second)


class CountsOpenClaims(EmailBackend):
    """A real SMTP backend that, as each message goes (on its sending thread), reads the ledger: how
    many claims are open (pending), and whether this message's own claim is among them."""

    def __init__(self, inner: EmailBackend, con) -> None:  # noqa: ANN001
        self.inner, self.concurrency, self.description = inner, inner.concurrency, inner.description
        self.con = con
        self.open_claims: list[int] = []
        self.claimed_first: list[bool] = []

    def send(self, message) -> Delivery:  # noqa: ANN001
        with self.con.cursor() as cursor:
            pending = {message_id for (message_id,) in cursor.execute(
                "select message_id from nudge.messages where status = 'pending'"
            ).fetchall()}
        self.open_claims.append(len(pending))
        self.claimed_first.append(str(message["Message-ID"]) in pending)
        return self.inner.send(message)


def test_over_several_connections_each_message_is_claimed_before_it_goes_and_one_batch_at_most_is_open(con):
    with SmtpSink(stall_seconds=0.05) as sink, backend_from_url(f"{sink.url}?connections=3") as smtp:
        backend = CountsOpenClaims(smtp, con)
        report = send(con, backend, batch_size=5)
        received = sink.messages

    assert report.sent == len(EMAILS) == len(received)
    assert all(backend.claimed_first)  # its claim committed before it went, whichever thread sent it
    # batches of 5, 5 and 2: the next is claimed only once the one before is marked
    assert max(backend.open_claims) == 5
    assert {row[:3] for row in ledger(con).values()} == {("sent", None, 1)}
