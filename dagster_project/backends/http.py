"""resend://: an HTTP email provider in the shape of Resend's API (POST /emails).

Every request carries an `Idempotency-Key` made from the message's Message-ID,
which the ledger derives from (automation, trigger_key). The provider answers a
repeated key with its first answer instead of sending again (for 24 hours), so
this backend dedupes: a claim a crash left ambiguous, or a request whose answer
was lost to a timeout, is simply sent again with the same key and delivered once.

Answers, mapped onto a Delivery:
  2xx                                   sent
  409 invalid_idempotent_request        sent: the key was already used, so this message was already sent
  409 concurrent_idempotent_requests,
  429, 5xx, no answer (timeout, cut)    tried again this tick (Retry-After honoured), then a temporary failure
  401, 403 *_api_key, 404, 405          BackendUnavailable: a configuration problem, not the recipient's
  other 4xx (400/422 validation_error)  refused for good
  connection refused                    BackendUnavailable: nothing reached the provider
"""

from __future__ import annotations

import hashlib
import socket
import time
from collections.abc import Callable
from email.message import EmailMessage
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from .base import BackendUnavailable, Delivery, EmailBackend, message_id_of
from .pacing import Pacing

# Headers the provider passes through to the recipient's message as they are.
FORWARDED_HEADERS = ("Message-ID", "X-Nudge-Automation", "List-Unsubscribe", "List-Unsubscribe-Post")
# Resend accepts keys of 1 to 256 characters.
_MAX_KEY_LENGTH = 256
_CONFIGURATION_STATUSES = {401, 404, 405}


def idempotency_key(message_id: str) -> str:
    """The Message-ID without its brackets: the same ledger key always sends the same key."""
    key = message_id.strip().strip("<>")
    return key if len(key) <= _MAX_KEY_LENGTH else hashlib.sha256(key.encode()).hexdigest()


def resend_payload(message: EmailMessage) -> dict[str, Any]:
    """The JSON body of POST /emails for a composed message."""
    payload: dict[str, Any] = {
        "from": str(message["From"]),
        "to": [str(address) for address in getattr(message["To"], "addresses", ())],
        "subject": str(message["Subject"] or ""),
    }
    for subtype in ("html", "plain"):
        part = message.get_body(preferencelist=(subtype,))
        if part is not None:
            payload["html" if subtype == "html" else "text"] = part.get_content()
    if message["Reply-To"] is not None:
        payload["reply_to"] = [str(address) for address in message["Reply-To"].addresses]
    payload["headers"] = {name: str(message[name]) for name in FORWARDED_HEADERS if message[name] is not None}
    if not payload["to"]:
        raise ValueError("message has no To address")
    return payload


class _TryAgain(Exception):
    """An answer (or its absence) worth another try with the same key; `wait` is the server's own, if any."""

    def __init__(self, detail: str, wait: float | None = None, unreachable: bool = False) -> None:
        super().__init__(detail)
        self.detail = detail
        self.wait = wait
        self.unreachable = unreachable


class ResendBackend(EmailBackend):
    dedupes = True

    def __init__(
        self,
        host: str,
        port: int,
        *,
        api_key: str,
        tls: bool = True,
        timeout: float = 30.0,
        pacing: Pacing = Pacing(),
        description: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not api_key:
            raise ValueError("the Resend API key is empty")
        self.host = host
        self.port = port
        self.tls = tls
        self.timeout = timeout
        self.pacing = pacing
        self._api_key = api_key
        self.base_url = f"{'https' if tls else 'http'}://{host}:{port}"
        self.description = description or f"resend://***@{host}:{port}"
        self._sleep = sleep
        self._bucket = pacing.bucket()
        self._client: httpx.Client | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def open(self) -> None:
        if self._client is not None:
            return
        # httpx connects lazily; a plain TCP connection now makes a provider that cannot be reached
        # fail the tick before anything is claimed.
        try:
            socket.create_connection((self.host, self.port), timeout=self.timeout).close()
        except OSError as error:
            raise BackendUnavailable(f"cannot reach the Resend API at {self.address}: {error}") from None
        self._client = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {self._api_key}", "User-Agent": "nudge"},
            timeout=self.timeout,
            limits=httpx.Limits(
                max_connections=self.pacing.connections, max_keepalive_connections=self.pacing.connections
            ),
        )

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def send(self, message: EmailMessage) -> Delivery:
        if self._client is None:
            self.open()
        assert self._client is not None
        message_id = message_id_of(message)
        payload = resend_payload(message)
        headers = {"Idempotency-Key": idempotency_key(message_id)}
        retry = 0
        while True:
            try:
                return self._post(self._client, message_id, payload, headers)
            except _TryAgain as again:
                retry += 1
                wait = self.pacing.retry.wait(retry, again.wait)
                if wait is None:
                    if again.unreachable:
                        raise BackendUnavailable(again.detail) from None
                    return Delivery(message_id, ok=False, detail=f"{again.detail} (tried {retry} times this tick)")
                self._sleep(wait)

    def _post(
        self, client: httpx.Client, message_id: str, payload: dict[str, Any], headers: dict[str, str]
    ) -> Delivery:
        if self._bucket is not None:
            self._bucket.take()
        try:
            response = client.post("/emails", json=payload, headers=headers)
        except (httpx.ConnectError, httpx.ConnectTimeout) as error:
            # The request never left: nothing can have been sent.
            raise _TryAgain(f"cannot reach the Resend API at {self.address}: {error}", unreachable=True) from None
        except httpx.TransportError as error:
            # Sent, but no (whole) answer: it may have been taken. The same key makes another try safe.
            raise _TryAgain(
                f"no answer from the Resend API at {self.address} ({type(error).__name__}: {error}); "
                "a retry reuses the same Idempotency-Key"
            ) from None
        return self._answer(message_id, response)

    def _answer(self, message_id: str, response: httpx.Response) -> Delivery:
        status = response.status_code
        if 200 <= status < 300:
            return Delivery(message_id, ok=True, detail=f"accepted by {self.address} as {_field(response, 'id')}")
        name, words = _field(response, "name"), _field(response, "message")
        detail = f"{status} {name}: {words}".strip()
        if status == 409 and name == "invalid_idempotent_request":
            # The key is this message's alone and the provider only keeps keys of messages it sent:
            # an earlier request (a crashed run) sent it, with a body that differed in some detail.
            return Delivery(message_id, ok=True, detail=f"already sent under its Idempotency-Key ({detail})")
        if status == 409 or status == 429 or status >= 500:
            raise _TryAgain(f"the Resend API at {self.address} answered {detail}", _retry_after(response))
        if status in _CONFIGURATION_STATUSES or (status == 403 and name.endswith("api_key")):
            raise BackendUnavailable(f"the Resend API at {self.address} refused the request: {detail}")
        return Delivery(message_id, ok=False, permanent=True, detail=detail)


def _field(response: httpx.Response, name: str) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.reason_phrase if name == "name" else response.text[:200]
    value = body.get(name) if isinstance(body, dict) else None
    return str(value) if value is not None else ""


def _retry_after(response: httpx.Response) -> float | None:
    """Retry-After as seconds (a number or an HTTP date), or None when absent or unreadable."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())
