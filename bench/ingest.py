"""The ingest's figures: events per second and peak memory, in a process of its own.

A tick's first run over a large history ingests all of it inside the tick, so the ingest's peak
resident memory is the tick's too (the memory target is the tick's). It runs in a fresh
process, as the tick's step would, with the tick's DuckDB memory limit: contacts first, as a
tick does (counted in the memory, not timed), then the events (timed).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.tick import PeakMemory


@dataclass
class IngestRun:
    events_per_second: float
    rows_read: int
    seconds: float
    peak_rss_mb: float


def run_ingest_process(warehouse: Path, landing: Path) -> IngestRun:
    out = warehouse.with_suffix(".ingest.json")
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.ingest", str(warehouse), str(landing), str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    with PeakMemory(process.pid) as memory:
        log, _ = process.communicate()
    if process.returncode != 0 or not out.exists():
        raise RuntimeError(f"the ingest of {landing} failed:\n{log[-4000:]}")
    result = json.loads(out.read_text())
    out.unlink()
    return IngestRun(result["rows_read"] / result["seconds"], result["rows_read"], result["seconds"],
                     memory.peak_kib / 1024)


def _child(warehouse: str, landing: str, out: str) -> None:
    from dagster_project.ingest import ingest_contacts, ingest_events
    from dagster_project.settings import NudgeSettings
    from dagster_project.warehouse import connect

    with connect(Path(warehouse), memory_limit=NudgeSettings().duckdb_memory_limit) as con:
        ingest_contacts(con, Path(landing))
        started = time.perf_counter()
        report = ingest_events(con, Path(landing))
        seconds = time.perf_counter() - started
    Path(out).write_text(json.dumps({"rows_read": report.rows_read, "seconds": seconds}))


if __name__ == "__main__":
    _child(*sys.argv[1:4])
