from __future__ import annotations

import email
import os
from datetime import datetime, timezone
from email import policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from smtp_sink import SmtpSink, free_port

from dagster_project.backends import (
    BackendUnavailable,
    DeliveryUncertain,
    FileBackend,
    SmtpBackend,
    backend_from_url,
    redact_url,
)
from dagster_project.messages import compose, message_id
from dagster_project.rendering import RenderedEmail
from dagster_project.unsubscribe import make_token, unsubscribe_links

pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")

WHEN = datetime(2026, 10, 31, 21, 0, tzinfo=timezone.utc)


def message(trigger_key: str = "c1", *, to: str = "ana@example.com", automation: str = "welcome") -> EmailMessage:
    token = make_token("secret", trigger_key, "marketing")
    return compose(
        rendered=RenderedEmail(subject=f"Hello {trigger_key}", html=f"<p>Hi {trigger_key}</p>", text=f"Hi {trigger_key}"),
        sender="Nudge Fitness <hello@nudge.example>",
        recipient=to,
        automation=automation,
        message_id=message_id(automation, trigger_key, "nudge.example"),
        date=WHEN,
        unsubscribe=unsubscribe_links("https://nudge.example/unsubscribe", "unsubscribe@nudge.example", token),
    )


# --- SMTP against a real aiosmtpd on loopback --------------------------------------


def test_smtp_delivers_with_the_message_id_headers_and_envelope(smtp_sink):
    sent = message("c1")

    with backend_from_url(smtp_sink.url) as backend:
        delivery = backend.send(sent)

    assert delivery.ok and not delivery.permanent
    assert delivery.message_id == str(sent["Message-ID"])
    [received] = smtp_sink.messages
    assert received.mail_from == "hello@nudge.example"
    assert received.rcpt_tos == ("ana@example.com",)
    assert received.message_id == str(sent["Message-ID"])
    parsed = received.parsed()
    assert str(parsed["X-Nudge-Automation"]) == "welcome"
    assert str(parsed["List-Unsubscribe-Post"]) == "List-Unsubscribe=One-Click"
    assert str(parsed["List-Unsubscribe"]).startswith("<https://nudge.example/unsubscribe?token=")
    assert parsed.get_body(preferencelist=("html",)).get_content().strip() == "<p>Hi c1</p>"


def test_smtp_reuses_one_connection_for_a_batch(smtp_sink):
    with backend_from_url(smtp_sink.url) as backend:
        deliveries = [backend.send(message(f"c{i}", to=f"user{i}@example.com")) for i in range(5)]

    assert all(delivery.ok for delivery in deliveries)
    received = smtp_sink.messages
    assert [m.rcpt_tos for m in received] == [(f"user{i}@example.com",) for i in range(5)]
    assert len({m.peer for m in received}) == 1


def test_smtp_550_fails_that_recipient_for_good_and_the_others_still_arrive(smtp_sink):
    smtp_sink.reject.add("gone@example.com")

    with backend_from_url(smtp_sink.url) as backend:
        before = backend.send(message("c1", to="ana@example.com"))
        refused = backend.send(message("c2", to="gone@example.com"))
        after = backend.send(message("c3", to="bob@example.com"))

    assert before.ok and after.ok
    assert not refused.ok and refused.permanent
    assert refused.detail.startswith("550")
    assert "mailbox unavailable" in refused.detail
    assert refused.message_id == message_id("welcome", "c2", "nudge.example")
    assert [m.rcpt_tos for m in smtp_sink.messages] == [("ana@example.com",), ("bob@example.com",)]
    assert len({m.peer for m in smtp_sink.messages}) == 1


def test_smtp_451_is_retryable(smtp_sink):
    smtp_sink.defer.add("busy@example.com")

    # retries=0: this test is about the answer; tests/integration/test_smtp_faults.py covers retrying within a tick.
    with backend_from_url(f"{smtp_sink.url}?retries=0") as backend:
        deferred = backend.send(message("c1", to="busy@example.com"))
        smtp_sink.defer.clear()
        retried = backend.send(message("c1", to="busy@example.com"))

    assert not deferred.ok and not deferred.permanent
    assert deferred.detail.startswith("451")
    assert retried.ok
    assert len(smtp_sink.by_recipient("busy@example.com")) == 1


