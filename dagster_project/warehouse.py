"""The warehouse file and the one rule about it: one writer at a time.

DuckDB lets a single process open a file for writing. dbt runs as a subprocess
of a Dagster step, the schedule and a manual `nudge run` are separate
processes, so every writer first takes an OS lock beside the file. Inside one
Dagster instance the "warehouse" pool already serialises steps; the lock also
covers processes the pool cannot see (two `nudge run` at once, a test).
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import duckdb

WAREHOUSE_POOL = "warehouse"


class WarehouseBusyError(RuntimeError):
    pass


@contextmanager
def writer_lock(warehouse: Path, timeout_seconds: float = 1800.0) -> Iterator[None]:
    """Hold the warehouse's writer lock; wait for another holder up to the timeout."""
    warehouse.parent.mkdir(parents=True, exist_ok=True)
    lock_path = warehouse.with_name(warehouse.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout_seconds
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise WarehouseBusyError(
                        f"Another process has been writing {warehouse} for over "
                        f"{timeout_seconds:.0f}s (lock file {lock_path}); try again when it finishes."
                    ) from None
                time.sleep(0.2)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


@contextmanager
def connect(
    warehouse: Path, timeout_seconds: float = 1800.0, memory_limit: str | None = None
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-write connection, held under the writer lock for its whole life."""
    with writer_lock(warehouse, timeout_seconds):
        con = duckdb.connect(str(warehouse))
        if memory_limit:
            # A setting of the database in this process, not of the connection: SET rather than
            # connect(config=...), which would refuse another open connection with other settings.
            con.execute(f"set memory_limit = '{memory_limit}'")
        try:
            yield con
        finally:
            con.close()


class Warehouse(dg.ConfigurableResource):
    """The DuckDB file every asset reads and writes."""

    path: str
    lock_timeout_seconds: float = 1800.0
    # NUDGE_DUCKDB_MEMORY_LIMIT: for the tick's own connections and for dbt's.
    memory_limit: str = "768MB"

    @property
    def file(self) -> Path:
        return Path(self.path)

    @contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with connect(self.file, self.lock_timeout_seconds, self.memory_limit) as con:
            yield con

    @contextmanager
    def lock(self) -> Iterator[None]:
        """For steps whose writer is a subprocess (dbt)."""
        with writer_lock(self.file, self.lock_timeout_seconds):
            yield
