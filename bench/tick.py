"""One tick in a child process, timed end to end, with the peak memory of its process tree.

The child runs the same job `nudge run` runs (build_defs + run_tick); dbt runs inside it, and
memory is sampled over the whole process tree, so anything a step starts is counted too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


def _rss_kib(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_KIB
    except (OSError, IndexError, ValueError):
        return 0


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()[:120]
    except OSError:
        return ""


def _descendants(pid: int) -> list[int]:
    """The processes under `pid` with memory of their own: not a fork that has yet to start its own
    program. Until its exec such a child shares its parent's pages (vfork: the very same memory) and
    reports them as its own resident set, so counting it counts the parent twice. A tick starts a
    compose worker per automation; sampled in that instant, a cold 10M tick read 1,713 MB (the tick
    838 MB, and 838 again for the child about to become the worker)."""
    found, stack = [], [(child, pid) for child in _children(pid)]
    while stack:
        child, parent = stack.pop()
        if _command(child) != _command(parent):
            found.append(child)
        stack.extend((grandchild, child) for grandchild in _children(child))
    return found


def tree_rss_kib(pid: int) -> int:
    """Resident memory of a process and all its descendants, now."""
    return _rss_kib(pid) + sum(_rss_kib(descendant) for descendant in _descendants(pid))


class PeakMemory:
    """Samples a process tree's resident memory every `interval` seconds; keeps the highest, when it
    came and how it divided between the process itself and the rest of its tree."""

    def __init__(self, pid: int, interval: float = 0.05):
        self.pid, self.interval, self.peak_kib = pid, interval, 0
        self.peak_at_seconds, self.peak_own_kib, self.peak_descendants = 0.0, 0, 0
        # (resident KiB, command) of the largest process under it at the peak
        self.peak_largest_descendant: tuple[int, str] = (0, "")
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        started = time.perf_counter()
        while not self._done.is_set():
            total = tree_rss_kib(self.pid)
            if total > self.peak_kib:
                self.peak_kib, self.peak_at_seconds = total, time.perf_counter() - started
                self.peak_own_kib = _rss_kib(self.pid)
                descendants = _descendants(self.pid)
                self.peak_descendants = len(descendants)
                self.peak_largest_descendant = max(((_rss_kib(pid), _command(pid)) for pid in descendants), default=(0, ""))
            self._done.wait(self.interval)

    def describe(self) -> str:
        largest_kib, command = self.peak_largest_descendant
        return (f"{self.peak_kib / 1024:,.0f} MB at {self.peak_at_seconds:.0f} s: the tick's process "
                f"{self.peak_own_kib / 1024:,.0f} MB, {self.peak_descendants} processes under it "
                f"{(self.peak_kib - self.peak_own_kib) / 1024:,.0f} MB"
                + (f" (the largest {largest_kib / 1024:,.0f} MB: {command})" if command else ""))

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()


@dataclass
class TickRun:
    wall_seconds: float
    peak_rss_mb: float
    peak_rss_detail: str  # when the peak came, and how it divided
    success: bool
    failures: list[str]
    step_seconds: dict[str, float]
    dbt_model_seconds: float  # the models' own SQL, as dbt timed it
    sent: int


def run_tick_process(as_of: datetime, env: dict[str, str]) -> TickRun:
    """`nudge run --as-of` in a fresh interpreter, as the schedule would launch it."""
    out = Path(env["NUDGE_WAREHOUSE"]).with_suffix(f".tick-{as_of:%Y%m%dT%H%M}.json")
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.tick", as_of.isoformat(), str(out)],
        env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    with PeakMemory(process.pid) as memory:
        log, _ = process.communicate()
    wall = time.perf_counter() - started
    if process.returncode != 0 or not out.exists():
        raise RuntimeError(f"the tick as of {as_of} failed:\n{log[-4000:]}")
    result = json.loads(out.read_text())
    return TickRun(wall_seconds=wall, peak_rss_mb=memory.peak_kib / 1024, peak_rss_detail=memory.describe(), **result)


def _child(as_of_text: str, out: str) -> None:
    from dagster_project.clock import parse_as_of
    from dagster_project.definitions import build_defs
    from dagster_project.settings import NudgeSettings
    from dagster_project.tick import run_tick

    tick = run_tick(build_defs(NudgeSettings()), parse_as_of(as_of_text), log_level="ERROR")
    model_seconds = sum(
        float(metadata.get("Execution Duration", 0) or 0)
        for key, metadata in tick.assets.items() if not key.startswith(("send_", "raw/", "nudge/"))
    )
    sent = sum(int(metadata.get("sent", 0) or 0) for key, metadata in tick.assets.items() if key.startswith("send_"))
    Path(out).write_text(json.dumps({
        "success": tick.success, "failures": tick.failures, "step_seconds": tick.step_seconds,
        "dbt_model_seconds": model_seconds, "sent": sent,
    }))


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2])
