"""Turn a rendered email into an RFC 5322 message, safely.

Every header goes through the `email` package's header objects, never string
formatting. On top of that, every value is flattened to one line and stripped
of RFC 2047 encoded-word openers first: Python 3.11's header parser decodes
`=?utf-8?q?=0D=0A...?=` inside subjects and quoted display names and then
writes the decoded line break out verbatim, which lets a contact's name add
headers (CVE-2024-6923). A final check parses the serialized bytes back and
refuses any message whose header block is not exactly what was set.
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from datetime import datetime, timezone
from email import policy
from email.headerregistry import Address, BaseHeader, UnstructuredHeader
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from email.utils import format_datetime

from .backends.base import COMPOSED_BYTES
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
    return Address(display_name=header_text(address.display_name), username=address.username, domain=address.domain)


@lru_cache(maxsize=64)
def sender_domain(sender: str) -> str:
    """'Nudge Fitness <hello@nudge.example>' -> 'nudge.example' (for Message-IDs)."""
    return _normalize_domain(_single_address(sender, "sender").domain)


@lru_cache(maxsize=64)
def _fixed_header(name: str, value: str) -> BaseHeader:
    """A header whose value is the same in every message of an automation (its name, ...), made
    once as `message[name] = value` makes it: setting a header object skips that parse per message."""
    return policy.SMTP.header_factory(name, value)


@lru_cache(maxsize=64)
def _sender_header(sender: str) -> BaseHeader:
    return policy.SMTP.header_factory("From", _single_address(sender, "sender"))


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

    message = EmailMessage(policy=policy.SMTP)
    message["From"] = _sender_header(sender)
    message["To"] = _single_address(recipient, "recipient")
    message["Subject"] = subject
    message["Date"] = format_datetime(date)
    message["Message-ID"] = message_id
    message[AUTOMATION_HEADER] = _fixed_header(AUTOMATION_HEADER, automation_name)
    expected = ["From", "To", "Subject", "Date", "Message-ID", AUTOMATION_HEADER]
    if unsubscribe is not None:
        links = _uri_list([one_line(unsubscribe.https), one_line(unsubscribe.mailto)])
        message["List-Unsubscribe"] = _ListUnsubscribeHeader("List-Unsubscribe", links)
        # RFC 8058: the receiver may POST to the https link to unsubscribe in one click.
        message["List-Unsubscribe-Post"] = _fixed_header("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")
        expected += ["List-Unsubscribe", "List-Unsubscribe-Post"]

    message.set_content(rendered.text, subtype="plain", charset="utf-8")
    message.add_alternative(rendered.html, subtype="html", charset="utf-8")
    expected += ["MIME-Version", "Content-Type"]
    # The bytes checked are the bytes sent: backends take them (composed_bytes) rather than
    # serializing again. Serializing fixes the MIME boundary in the message, so they are also
    # what message.as_bytes(policy=SMTP) gives.
    setattr(message, COMPOSED_BYTES, _verify_header_block(message, expected))
    return message



def _verify_header_block(message: EmailMessage, expected: list[str]) -> bytes:
    """Serialize, parse back, and insist on exactly the headers that were set, once each; the bytes."""
    try:
        serialized = message.as_bytes(policy=policy.SMTP)
    except (ValueError, UnicodeError) as error:
        raise ValueError(f"message cannot be serialized: {error}") from error
    # The header block alone: the parser stops at its first empty line anyway.
    end = serialized.find(b"\r\n\r\n")
    parsed = BytesHeaderParser(policy=policy.compat32).parsebytes(serialized if end < 0 else serialized[: end + 4])
    found = sorted(name.lower() for name in parsed.keys())
    wanted = sorted(name.lower() for name in expected)
    if found != wanted:
        raise ValueError(f"refusing a message whose headers changed on serialization: {found} != {wanted}")
    if len(message["To"].addresses) != 1 or len(parsed.get_all("To", [])) != 1:
        raise ValueError("refusing a message that is not addressed to exactly one recipient")
    return serialized
