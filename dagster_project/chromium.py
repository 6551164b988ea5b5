"""Headless Chromium from the command line: a page's DOM after its scripts ran, and screenshots.

Used by `make screenshot` (scripts/screenshot_report.py) and the browser tests. It runs
the system's Chromium with its own flags only (no driver, no browser download): the
page runs its scripts for `budget_ms` of virtual time, which finishes as soon as the
page is idle, then Chromium prints the DOM or writes a PNG. Chromium's own console log
goes to stderr, so script errors can be read from there as well.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# Quiet, offline, reproducible: no sandbox (CI runs as root), no GPU, no first-run
# screens, no background traffic to Google's services.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--hide-scrollbars",
    "--mute-audio",
    "--enable-logging=stderr",
    "--v=0",
)
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


class ChromiumMissing(RuntimeError):
    pass


@dataclass(frozen=True)
class PageRun:
    stdout: str
    stderr: str

    @property
    def console_errors(self) -> list[str]:
        """Lines of Chromium's log that report an uncaught error or console.error in the page."""
        return [
            line for line in self.stderr.splitlines()
            if "CONSOLE" in line and ("Uncaught" in line or ":ERROR:" in line or "Error" in line)
        ]


def find_chromium() -> str | None:
    """NUDGE_CHROMIUM, or the first Chromium on the PATH."""
    given = os.environ.get("NUDGE_CHROMIUM")
    if given:
        return given if Path(given).exists() else shutil.which(given)
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def _run(args: list[str], timeout: float) -> PageRun:
    chromium = find_chromium()
    if chromium is None:
        raise ChromiumMissing("no Chromium found: install it (apt-get install chromium) or set NUDGE_CHROMIUM")
    with tempfile.TemporaryDirectory(prefix="nudge-chromium-") as profile:
        completed = subprocess.run(
            [chromium, *FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True, text=True, timeout=timeout, check=False,
            # its crash handler and dbus look-ups stay out of the way in a container
            env={**os.environ, "HOME": profile},
        )
    if completed.returncode != 0:
        raise RuntimeError(f"chromium exited with {completed.returncode}: {completed.stderr[-2000:]}")
    return PageRun(completed.stdout, completed.stderr)


def dump_dom(url: str, *, budget_ms: int = 10_000, timeout: float = 90,
             extra_flags: Sequence[str] = ()) -> PageRun:
    """The page's DOM (serialized) once its scripts have run."""
    return _run([*extra_flags, f"--virtual-time-budget={budget_ms}", "--dump-dom", url], timeout)


def screenshot(url: str, out: Path, *, width: int = 1280, height: int = 1600, budget_ms: int = 10_000,
               timeout: float = 90, extra_flags: Sequence[str] = ()) -> PageRun:
    """A PNG of the page's first width x height pixels once its scripts have run."""
    out.parent.mkdir(parents=True, exist_ok=True)
    run = _run([*extra_flags, f"--virtual-time-budget={budget_ms}", f"--window-size={width},{height}",
                f"--screenshot={out.resolve()}", url], timeout)
    if not out.exists():
        raise RuntimeError(f"chromium wrote no screenshot to {out}: {run.stderr[-2000:]}")
    return run
