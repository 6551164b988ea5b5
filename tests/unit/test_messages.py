from __future__ import annotations

import email
import re
from datetime import datetime, timedelta, timezone
from email import policy
from email.message import EmailMessage

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dagster_project.messages import compose, message_id, sender_domain
from dagster_project.rendering import RenderedEmail
from dagster_project.unsubscribe import UnsubscribeLinks, make_token, unsubscribe_links

SENDER = "Nudge Fitness <hello@nudge.example>"
WHEN = datetime(2026, 10, 31, 21, 0, tzinfo=timezone.utc)
RENDERED = RenderedEmail(subject="Welcome to Nudge Fitness, Ana", html="<p>Hi Ana</p>", text="Hi Ana")


def links() -> UnsubscribeLinks:
    token = make_token("secret", "contact_000123", "marketing")
    return unsubscribe_links("https://nudge.example/unsubscribe", "unsubscribe@nudge.example", token)


def build(
    *,
    rendered: RenderedEmail = RENDERED,
    sender: str = SENDER,
    recipient: str = "ana@example.com",
    unsubscribe: UnsubscribeLinks | None = None,
    date: datetime = WHEN,
) -> EmailMessage:
    return compose(
        rendered=rendered,
        sender=sender,
        recipient=recipient,
        automation="welcome",
        message_id=message_id("welcome", "contact_000123", "nudge.example"),
        date=date,
        unsubscribe=unsubscribe,
    )


def header_lines(message: EmailMessage) -> list[str]:
    """The serialized header block, one entry per physical line."""
    head = message.as_bytes(policy=policy.SMTP).split(b"\r\n\r\n", 1)[0]
    return head.decode("ascii").split("\r\n")


def reparsed(message: EmailMessage) -> EmailMessage:
    return email.message_from_bytes(message.as_bytes(policy=policy.SMTP), policy=policy.default)


# --- Message-ID ----------------------------------------------------------------


def test_message_id_is_deterministic_per_automation_and_trigger_key():
    first = message_id("welcome", "contact_000123", "nudge.example")

    assert first == message_id("welcome", "contact_000123", "nudge.example")
    assert re.fullmatch(r"<[0-9a-f]{32}@nudge\.example>", first)
    assert first != message_id("welcome", "contact_000124", "nudge.example")
    assert first != message_id("cart_abandoned", "contact_000123", "nudge.example")


def test_message_id_separates_automation_from_trigger_key():
    assert message_id("ab", "c", "nudge.example") != message_id("a", "bc", "nudge.example")


@pytest.mark.parametrize("domain", ["", "nudge example", "nudge.example>", "<x>", "a@b"])
def test_message_id_refuses_a_bad_domain(domain):
    with pytest.raises(ValueError):
        message_id("welcome", "c1", domain)


def test_sender_domain_comes_from_the_address():
    assert sender_domain("Nudge Fitness <hello@Nudge.Example>") == "nudge.example"
    assert sender_domain("hello@mail.nudge.example") == "mail.nudge.example"
    with pytest.raises(ValueError):
        sender_domain("Nudge Fitness")


# --- headers and parts ------------------------------------------------------------


def test_the_message_has_every_header_once():
    message = reparsed(build(unsubscribe=links()))

    assert str(message["From"]) == SENDER
    assert str(message["To"]) == "ana@example.com"
    assert str(message["Subject"]) == "Welcome to Nudge Fitness, Ana"
    assert str(message["Date"]) == "Sat, 31 Oct 2026 21:00:00 +0000"
    assert str(message["Message-ID"]) == message_id("welcome", "contact_000123", "nudge.example")
    assert str(message["MIME-Version"]) == "1.0"
    assert str(message["X-Nudge-Automation"]) == "welcome"
    for name in ("From", "To", "Subject", "Date", "Message-ID", "X-Nudge-Automation"):
        assert len(message.get_all(name)) == 1


def test_the_message_is_text_then_html_alternatives():
    message = reparsed(build())

    assert message.get_content_type() == "multipart/alternative"
    parts = list(message.iter_parts())
    assert [part.get_content_type() for part in parts] == ["text/plain", "text/html"]
    assert parts[0].get_content().strip() == "Hi Ana"
    assert parts[1].get_content().strip() == "<p>Hi Ana</p>"


