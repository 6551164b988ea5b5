"""No field adds a header: from the contact's data and the configuration to the bytes a real
SMTP server (aiosmtpd on 127.0.0.1) receives and to the file backend's .eml.

Headers are only ever set through the `email` package (messages.compose); these tests feed
it line breaks in every spelling (CR, LF, CRLF, RFC 2047 encoded words that decode to CRLF,
U+2028/2029, NEL, VT, FF) through every field a person or the data controls.
"""

from __future__ import annotations

import email
import json
import string
from datetime import datetime, timezone
from email import policy
from email.message import EmailMessage

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dagster_project.automations import Policy, automation_from_node
from dagster_project.backends import FileBackend, backend_from_url
from dagster_project.messages import AUTOMATION_HEADER, compose, message_id
from dagster_project.rendering import RenderedEmail
from dagster_project.send import SendConfig, send_automation
from dagster_project.unsubscribe import make_token, unsubscribe_links
from tests.unit.test_rendering import template_tree

AS_OF = datetime(2026, 11, 1, 12)
SENDER = "Nudge Fitness <hello@nudge.example>"
INJECTED = "x@attacker.example"

BREAKS = ["\r\n", "\n", "\r", "\u2028", "\u2029", "\x85", "\v", "\f", "\r\n\t", "\r\n "]
ENCODED = [
    f"=?utf-8?q?=0D=0ABcc:_{INJECTED}?=",
    f"=?utf-8?Q?a=0ABcc=3A_{INJECTED}?=",
    "=?utf-8?b?DQpCY2M6IHhAYXR0YWNrZXIuZXhhbXBsZQ==?=",  # "\r\nBcc: x@attacker.example"
    f"=?iso-8859-1?q?=0D=0ABcc:_{INJECTED}?=",
]
PAYLOADS = [f"Ana{line_break}Bcc: {INJECTED}" for line_break in BREAKS] + [f"Ana {word}" for word in ENCODED] + [
    f"Ana\r\n\r\n<html>{INJECTED}</html>",  # an attempt to end the header block early
    f"Ana\r\nContent-Type: text/html\r\n\r\n{INJECTED}",
]
EXPECTED_HEADERS = {"from", "to", "subject", "date", "message-id", "x-nudge-automation", "mime-version",
                    "content-type", "list-unsubscribe", "list-unsubscribe-post"}


def assert_clean(data: bytes, *, recipient: str) -> EmailMessage:
    """The header block of the bytes on the wire: the expected headers, once each, one recipient."""
    raw = email.message_from_bytes(data, policy=policy.compat32)
    names = [name.lower() for name in raw.keys()]
    assert len(names) == len(set(names)), names
    assert set(names) <= EXPECTED_HEADERS, names
    assert raw.get_all("Bcc") is None and raw.get_all("Cc") is None
    for value in raw.values():
        assert "\r" not in value.replace("\r\n ", "").replace("\r\n\t", "")
    parsed = email.message_from_bytes(data, policy=policy.default)
    assert [address.addr_spec for address in parsed["To"].addresses] == [recipient]
    assert len(parsed["From"].addresses) == 1
    # The payload may survive as harmless text of a display name, never as an address.
    assert INJECTED not in parsed["From"].addresses[0].addr_spec
    for value in (str(parsed["Subject"]), str(parsed["From"]), str(parsed["To"]), str(parsed[AUTOMATION_HEADER])):
        assert not any(mark in value for mark in ("\r", "\n", "\u2028", "\u2029", "\x85"))
    assert parsed.get_content_type() == "multipart/alternative"
    return parsed


# --- from the warehouse to the server: a contact's name, last name and address -------------------

AUTOMATION = automation_from_node(
    {"unique_id": "model.nudge.trg_probe", "resource_type": "model", "name": "trg_probe", "schema": "triggers",
     "config": {"meta": {"nudge": {"send_window": "48h", "reentry": "once", "from": SENDER}}}}
)


