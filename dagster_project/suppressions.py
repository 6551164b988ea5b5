"""Who must not get mail: one-click unsubscribes, from the moment they are clicked.

An unsubscribe has to count at once, but the warehouse is a DuckDB file that
one process at a time may write, and a tick holds it for tens of seconds. So
the endpoint never waits for it: it appends the unsubscribe to a small journal
(SQLite in WAL mode, beside the warehouse), which commits in milliseconds
whoever else is busy, and answers. Journal entries move into the warehouse
table `nudge.unsubscribes` whenever someone can take the writer lock without
waiting: the endpoint right after answering, and the send step (which holds
the lock anyway) before it picks its candidates. Each warehouse remembers the
last journal entry it took (journal_id), so a move is idempotent and a
backtest's scratch copy never takes entries from the real warehouse. Entries
stay in the journal after they moved, so the journal alone answers "did this contact unsubscribe?"
with one indexed lookup: the send asks it once per batch (a set, refreshed
with what arrived since) and once more right before each marketing message is
handed to the backend.

Bounces and complaints are not here: they are events, and the dbt model
int_email_suppressions turns them into a list of dead addresses.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow as pa

from dagster_project.warehouse import WarehouseBusyError, writer_lock

UNSUBSCRIBES_TABLE = "nudge.unsubscribes"

# How an unsubscribe reached us, as recorded in the `source` column.
ONE_CLICK = "one_click"  # RFC 8058: the mail provider's POST with List-Unsubscribe=One-Click
FORM = "form"  # the button on the page a person opened from the link

DDL = f"""
create schema if not exists nudge;
create table if not exists {UNSUBSCRIBES_TABLE} (
    contact_id      varchar   not null,
    list            varchar   not null,
    unsubscribed_at timestamp not null,
    source          varchar   not null,
    recorded_at     timestamp not null,  -- when it reached the warehouse
    journal_id      bigint,              -- the journal entry it came from
    primary key (contact_id, list)
);
"""

_JOURNAL_DDL = """
create table if not exists unsubscribes (
    id              integer primary key autoincrement,
    contact_id      text not null,
    list            text not null,
    unsubscribed_at text not null,
    source          text not null,
    -- the first unsubscribe of a contact from a list is the one that counts; also the lookup's index
    unique (contact_id, list)
);
"""


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class JournalEntry:
    id: int
    contact_id: str
    list: str
    unsubscribed_at: datetime
    source: str


class UnsubscribeJournal:
    """The append-only record the endpoint writes and the send reads; safe across processes.

    One SQLite connection per use (or per send): SQLite connections are not shared across
    threads, and opening one costs microseconds."""

    def __init__(self, path: Path):
        self.path = Path(path)

    @contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(sqlite3.connect(self.path, timeout=5.0, isolation_level=None)) as con:
            # WAL: readers never block the writer and a commit is one append. FULL: a commit
            # survives a power cut, so an unsubscribe answered with 200 is never lost.
            con.execute("pragma journal_mode = wal")
            con.execute("pragma synchronous = full")
            con.executescript(_JOURNAL_DDL)
            yield con

    def record(self, contact_id: str, list_id: str, *, source: str, at: datetime | None = None) -> bool:
        """Append an unsubscribe, durably; False when the contact had already left this list."""
        at = at or _utcnow()
        with self.connect() as con:
            cursor = con.execute(
                "insert into unsubscribes (contact_id, list, unsubscribed_at, source) values (?, ?, ?, ?)"
                " on conflict (contact_id, list) do nothing",
                [contact_id, list_id, at.isoformat(sep=" "), source],
            )
            return cursor.rowcount == 1

    def entries(self, after_id: int = 0) -> list[JournalEntry]:
        """Entries in the order they were recorded, those after `after_id` only."""
        with self.connect() as con:
            return _entries(con, "where id > ? order by id", (after_id,))

    def last_id(self) -> int:
        with self.connect() as con:
            return con.execute("select coalesce(max(id), 0) from unsubscribes").fetchone()[0]


def _entries(con: sqlite3.Connection, clause: str, params: tuple = ()) -> list[JournalEntry]:
    rows = con.execute(
        f"select id, contact_id, list, unsubscribed_at, source from unsubscribes {clause}", params
    ).fetchall()
    return [JournalEntry(i, c, lst, datetime.fromisoformat(at), s) for i, c, lst, at, s in rows]


def ensure_unsubscribes(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(DDL)


def move_to_warehouse(journal: UnsubscribeJournal, con: duckdb.DuckDBPyConnection) -> int:
    """Copy journal entries this warehouse has not taken yet into nudge.unsubscribes; how many were new.

    `con` must hold the writer lock. One statement, so a crash leaves all or nothing; the
    journal's ids only grow (SQLite writes one transaction at a time), so the largest
    journal_id taken is where the next move starts."""
    ensure_unsubscribes(con)
    # fetchall, not fetchone: DuckDB keeps a half-read result open and the next con.sql refuses to run
    taken = con.execute(f"select coalesce(max(journal_id), 0) from {UNSUBSCRIBES_TABLE}").fetchall()[0][0]
    if journal.last_id() < taken:
        taken = 0  # a new journal file (the old one was removed): its ids started again
    entries = journal.entries(after_id=taken)
    if not entries:
        return 0
    incoming = pa.Table.from_pylist(  # noqa: F841  (read by DuckDB by name)
        [
            {"contact_id": e.contact_id, "list": e.list, "unsubscribed_at": e.unsubscribed_at, "source": e.source,
             "journal_id": e.id}
            for e in entries
        ]
    )
    before = con.execute(f"select count(*) from {UNSUBSCRIBES_TABLE}").fetchall()[0][0]
    con.execute(
        f"""
        insert into {UNSUBSCRIBES_TABLE} (contact_id, list, unsubscribed_at, source, recorded_at, journal_id)
        select contact_id, list, unsubscribed_at, source, $now, journal_id from incoming
        on conflict (contact_id, list) do update set journal_id = greatest(unsubscribes.journal_id, excluded.journal_id)
        """,
        {"now": _utcnow()},
    )
    return con.execute(f"select count(*) from {UNSUBSCRIBES_TABLE}").fetchall()[0][0] - before


def try_move_to_warehouse(journal: UnsubscribeJournal, warehouse: Path) -> int | None:
    """Move the journal into the warehouse if nobody is writing it right now; None when it was busy.

    Never waits: a busy warehouse means a tick is running, and that tick's send moves the
    journal itself. DuckDB also refuses a writer while another process reads the file."""
    try:
        with writer_lock(warehouse, timeout_seconds=0):
            con = duckdb.connect(str(warehouse))
            try:
                # Again until nothing is new: entries recorded while we moved would otherwise wait
                # for the next move (their own request found the lock taken by us).
                total = 0
                while moved := move_to_warehouse(journal, con):
                    total += moved
                return total
            finally:
                con.close()
    except (WarehouseBusyError, duckdb.IOException):
        return None


class UnsubscribeGuard:
    """What the send asks about one list: has this contact unsubscribed, as of now?

    `refresh` (once per batch) adds what arrived in the journal since the last refresh to an
    in-memory set; `unsubscribed_now` (right before each message is handed over) answers
    from that set, else with one indexed lookup, so an unsubscribe that lands mid-batch
    still stops the messages not yet handed over. Without a journal it knows nothing."""

    def __init__(self, journal: UnsubscribeJournal | None, list_id: str):
        self.journal = journal
        self.list_id = list_id
        self._seen: dict[str, datetime] = {}
        self._last_id = 0
        self._stack = ExitStack()
        self._con: sqlite3.Connection | None = None

    def __enter__(self) -> "UnsubscribeGuard":
        if self.journal is not None:
            self._con = self._stack.enter_context(self.journal.connect())
        return self

    def __exit__(self, *exc: object) -> None:
        self._con = None
        self._stack.close()

    def refresh(self) -> None:
        if self._con is None:
            return
        # Every list's new rows, so the high-water mark never skips a row committed meanwhile.
        for entry in _entries(self._con, "where id > ? order by id", (self._last_id,)):
            self._last_id = entry.id
            if entry.list == self.list_id:
                self._seen.setdefault(entry.contact_id, entry.unsubscribed_at)

    def unsubscribed_at(self, contact_id: str) -> datetime | None:
        """From the set of the last refresh only."""
        return self._seen.get(contact_id)

    def unsubscribed_now(self, contact_id: str) -> datetime | None:
        """From the set, else asking the journal itself (an indexed lookup)."""
        if contact_id in self._seen or self._con is None:
            return self._seen.get(contact_id)
        row = self._con.execute(
            "select unsubscribed_at from unsubscribes where contact_id = ? and list = ?", [contact_id, self.list_id]
        ).fetchone()
        if row is None:
            return None
        self._seen[contact_id] = at = datetime.fromisoformat(row[0])
        return at