def test_smtp_reconnects_once_when_the_server_drops_the_connection():
    with SmtpSink(drop_connection_after=1) as sink, backend_from_url(sink.url) as backend:
        deliveries = [backend.send(message(f"c{i}")) for i in range(3)]
        received = sink.messages

    assert all(delivery.ok for delivery in deliveries)
    assert [m.message_id for m in received] == [message_id("welcome", f"c{i}", "nudge.example") for i in range(3)]
    assert len({m.peer for m in received}) == 3


def test_smtp_server_gone_mid_batch_is_backend_unavailable():
    sink = SmtpSink(drop_connection_after=1).start()
    try:
        with backend_from_url(sink.url) as backend:
            assert backend.send(message("c1")).ok
            sink.stop()
            with pytest.raises(BackendUnavailable, match=f"127.0.0.1:{sink.port}"):
                backend.send(message("c2"))
    finally:
        sink.stop()


def test_smtp_server_that_goes_silent_is_uncertain_not_retried():
    with SmtpSink(stall_seconds=1.0) as sink:
        with backend_from_url(f"{sink.url}?timeout=0.2") as backend:
            with pytest.raises(DeliveryUncertain) as raised:
                backend.send(message("c1"))
        # The server had the whole message when it went silent: sending it again could deliver it twice.
        assert sink.data_attempts == 1

    assert isinstance(raised.value, BackendUnavailable)
    assert raised.value.message_id == message_id("welcome", "c1", "nudge.example")
    assert "may or may not" in str(raised.value)


def test_smtp_server_down_is_backend_unavailable_without_the_password():
    port = free_port()
    backend = backend_from_url(f"smtp://nudge:hunter2-secret@127.0.0.1:{port}?timeout=5")

    with pytest.raises(BackendUnavailable) as raised:
        with backend:
            pytest.fail("opened a connection to a port nobody listens on")

    assert f"127.0.0.1:{port}" in str(raised.value)
    assert "hunter2" not in str(raised.value)
    assert "hunter2" not in backend.description
    assert "hunter2" not in repr(backend)


def test_smtp_auth_with_user_and_password():
    with SmtpSink(auth=("nudge", "s3cret pass")) as sink:
        url = f"smtp://nudge:s3cret%20pass@{sink.host}:{sink.port}"
        with backend_from_url(url) as backend:
            delivery = backend.send(message("c1"))

        assert delivery.ok
        assert [m.login for m in sink.messages] == ["nudge"]


def test_smtp_wrong_password_or_none_is_backend_unavailable():
    with SmtpSink(auth=("nudge", "right")) as sink:
        with pytest.raises(BackendUnavailable, match="535") as wrong:
            with backend_from_url(f"smtp://nudge:wrong-guess@{sink.host}:{sink.port}"):
                pass
        # Without credentials the server answers 530 to MAIL: a setup problem, not the recipient's.
        with pytest.raises(BackendUnavailable, match="requires authentication"):
            with backend_from_url(f"smtp://{sink.host}:{sink.port}") as backend:
                backend.send(message("c1"))

        assert "wrong-guess" not in str(wrong.value)
        assert sink.messages == []


# --- URLs ---------------------------------------------------------------------------


def test_smtp_urls_configure_the_backend():
    plain = backend_from_url("smtp://mail.example:2525")
    tls = backend_from_url("smtp://u:p%40ss@mail.example:587?starttls=true&timeout=12.5")
    implicit = backend_from_url("SMTPS://u:p@mail.example")

    assert isinstance(plain, SmtpBackend) and not plain.dedupes
    assert (plain.host, plain.port, plain.username, plain.starttls, plain.implicit_tls) == (
        "mail.example",
        2525,
        None,
        False,
        False,
    )
    assert (tls.port, tls.username, tls._password, tls.starttls, tls.timeout) == (587, "u", "p@ss", True, 12.5)
    assert (plain.pacing.retry.retries, plain.pacing.retry.backoff, plain.pacing.rate, plain.connections) == (
        2, 1.0, None, 1
    )
    assert (implicit.port, implicit.implicit_tls, implicit.starttls) == (465, True, False)
    assert tls.description == "smtp://u:***@mail.example:587?starttls=true&timeout=12.5"


