"""What a table looks like after a step, as Dagster metadata: its size and a few rows.

A data team opening an asset in the UI should see at a glance what the last tick
left there, without a query console. The preview is a handful of rows, read
with a limit, so it costs the same at a thousand rows as at a billion.
"""

from __future__ import annotations

import json
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import dagster as dg
import duckdb

PREVIEW_ROWS = 5
# Wide JSON contexts would swamp the UI's table; the whole value is one query away.
_CELL_CHARACTERS = 120


def plain_value(value: Any) -> Any:
    """The Python value inside a Dagster metadata value (or the value itself)."""
    return getattr(value, "value", value)


def _cell(value: Any) -> str | int | float | bool | None:
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, datetime | date):
        return value.isoformat(sep=" ") if isinstance(value, datetime) else value.isoformat()
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= _CELL_CHARACTERS else text[: _CELL_CHARACTERS - 1] + "…"


def _column_type(values: list[Any]) -> str:
    kinds = {type(value) for value in values if value is not None}
    if kinds and kinds <= {int}:
        return "int"
    if kinds and kinds <= {int, float}:
        return "float"
    if kinds == {bool}:
        return "bool"
    return "string"


def preview_table(columns: list[str], rows: list[tuple[Any, ...]]) -> dg.TableMetadataValue:
    cells = [[_cell(value) for value in row] for row in rows]
    schema = dg.TableSchema(
        columns=[
            dg.TableColumn(name, _column_type([row[index] for row in cells]))
            for index, name in enumerate(columns)
        ]
    )
    return dg.MetadataValue.table(
        records=[dg.TableRecord(dict(zip(columns, row, strict=True))) for row in cells], schema=schema
    )


def query_preview(
    con: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any] | None = None, limit: int = PREVIEW_ROWS
) -> dg.TableMetadataValue:
    """The first `limit` rows of a query, as a table the Dagster UI draws."""
    result = con.sql(f"select * from ({sql}) as preview limit {int(limit)}", params=params or {})
    return preview_table(list(result.columns), result.fetchall())


def relation_metadata(con: duckdb.DuckDBPyConnection, relation: str) -> dict[str, Any]:
    """Row count and a preview of a table, a preview of a view; empty when it cannot be read
    (not built). A view's row count would run the view over all its history every tick."""
    try:
        preview = query_preview(con, f"select * from {relation}")
        if _is_view(con, relation):
            return {"preview": preview}
        [(rows,)] = con.execute(f"select count(*) from {relation}").fetchall()
    except duckdb.Error:
        return {}
    return {"dagster/row_count": rows, "preview": preview}


def _is_view(con: duckdb.DuckDBPyConnection, relation: str) -> bool:
    schema, _, name = relation.partition(".")
    found = con.execute(
        "select count(*) from duckdb_views() where schema_name = ? and view_name = ?",
        [schema.strip('"'), name.strip('"')],
    ).fetchall()
    return found[0][0] > 0