@pytest.fixture
def hostile_warehouse(tmp_path):
    """Contacts whose names carry every injection payload, and some whose address does."""
    root = template_tree(tmp_path / "templates", "probe",
                         subject="Hi {{ contact.first_name }} {{ contact.last_name }}, {{ context.note }}")
    con = duckdb.connect(str(tmp_path / "warehouse.duckdb"))
    con.execute("create schema triggers; create schema staging")
    con.execute("create table staging.stg_contacts (contact_id varchar, email varchar, status varchar, "
                "first_name varchar, last_name varchar, timezone varchar, properties varchar)")
    con.execute("create table triggers.trg_probe (contact_id varchar, trigger_key varchar, qualified_at timestamp, "
                "due_at timestamp, context varchar)")
    rows = [(f"name_{i}", f"person{i}@example.com", payload, payload) for i, payload in enumerate(PAYLOADS)]
    bad_addresses = [f"person@example.com{line_break}Bcc: {INJECTED}" for line_break in BREAKS] + [
        f"person@example.com, {INJECTED}", f"{ENCODED[0]} <person@example.com>", f"<person@example.com>{INJECTED}",
    ]
    rows += [(f"address_{i}", address, "Ana", "Lima") for i, address in enumerate(bad_addresses)]
    for contact_id, address, first, last in rows:
        con.execute("insert into staging.stg_contacts values (?, ?, 'subscribed', ?, ?, 'UTC', '{}')",
                    [contact_id, address, first, last])
        con.execute("insert into triggers.trg_probe values (?, ?, ?, ?, ?)",
                    [contact_id, contact_id, AS_OF, AS_OF, '{"note": %s}' % json.dumps(first)])
    config = SendConfig(templates_dir=root, sender=SENDER, postal_address="1 Example Street",
                        unsubscribe_url="https://nudge.example/unsubscribe",
                        unsubscribe_mailto="unsubscribe@nudge.example", unsubscribe_secret="test-secret")
    yield con, config, len(PAYLOADS), len(bad_addresses)
    con.close()


def send(con, config, backend):
    return send_automation(con, AUTOMATION, contacts_relation="staging.stg_contacts",
                           events_relation="staging.none", backend=backend, config=config, as_of=AS_OF,
                           policy=Policy(cap_per_day=None, cap_per_week=None, quiet_start=AS_OF.time(),
                                         quiet_end=AS_OF.time()),
                           marketing_automations=["probe"])


def test_hostile_names_reach_the_smtp_server_as_one_clean_header_block(hostile_warehouse, smtp_sink):
    con, config, names, addresses = hostile_warehouse
    with backend_from_url(smtp_sink.url) as backend:
        report = send(con, config, backend)

    assert report.sent == names
    assert report.skipped == {"template_error": addresses}
    assert len(smtp_sink.messages) == names
    for received in smtp_sink.messages:
        assert len(received.rcpt_tos) == 1 and INJECTED not in received.rcpt_tos[0]
        assert INJECTED not in received.mail_from
        parsed = assert_clean(received.data, recipient=received.rcpt_tos[0])
        assert str(parsed["Subject"]).startswith("Hi Ana")
    # Refused addresses say why, and nothing of theirs reached the server.
    errors = [row[0] for row in con.execute(
        "select error from nudge.messages where status = 'skipped' order by trigger_key").fetchall()]
    assert len(errors) == addresses and all("recipient" in error for error in errors)


def test_hostile_names_reach_the_eml_files_as_one_clean_header_block(hostile_warehouse, tmp_path):
    con, config, names, _addresses = hostile_warehouse
    outbox = tmp_path / "outbox"
    with FileBackend(outbox) as backend:
        report = send(con, config, backend)

    files = sorted(outbox.rglob("*.eml"))
    assert report.sent == names == len(files)
    for path in files:
        assert path.resolve().is_relative_to(outbox.resolve())
        parsed = email.message_from_bytes(path.read_bytes(), policy=policy.default)
        assert_clean(path.read_bytes(), recipient=parsed["To"].addresses[0].addr_spec)


