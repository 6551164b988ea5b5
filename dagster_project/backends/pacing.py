"""What every network backend shares: a rate limit and retries with exponential backoff within a tick."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Retry:
    """How often, and how patiently, one message is tried again inside one tick.

    `retries` further tries after the first; the n-th waits `backoff * 2**(n-1)`
    seconds unless the server named its own wait (HTTP Retry-After), which wins
    as long as it stays under `max_wait`. Past that, the message is left for a
    later tick (the ledger's temporary failure), so a tick never hangs on one server.
    """

    retries: int = 2
    backoff: float = 1.0
    max_wait: float = 60.0

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError("retries must be 0 or more")
        if not 0 <= self.backoff < math.inf:
            raise ValueError("backoff must be 0 or more seconds")

    def wait(self, retry: int, asked: float | None = None) -> float | None:
        """Seconds to wait before retry number `retry` (1-based), or None to give up for this tick."""
        if retry > self.retries:
            return None
        if asked is not None:
            return asked if asked <= self.max_wait else None
        return self.backoff * 2 ** (retry - 1)


class TokenBucket:
    """At most `rate` messages a second, shared by every connection (and thread) of one backend.

    The bucket holds one token: messages leave evenly spaced, never in a burst,
    so any second holds at most `rate` + 1 of them. A monotonic clock, so a wall
    clock stepped by NTP never lets a burst through or stalls the sender.
    """

    def __init__(
        self,
        rate: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not 0 < rate < math.inf:
            raise ValueError("rate must be a positive number of messages per second")
        self.rate = rate
        self._interval = 1.0 / rate
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._next_free: float | None = None

    def take(self) -> None:
        """Block until the next message may leave."""
        with self._lock:
            now = self._clock()
            start = now if self._next_free is None else max(now, self._next_free)
            # Reserve the slot under the lock, sleep outside it: other threads queue behind this one.
            self._next_free = start + self._interval
        if start > now:
            self._sleep(start - now)


@dataclass(frozen=True)
class Pacing:
    """The URL options `retries`, `backoff`, `rate` and `connections`, validated."""

    retry: Retry = Retry()
    rate: float | None = None
    connections: int = 1

    def __post_init__(self) -> None:
        if self.connections < 1:
            raise ValueError("connections must be 1 or more")
        if self.rate is not None and not 0 < self.rate < math.inf:
            raise ValueError("rate must be a positive number of messages per second")

    def bucket(self) -> TokenBucket | None:
        return TokenBucket(self.rate) if self.rate else None


OPTIONS = ("retries", "backoff", "rate", "connections")


def pacing_from_options(options: dict[str, str], shown: str) -> Pacing:
    """Read the shared options of an email URL; a ValueError names the URL (already redacted) and the option."""

    def number(name: str, default: str, kind: type) -> float:
        raw = options.get(name, default)
        try:
            return kind(raw)
        except ValueError:
            noun = "a whole number" if kind is int else "a number"
            raise ValueError(f"email URL {shown!r}: {name} must be {noun}, not {raw!r}") from None

    retries = number("retries", "2", int)
    backoff = number("backoff", "1", float)
    rate = number("rate", "0", float) if "rate" in options else None
    connections = number("connections", "1", int)
    try:
        return Pacing(Retry(int(retries), backoff), rate, int(connections))
    except ValueError as error:
        raise ValueError(f"email URL {shown!r}: {error}") from None
