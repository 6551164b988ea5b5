"""SMTP under faults, against aiosmtpd on 127.0.0.1, mostly through send_automation on a DuckDB file.

A 4xx is tried again within the tick (exponential backoff) and on later ticks until
the ledger's MAX_ATTEMPTS, then it is `failed`/`attempts_exhausted` with the server's
words; a 5xx fails its one recipient; a dropped connection is reopened; a server that
is down marks nothing sent; `rate=` paces every connection of the backend together and
`connections=` caps how many there are. Times are the sink's own stamps.
"""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from send_warehouse import AS_OF, ledger, send, welcome_warehouse
from smtp_sink import SmtpSink
from test_backends import message

from dagster_project.backends import BackendUnavailable, backend_from_url
from dagster_project.backends.pacing import TokenBucket
from dagster_project.ledger import MAX_ATTEMPTS

EMAILS = ["ana@example.com", "busy@example.com", "bob@example.com"]


@pytest.fixture
def con(tmp_path):
    connection = welcome_warehouse(tmp_path / "warehouse.duckdb", EMAILS)
    yield connection
    connection.close()


def test_a_451_is_retried_within_the_tick_with_exponential_backoff(smtp_sink):
    smtp_sink.defer_times["busy@example.com"] = 2

    with backend_from_url(f"{smtp_sink.url}?retries=2&backoff=0.1") as backend:
        delivery = backend.send(message("c1", to="busy@example.com"))

    assert delivery.ok
    answers = smtp_sink.rcpt_answers("busy@example.com")
    assert [code for code, _ in answers] == [451, 451, 250]
    first_wait, second_wait = (later - earlier for (_, earlier), (_, later) in zip(answers, answers[1:]))
    assert first_wait >= 0.1 and second_wait >= 0.2, (first_wait, second_wait)
    assert len(smtp_sink.by_recipient("busy@example.com")) == 1


def test_a_451_on_every_tick_ends_attempts_exhausted_with_the_servers_words(con, smtp_sink):
    smtp_sink.defer.add("busy@example.com")
    url = f"{smtp_sink.url}?retries=1&backoff=0.01"

    for tick in range(MAX_ATTEMPTS):
        with backend_from_url(url) as backend:
            report = send(con, backend, AS_OF + timedelta(hours=tick))
        status, reason, attempts, error = ledger(con)["c_1"]
        assert attempts == tick + 1
        assert "451" in error and "try again later" in error and "tried 2 times" in error
        if tick + 1 < MAX_ATTEMPTS:
            assert (status, reason) == ("failed", "temporary")

    assert (status, reason) == ("failed", "attempts_exhausted")
    assert len(smtp_sink.rcpt_answers("busy@example.com")) == 2 * MAX_ATTEMPTS  # two tries on each tick
    with backend_from_url(url) as backend:
        assert send(con, backend, AS_OF + timedelta(hours=MAX_ATTEMPTS)).due == 0  # never tried again
    assert {key: row[0] for key, row in ledger(con).items() if key != "c_1"} == {"c_0": "sent", "c_2": "sent"}
    assert len(smtp_sink.messages) == 2


def test_a_550_fails_only_its_recipient(con, smtp_sink):
    smtp_sink.reject.add("busy@example.com")
    with backend_from_url(smtp_sink.url) as backend:
        report = send(con, backend)

    assert (report.sent, report.failed) == (2, 1)
    status, reason, attempts, error = ledger(con)["c_1"]
    assert (status, reason, attempts) == ("failed", "rejected", 1)
    assert error.startswith("550") and "mailbox unavailable" in error
    assert len(smtp_sink.rcpt_answers("busy@example.com")) == 1  # a 5xx is never retried
    assert sorted(m.rcpt_tos[0] for m in smtp_sink.messages) == ["ana@example.com", "bob@example.com"]