def test_non_ascii_subject_and_body_survive_the_round_trip():
    rendered = RenderedEmail(subject="Olá Zoë, 💪 time to move", html="<p>Olá Zoë 💪</p>", text="Olá Zoë 💪")

    message = reparsed(build(rendered=rendered, recipient="Zoë Ünal <zoe@example.com>"))

    assert str(message["Subject"]) == "Olá Zoë, 💪 time to move"
    assert message["To"].addresses[0].display_name == "Zoë Ünal"
    assert message.get_body(preferencelist=("plain",)).get_content().strip() == "Olá Zoë 💪"


def test_a_naive_date_is_read_as_utc_and_other_zones_keep_their_offset():
    assert str(build(date=datetime(2026, 1, 2, 3, 4, 5))["Date"]) == "Fri, 02 Jan 2026 03:04:05 +0000"
    lisbon_summer = timezone(timedelta(hours=1))
    assert str(build(date=datetime(2026, 7, 1, 9, tzinfo=lisbon_summer))["Date"]).endswith("+0100")


def test_one_instant_in_two_zones_keeps_each_zones_date_header():
    # The Date header is made once per time a send stamps: equal datetimes must not share it.
    utc = datetime(2026, 7, 1, 8, tzinfo=timezone.utc)
    lisbon_summer = datetime(2026, 7, 1, 9, tzinfo=timezone(timedelta(hours=1)))
    assert utc == lisbon_summer
    assert str(build(date=utc)["Date"]) == "Wed, 01 Jul 2026 08:00:00 +0000"
    assert str(build(date=lisbon_summer)["Date"]) == "Wed, 01 Jul 2026 09:00:00 +0100"


def test_list_unsubscribe_only_with_links():
    assert build()["List-Unsubscribe"] is None
    assert build()["List-Unsubscribe-Post"] is None

    unsubscribe = links()
    message = reparsed(build(unsubscribe=unsubscribe))

    assert str(message["List-Unsubscribe"]) == f"<{unsubscribe.https}>, <{unsubscribe.mailto}>"
    assert str(message["List-Unsubscribe-Post"]) == "List-Unsubscribe=One-Click"


def test_long_unsubscribe_links_are_never_turned_into_encoded_words():
    # A real token makes the URL longer than 78 characters; the stock folder would RFC 2047-encode it.
    unsubscribe = links()
    assert len(unsubscribe.https) > 78

    lines = header_lines(build(unsubscribe=unsubscribe))
    start = next(i for i, line in enumerate(lines) if line.startswith("List-Unsubscribe:"))
    block = [lines[start]] + [line for line in lines[start + 1 :] if line.startswith(" ")][:1]

    assert "=?" not in "".join(block)
    assert f"<{unsubscribe.https}>" in block[0]
    assert all(len(line) <= 998 for line in lines)


# --- header injection ---------------------------------------------------------------

INJECTIONS = [
    "Ana\r\nBcc: x@y.example",
    "Ana\nBcc: x@y.example",
    "Ana\rBcc: x@y.example",
    "=?utf-8?q?=0D=0ABcc:_x@y.example?=",
    "Ana =?utf-8?b?DQpCY2M6IHhAeS5leGFtcGxl?=",
    "Ana\u2028Bcc: x@y.example",
    "Ana\u2029Bcc: x@y.example",
    "Ana\x85Bcc: x@y.example",
    "Ana\v\fBcc: x@y.example",
]


def assert_single_clean_header_block(message: EmailMessage) -> None:
    lines = header_lines(message)
    assert sum(1 for line in lines if line.lower().startswith("subject:")) == 1
    assert not any(line.lower().startswith(("bcc:", "cc:")) for line in lines)
    parsed = reparsed(message)
    assert parsed.get_all("Bcc") is None
    assert parsed.get_all("Cc") is None
    assert len(parsed.get_all("To")) == 1
    assert len(parsed["To"].addresses) == 1
    assert parsed["To"].addresses[0].addr_spec == "ana@example.com"
    assert len(parsed.get_all("Subject")) == 1


@pytest.mark.parametrize("payload", INJECTIONS)
def test_a_hostile_subject_stays_one_subject_header(payload):
    message = build(rendered=RenderedEmail(subject=f"Hello {payload}", html="<p>x</p>", text="x"))

    assert_single_clean_header_block(message)
    subject = str(reparsed(message)["Subject"])
    assert "\r" not in subject and "\n" not in subject


@pytest.mark.parametrize("payload", INJECTIONS)
def test_a_hostile_display_name_stays_inside_its_address(payload):
    quoted = payload.replace("\\", "\\\\").replace('"', '\\"')
    message = build(recipient=f'"{quoted}" <ana@example.com>', sender=f'"{quoted}" <hello@nudge.example>')

    assert_single_clean_header_block(message)
    assert reparsed(message)["From"].addresses[0].addr_spec == "hello@nudge.example"


