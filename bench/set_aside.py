"""Outboxes the bench is done with, set aside and removed only once every figure is taken.

Removing tens of thousands of small files slows this machine's disk at creating new ones for a
while after. Its ext4 has no journal, and there the kernel does not hand out an inode freed in the
last minute (five more while its inode table block is not yet written back): each new file's
`open()` looks past every such inode (`recently_deleted()` in `find_inode_bit()`, two thirds of the
samples of `perf` over a loop creating files, all of it system time). Measured in session 19, a
loop writing 10,000 files made 1,800 to 3,800 a second in a fresh folder right after files had been
removed, against 14,500 to 22,100 on a settled disk (session 15 measured 5,500 against 42,000 and
put it down to the online discard the disk is mounted with). The bench used to remove each tick's
outbox just before the figures that write files (the send's to the file backend above all), so it
measured its own clean-up. A rename is one metadata change; the removal waits for the end.
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
