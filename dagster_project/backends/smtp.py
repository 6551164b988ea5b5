"""SMTP delivery over reused connections (plain, STARTTLS or implicit TLS), paced and retried.

At most `connections` connections are ever open, each reused message after
message. A 4xx answer is tried again within the tick with exponential backoff
(`retries`, `backoff`), and every message waits its turn in one token bucket
(`rate` messages a second) shared by all connections.
"""

from __future__ import annotations

import queue
import re
import smtplib
import ssl
import time
from collections.abc import Callable, Sequence
from email.message import EmailMessage

from .base import (
    COMPOSED_ENVELOPE,
    BackendUnavailable,
    Delivery,
    DeliveryUncertain,
    EmailBackend,
    composed_bytes,
    message_id_of,
)
from .pacing import Pacing

_AUTHENTICATION_REQUIRED = 530


def _reply_text(code: int, reply: bytes | str) -> str:
    words = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
    return f"{code} {words}".strip()


def _refusal(message_id: str, code: int, reply: bytes | str) -> Delivery:
    # 5xx: the server will never take it; anything else (4xx, odd codes): try again later.
    return Delivery(message_id=message_id, ok=False, permanent=500 <= code <= 599, detail=_reply_text(code, reply))


def _try_again_soon(delivery: Delivery) -> bool:
    # A 4xx ("451 try again later") means the server did not take the message: another try cannot duplicate it.
    return not delivery.ok and not delivery.permanent and delivery.detail[:1] == "4"


class _PayloadTracking:
    """Knows whether the message itself has gone out on this connection.

    A connection lost before that point lost nothing: resending is safe. Lost after it,
    the server may hold the whole message and deliver it; only the 250 went missing.
    """

    payload_sent = False

    def send(self, s: str | bytes) -> None:
        data = s.encode(self.command_encoding) if isinstance(s, str) else s  # type: ignore[attr-defined]
        if data.endswith(b"\r\n.\r\n"):  # smtplib writes the payload and its final dot in one go
            self.payload_sent = True
        super().send(s)  # type: ignore[misc]


# An address smtplib.quoteaddr gives back between brackets as it is: parseaddr, which it calls, is
# pure Python, about 50 microseconds an address, twice a message.
_PLAIN_ADDRESS = re.compile(r"[A-Za-z0-9_+-]+(?:\.[A-Za-z0-9_+-]+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")


def quoted_address(address: str) -> str:
    """smtplib.quoteaddr(address), without parsing a plain one."""
    return f"<{address}>" if _PLAIN_ADDRESS.fullmatch(address) else smtplib.quoteaddr(address)


class _PlainAddresses:
    """MAIL and RCPT as smtplib's own methods send them, with quoted_address for quoteaddr."""

    def mail(self, sender: str, options: Sequence[str] = ()) -> tuple[int, bytes]:
        optionlist = ""
        if options and self.does_esmtp:  # type: ignore[attr-defined]
            if any(option.lower() == "smtputf8" for option in options):
                if self.has_extn("smtputf8"):  # type: ignore[attr-defined]
                    self.command_encoding = "utf-8"
                else:
                    raise smtplib.SMTPNotSupportedError("SMTPUTF8 not supported by server")
            optionlist = " " + " ".join(options)
        self.putcmd("mail", f"FROM:{quoted_address(sender)}{optionlist}")  # type: ignore[attr-defined]
        return self.getreply()  # type: ignore[attr-defined]

    def rcpt(self, recip: str, options: Sequence[str] = ()) -> tuple[int, bytes]:
        optionlist = ""
        if options and self.does_esmtp:  # type: ignore[attr-defined]
            optionlist = " " + " ".join(options)
        self.putcmd("rcpt", f"TO:{quoted_address(recip)}{optionlist}")  # type: ignore[attr-defined]
        return self.getreply()  # type: ignore[attr-defined]


class _SMTP(_PayloadTracking, _PlainAddresses, smtplib.SMTP):
    pass


class _SMTP_SSL(_PayloadTracking, _PlainAddresses, smtplib.SMTP_SSL):
    pass