# --- every other field compose() takes ------------------------------------------------------------

def links():
    return unsubscribe_links("https://nudge.example/unsubscribe", "unsubscribe@nudge.example",
                             make_token("secret", "c1", "marketing"))


def build(*, subject="Hello", sender=SENDER, recipient="ana@example.com", automation="welcome"):
    return compose(
        rendered=RenderedEmail(subject=subject, html="<p>x</p>", text="x"),
        sender=sender,
        recipient=recipient,
        automation=automation,
        message_id=message_id("welcome", "c1", "nudge.example"),
        date=datetime(2026, 11, 1, 12, tzinfo=timezone.utc),
        unsubscribe=links(),
    )


def quoted(payload: str) -> str:
    return '"' + payload.replace("\\", "\\\\").replace('"', '\\"') + '"'


@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize(
    "field",
    ["subject", "recipient display name", "sender display name", "automation", "sender unquoted name"],
)
def test_no_field_of_compose_adds_a_header(payload, field, smtp_sink, tmp_path):
    kwargs = {
        "subject": {"subject": f"Hello {payload}"},
        "recipient display name": {"recipient": f"{quoted(payload)} <ana@example.com>"},
        "sender display name": {"sender": f"{quoted(payload)} <hello@nudge.example>"},
        "sender unquoted name": {"sender": f"{payload} <hello@nudge.example>"},
        "automation": {"automation": payload},
    }[field]
    try:
        message = build(**kwargs)
    except ValueError as error:
        assert field == "sender unquoted name", error  # refused is fine; only that field may be
        return

    # What the file backend writes ...
    path = FileBackend(tmp_path).path_for(message)
    with FileBackend(tmp_path) as backend:
        backend.send(message)
    assert path.resolve().is_relative_to(tmp_path.resolve())
    assert_clean(path.read_bytes(), recipient="ana@example.com")
    # ... and what a real SMTP server receives.
    with backend_from_url(smtp_sink.url) as backend:
        assert backend.send(message).ok
    [received] = smtp_sink.messages
    assert received.rcpt_tos == ("ana@example.com",)
    assert received.mail_from == "hello@nudge.example"
    assert_clean(received.data, recipient="ana@example.com")


@pytest.mark.parametrize(
    "sender",
    [f"hello@nudge.example\r\nBcc: {INJECTED}", f"hello@nudge.example, {INJECTED}", f"{ENCODED[0]}@nudge.example",
     "hello@nudge.example\u2028Bcc: x@y.example", "Nudge <hello@nudge.example> <other@nudge.example>"],
)
def test_a_sender_that_is_not_one_plain_address_is_refused(sender):
    with pytest.raises(ValueError):
        build(sender=sender)


# --- any text at all ------------------------------------------------------------------------------

# Arbitrary text, with the pieces of every known trick mixed in.
TEXT = st.lists(
    st.one_of(
        st.sampled_from(["\r", "\n", "\r\n", "\u2028", "\u2029", "\x85", "\v", "\f", "\t", "=?", "?=", ":", ",",
                         ";", "<", ">", '"', "\\", "@", "=0D=0A", "utf-8?q?", "?b?", "Bcc", " ", "=?utf-8?q?"]),
        st.characters(codec="utf-8", exclude_categories=("Cs",)),
    ),
    max_size=40,
).map("".join)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(subject=TEXT, name=TEXT, automation=TEXT)
def test_any_text_in_subject_display_name_or_automation_keeps_the_header_block(subject, name, automation):
    try:
        message = build(subject=f"S{subject}", recipient=f"{quoted(name)} <ana@example.com>",
                        sender=f"{quoted(name)} <hello@nudge.example>", automation=f"a{automation}")
    except ValueError:
        # compose refuses what it cannot write safely (it never writes it anyway)
        return
    data = message.as_bytes(policy=policy.SMTP)
    assert_clean(data, recipient="ana@example.com")
    assert all(len(line) <= 998 for line in data.split(b"\r\n"))
