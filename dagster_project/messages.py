"""Turn a rendered email into an RFC 5322 message, safely.

A header value from the data goes through the `email` package's header objects,
unless it is plain (printable ASCII, no encoded-word opener, fitting one line),
which is written as it is. Every value is first flattened to one line and stripped
of RFC 2047 encoded-word openers first: Python 3.11's header parser decodes
`=?utf-8?q?=0D=0A...?=` inside subjects and quoted display names and then
writes the decoded line break out verbatim, which lets a contact's name add
headers (CVE-2024-6923). A final check parses the serialized bytes back and
refuses any message whose header block is not exactly what was set.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from datetime import datetime, timedelta, timezone
from email import policy
from email.headerregistry import Address, BaseHeader, UnstructuredHeader
from email.message import EmailMessage, MIMEPart
from email.parser import BytesHeaderParser
from email.utils import format_datetime, getaddresses
from functools import lru_cache
from typing import Any

from .backends.base import COMPOSED_BYTES, COMPOSED_ENVELOPE, composed_bytes
from .rendering import RenderedEmail, one_line
from .unsubscribe import UnsubscribeLinks

AUTOMATION_HEADER = "X-Nudge-Automation"

_MESSAGE_ID = re.compile(r"<[^<>\s@]+@[^<>\s@]+>")
_DOMAIN = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*")
_URI_FORBIDDEN = re.compile(r"[\s<>,\x00-\x1f\x7f]")


def header_text(value: str) -> str:
    """One line, with no sequence the header parser would decode into something else."""
    # "=?" opens an RFC 2047 encoded word; "= ?" reads the same to a person and decodes to nothing.
    return one_line(str(value)).replace("=?", "= ?")


def message_id(automation: str, trigger_key: str, domain: str) -> str:
    """The same (automation, trigger_key) always gets the same Message-ID, so a resend is recognisable."""
    digest = hashlib.sha256(f"{automation}\x00{trigger_key}".encode("utf-8")).hexdigest()[:32]
    return f"<{digest}@{_normalize_domain(domain)}>"


@lru_cache(maxsize=64)
def _normalize_domain(domain: str) -> str:
    cleaned = one_line(domain).strip(".").lower()
    try:
        cleaned = cleaned.encode("idna").decode("ascii")
    except UnicodeError:
        raise ValueError(f"{domain!r} is not a valid domain") from None
    if not _DOMAIN.fullmatch(cleaned):
        raise ValueError(f"{domain!r} is not a valid domain")
    return cleaned


def _single_address(value: str, role: str) -> Address:
    """Parse `value` with the email package and require exactly one plain mailbox."""
    return _parsed_address(value, role)[0]


def _parsed_address(value: str, role: str) -> tuple[Address, BaseHeader]:
    text = header_text(value)
    try:
        header = policy.SMTP.header_factory("To", text)
    except Exception as error:  # the parser raises a mix of ValueError, IndexError, HeaderParseError
        raise ValueError(f"{role} {value!r} is not an email address: {error}") from None
    addresses = header.addresses
    if len(addresses) != 1 or header.defects:
        raise ValueError(f"{role} {value!r} must be exactly one email address")
    address = addresses[0]
    if not address.username or not address.domain:
        raise ValueError(f"{role} {value!r} must be exactly one email address")
    cleaned = Address(display_name=header_text(address.display_name), username=address.username, domain=address.domain)
    return cleaned, header


@lru_cache(maxsize=64)
def sender_domain(sender: str) -> str:
    """'Nudge Fitness <hello@nudge.example>' -> 'nudge.example' (for Message-IDs)."""
    return _normalize_domain(_single_address(sender, "sender").domain)


@lru_cache(maxsize=64)
def _fixed_header(name: str, value: str) -> BaseHeader:
    """A header whose value is the same in every message of an automation (its name, ...), made
    once as `message[name] = value` makes it: setting a header object skips that parse per message."""
    return _fixed(policy.SMTP.header_factory(name, value))


@lru_cache(maxsize=4)
def _date_header(date: datetime, offset: timedelta | None) -> BaseHeader:
    """The Date header for `date`, whose `offset` is part of the key: datetimes of one instant in
    two zones are equal, and their headers are not."""
    return _fixed(policy.SMTP.header_factory("Date", format_datetime(date)))


@lru_cache(maxsize=64)
def _sender_header(sender: str) -> BaseHeader:
    return _fixed(policy.SMTP.header_factory("From", _single_address(sender, "sender")))


class _UriListHeader(UnstructuredHeader):
    """A header of <uri> items (RFC 2369) that folds only between items.

    The stock folder turns any word longer than 78 characters into an encoded
    word, and a List-Unsubscribe URL carrying a token always is one; mail
    providers do not decode it and lose the one-click link. RFC 5322 allows
    lines up to 998 characters, so each item keeps its own line.
    """

    def fold(self, *, policy):  # noqa: A002 - the email package's keyword
        items = [item.strip() for item in str(self).split(",")]
        return f"{self.name}: " + ("," + policy.linesep + " ").join(items) + policy.linesep


class _ListUnsubscribeHeader(_UriListHeader, BaseHeader):
    pass


def _uri_list(uris: list[str]) -> str:
    for uri in uris:
        if not uri or _URI_FORBIDDEN.search(uri):
            raise ValueError(f"unsubscribe link {uri!r} must be non-empty, without spaces, commas or brackets")
    return ", ".join(f"<{uri}>" for uri in uris)


def compose(
    *,
    rendered: RenderedEmail,
    sender: str,
    recipient: str,
    automation: str,
    message_id: str,
    date: datetime,
    unsubscribe: UnsubscribeLinks | None,
) -> EmailMessage:
    """A multipart/alternative (text, then HTML) message ready for any backend.

    Raises ValueError for a recipient or sender that is not exactly one address,
    a malformed Message-ID, or any value that would change the header block.
    """
    message_id = one_line(message_id)
    if not _MESSAGE_ID.fullmatch(message_id):
        raise ValueError(f"Message-ID {message_id!r} must look like <id@domain>")
    automation_name = header_text(automation)
    if not automation_name:
        raise ValueError("automation must not be empty")
    subject = header_text(rendered.subject)
    if not subject:
        raise ValueError("subject must not be empty")
    if date.tzinfo is None:
        # The pipeline's clock (as_of) is UTC stored without a zone.
        date = date.replace(tzinfo=timezone.utc)

    sender_header = _sender_header(sender)
    to, recipient_address = _recipient(recipient)
    headers: list[tuple[str, BaseHeader | str]] = [
        ("From", sender_header),
        ("To", to),
        ("Subject", _value("Subject", subject)),
        # One send stamps a batch with one time.
        ("Date", _date_header(date, date.utcoffset())),
        ("Message-ID", _value("Message-ID", message_id)),
        (AUTOMATION_HEADER, _fixed_header(AUTOMATION_HEADER, automation_name)),
    ]
    if unsubscribe is not None:
        links = _uri_list([one_line(unsubscribe.https), one_line(unsubscribe.mailto)])
        headers.append(("List-Unsubscribe", _ListUnsubscribeHeader("List-Unsubscribe", links)))
        # RFC 8058: the receiver may POST to the https link to unsubscribe in one click.
        headers.append(("List-Unsubscribe-Post", _fixed_header("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")))
    try:
        message, serialized = _alternative(headers, rendered.text, rendered.html)
    except UnicodeError as error:
        raise ValueError(f"message cannot be serialized: {error}") from error
    # The bytes checked are the bytes sent: backends take them (composed_bytes) rather than
    # serializing again; they are also what message.as_bytes(policy=SMTP) gives.
    _verify_header_block(serialized, [name for name, _ in headers] + ["MIME-Version", "Content-Type"])
    setattr(message, COMPOSED_BYTES, serialized)
    setattr(message, COMPOSED_ENVELOPE, (sender_header.addresses[0].addr_spec, [recipient_address]))
    return message


# A value that needs no encoding and no folding is stored as the plain string it is, as the
# email package stores the headers of a message it parsed (and parses it when someone reads
# it): its parser is pure Python, a third of a millisecond for an address. Anything else, a
# display name, a non-ASCII subject, a long line, goes through the parser here.
_PLAIN_ADDRESS = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+"
)
_PLAIN_TEXT = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?")


def _fits(name: str, value: str) -> bool:
    return len(name) + 2 + len(value) <= policy.SMTP.max_line_length and "=?" not in value


def _value(name: str, value: str) -> BaseHeader | str:
    if _PLAIN_TEXT.fullmatch(value) and _fits(name, value):
        return value
    return policy.SMTP.header_factory(name, value)


def _recipient(recipient: str) -> tuple[BaseHeader | str, str]:
    """The To header and the address it names."""
    if _PLAIN_ADDRESS.fullmatch(recipient) and _fits("To", recipient):
        return recipient, recipient
    address, header = _parsed_address(recipient, "recipient")
    if not (not address.display_name and str(header) == address.addr_spec):
        # made again from the cleaned Address: the display name as header_text left it
        header = policy.SMTP.header_factory("To", address)
    return header, address.addr_spec


# What the email package writes for a message is slow to get through it (set_content, header
# objects made anew for every value, the generator): about 4 ms a message, most of a send. A
# message here always has the same shape, so it is put together from header objects made once
# where their values never change, and serialized the way BytesGenerator would (a test holds
# the two byte for byte). Values from the data still go through the email package's parsers.
_BOUNDARY = "=_nudge_alternative_0"
_NEWLINES = re.compile(r"\r\n|\r|\n")


@lru_cache(maxsize=8)
def _multipart_header(boundary: str) -> BaseHeader:
    return policy.SMTP.header_factory("Content-Type", f'multipart/alternative; boundary="{boundary}"')


def _folded(headers: list[tuple[str, BaseHeader | str]]) -> str:
    return "".join(_fold(name, header) for name, header in headers)


def _fold(name: str, header: BaseHeader | str) -> str:
    if not isinstance(header, BaseHeader):  # (a header object is a str too)
        return f"{name}: {header}\r\n"  # what the policy writes for a stored value that fits a line
    folded = getattr(header, _FOLDED, None)
    return folded if folded is not None else header.fold(policy=policy.SMTP)


# Fixed header objects carry their folded line, made once (on the object itself: a header object
# is a str, equal to any header of another name with the same value).
_FOLDED = "_nudge_folded"


def _fixed(header: BaseHeader) -> BaseHeader:
    if getattr(header, _FOLDED, None) is None:
        setattr(header, _FOLDED, header.fold(policy=policy.SMTP))
    return header


def _crlf(payload: str) -> str:
    """Line breaks as Generator._write_lines writes them."""
    if "\r" not in payload:
        # Every break a "\n" (the payloads made here): the same as splitting at each and joining.
        return payload.replace("\n", "\r\n")
    lines = _NEWLINES.split(payload)
    return "".join(line + "\r\n" for line in lines[:-1]) + lines[-1]


def _text_part(subtype: str, content: str) -> tuple[MIMEPart, bytes]:
    """One text/<subtype> part as set_content(content, subtype=..., charset="utf-8") makes it."""
    cte, payload = _encode_body(content)
    part = MIMEPart(policy=policy.SMTP)
    headers = [("Content-Type", _part_header("Content-Type", f'text/{subtype}; charset="utf-8"')),
               ("Content-Transfer-Encoding", _part_header("Content-Transfer-Encoding", cte))]
    part._headers = list(headers)  # noqa: SLF001 - header objects made once, as __setitem__ would store them
    part.set_payload(payload)
    data = (_folded(headers) + "\r\n" + _crlf(payload)).encode("ascii", "surrogateescape")
    return part, data


def _encode_body(content: str) -> tuple[str, str]:
    """Content-Transfer-Encoding and payload, chosen as the email package's set_content chooses
    them (7bit or 8bit where every line fits, else quoted-printable or base64, whichever is
    shorter), encoded by binascii's C code rather than quoprimime's Python."""
    lines = content.encode("utf-8").splitlines()
    body = b"\n".join(lines) + b"\n"
    if max(map(len, lines), default=0) <= policy.SMTP.max_line_length:
        try:
            return "7bit", body.decode("ascii")
        except UnicodeDecodeError:
            return "8bit", body.decode("ascii", "surrogateescape")
    quoted = _quoted_printable(lines)
    # base64 is only written when it is the shorter: its length is known without encoding.
    if len(quoted) > _base64_length(len(body)):
        return "base64", base64.encodebytes(body).decode("ascii")
    return "quoted-printable", quoted.decode("ascii")


# Quoted-printable encodes each line on its own (its soft breaks and the escapes of trailing
# blanks never reach past the line's end), and the lines of one template's messages are mostly
# the same from contact to contact: the markup after CSS inlining, whose long lines are why the
# HTML part is quoted at all. So a line is encoded once and looked up after: 10 us a message
# instead of b2a_qp's 45 over the whole 4 KB part. Only short lines are held, and so many.
_QUOTED_LINES: dict[bytes, bytes] = {}
_QUOTED_LINES_HELD = 4096
_QUOTED_LINE_LONGEST = 1024


def _quoted_printable(lines: list[bytes]) -> bytes:
    """binascii.b2a_qp(b"\n".join(lines) + b"\n", istext=True) for `lines` holding no CR or LF."""
    known = _QUOTED_LINES
    encoded = []
    for line in lines:
        quoted = known.get(line)
        if quoted is None:
            quoted = binascii.b2a_qp(line + b"\n", istext=True)[:-1]
            if len(line) <= _QUOTED_LINE_LONGEST:
                if len(known) >= _QUOTED_LINES_HELD:
                    known.clear()
                known[line] = quoted
        encoded.append(quoted)
    encoded.append(b"")
    return b"\n".join(encoded)


def _base64_length(size: int) -> int:
    """len(base64.encodebytes(data)) for `size` bytes of data: lines of 57 bytes, 76 characters
    and a newline each, the last one shorter."""
    rest = size % 57
    return size // 57 * 77 + (4 * ((rest + 2) // 3) + 1 if rest else 0)


@lru_cache(maxsize=16)
def _part_header(name: str, value: str) -> BaseHeader:
    return _fixed(policy.SMTP.header_factory(name, value))


def _alternative(headers: list[tuple[str, BaseHeader | str]], text: str, html: str) -> tuple[EmailMessage, bytes]:
    """The message (text, then HTML, as alternatives) and its bytes as as_bytes(policy=SMTP) writes them."""
    parts = [_text_part("plain", text), _text_part("html", html)]
    boundary = _BOUNDARY
    # No line of either part may start with the delimiter: a parser takes "--boundary" followed
    # by spaces for one too (the email package's own check misses that; its boundaries are
    # random, this one is known). The fixed one first (QP and base64 bodies can never hold it),
    # then one made from the parts themselves.
    if any(_opens_a_line(boundary, data) for _, data in parts):
        boundary = _unused_boundary([data for _, data in parts])
    headers = [*headers, ("MIME-Version", _part_header("MIME-Version", "1.0")),
               ("Content-Type", _fixed(_multipart_header(boundary)) if boundary == _BOUNDARY
                else policy.SMTP.header_factory("Content-Type", f'multipart/alternative; boundary="{boundary}"'))]
    message = EmailMessage(policy=policy.SMTP)
    message._headers = list(headers)  # noqa: SLF001
    message.set_payload([part for part, _ in parts])
    separator = f"--{boundary}\r\n".encode()
    serialized = b"".join([
        _folded(headers).encode("ascii"), b"\r\n",
        separator, parts[0][1], b"\r\n", separator, parts[1][1],
        f"\r\n--{boundary}--\r\n".encode(),
    ])
    return message, serialized


# A message made in another process (dagster_project.composing) crosses over as the bytes compose()
# verified and its envelope: pickling the message itself costs more than composing it (every header
# object is rebuilt through a class made anew). This side gets the message back from those bytes as
# the email package's parser would hold it, headers as their folded text, parsed when read, without
# running that parser (its pure Python is most of a millisecond a message): the bytes are known to
# have compose()'s shape, a header block, then the two parts of a multipart/alternative.
Portable = tuple[bytes, tuple[str, list[str]]]
_BOUNDARY_PARAMETER = re.compile(r'\bboundary="([^"]+)"')


def portable(message: EmailMessage) -> Portable:
    """What `from_portable` makes `message` again from: its bytes and envelope."""
    data, envelope = composed_bytes(message), getattr(message, COMPOSED_ENVELOPE, None)
    if data is None or envelope is None:
        raise ValueError("only a message compose() made can cross to another process")
    return data, envelope


def from_portable(data: bytes, envelope: tuple[str, list[str]]) -> EmailMessage:
    """The message compose() made of `data`: the same headers, parts and bytes."""
    head, _, body = data.partition(b"\r\n\r\n")
    message = _ArrivedMessage(policy=policy.SMTP)
    message._headers = _stored_headers(head)  # noqa: SLF001 - as the parser stores them
    content_type = next((value for name, value in message._headers if name.lower() == "content-type"), "")  # noqa: SLF001
    boundary = _BOUNDARY_PARAMETER.search(content_type)
    if boundary is None:
        raise ValueError("not a message compose() made: no multipart boundary")
    delimiter = f"--{boundary.group(1)}".encode("ascii")
    opening, closing = delimiter + b"\r\n", b"\r\n" + delimiter + b"--\r\n"
    if not (body.startswith(opening) and body.endswith(closing)):
        raise ValueError("not a message compose() made: its parts are not where compose() puts them")
    # No line of a part starts with the delimiter (compose() chose the boundary so): this split is exact.
    message._unread_parts = body[len(opening):-len(closing)].split(b"\r\n" + opening)
    setattr(message, COMPOSED_BYTES, data)
    setattr(message, COMPOSED_ENVELOPE, envelope)
    return message


class _ArrivedMessage(EmailMessage):
    """A message from another process whose parts are made from their bytes when first read: the
    file and SMTP backends send the bytes and read only headers (a tenth of the sending process's
    time went into parts nobody read)."""

    _unread_parts: list[bytes] | None = None

    @property  # type: ignore[override]
    def _payload(self) -> Any:
        unread = self._unread_parts
        if unread is not None:
            self._unread_parts = None
            self.__dict__["_parts"] = [_part_from(part) for part in unread]
        return self.__dict__.get("_parts")

    @_payload.setter
    def _payload(self, value: Any) -> None:
        self._unread_parts = None
        self.__dict__["_parts"] = value


def _part_from(data: bytes) -> MIMEPart:
    head, _, payload = data.partition(b"\r\n\r\n")
    part = MIMEPart(policy=policy.SMTP)
    part._headers = _stored_headers(head)  # noqa: SLF001
    # compose()'s payloads hold "\n" alone, written out as CRLF (_crlf): undone exactly.
    part.set_payload(payload.decode("ascii", "surrogateescape").replace("\r\n", "\n"))
    return part


def _stored_headers(block: bytes) -> list[tuple[str, str]]:
    """(name, value) as EmailPolicy.header_source_parse stores a header read from `block` (no
    trailing CRLF): the value after the colon and its blanks, continuation lines joined by CRLF."""
    headers: list[tuple[str, str]] = []
    for line in block.decode("ascii", "surrogateescape").split("\r\n"):
        if line[:1] in (" ", "\t") and headers:
            name, value = headers[-1]
            headers[-1] = (name, f"{value}\r\n{line}")
        else:
            name, _, value = line.partition(":")
            headers.append((name, value.lstrip(" \t")))
    return headers


def _opens_a_line(boundary: str, body: bytes) -> bool:
    delimiter = b"--" + boundary.encode()
    return body.startswith(delimiter) or b"\n" + delimiter in body


def _unused_boundary(bodies: list[bytes]) -> str:
    digest = hashlib.sha256(b"".join(bodies)).hexdigest()
    for counter in range(1_000):
        boundary = f"=_nudge_{digest[:24]}_{counter}"
        if not any(_opens_a_line(boundary, body) for body in bodies):
            return boundary
    raise ValueError("no MIME boundary is free in this message")


def _verify_header_block(serialized: bytes, expected: list[str]) -> None:
    """Parse the serialized header block back and insist on exactly the headers that were set, once each."""
    # The header block alone: the parser stops at its first empty line anyway.
    end = serialized.find(b"\r\n\r\n")
    block = serialized if end < 0 else serialized[: end + 4]
    wanted = sorted(name.lower() for name in expected)
    read = _read_plain_header_block(block)
    if read is None:
        parsed = BytesHeaderParser(policy=policy.compat32).parsebytes(block)
        found = sorted(name.lower() for name in parsed.keys())
        recipients = parsed.get_all("To", [])
    else:
        found, recipients = read
    if found != wanted:
        raise ValueError(f"refusing a message whose headers changed on serialization: {found} != {wanted}")
    if len(recipients) == 1 and isinstance(recipients[0], str) and _PLAIN_ADDRESS.fullmatch(recipients[0].strip()):
        return  # one plain address, what getaddresses reads in it
    if len(getaddresses(recipients)) != 1:
        raise ValueError("refusing a message that is not addressed to exactly one recipient")


# A header block the compat32 parser reads line by line exactly as written: every line ended by a
# CRLF (no other CR or LF anywhere), each either `Name:` (printable ASCII other than ":") and a
# value, or the continuation (a space or tab first) of the line before; then the empty line.
_PLAIN_HEADER_BLOCK = re.compile(rb"(?:[\x21-\x39\x3b-\x7e]+:[^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*)+(?:\r\n)?")
_HEADER_NAME = re.compile(rb"^([\x21-\x39\x3b-\x7e]+):", re.MULTILINE)
# A To header's value with its continuation lines, as compat32 keeps it (CRLFs inside, leading blanks dropped).
_TO_VALUE = re.compile(rb"^to:[ \t]*([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)", re.MULTILINE | re.IGNORECASE)


def _read_plain_header_block(block: bytes) -> tuple[list[str], list[str]] | None:
    """(sorted lowercase header names, the To values) of a header block the compat32 parser would
    read exactly so (see _PLAIN_HEADER_BLOCK); None for anything else, which goes to that parser itself."""
    if not block.isascii() or _PLAIN_HEADER_BLOCK.fullmatch(block) is None:
        return None
    names = sorted(name.decode("ascii").lower() for name in _HEADER_NAME.findall(block))
    recipients = [value.decode("ascii") for value in _TO_VALUE.findall(block)]
    return names, recipients
