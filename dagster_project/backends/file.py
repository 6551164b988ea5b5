"""The default backend: one RFC 5322 .eml file per message, for trying Nudge and for tests."""

from __future__ import annotations

import ctypes
import os
import re
import sys
from collections.abc import Callable
from contextlib import suppress
from email.message import EmailMessage
from pathlib import Path

from .base import BackendUnavailable, Delivery, EmailBackend, message_bytes, message_id_of, stored_header

AUTOMATION_HEADER = "X-Nudge-Automation"
# As tempfile.mkstemp opens its files: a new file only, never through a symbolic link.
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
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
    local = True

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.description = f"file://{self.root}"
        # The outbox and each automation's folder held open while the backend is: a message's file
        # is made relative to its folder's descriptor, not found again from the root by its path.
        self._root_descriptor: int | None = None
        self._folders: dict[str, int] = {}
        self._device: int | None = None
        self._folders_on_other_devices = False

    def close(self) -> None:
        descriptors = [*self._folders.values(), self._root_descriptor]
        self._folders, self._root_descriptor = {}, None
        for descriptor in descriptors:
            if descriptor is None:
                continue
            try:
                os.close(descriptor)
            except OSError:
                pass

    def open(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise BackendUnavailable(f"cannot create the outbox {self.root}: {error.strerror or error}") from error
        # Held open for the whole send: syncfs() reports the write-back errors since this was opened.
        # The folders are opened again, as someone may have removed one since the last send.
        self.close()
        try:
            self._root_descriptor = _open_folder(self.root)
        except OSError as error:
            raise BackendUnavailable(f"cannot open the outbox {self.root}: {error.strerror or error}") from error
        self._device = os.fstat(self._root_descriptor).st_dev
        self._folders_on_other_devices = False
        # A process killed mid-write leaves its hidden temporary file behind (never a half .eml);
        # only one tick sends at a time, so any found now belong to a dead one.
        for leftover in self.root.glob("*/.*.tmp"):
            leftover.unlink(missing_ok=True)

    def path_for(self, message: EmailMessage) -> Path:
        folder, name = self.names(message)
        return self.root / folder / name

    @staticmethod
    def names(message: EmailMessage) -> tuple[str, str]:
        """The message's folder (its automation) and file name (its Message-ID), each made safe."""
        # As stored, not parsed into a header object (a message made in another process holds text).
        automation = (stored_header(message, AUTOMATION_HEADER) or "_unassigned").strip()
        return safe_filename(automation), f"{safe_filename(message_id_of(message).strip('<>'))}.eml"

    def send(self, message: EmailMessage) -> Delivery:
        message_id = message_id_of(message)
        folder_name, name = self.names(message)
        data = message_bytes(message)
        path = os.path.join(self.root, folder_name, name)
        # Write aside then rename: a reader never sees half a message, a crash never leaves one.
        # The name aside is the message's own (one tick sends at a time, and a message is handed
        # over once in it), so no random name has to be found free first; open() clears leftovers.
        temporary = f".{name}.tmp"
        try:
            folder = self._folders.get(folder_name)
            if folder is None:
                folder = self._open_automation_folder(folder_name)
            try:
                descriptor = os.open(temporary, _CREATE, 0o600, dir_fd=folder)
            except FileExistsError:
                os.unlink(temporary, dir_fd=folder)  # left by a write that failed; never followed if it is a link
                descriptor = os.open(temporary, _CREATE, 0o600, dir_fd=folder)
            try:
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(descriptor, view):]
                finally:
                    os.close(descriptor)
                # Made durable by flush(), once for the whole batch, before the ledger says sent:
                # an fsync per message cost 1.5 ms, most of a send.
                os.replace(temporary, name, src_dir_fd=folder, dst_dir_fd=folder)
            except BaseException:
                with suppress(OSError):
                    os.unlink(temporary, dir_fd=folder)
                raise
        except OSError as error:
            raise BackendUnavailable(f"cannot write {path}: {error.strerror or error}") from error
        return Delivery(message_id=message_id, ok=True, detail=path)

    def _open_automation_folder(self, name: str) -> int:
        if self._root_descriptor is None:
            raise BackendUnavailable(f"the outbox {self.root} is not open: open() the backend before sending")
        with suppress(FileExistsError):
            os.mkdir(name, 0o777, dir_fd=self._root_descriptor)
        descriptor = _open_folder(name, dir_fd=self._root_descriptor)
        self._folders[name] = descriptor
        # A folder mounted from elsewhere is synced on its own (never the case in practice).
        if os.fstat(descriptor).st_dev != self._device:
            self._folders_on_other_devices = True
        return descriptor

    def flush(self) -> None:
        """Every .eml written so far, and its name, on disk: one sync of the outbox's filesystem for a
        batch (a crash before it leaves the batch's claims pending, and this backend rewrites them
        on the next tick)."""
        try:
            sync_filesystem(self.root, self._root_descriptor)
            if self._folders_on_other_devices:
                for name, descriptor in self._folders.items():
                    sync_filesystem(self.root / name, descriptor)
        except OSError as error:
            raise BackendUnavailable(f"cannot flush the outbox {self.root}: {error.strerror or error}") from error


def _libc_syncfs() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None, use_errno=True).syncfs  # type: ignore[no-any-return]
    except (AttributeError, OSError):
        return None


_SYNCFS = _libc_syncfs() if sys.platform.startswith("linux") else None


def _open_folder(folder: Path | str, dir_fd: int | None = None) -> int:
    return os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0), dir_fd=dir_fd)


def sync_filesystem(folder: Path, descriptor: int | None = None) -> None:
    """Everything written to the filesystem holding `folder` on disk. Linux's syncfs() leaves the
    other filesystems alone (os.sync() writes out every one: the warehouse's, anything another
    process wrote; 20 to 120 ms for a batch of 1,000 beside a busy process, against 11 to 15), and,
    unlike os.sync(), reports a write-back error (one since `descriptor` was opened)."""
    if _SYNCFS is None:
        os.sync()
        return
    own = descriptor is None
    if own:
        descriptor = _open_folder(folder)
    try:
        if _SYNCFS(descriptor) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
    finally:
        if own:
            os.close(descriptor)  # type: ignore[arg-type]
