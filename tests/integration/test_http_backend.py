"""resend:// against a stand-in of Resend's API on 127.0.0.1 (starlette + uvicorn), through send_automation.

The provider dedupes by Idempotency-Key, so whatever is left ambiguous (a claim of a
run that died, an answer lost to a cut connection or a timeout) is sent again with the
same key and reaches the recipient exactly once.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from resend_standin import ResendStandIn
from send_warehouse import AS_OF, ledger, send, welcome_warehouse
from smtp_sink import free_port

from dagster_project.backends import BackendUnavailable, ResendBackend, backend_from_url, redact_url
from dagster_project.backends.http import idempotency_key
from dagster_project.messages import message_id

EMAILS = [f"person{i}@example.com" for i in range(5)]
# Fast retries: these tests are about what is retried, not about waiting.
QUICK = "&retries=2&backoff=0.01&timeout=5"


def key_of(trigger_key: str) -> str:
    return message_id("welcome", trigger_key, "nudge.example").strip("<>")


@pytest.fixture
def standin():
    with ResendStandIn() as server:
        yield server


@pytest.fixture
def con(tmp_path):
    connection = welcome_warehouse(tmp_path / "warehouse.duckdb", EMAILS)
    yield connection
    connection.close()


def test_each_due_message_is_posted_once_with_its_headers_key_and_bearer(con, standin):
    with backend_from_url(standin.url + QUICK) as backend:
        report = send(con, backend)

    assert (report.due, report.sent, report.failed) == (5, 5, 0)
    assert {status for status, *_ in ledger(con).values()} == {"sent"}
    emails = standin.emails
    assert sorted(email.payload["to"][0] for email in emails) == EMAILS
    assert {request.authorization for request in standin.requests} == {f"Bearer {standin.api_key}"}
    for email in emails:
        trigger_key = "c_" + email.payload["to"][0].removeprefix("person")[0]
        assert email.idempotency_key == key_of(trigger_key)
        headers = email.payload["headers"]
        assert headers["Message-ID"] == message_id("welcome", trigger_key, "nudge.example")
        assert headers["X-Nudge-Automation"] == "welcome"
        assert headers["List-Unsubscribe"].startswith("<https://nudge.example/unsubscribe?token=")
        assert "<mailto:unsubscribe@nudge.example" in headers["List-Unsubscribe"]
        assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert email.payload["from"] == "Nudge Fitness <hello@nudge.example>"
        assert email.payload["subject"] and "<" in email.payload["html"] and email.payload["text"]


class Crash(BaseException):
    """The process dying between handing a message over and marking it."""


class CrashAfter(ResendBackend):
    def __init__(self, url: str, deliveries: int) -> None:
        real = backend_from_url(url)
        super().__init__(real.host, real.port, api_key=real._api_key, tls=False, pacing=real.pacing)
        self.left = deliveries

    def send(self, message):
        delivery = super().send(message)
        self.left -= 1
        if self.left == 0:
            raise Crash()
        return delivery


def test_claims_left_pending_by_a_dead_run_are_resent_with_the_same_key_and_sent_once(con, standin):
    # The first batch (two messages) reaches the provider, then the run dies before marking it.
    with pytest.raises(Crash), CrashAfter(standin.url + QUICK, deliveries=2) as dying:
        send(con, dying)
    assert {key: row[0] for key, row in ledger(con).items()} == {"c_0": "pending", "c_1": "pending"}
    assert len(standin.emails) == 2

    with backend_from_url(standin.url + QUICK) as backend:
        report = send(con, backend, AS_OF + timedelta(hours=1))

    assert (report.sent, report.interrupted) == (5, 0)
    assert {status for status, *_ in ledger(con).values()} == {"sent"}
    # Exactly once: five emails for five contacts, although c_0 and c_1 were posted twice.
    assert sorted(email.payload["to"][0] for email in standin.emails) == EMAILS
    posted = [request.idempotency_key for request in standin.requests]
    assert posted.count(key_of("c_0")) == posted.count(key_of("c_1")) == 2
    assert posted.count(key_of("c_2")) == 1


@pytest.mark.parametrize("fault", ["drop", "stall"])
def test_an_answer_lost_to_a_cut_connection_or_a_timeout_is_retried_with_the_same_key(con, fault):
    with ResendStandIn(stall_seconds=1.0) as standin:
        standin.fail_next(1, fault)
        with backend_from_url(standin.url + "&retries=2&backoff=0.01&timeout=0.3") as backend:
            report = send(con, backend)

        assert report.sent == 5
        assert {status for status, *_ in ledger(con).values()} == {"sent"}
        assert sorted(email.payload["to"][0] for email in standin.emails) == EMAILS
        posted = [request.idempotency_key for request in standin.requests]
        assert posted[:2] == [key_of("c_0"), key_of("c_0")]  # the lost answer, then the same key again


def test_429_is_retried_within_the_tick_after_the_servers_retry_after(con, standin):
    standin.fail_next(2, "429", retry_after=0.3)
    with backend_from_url(standin.url + "&retries=2&backoff=0.01") as backend:
        report = send(con, backend)

    assert report.sent == 5
    assert {status for status, *_ in ledger(con).values()} == {"sent"}
    requests = standin.requests
    assert [request.status for request in requests[:3]] == [429, 429, 200]
    assert {request.idempotency_key for request in requests[:3]} == {key_of("c_0")}
    gaps = [later.at - earlier.at for earlier, later in zip(requests, requests[1:3])]
    assert min(gaps) >= 0.29, gaps  # Retry-After (0.3 s) won over backoff (0.01 s)
    assert len(standin.emails) == 5


def test_5xx_past_the_retries_is_a_temporary_failure_sent_on_the_next_tick(con, standin):
    standin.fail_next(3, "500")
    with backend_from_url(standin.url + QUICK) as backend:
        report = send(con, backend)

    assert (report.sent, report.failed) == (4, 1)
    status, reason, attempts, error = ledger(con)["c_0"]
    assert (status, reason, attempts) == ("failed", "temporary", 1)
    assert "500 application_error" in error and "tried 3 times" in error

    with backend_from_url(standin.url + QUICK) as backend:
        later = send(con, backend, AS_OF + timedelta(hours=1))
    assert (later.due, later.sent) == (1, 1)
    assert ledger(con)["c_0"][:3] == ("sent", None, 2)
    assert len(standin.emails) == 5


def test_a_422_validation_error_fails_that_message_for_good(tmp_path, standin):
    con = welcome_warehouse(tmp_path / "warehouse.duckdb", ["ana@example.com", "nobody@example.invalid"])
    with backend_from_url(standin.url + QUICK) as backend:
        report = send(con, backend)

    assert (report.sent, report.failed) == (1, 1)
    status, reason, attempts, error = ledger(con)["c_1"]
    assert (status, reason, attempts) == ("failed", "rejected", 1)
    assert error.startswith("422 validation_error") and "`to`" in error
    assert [request.status for request in standin.requests].count(422) == 1  # never retried

    with backend_from_url(standin.url + QUICK) as backend:
        assert send(con, backend, AS_OF + timedelta(hours=1)).due == 0


def test_a_provider_that_is_down_is_backend_unavailable_and_nothing_is_marked_sent(con):
    backend = backend_from_url(f"resend://re_down_key@127.0.0.1:{free_port()}?tls=false&timeout=2")
    with pytest.raises(BackendUnavailable, match="cannot reach the Resend API at 127.0.0.1"):
        with backend:
            pytest.fail("opened a provider nobody listens for")

    # Gone after the backend opened: the message in hand and the rest of the batch are freed, none sent.
    standin = ResendStandIn().start()
    try:
        with backend_from_url(standin.url + "&retries=1&backoff=0.01&timeout=2") as backend:
            standin.stop()
            with pytest.raises(BackendUnavailable, match="cannot reach"):
                send(con, backend)
    finally:
        standin.stop()
    rows = ledger(con)
    assert {(status, reason) for status, reason, *_ in rows.values()} == {("failed", "temporary")}
    assert standin.emails == []


def test_the_api_key_never_reaches_errors_logs_or_the_ledger(con, standin, caplog):
    caplog.set_level(logging.DEBUG)
    wrong = "re_wrong_but_secret_42"
    bad = backend_from_url(f"resend://{wrong}@{standin.host}:{standin.port}?tls=false&retries=0")
    with bad, pytest.raises(BackendUnavailable) as raised:
        send(con, bad)
    assert "403 invalid_api_key" in str(raised.value)
    with backend_from_url(standin.url + QUICK) as good:
        send(con, good)

    texts = [str(raised.value), repr(bad), bad.description, redact_url(standin.url), caplog.text]
    texts += [str(value) for row in con.execute("select * from nudge.messages").fetchall() for value in row]
    assert any("HTTP Request: POST" in text for text in texts), "httpx logged nothing: the check would be empty"
    for secret in (wrong, standin.api_key):
        assert not [text for text in texts if secret in text]
    # The refused key was a configuration problem: nothing was rejected for good.
    assert {row[0] for row in ledger(con).values()} == {"sent"}


def test_resend_urls_configure_the_backend():
    default = backend_from_url("resend://re_abc@api.resend.com")
    local = backend_from_url("resend://re_abc@127.0.0.1:8025?tls=false&rate=2&connections=3&retries=4&backoff=0.5")

    assert isinstance(default, ResendBackend) and default.dedupes
    assert default.base_url == "https://api.resend.com:443"
    assert local.base_url == "http://127.0.0.1:8025"
    assert (local.pacing.rate, local.pacing.connections, local.pacing.retry.retries, local.pacing.retry.backoff) == (
        2.0, 3, 4, 0.5
    )
    assert redact_url("resend://re_abc@api.resend.com?tls=true") == "resend://***@api.resend.com?tls=true"
    assert idempotency_key("<abc@nudge.example>") == "abc@nudge.example"
    assert len(idempotency_key("<" + "x" * 300 + "@nudge.example>")) == 64


@pytest.mark.parametrize(
    "url",
    ["resend://@api.resend.com", "resend://re_topsecret@", "resend://re_topsecret@h?tls=maybe",
     "resend://re_topsecret@h?rate=0", "resend://re_topsecret@h?verify=no", "resend://re_topsecret@h:port"],
)
def test_bad_resend_urls_are_value_errors_that_never_show_the_key(url):
    with pytest.raises(ValueError) as raised:
        backend_from_url(url)
    assert "topsecret" not in str(raised.value)