class SmtpBackend(EmailBackend):
    """Not a deduping backend: SMTP servers deliver every copy they accept."""

    dedupes = False

    def __init__(
        self,
        host: str,
        port: int,
        *,
        username: str | None = None,
        password: str | None = None,
        starttls: bool = False,
        implicit_tls: bool = False,
        timeout: float = 30.0,
        pacing: Pacing = Pacing(),
        description: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if starttls and implicit_tls:
            raise ValueError("choose STARTTLS or implicit TLS (smtps://), not both")
        self.host = host
        self.port = port
        self.username = username
        self._password = password
        self.starttls = starttls
        self.implicit_tls = implicit_tls
        self.timeout = timeout
        self.pacing = pacing
        scheme = "smtps" if implicit_tls else "smtp"
        user = f"{username}:***@" if username else ""
        self.description = description or f"{scheme}://{user}{host}:{port}"
        self._sleep = sleep
        self._bucket = pacing.bucket()
        # One slot per allowed connection, each holding its connection or None: a sender takes a slot
        # (waiting while all are busy) and puts it back, so no more than `connections` ever exist.
        self._slots: queue.LifoQueue[smtplib.SMTP | None] = queue.LifoQueue()
        for _ in range(pacing.connections):
            self._slots.put(None)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def connections(self) -> int:
        return self.pacing.connections

    @property
    def concurrency(self) -> int:  # type: ignore[override]
        # One sending thread per connection the pool may open; the token bucket paces them all.
        return self.pacing.connections

    def open(self) -> None:
        # Connect one slot now, so a server that is down fails the tick before anything is claimed.
        connection = self._slots.get()
        try:
            if not _connected(connection):
                connection = self._connect()
        finally:
            self._slots.put(connection)

    def close(self) -> None:
        held = [self._slots.get() for _ in range(self.pacing.connections)]
        for connection in held:
            _quit(connection)
            self._slots.put(None)

    def send(self, message: EmailMessage) -> Delivery:
        message_id = message_id_of(message)
        envelope = _envelope(message)
        retry = 0
        while True:
            delivery = self._send_on_a_connection(message, message_id, envelope)
            if not _try_again_soon(delivery):
                return delivery
            retry += 1
            wait = self.pacing.retry.wait(retry)
            if wait is None:
                return Delivery(message_id, ok=False, detail=f"{delivery.detail} (tried {retry} times this tick)")
            self._sleep(wait)

    def _send_on_a_connection(
        self, message: EmailMessage, message_id: str, envelope: tuple[str, list[str]]
    ) -> Delivery:
        connection = self._slots.get()
        try:
            if self._bucket is not None:
                self._bucket.take()
            delivery, connection = self._send_reconnecting(connection, message, message_id, envelope)
            return delivery
        finally:
            self._slots.put(connection if _connected(connection) else None)

    def _send_reconnecting(
        self,
        connection: smtplib.SMTP | None,
        message: EmailMessage,
        message_id: str,
        envelope: tuple[str, list[str]],
    ) -> tuple[Delivery, smtplib.SMTP | None]:
        dropped: Exception | None = None
        # Servers drop idle or long-lived connections: one fresh connection, one more try.
        for _attempt in range(2):
            if not _connected(connection):
                # Also after a 421 earlier in the batch, which closed the connection.
                connection = self._connect()
            connection.payload_sent = False
            try:
                return self._send_once(connection, message, message_id, *envelope), connection
            except (smtplib.SMTPServerDisconnected, ConnectionError, TimeoutError) as error:
                payload_sent = connection.payload_sent
                _quit(connection)
                connection = None
                if payload_sent and not _timed_out(error):
                    raise DeliveryUncertain(
                        f"SMTP server {self.address} hung up after taking all of {message_id}, before saying "
                        "whether it accepted it",
                        message_id,
                    ) from error
                if _timed_out(error):
                    # The server went silent, perhaps after taking the message: a retry could send it twice.
                    raise DeliveryUncertain(
                        f"SMTP server {self.address} stopped answering while sending {message_id}; "
                        "it may or may not have accepted it",
                        message_id,
                    ) from error
                dropped = error
        detail = f"SMTP server {self.address} dropped the connection twice: {dropped}"
        return Delivery(message_id=message_id, ok=False, detail=detail), None

    def _send_once(
        self,
        connection: smtplib.SMTP,
        message: EmailMessage,
        message_id: str,
        envelope_from: str,
        envelope_to: list[str],
    ) -> Delivery:
        data = composed_bytes(message)
        try:
            if data is not None and all(address.isascii() for address in (envelope_from, *envelope_to)):
                # The bytes compose() verified are what send_message would write: no need to serialize again.
                refused = connection.sendmail(envelope_from, envelope_to, data)
            else:
                refused = connection.send_message(message, from_addr=envelope_from, to_addrs=envelope_to)
        except smtplib.SMTPRecipientsRefused as error:
            refused = error.recipients
        except smtplib.SMTPResponseException as error:
            if error.smtp_code == _AUTHENTICATION_REQUIRED:
                # A configuration problem, not this recipient's: failing every message for good would be wrong.
                raise BackendUnavailable(
                    f"SMTP server {self.address} requires authentication "
                    f"({_reply_text(error.smtp_code, error.smtp_error)}); put user:password in the email URL"
                ) from None
            # Sender refused, data refused, or any other coded answer.
            return _refusal(message_id, error.smtp_code, error.smtp_error)
        except smtplib.SMTPNotSupportedError as error:
            return Delivery(message_id=message_id, ok=False, permanent=True, detail=str(error))
        if refused:
            # With one recipient this is that recipient's answer; with several, the worst one.
            code, reply = max(refused.values(), key=lambda answer: answer[0])
            return _refusal(message_id, code, reply)
        return Delivery(message_id=message_id, ok=True, detail=f"accepted by {self.address}")

    def _connect(self) -> smtplib.SMTP:
        connection: smtplib.SMTP | None = None
        try:
            if self.implicit_tls:
                connection = _SMTP_SSL(
                    self.host, self.port, timeout=self.timeout, context=ssl.create_default_context()
                )
            else:
                connection = _SMTP(self.host, self.port, timeout=self.timeout)
            connection.ehlo()
            if self.starttls:
                connection.starttls(context=ssl.create_default_context())
                connection.ehlo()
            if self.username:
                connection.login(self.username, self._password or "")
        except smtplib.SMTPAuthenticationError as error:
            _discard(connection)
            raise BackendUnavailable(
                f"SMTP server {self.address} refused the login of {self.username!r}: "
                f"{_reply_text(error.smtp_code, error.smtp_error)}"
            ) from None
        except smtplib.SMTPResponseException as error:
            _discard(connection)
            raise BackendUnavailable(
                f"SMTP server {self.address} refused the session: {_reply_text(error.smtp_code, error.smtp_error)}"
            ) from None
        except (smtplib.SMTPException, OSError) as error:
            _discard(connection)
            # `from None`: the chained exception of a login could echo credentials in a traceback.
            raise BackendUnavailable(f"cannot reach SMTP server {self.address}: {error}") from None
        return connection


def _connected(connection: smtplib.SMTP | None) -> bool:
    return connection is not None and connection.sock is not None


def _quit(connection: smtplib.SMTP | None) -> None:
    if connection is None:
        return
    try:
        connection.quit()
    except (smtplib.SMTPException, OSError):
        connection.close()


def _timed_out(error: BaseException) -> bool:
    # smtplib reports a socket timeout as SMTPServerDisconnected raised while handling it.
    return isinstance(error, TimeoutError) or isinstance(error.__context__, TimeoutError)


def _discard(connection: smtplib.SMTP | None) -> None:
    if connection is not None:
        connection.close()


def _envelope(message: EmailMessage) -> tuple[str, list[str]]:
    """MAIL FROM and RCPT TO from the message's own From and To, stated explicitly."""
    composed = getattr(message, COMPOSED_ENVELOPE, None)
    if composed is not None:
        return composed
    senders = getattr(message["From"], "addresses", ())
    recipients = getattr(message["To"], "addresses", ())
    if len(senders) != 1 or not recipients:
        raise ValueError("message needs exactly one From address and at least one To address")
    return senders[0].addr_spec, [address.addr_spec for address in recipients]