def test_a_dropped_connection_is_reopened_and_every_message_sent_once(con):
    with SmtpSink(drop_connection_after=1) as sink, backend_from_url(sink.url) as backend:
        report = send(con, backend)
        received = sink.messages

    assert report.sent == 3
    assert sorted(m.rcpt_tos[0] for m in received) == sorted(EMAILS)
    assert len({m.peer for m in received}) == 3
    assert {row[0] for row in ledger(con).values()} == {"sent"}


def test_a_server_that_is_down_fails_clearly_and_marks_nothing_sent(con):
    sink = SmtpSink().start()
    try:
        with backend_from_url(f"{sink.url}?retries=0") as backend:
            sink.stop()
            with pytest.raises(BackendUnavailable, match=f"cannot reach SMTP server 127.0.0.1:{sink.port}"):
                send(con, backend)
    finally:
        sink.stop()

    # Never handed over, so not an attempt: an outage of any length never exhausts a message's retries.
    assert {(status, reason, attempts) for status, reason, attempts, _ in ledger(con).values()} == {
        ("failed", "temporary", 0)
    }
    assert sink.messages == []
    with pytest.raises(BackendUnavailable, match=f"127.0.0.1:{sink.port}"):
        with backend_from_url(sink.url):
            pass


# On loopback one SMTP message takes 30-80 ms on a busy CI box, so a limit only shows when
# its interval is well above that: 5 a second (200 ms) here, 10 a second over two connections below.
JITTER = 0.08


def test_rate_spaces_messages_at_the_server(smtp_sink):
    with backend_from_url(f"{smtp_sink.url}?rate=5") as backend:
        for i in range(6):
            assert backend.send(message(f"c{i}", to=f"user{i}@example.com")).ok

    stamps = [m.received_at for m in smtp_sink.messages]
    assert len(stamps) == 6
    assert stamps[-1] - stamps[0] >= 5 / 5 - JITTER, stamps[-1] - stamps[0]
    # Everywhere, not only on average: no burst. A message held up on its way (a busy machine)
    # shortens the gap after it by as much as it lengthens the one before, so each two gaps in a
    # row still span two intervals; two messages let through at once would not.
    gaps = [later - earlier for earlier, later in zip(stamps, stamps[1:])]
    assert min(first + second for first, second in zip(gaps, gaps[1:])) >= 2 / 5 - JITTER, gaps


def test_rate_is_shared_by_every_connection_and_connections_caps_them(smtp_sink):
    with backend_from_url(f"{smtp_sink.url}?rate=10&connections=2") as backend:
        def sender(worker: int) -> None:
            for i in range(3):
                assert backend.send(message(f"w{worker}c{i}", to=f"w{worker}u{i}@example.com")).ok

        threads = [threading.Thread(target=sender, args=(worker,)) for worker in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    received = smtp_sink.messages
    assert len(received) == 12
    assert len({m.peer for m in received}) == 2  # four senders, two connections, no more
    stamps = sorted(m.received_at for m in received)
    # One bucket per connection would let the twelve through in about half the time.
    assert stamps[-1] - stamps[0] >= 11 / 10 - JITTER, stamps[-1] - stamps[0]


def test_the_token_bucket_spaces_takes_by_its_rate_on_a_monotonic_clock():
    now = [100.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(round(seconds, 6))
        now[0] += seconds

    bucket = TokenBucket(4, clock=lambda: now[0], sleep=sleep)
    for _ in range(3):
        bucket.take()
    now[0] += 1.0  # idle for a second: the bucket holds one token, not four
    bucket.take()
    bucket.take()
    assert slept == [0.25, 0.25, 0.25]


@pytest.mark.parametrize("option", ["rate=0", "rate=-1", "rate=fast", "connections=0", "retries=-1", "backoff=inf"])
def test_bad_pacing_options_are_value_errors(option):
    with pytest.raises(ValueError, match=option.split("=")[0]):
        backend_from_url(f"smtp://u:topsecret@mail.example?{option}")
