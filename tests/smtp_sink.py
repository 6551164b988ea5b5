"""A real SMTP server on 127.0.0.1 for tests: aiosmtpd, collecting what it receives.

Behaviours a test can switch on while it runs: refuse a recipient with 550,
answer 451 (try later) to a recipient always or its next N times, drop the
connection after N messages, stall before answering DATA; and require AUTH (set
at construction). Every RCPT answer and every message is stamped with
time.monotonic(), so a test measures pacing and backoff where the server saw them.
"""

from __future__ import annotations

import asyncio
import email
import socket
import threading
import time
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


@dataclass(frozen=True)
class ReceivedMessage:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    message_id: str | None
    # The client's (host, port): one value per TCP connection.
    peer: tuple[str, int]
    login: str | None
    # time.monotonic() when the server took the message.
    received_at: float = 0.0

    def parsed(self) -> EmailMessage:
        return email.message_from_bytes(self.data, policy=policy.default)


class _Handler:
    def __init__(self, sink: "SmtpSink") -> None:
        self.sink = sink

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        reply = self.sink._rcpt_reply(address)
        if reply.startswith("250"):
            envelope.rcpt_tos.append(address)
        return reply

    async def handle_DATA(self, server, session, envelope):
        with self.sink._lock:
            self.sink.data_attempts += 1
        if self.sink.stall_seconds:
            await asyncio.sleep(self.sink.stall_seconds)
        data = envelope.original_content or envelope.content
        if isinstance(data, str):
            data = data.encode("utf-8", "surrogateescape")
        parsed = email.message_from_bytes(data, policy=policy.default)
        login = session.auth_data.login.decode() if isinstance(session.auth_data, LoginPassword) else None
        received = ReceivedMessage(
            mail_from=envelope.mail_from,
            rcpt_tos=tuple(envelope.rcpt_tos),
            data=data,
            message_id=str(parsed["Message-ID"]) if parsed["Message-ID"] else None,
            peer=tuple(session.peer[:2]),
            login=login,
            received_at=time.monotonic(),
        )
        count_on_connection = self.sink._record(received)
        drop_after = self.sink.drop_connection_after
        if drop_after is not None and count_on_connection >= drop_after:
            # Closed after the 250 has been written: the client learns of it on its next command.
            asyncio.get_running_loop().call_soon(server.transport.close)
        return "250 2.0.0 Message accepted for delivery"


@dataclass
class SmtpSink:
    auth: tuple[str, str] | None = None
    host: str = HOST
    port: int = field(default_factory=free_port)
    reject: set[str] = field(default_factory=set)
    defer: set[str] = field(default_factory=set)
    # address -> how many more times to answer 451 before accepting it.
    defer_times: dict[str, int] = field(default_factory=dict)
    drop_connection_after: int | None = None
    # Wait this long before answering DATA (and then accept anyway), like a hung server.
    stall_seconds: float = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._messages: list[ReceivedMessage] = []
        self._per_peer: dict[tuple[str, int], int] = {}
        self._controller: Controller | None = None
        # Every message body the server was handed, accepted or not.
        self.data_attempts = 0
        # (address, reply code, time.monotonic()) for every RCPT TO.
        self._rcpts: list[tuple[str, int, float]] = []

    @property
    def url(self) -> str:
        if self.auth:
            return f"smtp://{self.auth[0]}:{self.auth[1]}@{self.host}:{self.port}"
        return f"smtp://{self.host}:{self.port}"

    @property
    def messages(self) -> list[ReceivedMessage]:
        with self._lock:
            return list(self._messages)

    def rcpt_answers(self, address: str) -> list[tuple[int, float]]:
        """(reply code, monotonic time) of every RCPT TO for this address, in order."""
        with self._lock:
            return [(code, at) for rcpt, code, at in self._rcpts if rcpt == address]

    def _rcpt_reply(self, address: str) -> str:
        with self._lock:
            if address in self.reject:
                reply = "550 5.1.1 <%s>: mailbox unavailable" % address
            elif address in self.defer or self.defer_times.get(address, 0) > 0:
                if address in self.defer_times:
                    self.defer_times[address] -= 1
                reply = "451 4.3.0 <%s>: try again later" % address
            else:
                reply = "250 OK"
            self._rcpts.append((address, int(reply[:3]), time.monotonic()))
            return reply

    def by_recipient(self, address: str) -> list[ReceivedMessage]:
        return [message for message in self.messages if address in message.rcpt_tos]

    def _record(self, received: ReceivedMessage) -> int:
        with self._lock:
            self._messages.append(received)
            self._per_peer[received.peer] = self._per_peer.get(received.peer, 0) + 1
            return self._per_peer[received.peer]

    def _authenticate(self, server, session, envelope, mechanism, auth_data) -> AuthResult:
        assert self.auth is not None
        accepted = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == self.auth[0].encode()
            and auth_data.password == self.auth[1].encode()
        )
        return AuthResult(success=accepted, handled=False, auth_data=auth_data if accepted else None)

    def start(self) -> "SmtpSink":
        options = {}
        if self.auth:
            # Tests run on loopback without certificates, so AUTH is allowed over plain text.
            options = {"authenticator": self._authenticate, "auth_required": True, "auth_require_tls": False}
        self._controller = Controller(_Handler(self), hostname=self.host, port=self.port, **options)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def __enter__(self) -> "SmtpSink":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
