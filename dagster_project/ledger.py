"""The ledger, nudge.messages: one row per automation and trigger key.

It is the memory that makes sending exactly-once. A row is written *before* a
message is handed to a backend (claimed: `pending`) and marked after (`sent`,
`failed`), in small batches, so a crash leaves at most one batch whose fate is
unclear, and that batch is visible as `pending` on the next run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from enum import StrEnum

import duckdb
import pyarrow as pa

LEDGER_TABLE = "nudge.messages"
MAX_ATTEMPTS = 3


class Status(StrEnum):
    PENDING = "pending"  # claimed, not yet handed over (or the process died before we knew)
    SENT = "sent"
    FAILED = "failed"  # reason "temporary" is retried on later ticks; "rejected", "attempts_exhausted" are final
    SKIPPED = "skipped"
    HELD_OUT = "held_out"  # the control group: decided, recorded, never sent
    UNKNOWN = "unknown"  # a crash left it unclear whether the backend took it; never resent blindly
    HELD = "held"  # waiting out the contact's quiet hours; decided again on every tick until sent or stale


class Reason(StrEnum):
    NOT_SUBSCRIBED = "not_subscribed"
    NO_EMAIL = "no_email"
    UNKNOWN_CONTACT = "unknown_contact"
    STALE = "stale"
    REENTRY = "reentry"
    TEMPLATE_ERROR = "template_error"
    TEMPORARY = "temporary"
    REJECTED = "rejected"
    ATTEMPTS_EXHAUSTED = "attempts_exhausted"  # temporarily refused on MAX_ATTEMPTS ticks: given up, never retried
    INTERRUPTED = "interrupted"
    EXITED = "exited"  # the contact did what the automation waits for (an exit event) before it went
    CAPPED = "capped"  # the marketing frequency cap was reached by messages that matter more
    QUIET_HOURS = "quiet_hours"
    BEFORE_START = "before_start"  # qualified before the automation's start_at
    UNSUBSCRIBED = "unsubscribed"  # a one-click unsubscribe recorded by `nudge serve` (marketing mail only)
    SUPPRESSED = "suppressed"  # the address hard-bounced or complained; error says which (all mail)


# Statuses that mean "this contact entered the automation", for re-entry rules.
ENTERED = (Status.SENT, Status.PENDING, Status.UNKNOWN, Status.HELD_OUT)
# Statuses that count against the marketing frequency cap: a message that (may have) reached the inbox.
CAPPED_STATUSES = (Status.SENT, Status.PENDING, Status.UNKNOWN)

DDL = f"""
create schema if not exists nudge;
create table if not exists {LEDGER_TABLE} (
    automation   varchar   not null,
    trigger_key  varchar   not null,
    contact_id   varchar   not null,
    email        varchar,
    message_id   varchar   not null,
    status       varchar   not null,
    reason       varchar,
    error        varchar,
    attempts     integer   not null default 0,
    qualified_at timestamp,
    due_at       timestamp,
    decided_at   timestamp not null,
    sent_at      timestamp,
    updated_at   timestamp not null,
    subject      varchar,
    held_until   timestamp,
    primary key (automation, trigger_key)
);
-- added after the first release: a ledger made before it gains the column
alter table {LEDGER_TABLE} add column if not exists held_until timestamp;
"""


@dataclass(frozen=True)
class Entry:
    """A decision about one qualification, as it enters the ledger."""

    automation: str
    trigger_key: str
    contact_id: str
    email: str | None
    message_id: str
    status: str
    reason: str | None
    error: str | None
    qualified_at: datetime | None
    due_at: datetime | None
    subject: str | None = None
    held_until: datetime | None = None  # a quiet-hours hold: no tick decides it again before this


@dataclass(frozen=True)
class Outcome:
    """What became of a claimed message."""

    automation: str
    trigger_key: str
    status: str
    reason: str | None = None
    error: str | None = None


def ensure_ledger(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(DDL)


def _frame(rows: Sequence[object]) -> pa.Table:
    # Column by column: dataclasses.asdict deep-copies every field, a third of a batch's write.
    names = [field.name for field in fields(rows[0])]  # type: ignore[arg-type]
    return pa.Table.from_pydict({name: [getattr(row, name) for row in rows] for name in names})


def record(
    con: duckdb.DuckDBPyConnection, entries: Sequence[Entry], *, as_of: datetime, now: datetime, new: bool = False
) -> None:
    """Write decisions; a retried `failed` or `held` row is overwritten, its attempts kept.

    `new`: none of the keys has a row yet (as the candidates query found). They are then inserted
    plainly, in about half the time of the upsert (a few ms a statement); if one has a row after
    all, the insert fails whole and the upsert writes them. Only outside a transaction: inside one,
    DuckDB would refuse everything after the failed insert."""
    if not entries:
        return
    _write(con, "incoming", {"as_of": as_of, "now": now}, new=new, incoming=_frame(entries))


def record_query(
    con: duckdb.DuckDBPyConnection,
    query: str,
    params: dict[str, object],
    *,
    as_of: datetime,
    now: datetime,
    new: bool = False,
) -> None:
    """`record` for the decisions a query selects (the columns of Entry, by name), in one statement:
    for verdicts decided in SQL, which never pass through Python. `new` as for `record`."""
    # No `returning`: handing the written rows back doubled the statement (1.6M skips of a cold
    # tick: 5 s without it, 8.5 to 10 s with it).
    _write(con, f"({query})", {**params, "as_of": as_of, "now": now}, new=new)


def _write(
    con: duckdb.DuckDBPyConnection, source: str, params: dict[str, object], *, new: bool, incoming: pa.Table | None = None
) -> None:
    """Insert `source`'s rows plainly when `new`, else (or if one has a row after all) upsert them.
    `incoming`, when given, is what `source` names: DuckDB reads it from this frame by its name."""
    if new:
        try:
            con.execute(_insert_sql(source), params)
            return
        except duckdb.ConstraintException:
            pass  # nothing of it was written: one statement, rolled back whole
    con.execute(_record_sql(source), params)


def _insert_sql(source: str) -> str:
    return f"""
        insert into {LEDGER_TABLE}
            (automation, trigger_key, contact_id, email, message_id, status, reason, error,
             attempts, qualified_at, due_at, decided_at, sent_at, updated_at, subject, held_until)
        select automation, trigger_key, contact_id, email, message_id, status, reason, error,
               0, qualified_at, due_at, $as_of, null, $now, subject, held_until
        from {source}
        """


def _record_sql(source: str) -> str:
    """Write decisions; a retried `failed` or `held` row is overwritten, its attempts kept."""
    return _insert_sql(source) + """
        on conflict (automation, trigger_key) do update set
            contact_id = excluded.contact_id,
            email = excluded.email,
            status = excluded.status,
            reason = excluded.reason,
            error = excluded.error,
            subject = excluded.subject,
            updated_at = excluded.updated_at,
            held_until = excluded.held_until
        -- a held message decided the same way again (a replayed tick) stays as it was
        where messages.status <> excluded.status
           or messages.reason is distinct from excluded.reason
           or messages.error is distinct from excluded.error
           or messages.held_until is distinct from excluded.held_until
        """


def mark(con: duckdb.DuckDBPyConnection, outcomes: Sequence[Outcome], *, as_of: datetime, now: datetime) -> None:
    """Record what the backend said about claimed messages; every answer is an attempt.

    A temporary failure on the MAX_ATTEMPTS-th attempt is the last one: the row says so
    (`attempts_exhausted`, the server's words kept in `error`) rather than waiting as
    `temporary` for a retry that will never come.
    """
    if not outcomes:
        return
    outcome = _frame(outcomes)  # noqa: F841
    con.execute(
        f"""
        update {LEDGER_TABLE} as m set
            status = o.status,
            reason = case
                when o.status = '{Status.FAILED}' and o.reason = '{Reason.TEMPORARY}'
                     and m.attempts + 1 >= {MAX_ATTEMPTS} then '{Reason.ATTEMPTS_EXHAUSTED}'
                else o.reason
            end,
            error = o.error,
            attempts = m.attempts + 1,
            sent_at = case when o.status = 'sent' then $as_of else m.sent_at end,
            updated_at = $now
        from outcome as o
        where m.automation = o.automation and m.trigger_key = o.trigger_key
        """,
        {"as_of": as_of, "now": now},
    )


def withdraw(con: duckdb.DuckDBPyConnection, outcomes: Sequence[Outcome], *, now: datetime) -> None:
    """Claimed messages that were never handed over after all (an unsubscribe landed meanwhile):
    no attempt was made, so attempts stay as they were."""
    if not outcomes:
        return
    outcome = _frame(outcomes)  # noqa: F841
    con.execute(
        f"""
        update {LEDGER_TABLE} as m set status = o.status, reason = o.reason, error = o.error, updated_at = $now
        from outcome as o
        where m.automation = o.automation and m.trigger_key = o.trigger_key and m.status = 'pending'
        """,
        {"now": now},
    )


def mark_interrupted(
    con: duckdb.DuckDBPyConnection, automation: str, trigger_keys: Sequence[str], *, now: datetime
) -> int:
    """Claims left `pending` by a run that died: the backend may or may not have them."""
    if not trigger_keys:
        return 0
    con.execute(
        f"""
        update {LEDGER_TABLE} set
            status = 'unknown',
            reason = 'interrupted',
            error = 'claimed by a run that stopped before the backend answered; not resent because '
                 || 'this backend cannot deduplicate',
            updated_at = $now
        where automation = $automation and status = 'pending' and list_contains($keys, trigger_key)
        """,
        {"automation": automation, "keys": list(trigger_keys), "now": now},
    )
    return len(trigger_keys)


def pending_keys(con: duckdb.DuckDBPyConnection, automation: str) -> list[str]:
    rows = con.execute(
        f"select trigger_key from {LEDGER_TABLE} where automation = ? and status = 'pending' order by trigger_key",
        [automation],
    ).fetchall()
    return [row[0] for row in rows]


def status_counts(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str, str | None, int]]:
    """(automation, status, reason, count), for summaries and `nudge status`."""
    return con.execute(
        f"""
        select automation, status, reason, count(*)
        from {LEDGER_TABLE}
        group by all
        order by automation, status, reason nulls first
        """
    ).fetchall()
