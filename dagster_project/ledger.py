"""The ledger, nudge.messages: one row per automation and trigger key.

It is the memory that makes sending exactly-once. A row is written *before* a
message is handed to a backend (claimed: `pending`) and marked after (`sent`,
`failed`), in small batches, so a crash leaves at most one batch whose fate is
unclear, and that batch is visible as `pending` on the next run.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from enum import StrEnum

import duckdb
import pyarrow as pa

from dagster_project.migrations import has_primary_key, rebuild_table, rollback_if_open

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

# No primary key, though (automation, trigger_key) is the key: every row is written by a send
# holding the warehouse's writer lock, for keys its candidates query found without a row (or
# with the one row it then updates), and a send refuses candidates that name a key twice
# before it writes anything. An index would refuse the second row by itself, but it doubled the
# cost of writing: a cold 10M tick's 3.3 million skips took 11.0 s with it, 5.7 s without.
LEDGER_COLUMNS = """
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
    held_until   timestamp
"""

DDL = f"""
create schema if not exists nudge;
create table if not exists {LEDGER_TABLE} ({LEDGER_COLUMNS});
-- added after the first release: a ledger made before it gains the column
alter table {LEDGER_TABLE} add column if not exists held_until timestamp;
"""


class DuplicateKeys(ValueError):
    """Decisions that name one (automation, trigger_key) twice: written, they would be two rows,
    and a claim twice would be two messages."""


class NotClaimed(RuntimeError):
    """A backend's answer for a message the ledger holds no `pending` claim of: the send marks only
    what it claimed in the same run, so this is a bug, and nothing of that batch is marked."""


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
    """Create the ledger, or bring an older one up to date (not inside an open transaction)."""
    con.execute(DDL)
    # Until session 12 the ledger had a primary key, which DuckDB cannot drop in place: rebuilt
    # once without it, every row kept.
    schema, table = LEDGER_TABLE.split(".")
    if has_primary_key(con, schema, table):
        rebuild_table(con, schema, table, LEDGER_COLUMNS)


def _frame(rows: Sequence[object]) -> pa.Table:
    # Column by column: dataclasses.asdict deep-copies every field, a third of a batch's write.
    names = [field.name for field in fields(rows[0])]  # type: ignore[arg-type]
    return pa.Table.from_pydict({name: [getattr(row, name) for row in rows] for name in names})


def record(
    con: duckdb.DuckDBPyConnection, entries: Sequence[Entry], *, as_of: datetime, now: datetime, new: bool = False
) -> None:
    """Write decisions; a retried `failed` or `held` row is overwritten, its attempts kept.

    `new`: none of the keys has a row yet (as the candidates query found, under the writer lock
    the send holds). They are then inserted plainly, in about half the time of the merge."""
    if not entries:
        return
    keys = Counter((entry.automation, entry.trigger_key) for entry in entries)
    if len(keys) < len(entries):
        twice = [f"{automation}/{key}" for (automation, key), count in keys.items() if count > 1]
        raise DuplicateKeys(f"decisions name {len(twice)} keys more than once, among them {', '.join(twice[:3])}")
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
    for verdicts decided in SQL, which never pass through Python. The caller makes sure the query
    names no key twice (send refuses such candidates); `new` as for `record`."""
    # No `returning`: handing the written rows back doubled the statement (1.6M skips of a cold
    # tick: 5 s without it, 8.5 to 10 s with it).
    _write(con, f"({query})", {**params, "as_of": as_of, "now": now}, new=new)


def _write(
    con: duckdb.DuckDBPyConnection, source: str, params: dict[str, object], *, new: bool, incoming: pa.Table | None = None
) -> None:
    """Insert `source`'s rows plainly when `new`, else merge them into the ledger by key.
    `incoming`, when given, is what `source` names: DuckDB reads it from this frame by its name."""
    con.execute(_insert_sql(source) if new else _merge_sql(source), params)


_WRITTEN_COLUMNS = (
    "automation, trigger_key, contact_id, email, message_id, status, reason, error, "
    "attempts, qualified_at, due_at, decided_at, sent_at, updated_at, subject, held_until"
)


def _decisions_sql(source: str) -> str:
    """A ledger row for each decision in `source`, as a first decision writes it."""
    return f"""
        select automation, trigger_key, contact_id, email, message_id, status, reason, error,
               0 as attempts, qualified_at, due_at, $as_of as decided_at, null::timestamp as sent_at,
               $now as updated_at, subject, held_until
        from {source}
        """


def _insert_sql(source: str) -> str:
    return f"insert into {LEDGER_TABLE} ({_WRITTEN_COLUMNS}) {_decisions_sql(source)}"


def _merge_sql(source: str) -> str:
    """A key without a row gets one; a retried `failed` or `held` row is overwritten, its attempts,
    its first decision's time and its sending time kept."""
    return f"""
        merge into {LEDGER_TABLE} as m
        using ({_decisions_sql(source)}) as d
        on m.automation = d.automation and m.trigger_key = d.trigger_key
        -- a held message decided the same way again (a replayed tick) stays as it was
        when matched and (
            m.status <> d.status
            or m.reason is distinct from d.reason
            or m.error is distinct from d.error
            or m.held_until is distinct from d.held_until
        ) then update set
            contact_id = d.contact_id,
            email = d.email,
            status = d.status,
            reason = d.reason,
            error = d.error,
            subject = d.subject,
            updated_at = d.updated_at,
            held_until = d.held_until
        when not matched then insert ({_WRITTEN_COLUMNS})
            values (d.automation, d.trigger_key, d.contact_id, d.email, d.message_id, d.status, d.reason, d.error,
                    d.attempts, d.qualified_at, d.due_at, d.decided_at, d.sent_at, d.updated_at, d.subject,
                    d.held_until)
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
    # A claim is `pending` until its mark, and saying so lets DuckDB match the batch's keys against the
    # automation's few pending rows, not all of them: 6 ms against 28 ms for a batch of 1,000 beside the
    # 1.6 million skips of a cold 10M tick's workout_completed. The count proves no answer was dropped.
    con.begin()
    try:
        ((updated,),) = con.execute(
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
            where m.automation = o.automation and m.trigger_key = o.trigger_key and m.status = '{Status.PENDING}'
            """,
            {"as_of": as_of, "now": now},
        ).fetchall()
    except BaseException:
        rollback_if_open(con)
        raise
    if updated == len(outcomes):
        con.commit()
        return
    con.rollback()
    unclaimed = con.execute(
        f"""
        select o.automation || '/' || o.trigger_key
        from outcome as o
        left join {LEDGER_TABLE} as m
            on m.automation = o.automation and m.trigger_key = o.trigger_key and m.status = '{Status.PENDING}'
        where m.trigger_key is null
        order by 1
        limit 3
        """
    ).fetchall()
    raise NotClaimed(
        f"{len(outcomes) - updated} of {len(outcomes)} answers name no pending claim, among them "
        f"{', '.join(key for (key,) in unclaimed)}: nothing of this batch was marked"
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
