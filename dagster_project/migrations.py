"""Bringing an older warehouse's tables up to date where DuckDB cannot change them in place.

DuckDB drops no constraint and loosens no NOT NULL through ALTER TABLE on a table with rows,
so such a table is made again with today's columns, every row copied by column name, all in
one transaction: a failure leaves the old table as it was.
"""

from __future__ import annotations

import duckdb


def has_primary_key(con: duckdb.DuckDBPyConnection, schema: str, table: str) -> bool:
    return bool(
        con.execute(
            "select 1 from duckdb_constraints() "
            "where schema_name = ? and table_name = ? and constraint_type = 'PRIMARY KEY'",
            [schema, table],
        ).fetchall()
    )


def rebuild_table(con: duckdb.DuckDBPyConnection, schema: str, table: str, columns: str) -> None:
    """`schema.table` made again as `columns` (a CREATE TABLE's column list), keeping every row.

    Its own transaction: not to be called inside an open one."""
    rebuilt = f"{table}__rebuilt"
    con.begin()
    try:
        con.execute(f"create table {schema}.{rebuilt} ({columns})")
        con.execute(f"insert into {schema}.{rebuilt} by name select * from {schema}.{table}")
        con.execute(f"drop table {schema}.{table}")
        con.execute(f"alter table {schema}.{rebuilt} rename to {table}")
        con.commit()
    except BaseException:
        rollback_if_open(con)
        raise


def rollback_if_open(con: duckdb.DuckDBPyConnection) -> None:
    try:
        con.rollback()
    except duckdb.TransactionException:
        pass  # already rolled back: keep the error that brought us here
