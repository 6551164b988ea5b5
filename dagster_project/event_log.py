"""Dagster's SQLite event log, without a new database engine for every event.

A tick writes about 560 events (a materialization, output and check result for each dbt
model and test, their "planned" twins, the steps' own). Dagster's SqliteEventLogStorage
creates a SQLAlchemy engine for each write, connects, initialises the dialect and throws the
engine away: on this machine that was most of the 9 s a tick at 100k events spent storing
events. This one keeps one engine per database file for the life of the process, and its
connections in a pool: a new SQLite connection for each write cost about 2 s of a tick of
15 s. Dagster also asks whether a table exists before it stores each asset check result (two
for a dbt test, every tick) and some materializations, making an engine and a connection for
each question; here the index's kept engine answers (the run's event writes took 0.73 to 0.91 s
of a 10M incremental tick instead of 0.97 to 1.25 s). Between writes a pooled connection holds
no lock (SQLite locks for a transaction only), so the files are shared with the webserver and
other runs as before.

Dagster keeps these files in WAL mode, and SQLite's default there syncs the log to disk on
every commit: 3 to 4 ms an event here, over a second a tick. Its connections use
`synchronous=NORMAL`, SQLite's advice for WAL: a crashed process still loses nothing and the
file cannot be corrupted; a power cut may lose the last events before a WAL checkpoint. The
event log is the runs' history, not what was sent (the warehouse's ledger is), so a run's
last few lines are the price.

`.dagster/dagster.yaml` selects it. Its base_dir defaults to where Dagster's default storage
keeps run event logs, `$DAGSTER_HOME/history/runs`, so earlier runs stay visible.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dagster as dg
from dagster._core.storage.event_log import SqliteEventLogStorage
from dagster._core.storage.event_log.sqlite.sqlite_event_log import INDEX_SHARD_NAME
from dagster._core.storage.sql import create_engine
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS, create_db_conn_string
from dagster._serdes import ConfigurableClassData
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import QueuePool


def default_base_dir() -> str:
    home = os.environ.get("DAGSTER_HOME")
    if not home:
        raise dg.DagsterInvariantViolationError("NudgeSqliteEventLogStorage needs DAGSTER_HOME or a base_dir")
    return os.path.join(home, "history", "runs")


# Set in a pooled connection's info once it syncs less.
_SYNC_NORMAL = "nudge_synchronous_normal"


def _sync_less_in_wal_mode(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    """On each checkout, until the connection has it: Dagster turns a new file to WAL on a
    connection that then stays in the pool."""
    if record.info.get(_SYNC_NORMAL):
        return
    # Outside WAL (a file Dagster did not create), NORMAL could corrupt it on a power cut: keep FULL.
    cursor = dbapi_connection.cursor()
    try:
        (mode,) = cursor.execute("pragma journal_mode").fetchone()
        if str(mode).lower() == "wal":
            cursor.execute("pragma synchronous = normal")
            record.info[_SYNC_NORMAL] = True
    finally:
        cursor.close()


class NudgeSqliteEventLogStorage(SqliteEventLogStorage):
    def __init__(self, base_dir: str | None = None, inst_data: ConfigurableClassData | None = None) -> None:
        self._engines: dict[str, Engine] = {}
        # Not the storage's own lock: has_table is also asked while a write holds that one.
        self._engines_lock = threading.Lock()
        super().__init__(base_dir or default_base_dir(), inst_data=inst_data)

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return {"base_dir": dg.Field(dg.StringSource, is_required=False)}

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData | None, config_value: Any) -> "NudgeSqliteEventLogStorage":
        return cls(inst_data=inst_data, **config_value)

    def _engine(self, shard: str) -> Engine:
        with self._engines_lock:
            engine = self._engines.get(shard)
            if engine is None:
                engine = create_engine(
                    create_db_conn_string(self._base_dir, shard),
                    poolclass=QueuePool,
                    connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS},
                )
                event.listen(engine, "checkout", _sync_less_in_wal_mode)
                self._engines[shard] = engine
            return engine

    def has_table(self, table_name: str) -> bool:
        # Asked of the database each time, as Dagster does: a migration may add the table.
        engine = self._engine(INDEX_SHARD_NAME)
        with engine.connect() as conn:
            return bool(engine.dialect.has_table(conn, table_name))

    @contextmanager
    def _connect(self, shard: str) -> Iterator[Connection]:
        # The same steps as SqliteEventLogStorage._connect, with the engine kept.
        with self._db_lock:
            engine = self._engine(shard)
            if shard not in self._initialized_dbs:
                self._initdb(engine)
                self._initialized_dbs.add(shard)
            with engine.connect() as conn:
                with conn.begin():
                    yield conn

    def dispose(self) -> None:
        with self._engines_lock:
            for engine in self._engines.values():
                engine.dispose()
            self._engines.clear()
        super().dispose()
