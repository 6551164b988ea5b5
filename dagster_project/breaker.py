"""The circuit breaker: an automation whose tick looks wrong sends nothing until it looks right or a person says so.

Two things trip it, per automation and tick:

- a surge: more qualifications came newly due than `surge_multiple` times the median of
  the automation's recent ticks, and more than `surge_floor` (a broken model, a bad
  import, a join that fans out: the failures that email a whole audience at once);
- stale inputs: the newest row of raw.events was loaded longer than `max_event_age`
  before the tick (the loader stopped, so "did not come back", "did not buy" and every
  other absence of events is true of everyone).

A tripped automation claims nothing: its candidates stay due for a later tick, until
their send window makes them stale. The send step records every tick's measurement in
nudge.tick_history, and a person releases one tick of one automation with
`nudge breaker release` (a row in nudge.breaker_releases) or the run tag
`nudge/release_breaker`.

The decision itself (`judge`) is a pure function; the rest reads and writes the two tables.
"""

from __future__ import annotations

import statistics
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import duckdb
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dagster_project.durations import format_duration, parse_duration

HISTORY_TABLE = "nudge.tick_history"
RELEASES_TABLE = "nudge.breaker_releases"
CHECK_NAME = "circuit_breaker"
# A run tag naming the automations this run may send despite the breaker: "welcome,cart_abandoned".
RELEASE_TAG = "nudge/release_breaker"
# Where freshness is read: ingestion time, the column dbt's source freshness would use.
FRESHNESS_TABLE, FRESHNESS_COLUMN = "raw.events", "loaded_at"

DDL = f"""
create schema if not exists nudge;
create table if not exists {HISTORY_TABLE} (
    automation       varchar   not null,
    as_of            timestamp not null,
    due              integer   not null,
    trailing_median  double,
    trailing_ticks   integer   not null,
    tripped          boolean   not null,
    reason           varchar,
    released         boolean   not null default false,
    release_id       varchar,
    recorded_at      timestamp not null,
    primary key (automation, as_of)
);
create table if not exists {RELEASES_TABLE} (
    release_id    varchar   primary key,
    automation    varchar   not null,
    released_by   varchar   not null,
    reason        varchar,
    released_at   timestamp not null,
    consumed_as_of timestamp,
    consumed_at   timestamp
);
"""


