"""Email backends, chosen by a URL (NUDGE_EMAIL_URL).

file://data/outbox                               one .eml per message (relative to the working directory)
file:///var/mail/nudge                           the same, absolute
smtp://user:pass@host:587?starttls=true          SMTP, optionally upgraded with STARTTLS
smtps://user:pass@host:465                       SMTP over implicit TLS
null://                                          accepts every message, delivers none (backtests)
Options: starttls=true|false (smtp only), timeout=SECONDS (default 30).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from .base import BackendUnavailable, Delivery, DeliveryUncertain, EmailBackend
from .file import FileBackend
from .null import NullBackend
from .smtp import SmtpBackend

__all__ = [
    "BackendUnavailable",
    "Delivery",
    "DeliveryUncertain",
    "EmailBackend",
    "FileBackend",
    "NullBackend",
    "SmtpBackend",
    "SUPPORTED_SCHEMES",
    "backend_from_url",
    "redact_url",
]

SUPPORTED_SCHEMES = ("file", "smtp", "smtps", "null")
_DEFAULT_PORTS = {"smtp": 25, "smtps": 465}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def redact_url(url: str) -> str:
    """The URL with its password replaced by ***, safe for logs and error messages.

    Read the way a person wrote it, not the way a URL parser reads it: a password with an
    unencoded '#', '/' or '?' ends the parser's netloc early, so the parser finds no password
    and would show it whole. Everything between the first ':' after '://' and the last '@' is
    the password here (at worst a harmless part of a query is hidden too)."""
    if "://" not in url:
        # Not a URL at all: it may well be a secret pasted into the wrong variable.
        scheme = url.split(":", 1)[0] if ":" in url else ""
        return f"{scheme}:***" if scheme and scheme.isalnum() else "***"
    scheme, _, rest = url.partition("://")
    userinfo, at, hostpart = rest.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:***@{hostpart}"


def backend_from_url(url: str) -> EmailBackend:
    url = url.strip()
    shown = redact_url(url)
    scheme, separator, _rest = url.partition(":")
    scheme = scheme.lower()
    if not separator or scheme not in SUPPORTED_SCHEMES:
        raise ValueError(
            f"unsupported email URL {shown!r}: supported schemes are "
            + ", ".join(f"{name}://" for name in SUPPORTED_SCHEMES)
        )
    if scheme == "file":
        return FileBackend(_file_path(url, shown))
    if scheme == "null":
        if url[len("null:") :] not in ("", "//"):
            raise ValueError(f"email URL {shown!r}: null:// takes no location or options")
        return NullBackend()
    return _smtp_backend(url, scheme, shown)


def _file_path(url: str, shown: str) -> Path:
    location = url[len("file:") :]
    if location.startswith("//"):
        location = location[2:]
        if location.startswith("localhost/"):
            location = location[len("localhost") :]
    location = unquote(location.split("?", 1)[0])
    if not location:
        raise ValueError(f"email URL {shown!r} names no directory, e.g. file://data/outbox")
    return Path(location).resolve()


def _smtp_backend(url: str, scheme: str, shown: str) -> SmtpBackend:
    parts = urlsplit(url)
    try:
        port = parts.port or _DEFAULT_PORTS[scheme]
    except ValueError:
        raise ValueError(f"email URL {shown!r} has an invalid port") from None
    if not parts.hostname:
        raise ValueError(f"email URL {shown!r} names no host, e.g. smtp://user:pass@smtp.example.com:587")
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = set(options) - {"starttls", "timeout"}
    if unknown:
        raise ValueError(f"email URL {shown!r} has unknown options {sorted(unknown)}; known: starttls, timeout")
    starttls = _flag(options.get("starttls", "false"), "starttls", shown)
    if starttls and scheme == "smtps":
        raise ValueError(f"email URL {shown!r}: smtps:// is already TLS; starttls applies to smtp:// only")
    try:
        timeout = float(options.get("timeout", "30"))
    except ValueError:
        raise ValueError(f"email URL {shown!r}: timeout must be a number of seconds") from None
    if not timeout > 0:
        raise ValueError(f"email URL {shown!r}: timeout must be positive")
    return SmtpBackend(
        parts.hostname,
        port,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        starttls=starttls,
        implicit_tls=scheme == "smtps",
        timeout=timeout,
        description=shown,
    )


def _flag(value: str, name: str, shown: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"email URL {shown!r}: {name} must be true or false, not {value!r}")
