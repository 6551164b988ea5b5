"""The default backend: one RFC 5322 .eml file per message, for trying Nudge and for tests."""

from __future__ import annotations

import os
import re
import tempfile
from email.message import EmailMessage
from pathlib import Path

from .base import BackendUnavailable, Delivery, EmailBackend, message_bytes, message_id_of

AUTOMATION_HEADER = "X-Nudge-Automation"
_UNSAFE_FILENAME_CHARACTERS = re.compile(r"[^A-Za-z0-9._@+-]")


def safe_filename(text: str) -> str:
    """Letters, digits and ._@+- only; never empty, never a dot-file or '..'."""
    cleaned = _UNSAFE_FILENAME_CHARACTERS.sub("_", text).lstrip(".")
    return cleaned[:200] or "_"


class FileBackend(EmailBackend):
    """<root>/<automation>/<message-id>.eml, written atomically.

    The file name comes from the Message-ID, so handing the same message over
    twice rewrites one file: this backend dedupes.
    """

    dedupes = True

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.description = f"file://{self.root}"

    def open(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise BackendUnavailable(f"cannot create the outbox {self.root}: {error.strerror or error}") from error
        # A process killed mid-write leaves its hidden temporary file behind (never a half .eml);
        # only one tick sends at a time, so any found now belong to a dead one.
        for leftover in self.root.glob("*/.*.tmp"):
            leftover.unlink(missing_ok=True)

    def path_for(self, message: EmailMessage) -> Path:
        automation = str(message.get(AUTOMATION_HEADER) or "_unassigned").strip()
        message_id = message_id_of(message).strip("<>")
        return self.root / safe_filename(automation) / f"{safe_filename(message_id)}.eml"

    def send(self, message: EmailMessage) -> Delivery:
        message_id = message_id_of(message)
        path = self.path_for(message)
        data = message_bytes(message)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Write aside then rename: a reader never sees half a message, a crash never leaves one.
            descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
            try:
                with os.fdopen(descriptor, "wb") as handle:
                    handle.write(data)
                # Made durable by flush(), once for the whole batch, before the ledger says sent:
                # an fsync per message cost 1.5 ms, most of a send.
                os.replace(temporary, path)
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
        except OSError as error:
            raise BackendUnavailable(f"cannot write {path}: {error.strerror or error}") from error
        return Delivery(message_id=message_id, ok=True, detail=str(path))

    def flush(self) -> None:
        """Every .eml written so far, and its name, on disk: one sync for a batch (a crash before it
        leaves the batch's claims pending, and this backend rewrites them on the next tick)."""
        try:
            os.sync()
        except OSError as error:
            raise BackendUnavailable(f"cannot flush the outbox {self.root}: {error.strerror or error}") from error