@pytest.mark.parametrize("payload", INJECTIONS)
def test_an_unquoted_hostile_name_is_either_refused_or_harmless(payload):
    try:
        message = build(recipient=f"{payload} <ana@example.com>")
    except ValueError:
        return
    assert_single_clean_header_block(message)


@pytest.mark.parametrize(
    "recipient",
    [
        "ana@example.com, bob@example.com",
        "ana@example.com\r\nBcc: x@y.example",
        "ana@example.com\r\nTo: bob@example.com",
        "Ana <ana@example.com> bob@example.com",
        "team: ana@example.com, bob@example.com;",
        "undisclosed-recipients:;",
        "",
        "not an address",
        "<ana@example.com",
        "alice@example.org)<bob@example.org>",
    ],
)
def test_a_recipient_that_is_not_exactly_one_address_is_refused(recipient):
    with pytest.raises(ValueError):
        build(recipient=recipient)


@pytest.mark.parametrize("bad_id", ["", "no-brackets@nudge.example", "<two words@nudge.example>", "<x>\r\nBcc: y"])
def test_a_malformed_message_id_is_refused(bad_id):
    with pytest.raises(ValueError):
        compose(
            rendered=RENDERED,
            sender=SENDER,
            recipient="ana@example.com",
            automation="welcome",
            message_id=bad_id,
            date=WHEN,
            unsubscribe=None,
        )


# --- the bytes backends send ---------------------------------------------------


@pytest.mark.parametrize(
    "rendered",
    [RENDERED, RenderedEmail(subject="Grüße, Zoë — ☕", html="<p>" + "Zoë " * 80 + "</p>", text="Grüße\n" * 40)],
    ids=["ascii", "non_ascii_long_lines"],
)
def test_backends_get_exactly_the_bytes_the_message_serializes_to(rendered):
    from dagster_project.backends.base import composed_bytes, message_bytes

    message = build(rendered=rendered, unsubscribe=links())
    assert composed_bytes(message) is not None
    assert message_bytes(message) == composed_bytes(message) == message.as_bytes(policy=policy.SMTP)
    other = reparsed(message)  # a message compose did not make is serialized when sent
    assert composed_bytes(other) is None and message_bytes(other) == other.as_bytes(policy=policy.SMTP)


# Bodies with what changes how a part is encoded: long lines, non-ASCII, bare CR and LF, lines
# that look like MIME boundaries, "From " at a line start.
BODY = st.lists(
    st.one_of(
        st.sampled_from(["\n", "\r", "\r\n", "--=_nudge_alternative_0", "--=_nudge_alternative_0--", "From ",
                         "=", ".", " ", "\t", "a" * 90, "é" * 50, "☕"]),
        st.characters(codec="utf-8", exclude_categories=("Cs",)),
    ),
    max_size=60,
).map("".join)


