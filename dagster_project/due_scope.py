"""Which trigger rows a send must look at to find the due ones.

A trigger row is due when the ledger has not settled it and its due_at has come. A send that
finished decides every row due by its as_of, so afterwards only three kinds of row can be due
and unsettled: rows the trigger model's later build wrote (a per-contact model rewrites the
rows of the contacts it rebuilds: a late event can bring a qualification due long ago), rows
whose due_at came since, and rows the ledger holds for another try (held for quiet hours, a
temporary failure, a claim left pending). Looking only at those, instead of joining the trigger
table's whole history with the ledger, is what keeps a send's cost to what is new: at 100M
events workout_completed's 18.8 million trigger rows took 6 s to join with its 18.7 million
ledger rows every hour.

The send looks at every row instead when it cannot vouch for the ones it skips:
- the trigger model is not per-contact (no record of what its build rewrote), or its build this
  tick rebuilt everyone (a first build, a --full-refresh, a clock moved back);
- the last send that finished did not read the build right before this one (a send stopped by
  the circuit breaker, a crash, a build by hand in between);
- the clock is earlier than that send's (a replay), or 24 hours of the clock have passed since a
  send last looked at every row (a ledger row deleted by hand is found within a day).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import duckdb

from dagster_project.automations import Automation
from dagster_project.builds import BUILDS_TABLE

SEND_PROGRESS_TABLE = "nudge.send_progress"
# dbt_project/macros/rebuilt_rows.sql writes it beside each per-contact model.
REBUILT_CONTACTS = "nudge_contacts_rebuilt"
EVERY_ROW_AT_LEAST_EVERY = timedelta(hours=24)

DDL = f"""
create schema if not exists nudge;
create table if not exists {SEND_PROGRESS_TABLE} (
    automation        varchar   primary key,
    as_of             timestamp not null,  -- the clock of the last send that finished
    trigger_build     varchar,             -- dbt's invocation id of the trigger build it read
    every_row_as_of   timestamp not null   -- the clock when a send last looked at every row
);
"""


@dataclass(frozen=True)
class DueScope:
    """What one send of one automation reads: every trigger row, or (`decided_through` set) the
    rows `trigger_build` rewrote, those due after `decided_through` and the ledger's retries."""

    trigger_build: str | None
    rebuilt_relation: str | None
    trigger_table: str | None
    decided_through: datetime | None
    every_row_as_of: datetime

    @property
    def every_row(self) -> bool:
        return self.decided_through is None

    @classmethod
    def all_of_it(cls, as_of: datetime, trigger_build: str | None = None) -> "DueScope":
        return cls(trigger_build, None, None, None, as_of)


def _schema_and_table(relation: str) -> tuple[str, str]:
    # automations.relation_of: '"schema"."table"', both plain identifiers
    schema, table = relation.split(".")
    return schema.strip('"'), table.strip('"')


def _exists(con: duckdb.DuckDBPyConnection, schema: str, table: str) -> bool:
    return bool(con.execute(
        "select 1 from duckdb_tables() where schema_name = ? and table_name = ?", [schema, table]
    ).fetchall())


def due_scope(con: duckdb.DuckDBPyConnection, automation: Automation, as_of: datetime) -> DueScope:
    con.execute(DDL)
    schema, table = _schema_and_table(automation.relation)
    every_row = DueScope.all_of_it(as_of)
    if not _exists(con, schema, REBUILT_CONTACTS):
        return every_row
    rebuilt_relation = f'"{schema}".{REBUILT_CONTACTS}'
    # This tick's build of the trigger model (the send gate made sure there is one), as its
    # pre-hook recorded it, and the last send that finished.
    rows = con.execute(
        f"""
        select header.invocation_id, header.previous_invocation_id, header.rebuilt_everyone,
               progress.as_of, progress.trigger_build, progress.every_row_as_of
        from {rebuilt_relation} as header
        inner join {BUILDS_TABLE} as build
            on build.unique_id = $model and build.invocation_id = header.invocation_id and build.as_of = $as_of
        left join {SEND_PROGRESS_TABLE} as progress on progress.automation = $automation
        where header.model_name = $table and header.contact_id is null
        """,
        {"model": automation.model_unique_id, "as_of": as_of, "automation": automation.name, "table": table},
    ).fetchall()
    if not rows:
        return every_row
    ((build, previous_build, rebuilt_everyone, last_as_of, last_build, every_row_as_of),) = rows
    every_row = DueScope.all_of_it(as_of, build)
    if (
        rebuilt_everyone is not False
        or last_as_of is None
        or last_build is None
        or last_build != previous_build
        or last_as_of > as_of
        or every_row_as_of <= as_of - EVERY_ROW_AT_LEAST_EVERY
    ):
        return every_row
    return DueScope(build, rebuilt_relation, table, last_as_of, every_row_as_of)


def record_finished(con: duckdb.DuckDBPyConnection, automation: Automation, scope: DueScope, as_of: datetime) -> None:
    """The send of `automation` at `as_of` decided every row due: the next can start from it."""
    con.execute(
        f"insert or replace into {SEND_PROGRESS_TABLE} (automation, as_of, trigger_build, every_row_as_of)"
        " values (?, ?, ?, ?)",
        [automation.name, as_of, scope.trigger_build, scope.every_row_as_of],
    )
