"""SMTP delivery over one reused connection (plain, STARTTLS or implicit TLS)."""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage

from .base import BackendUnavailable, Delivery, DeliveryUncertain, EmailBackend, message_id_of

_AUTHENTICATION_REQUIRED = 530


def _reply_text(code: int, reply: bytes | str) -> str:
    words = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
    return f"{code} {words}".strip()


def _refusal(message_id: str, code: int, reply: bytes | str) -> Delivery:
    # 5xx: the server will never take it; anything else (4xx, odd codes): try again later.
    return Delivery(message_id=message_id, ok=False, permanent=500 <= code <= 599, detail=_reply_text(code, reply))


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
        description: str | None = None,
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
        scheme = "smtps" if implicit_tls else "smtp"
        user = f"{username}:***@" if username else ""
        self.description = description or f"{scheme}://{user}{host}:{port}"
        self._connection: smtplib.SMTP | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def open(self) -> None:
        if not self._connected():
            self._connect()

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            connection.quit()
        except (smtplib.SMTPException, OSError):
            connection.close()

    def send(self, message: EmailMessage) -> Delivery:
        message_id = message_id_of(message)
        envelope_from, envelope_to = _envelope(message)
        dropped: Exception | None = None
        # Servers drop idle or long-lived connections: one fresh connection, one more try.
        for _attempt in range(2):
            if not self._connected():
                # Also after a 421 earlier in the batch, which closed the connection.
                self._connect()
            try:
                return self._send_once(message, message_id, envelope_from, envelope_to)
            except (smtplib.SMTPServerDisconnected, ConnectionError, TimeoutError) as error:
                self.close()
                if _timed_out(error):
                    # The server went silent, perhaps after taking the message: a retry could send it twice.
                    raise DeliveryUncertain(
                        f"SMTP server {self.address} stopped answering while sending {message_id}; "
                        "it may or may not have accepted it",
                        message_id,
                    ) from error
                dropped = error
        return Delivery(
            message_id=message_id,
            ok=False,
            detail=f"SMTP server {self.address} dropped the connection twice: {dropped}",
        )

    def _send_once(
        self, message: EmailMessage, message_id: str, envelope_from: str, envelope_to: list[str]
    ) -> Delivery:
        assert self._connection is not None
        try:
            refused = self._connection.send_message(message, from_addr=envelope_from, to_addrs=envelope_to)
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

    def _connected(self) -> bool:
        return self._connection is not None and self._connection.sock is not None

    def _connect(self) -> None:
        connection: smtplib.SMTP | None = None
        try:
            if self.implicit_tls:
                connection = smtplib.SMTP_SSL(
                    self.host, self.port, timeout=self.timeout, context=ssl.create_default_context()
                )
            else:
                connection = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
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
        self._connection = connection


def _timed_out(error: BaseException) -> bool:
    # smtplib reports a socket timeout as SMTPServerDisconnected raised while handling it.
    return isinstance(error, TimeoutError) or isinstance(error.__context__, TimeoutError)


def _discard(connection: smtplib.SMTP | None) -> None:
    if connection is not None:
        connection.close()


def _envelope(message: EmailMessage) -> tuple[str, list[str]]:
    """MAIL FROM and RCPT TO from the message's own From and To, stated explicitly."""
    senders = getattr(message["From"], "addresses", ())
    recipients = getattr(message["To"], "addresses", ())
    if len(senders) != 1 or not recipients:
        raise ValueError("message needs exactly one From address and at least one To address")
    return senders[0].addr_spec, [address.addr_spec for address in recipients]