# Bare addresses are written as they are, without the email package's parser: these must come
# out as the parser would write them, or go through it.
BARE_ADDRESSES = ["ana@example.com", "UPPER.Case@Example.COM", "o'brien+tag@mail.example.co.uk", "x=?y?=@example.com",
                  "a" * 70 + "@example.com", "a..b@example.com", "ana@localhost", "ana@-x.example"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(subject=st.text(min_size=1, max_size=120), name=st.text(max_size=40), text=BODY, html=BODY,
       marketing=st.booleans(), bare=st.sampled_from([None, *BARE_ADDRESSES]))
def test_the_composed_bytes_are_what_the_email_package_writes_for_the_message(subject, name, text, html, marketing,
                                                                              bare):
    """compose() writes the bytes itself, for speed; they must be the message's own serialization."""
    from dagster_project.backends.base import composed_bytes

    quoted = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    recipient = bare or f"{quoted} <ana@example.com>"
    try:
        message = build(rendered=RenderedEmail(subject=f"S{subject}", html=html, text=text),
                        recipient=recipient, unsubscribe=links() if marketing else None)
    except ValueError:
        return  # refused: nothing is written
    assert composed_bytes(message) == message.as_bytes(policy=policy.SMTP)
    parsed = reparsed(message)
    assert str(parsed["To"].addresses[0].addr_spec).lower() == (bare or "ana@example.com").lower()
    plain, rich = (parsed.get_body(preferencelist=(kind,)) for kind in ("plain", "html"))
    assert plain.get_content().replace("\r\n", "\n") == _normalized(text)
    assert rich.get_content().replace("\r\n", "\n") == _normalized(html)


def _normalized(body: str) -> str:
    """A body as a MIME text part carries it: lines (split at CR, LF or CRLF only) ended by one newline each."""
    lines = body.encode().splitlines()
    return "".join(line.decode() + "\n" for line in lines) if lines else "\n"


@pytest.mark.parametrize("line", ["--=_nudge_alternative_0", "--=_nudge_alternative_0 ", "--=_nudge_alternative_0--\t"])
def test_a_body_line_that_looks_like_the_boundary_cannot_split_the_message(line):
    # The boundary is fixed, so a contact's data could spell it; a parser also reads it with
    # trailing spaces. Another boundary is chosen, and both parts arrive whole.
    message = reparsed(build(rendered=RenderedEmail(subject="Hi", html=f"<p>x</p>\n{line}\n", text=f"a\n{line}\nb")))

    assert [part.get_content_type() for part in message.iter_parts()] == ["text/plain", "text/html"]
    assert message.get_body(preferencelist=("plain",)).get_content() == f"a\r\n{line}\r\nb\r\n"
    assert message.get_boundary() != "=_nudge_alternative_0"


def test_headers_folded_once_are_told_apart_by_name_not_only_by_value():
    # An automation named like another header's fixed value must still get its own header line.
    message = compose(rendered=RENDERED, sender=SENDER, recipient="ana@example.com", automation="1.0",
                      message_id=message_id("1.0", "c1", "nudge.example"), date=WHEN, unsubscribe=None)
    lines = header_lines(message)
    assert "X-Nudge-Automation: 1.0" in lines and "MIME-Version: 1.0" in lines


# --- the shortcuts compose takes -------------------------------------------------


def test_the_base64_length_is_known_without_encoding():
    import base64

    from dagster_project.messages import _base64_length

    for size in [*range(0, 400), 4095, 4096, 9999, 57 * 1000, 57 * 1000 + 1]:
        assert _base64_length(size) == len(base64.encodebytes(b"x" * size)), size


# Lines as a template and a contact's data could make them: blanks and dots where quoted-printable
# escapes them, "=", non-ASCII, controls, lengths around its 76-character soft breaks.
QP_LINES = st.lists(
    st.one_of(
        st.sampled_from([b"", b".", b" ", b"\t", b"=", b"a" * 73, b"a" * 74, b"a" * 75, b"a" * 76, b"a" * 77,
                         b"x=" * 40, "é".encode() * 30, b"\x00", b"\x7f", b"\x0b"]),
        st.binary(max_size=200).map(lambda data: data.replace(b"\r", b"").replace(b"\n", b"")),
    ).flatmap(lambda first: st.lists(st.sampled_from([first, b" ", b"=", b".", b"a" * 75, b"\t"]), max_size=4).map(
        lambda rest: first + b"".join(rest))),
    min_size=1, max_size=12,
)


@settings(max_examples=400, deadline=None)
@given(lines=QP_LINES, again=st.lists(st.integers(min_value=0, max_value=11), max_size=12))
def test_quoting_a_line_at_a_time_is_quoting_the_whole_part(lines, again):
    """compose() quotes a part's lines one at a time, each once (later messages look it up): the
    bytes must be b2a_qp's over the whole part, whether a line was seen before or not."""
    import binascii

    from dagster_project.messages import _quoted_printable

    for body in (lines, [lines[index % len(lines)] for index in again] or lines):
        assert _quoted_printable(body) == binascii.b2a_qp(b"\n".join(body) + b"\n", istext=True)


def test_the_lines_held_for_quoting_stay_few_and_short():
    from dagster_project import messages

    messages._QUOTED_LINES.clear()
    messages._quoted_printable([b"x" * (messages._QUOTED_LINE_LONGEST + 1)])
    assert not messages._QUOTED_LINES
    messages._quoted_printable([f"line {number}=".encode() for number in range(messages._QUOTED_LINES_HELD + 10)])
    assert 0 < len(messages._QUOTED_LINES) <= messages._QUOTED_LINES_HELD


# Header blocks as a serializer could get them wrong: bare CR or LF, continuation lines, names
# with odd characters, a "From " line, a line without a colon, several To headers, folded To.
HEADER_LINES = st.one_of(
    st.sampled_from([
        "From: a@b.c", "To: ana@example.com", "To: ana@example.com, bo@example.com", "To:\r\n ana@example.com",
        "To: Ana <ana@example.com>", "Subject: hi", " continued", "\tcontinued", "From nobody", "no colon here",
        ": empty name", "X-A: 1\rX-B: 2", "X-A: 1\nX-B: 2", "Subject: a\r\n b", "To: \"a, b\" <c@d.e>", "Ä: x",
        "Message-ID: <a@b>", "To: ana@example.com ", "To:   ana@example.com",
    ]),
    st.builds(lambda name, value: f"{name}: {value}", st.text("abcXyz-:", min_size=0, max_size=6),
              st.text(max_size=10)),
)


@settings(max_examples=500, deadline=None)
@given(lines=st.lists(HEADER_LINES, min_size=1, max_size=8))
def test_the_quick_reading_of_a_header_block_is_the_parsers_whenever_it_answers(lines):
    from email.parser import BytesHeaderParser

    from dagster_project.messages import _read_plain_header_block

    try:
        block = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")
    except UnicodeEncodeError:
        return
    quick = _read_plain_header_block(block)
    if quick is None:
        return  # the parser itself reads this one
    parsed = BytesHeaderParser(policy=policy.compat32).parsebytes(block)
    assert quick == (sorted(name.lower() for name in parsed.keys()), [str(v) for v in parsed.get_all("To", [])])


# --- a message made in another process (dagster_project.composing) ------------------


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(subject=st.text(min_size=1, max_size=120), name=st.text(max_size=40), text=BODY, html=BODY,
       marketing=st.booleans(), bare=st.sampled_from([None, *BARE_ADDRESSES]))
def test_a_message_from_another_process_is_the_one_composed_there(subject, name, text, html, marketing, bare):
    """It crosses as bytes and envelope; what arrives holds what the parser would read from those
    bytes, the payloads compose() set, and serializes to the same bytes."""
    import pickle
    from email.parser import BytesParser

    from dagster_project.backends.base import COMPOSED_BYTES, COMPOSED_ENVELOPE, stored_header
    from dagster_project.messages import from_portable, portable

    quoted = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    try:
        message = build(rendered=RenderedEmail(subject=f"S{subject}", html=html, text=text),
                        recipient=bare or f"{quoted} <ana@example.com>", unsubscribe=links() if marketing else None)
    except ValueError:
        return
    data, envelope = pickle.loads(pickle.dumps(portable(message)))
    arrived = from_portable(data, envelope)
    parsed = BytesParser(policy=policy.SMTP).parsebytes(data)

    assert list(arrived.raw_items()) == list(parsed.raw_items())
    assert [list(part.raw_items()) for part in arrived.iter_parts()] == [list(part.raw_items()) for part in parsed.iter_parts()]
    assert [part.get_payload() for part in arrived.iter_parts()] == [part.get_payload() for part in message.iter_parts()]
    for name in ("Subject", "Message-ID", "X-Nudge-Automation", "Date"):  # what the ledger and backends read
        assert stored_header(arrived, name) == stored_header(message, name)
    assert getattr(arrived, COMPOSED_ENVELOPE) == getattr(message, COMPOSED_ENVELOPE)
    assert getattr(arrived, COMPOSED_BYTES) == data


def test_only_what_compose_made_crosses_to_another_process():
    from dagster_project.messages import from_portable, portable

    with pytest.raises(ValueError, match="only a message compose"):
        portable(reparsed(build()))
    single = b"From: a@example.com\r\nTo: b@example.com\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
    with pytest.raises(ValueError, match="no multipart boundary"):
        from_portable(single, ("a@example.com", ["b@example.com"]))
    data, envelope = portable(build(unsubscribe=links()))
    with pytest.raises(ValueError, match="not where compose"):
        from_portable(data[:-4], envelope)
    arrived = from_portable(data, envelope)
    # What a backend reads (headers, the bytes) leaves the parts unmade; the first look at one makes them.
    from dagster_project.backends.base import message_bytes, message_id_of

    assert message_bytes(arrived) == data and message_id_of(arrived)
    assert vars(arrived).get("_parts") is None and len(vars(arrived)["_unread_parts"]) == 2
    assert arrived["To"].addresses[0].addr_spec == "ana@example.com"
    assert arrived.get_body(preferencelist=("html",)).get_content() == "<p>Hi Ana</p>\n"
    assert [part.get_content_type() for part in vars(arrived)["_parts"]] == ["text/plain", "text/html"]
    # Serialized again by the email package itself (never done on the way out: the bytes that
    # crossed are sent), a plain message comes out the same. (It would refold List-Unsubscribe.)
    data, envelope = portable(build())
    arrived = from_portable(data, envelope)
    from dagster_project.backends.base import COMPOSED_BYTES

    delattr(arrived, COMPOSED_BYTES)
    assert arrived.as_bytes(policy=policy.SMTP) == data
