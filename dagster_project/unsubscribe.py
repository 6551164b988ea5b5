"""Signed unsubscribe tokens and the links that carry them.

A token names a contact and a list and proves we made it, so the unsubscribe
endpoint needs no database lookup to trust a click, and nobody can unsubscribe
someone else by editing a URL.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from dataclasses import dataclass
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

_SEPARATOR = "|"
# Domain separation: a MAC made with the same secret for another purpose is never a valid token.
_PURPOSE = b"nudge-unsubscribe-v1\x00"
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")
# Far above any real token; stops a garbage URL parameter from costing real work.
_MAX_TOKEN_LENGTH = 4096
_PLAIN_ADDRESS = re.compile(r"[^@\s<>,;?\"'()\[\]\\]+@[^@\s<>,;?\"'()\[\]\\]+")
_URL_FORBIDDEN = re.compile(r"[\s<>\"',\\\x00-\x1f\x7f]")


def _encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _decode(text: str) -> bytes | None:
    """Strict base64url: anything but the one canonical spelling of some bytes is rejected."""
    if not _BASE64URL.fullmatch(text):
        return None
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    # The decoder ignores stray bits; re-encoding makes each token have exactly one spelling.
    return data if _encode(data) == text else None


def _signature(secret: str, payload: bytes) -> bytes:
    if not secret:
        raise ValueError("the unsubscribe secret must not be empty")
    return hmac.new(secret.encode("utf-8"), _PURPOSE + payload, hashlib.sha256).digest()


def make_token(secret: str, contact_id: str, list_id: str) -> str:
    """base64url(contact_id|list_id) + "." + base64url(HMAC-SHA256), all URL-safe."""
    if not contact_id:
        raise ValueError("contact_id must not be empty")
    if not list_id or _SEPARATOR in list_id:
        raise ValueError(f"list_id must be non-empty and free of {_SEPARATOR!r}: {list_id!r}")
    payload = f"{contact_id}{_SEPARATOR}{list_id}".encode("utf-8")
    return f"{_encode(payload)}.{_encode(_signature(secret, payload))}"


def read_token(secret: str, token: str) -> tuple[str, str] | None:
    """(contact_id, list_id) for a token we signed with this secret; None for anything else."""
    if not isinstance(token, str):
        return None
    token = token.strip()
    if len(token) > _MAX_TOKEN_LENGTH or token.count(".") != 1:
        return None
    encoded_payload, encoded_signature = token.split(".")
    payload = _decode(encoded_payload)
    signature = _decode(encoded_signature)
    if payload is None or signature is None:
        return None
    if not hmac.compare_digest(_signature(secret, payload), signature):
        return None
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return None
    # The list id never holds the separator, so the last one splits unambiguously.
    contact_id, separator, list_id = text.rpartition(_SEPARATOR)
    if not separator or not contact_id or not list_id:
        return None
    return contact_id, list_id


@dataclass(frozen=True)
class UnsubscribeLinks:
    https: str
    mailto: str


def unsubscribe_links(base_url: str, mailto: str, token: str) -> UnsubscribeLinks:
    """The one-click HTTPS link (RFC 8058) and the mailto fallback (RFC 2369) for a token."""
    parts = urlsplit(base_url.strip())
    if parts.scheme not in ("https", "http") or not parts.netloc or _URL_FORBIDDEN.search(base_url.strip()):
        raise ValueError(f"unsubscribe base URL must be an http(s) URL without spaces or brackets: {base_url!r}")
    if not token or _URL_FORBIDDEN.search(token):
        raise ValueError("unsubscribe token must be non-empty and URL-safe")
    token_query = urlencode({"token": token})
    query = f"{parts.query}&{token_query}" if parts.query else token_query
    https = urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))

    address = mailto.strip()
    if address.lower().startswith("mailto:"):
        address = address[len("mailto:") :]
    if not _PLAIN_ADDRESS.fullmatch(address):
        raise ValueError(f"unsubscribe mailto must be a plain address like unsubscribe@example.com: {mailto!r}")
    subject = quote(f"unsubscribe {token}", safe="")
    return UnsubscribeLinks(https=https, mailto=f"mailto:{address}?subject={subject}")