@pytest.mark.parametrize(
    "url",
    [
        "http://user:topsecret@mail.example",
        "sendgrid://user:topsecret@api",
        "topsecret",
        "smtp://user:topsecret@mail.example:notaport",
        "smtp://user:topsecret@mail.example?starttls=maybe",
        "smtp://user:topsecret@mail.example?verify=false",
        "smtps://user:topsecret@mail.example?starttls=true",
        "smtp://user:topsecret@mail.example?timeout=0",
        "smtp://user:topsecret@",
        "file://",
    ],
)
def test_bad_urls_are_value_errors_that_never_show_the_password(url):
    with pytest.raises(ValueError) as raised:
        backend_from_url(url)

    assert "topsecret" not in str(raised.value)


def test_unknown_scheme_names_the_supported_ones():
    with pytest.raises(ValueError, match=r"file://, smtp://, smtps://") as raised:
        backend_from_url("http://user:topsecret@mail.example")

    assert "http://user:***@mail.example" in str(raised.value)


def test_redact_url_hides_only_the_password():
    assert redact_url("smtp://user:topsecret@mail.example:587?starttls=true") == (
        "smtp://user:***@mail.example:587?starttls=true"
    )
    assert redact_url("smtp://mail.example:25") == "smtp://mail.example:25"
    assert redact_url("file://data/outbox") == "file://data/outbox"
    assert redact_url("hunter2") == "***"
    assert redact_url("smtp:user:hunter2@mail.example") == "smtp:***"


def test_file_urls_are_absolute_or_relative_to_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    relative = backend_from_url("file://data/outbox")
    absolute = backend_from_url(f"file://{tmp_path}/elsewhere")

    assert isinstance(relative, FileBackend) and relative.dedupes
    assert relative.root == tmp_path / "data" / "outbox"
    assert absolute.root == tmp_path / "elsewhere"


# --- the file backend ------------------------------------------------------------------


def test_file_backend_writes_one_parseable_eml_per_message(tmp_path):
    messages = [message("c1"), message("c2"), message("c1", automation="cart_abandoned")]

    with backend_from_url(f"file://{tmp_path}/outbox") as backend:
        deliveries = [backend.send(m) for m in messages]

    assert all(delivery.ok for delivery in deliveries)
    files = sorted(path.relative_to(tmp_path / "outbox") for path in (tmp_path / "outbox").rglob("*") if path.is_file())
    expected = sorted(
        Path(automation) / f"{message_id(automation, key, 'nudge.example').strip('<>')}.eml"
        for automation, key in (("welcome", "c1"), ("welcome", "c2"), ("cart_abandoned", "c1"))
    )
    assert files == expected
    for delivery, sent in zip(deliveries, messages):
        written = Path(delivery.detail)
        parsed = email.message_from_bytes(written.read_bytes(), policy=policy.default)
        assert str(parsed["Message-ID"]) == str(sent["Message-ID"])
        assert str(parsed["X-Nudge-Automation"]) == str(sent["X-Nudge-Automation"])
        assert parsed.get_content_type() == "multipart/alternative"
        assert written.read_bytes() == sent.as_bytes(policy=policy.SMTP)


def test_file_backend_rewrites_the_same_message_id_into_one_file(tmp_path):
    outbox = tmp_path / "outbox"

    with FileBackend(outbox) as backend:
        first = backend.send(message("c1"))
        second = backend.send(message("c1"))

    assert first.detail == second.detail
    assert [path.name for path in (outbox / "welcome").iterdir()] == [Path(first.detail).name]
    assert not [name for name in os.listdir(outbox / "welcome") if name.endswith(".tmp")]


