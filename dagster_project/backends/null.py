"""null://: accepts every message and keeps none, for backtests and dry runs.

It says yes to everything and forgets, so a replay decides exactly as a real tick
would (every policy, every template rendered) while nothing leaves the machine.
Handing the same message over twice is as harmless as once: it dedupes.
"""

from __future__ import annotations

from email.message import EmailMessage

from .base import Delivery, EmailBackend, message_id_of


class NullBackend(EmailBackend):
    dedupes = True
    local = True

    def __init__(self) -> None:
        self.description = "null:// (nothing is delivered)"

    def send(self, message: EmailMessage) -> Delivery:
        return Delivery(message_id=message_id_of(message), ok=True, detail="accepted by null://, delivered nowhere")
