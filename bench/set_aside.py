"""Outboxes the bench is done with, set aside and removed only once every figure is taken.

Removing tens of thousands of small files slows this machine's disk at creating new ones for a
while after (its ext4 is mounted with online discard): measured in session 15, 60,000 .eml-sized
files were created at about 5,500 a second right after 60,000 had been removed, against about
42,000 a second on a settled disk. The bench used to remove each tick's outbox just before the
figures that write files (the send's to the file backend above all), so it measured its own
clean-up. A rename is one metadata change; the removal waits for the end.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

FOLDER = ".set-aside"


def set_aside(path: Path, root: Path) -> None:
    """Move `path` (if it is there) under `root`'s set-aside folder, on the same filesystem."""
    if not path.exists():
        return
    folder = root / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    path.rename(folder / f"{path.name}-{uuid.uuid4().hex[:8]}")


def remove_set_aside(root: Path) -> None:
    shutil.rmtree(root / FOLDER, ignore_errors=True)