def test_file_backend_keeps_hostile_header_values_inside_the_outbox(tmp_path):
    hostile = message("c1")
    del hostile["X-Nudge-Automation"]
    hostile["X-Nudge-Automation"] = "../../escaped"

    with FileBackend(tmp_path / "outbox") as backend:
        delivery = backend.send(hostile)

    written = Path(delivery.detail).resolve()
    assert written.is_relative_to((tmp_path / "outbox").resolve())
    assert not (tmp_path / "escaped").exists()


def test_file_backend_that_cannot_create_its_outbox_is_unavailable(tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")

    with pytest.raises(BackendUnavailable, match="not-a-directory"):
        with FileBackend(blocker / "outbox"):
            pass


def test_file_backend_clears_the_temporary_files_a_killed_writer_left(tmp_path):
    outbox = tmp_path / "outbox"
    (outbox / "welcome").mkdir(parents=True)
    leftover = outbox / "welcome" / ".abc123.tmp"
    leftover.write_bytes(b"From: half a mess")
    kept = outbox / "welcome" / "kept.eml"
    kept.write_bytes(b"a whole message")
    with backend_from_url(f"file://{outbox}"):
        pass
    assert not leftover.exists()
    assert kept.read_bytes() == b"a whole message"


# --- shortcuts the backends take ------------------------------------------------


@pytest.mark.parametrize("address", ["ana@example.com", "A.b+c-d_e@x-y.example.org", "a..b@c.d", '"q r"@x.y',
                                     "Name <a@b.c>", "a@b", ".a@b.c", "a@b.c.", "", "<a@b.c>", "a@b.c (comment)",
                                     "o'brien@example.com", "zoë@exämple.com"])
def test_smtp_writes_the_envelope_addresses_as_smtplib_quotes_them(address):
    import smtplib

    from dagster_project.backends.smtp import quoted_address

    assert quoted_address(address) == smtplib.quoteaddr(address)


def test_file_backend_replaces_a_temporary_file_left_under_the_same_name_without_following_a_link(tmp_path):
    outbox, elsewhere = tmp_path / "outbox", tmp_path / "elsewhere.txt"
    elsewhere.write_text("not the outbox's")
    sent = message("c1")
    with FileBackend(outbox) as backend:
        final = backend.path_for(sent)
        final.parent.mkdir(parents=True)
        (final.parent / f".{final.name}.tmp").symlink_to(elsewhere)  # planted after open() cleared leftovers
        delivery = backend.send(sent)
    assert delivery.ok and Path(delivery.detail) == final
    assert final.read_bytes() == sent.as_bytes(policy=policy.SMTP) and not final.is_symlink()
    assert elsewhere.read_text() == "not the outbox's"
    assert [path.name for path in final.parent.iterdir()] == [final.name]


def test_file_backend_flush_syncs_the_outbox_filesystem(tmp_path, monkeypatch):
    from dagster_project.backends import file as file_backend

    synced: list[str] = []

    def syncfs(descriptor: int) -> int:
        synced.append(os.readlink(f"/proc/self/fd/{descriptor}"))
        return 0

    with FileBackend(tmp_path / "outbox") as backend:
        backend.send(message("c1"))
        monkeypatch.setattr(file_backend, "_SYNCFS", syncfs)
        backend.flush()
        assert synced == [str((tmp_path / "outbox").resolve())]  # through the descriptor open() took
        monkeypatch.setattr(file_backend, "_SYNCFS", lambda descriptor: -1)  # a write-back error
        with pytest.raises(BackendUnavailable, match="cannot flush the outbox"):
            backend.flush()
        monkeypatch.setattr(file_backend, "_SYNCFS", None)  # no syncfs (not Linux): os.sync
        monkeypatch.setattr(os, "sync", lambda: synced.append("all"))
        backend.flush()
        assert synced[-1] == "all"
    assert backend._root_descriptor is None  # closed with the backend