class BreakerConfig(BaseModel):
    """`vars: nudge: circuit_breaker:` in dbt_project.yml, as written."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    surge_multiple: float = Field(default=5, gt=1)
    surge_floor: int = Field(default=100, ge=0)
    trailing_ticks: int = Field(default=24, ge=1)
    min_history: int = Field(default=3, ge=1)
    # null: never judge freshness (a product quiet for hours at a time, or events from a loader's tables)
    max_event_age: str | None = "6h"

    @field_validator("max_event_age")
    @classmethod
    def _is_duration(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value

    @model_validator(mode="after")
    def _history_fits(self) -> BreakerConfig:
        if self.min_history > self.trailing_ticks:
            raise ValueError(f"min_history {self.min_history} is more than trailing_ticks {self.trailing_ticks}")
        return self

    def policy(self) -> BreakerPolicy:
        return BreakerPolicy(
            enabled=self.enabled,
            surge_multiple=self.surge_multiple,
            surge_floor=self.surge_floor,
            trailing_ticks=self.trailing_ticks,
            min_history=self.min_history,
            max_event_age=parse_duration(self.max_event_age) if self.max_event_age is not None else None,
        )


@dataclass(frozen=True)
class BreakerPolicy:
    enabled: bool = True
    surge_multiple: float = 5
    surge_floor: int = 100
    trailing_ticks: int = 24
    min_history: int = 3
    max_event_age: timedelta | None = timedelta(hours=6)


@dataclass(frozen=True)
class Judgement:
    tripped: bool
    reason: str | None
    median: float | None  # of the trailing ticks; None without history


def _age(value: timedelta) -> str:
    minutes = int(value.total_seconds() // 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m"


def _number(value: float) -> str:
    return f"{value:g}"


def judge(
    due: int,
    history: Sequence[int],
    *,
    as_of: datetime,
    newest_event_loaded_at: datetime | None,
    policy: BreakerPolicy,
) -> Judgement:
    """Trip or not, and why in words a person can act on.

    `history`: the due counts of the automation's trailing ticks that sent (newest first).
    `newest_event_loaded_at`: None when there are no events to judge (an empty install).
    """
    median = statistics.median(history) if history else None
    if not policy.enabled:
        return Judgement(False, None, median)
    if policy.max_event_age is not None and newest_event_loaded_at is not None:
        # A replay of an hour before the events were loaded sees a negative age: fresh.
        age = as_of - newest_event_loaded_at
        if age > policy.max_event_age:
            return Judgement(
                True,
                f"stale inputs: the newest event was loaded {_age(age)} before this tick "
                f"({newest_event_loaded_at:%Y-%m-%d %H:%M} UTC), over the limit of "
                f"{format_duration(policy.max_event_age)} (max_event_age)",
                median,
            )
    if median is None or len(history) < policy.min_history:
        return Judgement(False, None, median)  # too little history to know what normal is
    if due > policy.surge_floor and due > policy.surge_multiple * median:
        return Judgement(
            True,
            f"surge: {due} newly due, over {_number(policy.surge_multiple)}x the median of "
            f"{_number(median)} over the last {len(history)} ticks that sent and over the floor of "
            f"{policy.surge_floor}",
            median,
        )
    return Judgement(False, None, median)


# --- The tables -------------------------------------------------------------------------------


def ensure_tables(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(DDL)


def trailing_due(con: duckdb.DuckDBPyConnection, automation: str, as_of: datetime, ticks: int) -> list[int]:
    """The due counts of the last `ticks` ticks before `as_of` that sent (not tripped, or released).

    A tripped tick is left out: otherwise a surge that lasts would, tick by tick, become its
    own normal, and the breaker would close by itself with nobody having looked. A released
    tick counts: a person said that volume is fine, so a real step change (the product grew)
    becomes the normal after releases for about half the trailing window."""
    rows = con.execute(
        f"""
        select due from {HISTORY_TABLE}
        where automation = ? and as_of < ? and (not tripped or released)
        order by as_of desc
        limit ?
        """,
        [automation, as_of, ticks],
    ).fetchall()
    return [due for (due,) in rows]


def newest_event_loaded_at(con: duckdb.DuckDBPyConnection) -> datetime | None:
    """When ingestion last loaded an event; None without a raw.events table (a loader's source)."""
    schema, table = FRESHNESS_TABLE.split(".")
    # fetchall, not fetchone: DuckDB keeps a half-read result open and refuses the next con.sql
    [(exists,)] = con.execute(
        "select count(*) from information_schema.tables where table_schema = ? and table_name = ?", [schema, table]
    ).fetchall()
    if not exists:
        return None
    [(newest,)] = con.execute(f"select max({FRESHNESS_COLUMN}) from {FRESHNESS_TABLE}").fetchall()
    return newest


@dataclass(frozen=True)
class Release:
    release_id: str
    automation: str
    released_by: str
    reason: str | None
    released_at: datetime


def release(
    con: duckdb.DuckDBPyConnection, automation: str, *, by: str, reason: str | None, now: datetime
) -> Release:
    """Let the next tick of `automation` send once despite the breaker."""
    ensure_tables(con)
    release_id = f"{automation}-{uuid.uuid4().hex[:12]}"
    con.execute(
        f"insert into {RELEASES_TABLE} (release_id, automation, released_by, reason, released_at) values (?, ?, ?, ?, ?)",
        [release_id, automation, by, reason, now],
    )
    return Release(release_id, automation, by, reason, now)


def pending_releases(con: duckdb.DuckDBPyConnection, automation: str | None = None) -> list[Release]:
    ensure_tables(con)
    where, params = ("where consumed_as_of is null", []) if automation is None else (
        "where consumed_as_of is null and automation = ?", [automation])
    rows = con.execute(
        f"select release_id, automation, released_by, reason, released_at from {RELEASES_TABLE} {where} "
        "order by released_at",
        params,
    ).fetchall()
    return [Release(*row) for row in rows]


def _consume(con: duckdb.DuckDBPyConnection, release_id: str, as_of: datetime, now: datetime) -> None:
    con.execute(
        f"update {RELEASES_TABLE} set consumed_as_of = ?, consumed_at = ? where release_id = ?",
        [as_of, now, release_id],
    )


def tag_releases(tag: str | None) -> set[str]:
    """The automations a run's `nudge/release_breaker` tag names."""
    return {name.strip() for name in (tag or "").split(",") if name.strip()}


@dataclass(frozen=True)
class BreakerState:
    """One automation's breaker in one tick: what was measured and what it means."""

    automation: str
    as_of: datetime
    due: int
    history: int
    judgement: Judgement
    release: Release | None = None

    @property
    def tripped(self) -> bool:
        return self.judgement.tripped

    @property
    def blocks(self) -> bool:
        """Send nothing this tick."""
        return self.judgement.tripped and self.release is None

    @property
    def summary(self) -> str:
        median = "no history" if self.judgement.median is None else f"trailing median {_number(self.judgement.median)}"
        measured = f"{self.due} newly due, {median} over {self.history} ticks"
        if self.blocks:
            return (
                f"circuit breaker tripped, nothing sent: {self.judgement.reason}. Release one tick with "
                f"`nudge breaker release {self.automation}` or the run tag {RELEASE_TAG}={self.automation}"
            )
        if self.tripped and self.release is not None:
            return (
                f"circuit breaker released by {self.release.released_by}"
                f"{f' ({self.release.reason})' if self.release.reason else ''}, sent despite: {self.judgement.reason}"
            )
        return f"not tripped: {measured}"

    def metadata(self) -> dict[str, object]:
        return {
            "breaker_tripped": self.tripped,
            "breaker_released_by": self.release.released_by if self.release else "",
            "breaker_reason": self.judgement.reason or "",
            "breaker_due": self.due,
            "breaker_trailing_median": self.judgement.median if self.judgement.median is not None else -1,
            "breaker_trailing_ticks": self.history,
        }


def check(
    con: duckdb.DuckDBPyConnection,
    automation: str,
    *,
    as_of: datetime,
    due: int,
    newest_event_at: datetime | None,
    policy: BreakerPolicy,
    released_by_tag: str | None,
    now: datetime,
) -> BreakerState:
    """Judge this tick of `automation`, take up a pending release, and record it in tick_history.

    A pending release is consumed by the next tick whether or not it trips: a person released
    "the next tick", not "some tick, days later". `released_by_tag`: who released it through
    the run's tag, if the tag names this automation."""
    ensure_tables(con)
    history = trailing_due(con, automation, as_of, policy.trailing_ticks)
    judgement = judge(due, history, as_of=as_of, newest_event_loaded_at=newest_event_at, policy=policy)
    taken: Release | None = None
    if released_by_tag is not None:
        taken = release(con, automation, by=released_by_tag, reason=f"run tag {RELEASE_TAG}", now=now)
    pending = pending_releases(con, automation)  # the tag's own release among them
    taken = taken or (pending[0] if pending else None)
    for waiting in pending:  # two releases before one tick still release one tick
        _consume(con, waiting.release_id, as_of, now)
    state = BreakerState(automation, as_of, due, len(history), judgement, taken)
    _record(con, state, now)
    return state


def _record(con: duckdb.DuckDBPyConnection, state: BreakerState, now: datetime) -> None:
    # A replayed tick (the same as_of) is one row, not two. It sees the ledger its first run
    # wrote, so fewer newly due: keep the larger count, the one the first run measured.
    con.execute(
        f"""
        insert into {HISTORY_TABLE}
            (automation, as_of, due, trailing_median, trailing_ticks, tripped, reason, released, release_id, recorded_at)
        values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
        on conflict (automation, as_of) do update set
            due = greatest(tick_history.due, excluded.due),
            trailing_median = excluded.trailing_median,
            trailing_ticks = excluded.trailing_ticks,
            tripped = excluded.tripped,
            reason = excluded.reason,
            released = tick_history.released or excluded.released,
            release_id = coalesce(excluded.release_id, tick_history.release_id),
            recorded_at = excluded.recorded_at
        """,
        [
            state.automation,
            state.as_of,
            state.due,
            state.judgement.median,
            state.history,
            state.tripped,
            state.judgement.reason,
            state.release is not None,
            state.release.release_id if state.release else None,
            now,
        ],
    )


@dataclass(frozen=True)
class StatusRow:
    automation: str
    as_of: datetime | None  # None: released before the automation's first tick
    due: int
    trailing_median: float | None
    tripped: bool
    released: bool
    reason: str | None
    pending_release: Release | None


def status(con: duckdb.DuckDBPyConnection) -> list[StatusRow]:
    """Each automation's last tick and any release waiting for its next one, for `nudge breaker status`."""
    ensure_tables(con)
    rows = con.execute(
        f"""
        select automation, as_of, due, trailing_median, tripped, released, reason
        from {HISTORY_TABLE}
        qualify row_number() over (partition by automation order by as_of desc) = 1
        order by automation
        """
    ).fetchall()
    pending: dict[str, Release] = {}
    for waiting in pending_releases(con):
        pending.setdefault(waiting.automation, waiting)
    found = [StatusRow(*row, pending_release=pending.pop(row[0], None)) for row in rows]
    # Released before the automation's first tick: still worth showing.
    found += [StatusRow(name, None, 0, None, False, False, None, waiting) for name, waiting in pending.items()]
    return found
