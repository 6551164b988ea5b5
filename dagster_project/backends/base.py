"""The one interface every email backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from email import policy
from email.headerregistry import BaseHeader
from email.message import EmailMessage
from types import TracebackType


@dataclass(frozen=True)
class Delivery:
    """What the backend said about one message.

    ok=True: handed over. ok=False, permanent=True: the backend refused it for
    good (an SMTP 5xx), retrying is pointless. ok=False, permanent=False: a
    temporary refusal (an SMTP 4xx), retry on a later tick.
    """

    message_id: str
    ok: bool
    permanent: bool = False
    detail: str = ""


class BackendUnavailable(Exception):
    """The backend cannot be reached at all; the tick must fail rather than guess.

    Raised by `__enter__` (nothing was handed over) and by `send` when the
    backend went away mid-batch and could not be reached again (that message's
    fate is unknown to a backend that does not dedupe).
    """


class DeliveryUncertain(BackendUnavailable):
    """The backend went silent while taking a message: it may or may not have accepted it.

    A subclass so callers that only know BackendUnavailable still stop the tick;
    a caller that knows better records this one message as unknown, not retryable.
    """

    def __init__(self, message: str, message_id: str) -> None:
        super().__init__(message)
        self.message_id = message_id


class EmailBackend(ABC):
    # True when handing over the same Message-ID twice cannot produce two emails,
    # so a message left ambiguous by a crash may simply be sent again.
    dedupes: bool = False
    # For logs and metadata: never contains a secret.
    description: str = ""
    # How many messages `send` may be given at once, from as many threads: 1 unless the backend
    # is safe to call from several threads (e.g. one connection each from a pool).
    concurrency: int = 1
    # True when messages go nowhere beyond this machine (a folder, nowhere at all): no server's
    # pace or limits to keep to, so a deduping one may take larger batches (SendConfig.local_batch_size).
    local: bool = False

    def __enter__(self) -> "EmailBackend":
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def open(self) -> None:
        """Connect; raise BackendUnavailable when that is impossible."""

    def close(self) -> None:
        """Release connections; never raises."""

    @abstractmethod
    def send(self, message: EmailMessage) -> Delivery:
        """Hand one message over. Returns a Delivery; raises BackendUnavailable when unreachable."""

    def flush(self) -> None:
        """Make every message `send` accepted so far durable. Called once per batch, before the
        ledger marks the batch sent; raise BackendUnavailable when that fails (the batch's claims
        then stay pending). A backend whose `send` returns only once the message is safe (SMTP's
        250, an HTTP 200) has nothing to do here."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.description})"


def stored_header(message: EmailMessage, name: str) -> str | None:
    """A header's value as text, without parsing it into a header object where it needs none (the
    email package's parser is slow, and compose() stores plain values as plain strings)."""
    wanted = name.lower()
    for key, value in message.raw_items():
        if key.lower() == wanted:
            if not isinstance(value, BaseHeader) and "=?" in value:
                # Text as read from bytes, with RFC 2047 encoded words: their decoded text. (compose()
                # never stores a plain string holding "=?", so only a message read from bytes gets here.)
                return str(message.policy.header_fetch_parse(key, value))
            # a header object's str is its value; a stored string may be folded over lines
            return "".join(str(value).splitlines())
    return None


def message_id_of(message: EmailMessage) -> str:
    value = stored_header(message, "Message-ID")
    if not value or not value.strip():
        raise ValueError("message has no Message-ID; compose it with dagster_project.messages.compose")
    return str(value).strip()


# The attributes in which messages.compose leaves the bytes it verified, and the envelope
# (sender and recipient addresses) it took them from.
COMPOSED_BYTES = "nudge_composed_bytes"
COMPOSED_ENVELOPE = "nudge_envelope"


def composed_bytes(message: EmailMessage) -> bytes | None:
    """The bytes compose() verified for this message (policy SMTP), or None for a message it did not make."""
    return getattr(message, COMPOSED_BYTES, None)


def message_bytes(message: EmailMessage) -> bytes:
    """The message as it goes on the wire (policy SMTP), without serializing it again where compose did."""
    composed = composed_bytes(message)
    return composed if composed is not None else message.as_bytes(policy=policy.SMTP)
