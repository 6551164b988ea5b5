"""Email backends, chosen by a URL (NUDGE_EMAIL_URL).

file://data/outbox                               one .eml per message (relative to the working directory)
file:///var/mail/nudge                           the same, absolute
smtp://user:pass@host:587?starttls=true          SMTP, optionally upgraded with STARTTLS
smtps://user:pass@host:465                       SMTP over implicit TLS
resend://API_KEY@api.resend.com                  Resend's HTTP API (POST /emails), with an Idempotency-Key
resend://API_KEY@127.0.0.1:8025?tls=false        the same protocol over plain HTTP (a local stand-in)
null://                                          accepts every message, delivers none (backtests)

Options of smtp, smtps and resend:
  timeout=SECONDS      wait this long for an answer (default 30)
  retries=N            further tries of a message within the tick after a 4xx (SMTP) or a
                       429/5xx/lost answer (resend), default 2; later ticks retry up to the ledger's MAX_ATTEMPTS
  backoff=SECONDS      wait before the first retry, doubled for each next one (default 1);
                       an HTTP Retry-After wins
  rate=PER_SECOND      at most this many messages a second, evenly spaced, over all connections (default: no limit)
  connections=N        never more than N connections open at once (default 1)
  starttls=true|false  (smtp only) upgrade the connection with STARTTLS
  tls=true|false       (resend only) https (default) or plain http
The password of an smtp URL and the API key of a resend URL are secrets: redact_url hides them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

from .base import BackendUnavailable, Delivery, DeliveryUncertain, EmailBackend
from .file import FileBackend
from .null import NullBackend
from .pacing import OPTIONS as _PACING_OPTIONS
from .pacing import pacing_from_options
from .smtp import SmtpBackend

__all__ = [
    "BackendUnavailable",
    "Delivery",
    "DeliveryUncertain",
    "EmailBackend",
    "FileBackend",
    "NullBackend",
    "ResendBackend",
    "SmtpBackend",
    "SUPPORTED_SCHEMES",
    "backend_from_url",
    "redact_url",
]

if TYPE_CHECKING:
    from .http import ResendBackend


def __getattr__(name: str) -> Any:
    # The resend backend is imported where it is used: its HTTP client (httpx) was half of what a
    # compose worker imports (75 ms of 145), and every process that makes messages imports this package.
    if name == "ResendBackend":
        from .http import ResendBackend

        return ResendBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


SUPPORTED_SCHEMES = ("file", "smtp", "smtps", "resend", "null")
_DEFAULT_PORTS = {"smtp": 25, "smtps": 465}
# Schemes whose whole user part is a secret (an API key), not user:password.
_KEY_IN_USER = ("resend",)
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def redact_url(url: str) -> str:
    """The URL with its password (or API key) replaced by ***, safe for logs and error messages.

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
    if at and scheme.lower() in _KEY_IN_USER:
        # The API key is the whole user part.
        return f"{scheme}://***@{hostpart}"
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
    if scheme == "resend":
        return _resend_backend(url, shown)
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


def _network_url(
    url: str, shown: str, default_port: int, example: str, own_options: tuple[str, ...]
) -> tuple[SplitResult, int, dict[str, str], float]:
    """Host, port and the options every network backend shares, validated; ValueErrors show `shown` only."""
    parts = urlsplit(url)
    try:
        port = parts.port or default_port
    except ValueError:
        raise ValueError(f"email URL {shown!r} has an invalid port") from None
    if not parts.hostname:
        raise ValueError(f"email URL {shown!r} names no host, e.g. {example}")
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    known = (*own_options, "timeout", *_PACING_OPTIONS)
    unknown = set(options) - set(known)
    if unknown:
        raise ValueError(f"email URL {shown!r} has unknown options {sorted(unknown)}; known: {', '.join(known)}")
    try:
        timeout = float(options.get("timeout", "30"))
    except ValueError:
        raise ValueError(f"email URL {shown!r}: timeout must be a number of seconds") from None
    if not 0 < timeout < float("inf"):
        raise ValueError(f"email URL {shown!r}: timeout must be positive")
    return parts, port, options, timeout


def _smtp_backend(url: str, scheme: str, shown: str) -> SmtpBackend:
    example = "smtp://user:pass@smtp.example.com:587"
    parts, port, options, timeout = _network_url(url, shown, _DEFAULT_PORTS[scheme], example, ("starttls",))
    starttls = _flag(options.get("starttls", "false"), "starttls", shown)
    if starttls and scheme == "smtps":
        raise ValueError(f"email URL {shown!r}: smtps:// is already TLS; starttls applies to smtp:// only")
    return SmtpBackend(
        parts.hostname or "",
        port,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        starttls=starttls,
        implicit_tls=scheme == "smtps",
        timeout=timeout,
        pacing=pacing_from_options(options, shown),
        description=shown,
    )


def _resend_backend(url: str, shown: str) -> ResendBackend:
    # tls decides the default port, so it is read before the rest.
    tls = _flag(dict(parse_qsl(urlsplit(url).query)).get("tls", "true"), "tls", shown)
    example = "resend://re_123@api.resend.com"
    parts, port, options, timeout = _network_url(url, shown, 443 if tls else 80, example, ("tls",))
    # The whole user part is the key (resend://re_123@host); resend://:re_123@host is accepted too.
    userinfo = parts.netloc.rpartition("@")[0]
    api_key = unquote(userinfo.split(":", 1)[1] if userinfo.startswith(":") else userinfo)
    if not api_key:
        raise ValueError(f"email URL {shown!r} has no API key, e.g. {example}")
    from .http import ResendBackend

    return ResendBackend(
        parts.hostname or "",
        port,
        api_key=api_key,
        tls=tls,
        timeout=timeout,
        pacing=pacing_from_options(options, shown),
        description=shown,
    )


def _flag(value: str, name: str, shown: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"email URL {shown!r}: {name} must be true or false, not {value!r}")
