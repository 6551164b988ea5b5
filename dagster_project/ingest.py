"""Landing files -> raw.events, raw.contacts (and raw.rejected_rows).

Each file is parsed into a polars frame that keeps every row's line number and
original text, checked with the pandera schemas' checks (one vectorised pass),
and written to DuckDB: good rows in bulk (the events of several files in one
insert), bad rows to raw.rejected_rows with a reason, and the file's size and
mtime to raw.loaded_files, in the same transaction, so an unchanged file is
never read twice and a crash never records a file without its rows.

Loading is idempotent: events insert only ids the table does not hold yet
(a retry, a re-sent file, a file that grew), contacts replace a stored row only
when their updated_at is newer, and rejections dedupe on (file, line, text).

An event says whose it is with `contact_id`, `anonymous_id` (a device or visitor
not identified yet: an app install before the signup), or both (which links the
two ids; the `identify` event exists for that). dbt stitches anonymous events to
their contact; a row with neither id is rejected.
"""

# No `from __future__ import annotations` here: Dagster reads the asset functions' type hints at runtime.
import re
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import orjson
import polars as pl
import pyarrow
import pyarrow.parquet as pq
from dagster import AssetExecutionContext

from dagster_project.asset_metadata import query_preview
from dagster_project.migrations import has_primary_key, rebuild_table, rollback_if_open
from dagster_project.schemas import validate_contacts, validate_events
from dagster_project.warehouse import WAREHOUSE_POOL, Warehouse

LANDING_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}
# 64 MiB chunks held 1.29 to 1.35 GB resident while reading the 537,635 contacts of the 10M
# sample (a 131 MB file); 16 MiB 827 MB, as fast.
JSONL_CHUNK_BYTES = 16 << 20
PARQUET_BATCH_ROWS = 500_000
# A transaction ends at the first file boundary past this many rows. With INSERT_EVERY_ROWS and
# the JSON Lines chunk, it bounds the ingest's memory: what a transaction holds until it commits,
# and what waits for an insert and is being inserted. A first tick over a large history ingests it
# all, so the tick's 1.5 GB holds for the ingest too. 10M events from Parquet (session 18, the
# ingest alone, 768MB for DuckDB; insert/commit rows): 1M/2M 16.3 to 17.9 s and 1.99 to 2.08 GB
# resident (2,051 MB in a cold tick that ingested them); 500k/500k 18.2 to 18.7 s, 1.41 to 1.47 GB
# (1,571 MB in the tick); 250k/500k 19.4 to 21.5 s, 1.24 GB (the tick's peak then in its send).
COMMIT_EVERY_ROWS = 500_000

TEXT, PROPERTIES, FLAG = "text", "properties", "flag"
EVENT_FIELDS = {
    "event_id": TEXT,
    "contact_id": TEXT,
    "anonymous_id": TEXT,
    "name": TEXT,
    "occurred_at": TEXT,
    "properties": PROPERTIES,
    "is_syncing": FLAG,
}
CONTACT_FIELDS = {
    "contact_id": TEXT,
    "email": TEXT,
    "status": TEXT,
    "first_name": TEXT,
    "last_name": TEXT,
    "timezone": TEXT,
    "properties": PROPERTIES,
    "updated_at": TEXT,
}
TIMESTAMP_FIELDS = ("occurred_at", "updated_at")
TRUE_TEXTS = ["true", "t", "1", "yes", "y"]
FALSE_TEXTS = ["false", "f", "0", "no", "n", ""]

# No primary key: the ingest keeps an id's first row (see _insert_events); an index over 10M
# text ids made loading them 1.5 times slower, half of it at the commit.
RAW_EVENTS_COLUMNS = """
    event_id varchar not null,
    contact_id varchar,  -- null for an anonymous event; the schema check requires this or anonymous_id
    name varchar not null,
    occurred_at timestamp not null,
    properties varchar not null,
    is_syncing boolean not null,
    source_file varchar,
    source_line integer,
    loaded_at timestamp,
    -- last, where ALTER TABLE ... ADD COLUMN put it in the warehouses created before it existed
    anonymous_id varchar
"""

RAW_TABLES_DDL = f"""
create schema if not exists raw;
create table if not exists raw.events ({RAW_EVENTS_COLUMNS});
create table if not exists raw.contacts (
    contact_id varchar primary key,
    email varchar,
    status varchar not null,
    first_name varchar,
    last_name varchar,
    timezone varchar,
    properties varchar not null,
    updated_at timestamp not null,
    source_file varchar,
    source_line integer,
    loaded_at timestamp
);
create table if not exists raw.rejected_rows (
    source_table varchar not null,
    source_file varchar,
    line integer,
    raw varchar,
    reason varchar not null,
    rejected_at timestamp
);
create table if not exists raw.loaded_files (
    source_table varchar not null,
    path varchar not null,
    size bigint not null,
    mtime_ns bigint not null,
    rows_loaded bigint not null,
    rows_rejected bigint not null,
    loaded_at timestamp
);
"""


# Older warehouses' raw.events: before anonymous events it had no anonymous_id and a contact_id
# that was not null; until session 11 it had a primary key on event_id, which DuckDB cannot drop in
# place. Such a table is rebuilt with today's columns once, in one transaction, keeping every row.
def _raw_events_is_current(con: duckdb.DuckDBPyConnection) -> bool:
    columns = dict(
        con.execute(
            "select column_name, is_nullable from information_schema.columns "
            "where table_schema = 'raw' and table_name = 'events'"
        ).fetchall()
    )
    return (
        "anonymous_id" in columns and columns.get("contact_id") == "YES" and not has_primary_key(con, "raw", "events")
    )


def ensure_raw_tables(con: duckdb.DuckDBPyConnection) -> None:
    """Create the raw tables, or bring an older warehouse's up to date; safe to call on every load."""
    con.execute(RAW_TABLES_DDL)
    # Checked first, so the common case (already current) writes nothing to the catalog.
    if not _raw_events_is_current(con):
        rebuild_table(con, "raw", "events", RAW_EVENTS_COLUMNS)


@dataclass
class IngestReport:
    table: str
    files_loaded: int = 0
    files_skipped: int = 0
    rows_read: int = 0
    rows_loaded: int = 0
    rows_duplicate: int = 0  # valid rows that changed nothing: an id already loaded, an older contact version
    rows_rejected: int = 0
    reject_reasons: Counter[str] = field(default_factory=Counter)  # by kind; a row may count under several

    @property
    def reject_share(self) -> float:
        return self.rows_rejected / self.rows_read if self.rows_read else 0.0


# --- reading files into text frames ----------------------------------------------------------------
# A text frame holds one row per landing row: source_line, raw (the row's original text),
# parse_error/parse_kind (set when the row is not a record at all), field_errors (values of the
# wrong type) and the fields as text, except properties, which arrive normalised: minified JSON
# object text, '{}' when absent, null when not an object (the offending value in properties_text).
#
# JSON is parsed by DuckDB's vectorised JSON functions on an in-memory connection, which turn each
# line into a struct of JSON values in one pass; Python only touches the rare bad line, to quote
# the parser's complaint.


def _text_frame_schema(fields: dict[str, str]) -> dict[str, pl.DataType]:
    schema: dict[str, pl.DataType] = {
        "source_line": pl.Int64(),
        "raw": pl.String(),
        "parse_error": pl.String(),
        "parse_kind": pl.String(),
        "field_errors": pl.String(),
    }
    for name, kind in fields.items():
        if kind == PROPERTIES:
            schema["properties"] = pl.String()
            schema["properties_text"] = pl.String()
        elif kind == FLAG:
            schema[f"{name}_text"] = pl.String()
        else:
            schema[name] = pl.String()
    return schema


def _nulls(name: str, height: int) -> pl.Series:
    # Not pl.Series([None] * height): polars scans such a list in Python for its first value, about
    # 0.5 s for the four all-null columns of 10M rows from Parquet.
    return pl.repeat(None, height, dtype=pl.String, eager=True).alias(name)


def _json_text(value: object) -> str:
    return orjson.dumps(value, default=str).decode()


def _query(json_con: duckdb.DuckDBPyConnection, name: str, frame: pl.DataFrame, sql: str) -> pl.DataFrame:
    json_con.register(name, frame.to_arrow())
    try:
        return json_con.sql(sql).pl()
    finally:
        json_con.unregister(name)


def _json_problem(line: str) -> str:
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError as error:
        return (
            f"line is not valid JSON ({error.msg} at character {error.pos + 1}): "
            "each line must be one complete JSON object"
        )
    return f"line is a JSON {type(value).__name__}, not an object: each line must be one JSON object"


def _append_error(errors: pl.Expr, condition: pl.Expr, message: pl.Expr) -> pl.Expr:
    return (
        pl.when(condition)
        .then(pl.when(errors.is_null()).then(message).otherwise(errors + pl.lit("; ") + message))
        .otherwise(errors)
    )


def _shown(value: str) -> str:
    """A JSON value as a reason quotes it, as schemas.quote does: a reason does not hold a 5 MB object."""
    return value if len(value) <= 80 else value[:77] + "..."


def _fields_from_json(values: pl.DataFrame, fields: dict[str, str]) -> dict[str, pl.Series]:
    """Columns of JSON value text (one per field, null when absent or null) -> text frame columns.

    One vectorised pass does what nearly every row needs; the rare values that are no plain JSON
    string (a number, an object, a string with escapes) are looked at again, on their own.
    """
    exprs: list[pl.Expr] = []
    texts: list[str] = []
    for name, kind in fields.items():
        value = pl.col(name)
        if kind == PROPERTIES:
            is_object = value.str.starts_with("{")
            exprs.append(pl.when(value.is_null()).then(pl.lit("{}")).when(is_object).then(value).alias("properties"))
            exprs.append(pl.when(~is_object).then(value).alias("properties_text"))
            continue
        # Only JSON strings start with a quote; the common ones have no escapes and just lose their quotes.
        is_string = value.str.starts_with('"')
        target = f"{name}_text" if kind == FLAG else name
        exprs.append(value.str.strip_prefix('"').str.strip_suffix('"').alias(target))
        exprs.append((is_string & value.str.contains("\\", literal=True)).alias(f"_escaped_{name}"))
        exprs.append((value.is_not_null() & ~is_string).alias(f"_other_{name}"))
        texts.append(name)
    out = values.select(exprs)
    field_errors: dict[int, list[str]] = {}
    for name in texts:
        target = f"{name}_text" if fields[name] == FLAG else name
        escaped = out.get_column(f"_escaped_{name}").fill_null(False)
        if escaped.any():
            # a string with escapes (a quote, a backslash, \u00e9) is decoded properly, row by row
            positions = escaped.arg_true()
            decoded = [orjson.loads(text) for text in values.get_column(name).gather(positions).to_list()]
            out = out.with_columns(out.get_column(target).scatter(positions, pl.Series(decoded, dtype=pl.String)))
        other = out.get_column(f"_other_{name}").fill_null(False)
        if fields[name] == FLAG or not other.any():
            continue  # a flag's text is judged when it is parsed
        # Strings, and integers (a numeric id is still an id); anything else is a mistake worth naming.
        positions = other.arg_true()
        wrong = positions.filter(~values.get_column(name).gather(positions).str.contains(r"^-?[0-9]+$"))
        if wrong.is_empty():
            continue
        out = out.with_columns(out.get_column(target).scatter(wrong, None))
        for index, value in zip(wrong.to_list(), values.get_column(name).gather(wrong).to_list()):
            field_errors.setdefault(index, []).append(f"{name} must be text, got {_shown(value)}")
    errors = _nulls("field_errors", values.height)
    if field_errors:
        errors = errors.scatter(list(field_errors), pl.Series(["; ".join(m) for m in field_errors.values()]))
    columns = {name: out.get_column(name) for name in out.columns if not name.startswith("_")}
    return {**columns, "field_errors": errors}


def _jsonl_text_frame(lines: pl.DataFrame, fields: dict[str, str], json_con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """lines (source_line, raw) -> a text frame."""
    structure = orjson.dumps({name: "JSON" for name in fields}).decode()
    json_con.register("landing_lines", lines.select("source_line", "raw").to_arrow())
    try:
        # from_json raises on anything but an object, so other lines get '{}' in their place: one
        # pass over the lines, in their order, and the Python side only explains the bad ones.
        values = json_con.sql(
            f"""
            select source_line, is_json,
                   unnest(from_json(case when is_json and starts_with(ltrim(raw), '{{') then raw else '{{}}' end,
                                    '{structure}'))
            from (select source_line, raw, json_valid(raw) as is_json from landing_lines)
            """
        ).pl()
    finally:
        json_con.unregister("landing_lines")
    values = values.with_columns(pl.col("source_line").cast(pl.Int64))
    if not values.get_column("source_line").equals(lines.get_column("source_line")):
        values = values.sort("source_line")  # DuckDB keeps insertion order; this only guards it
    is_json = values.get_column("is_json").fill_null(False)
    is_object = is_json & lines.get_column("raw").str.strip_chars_start().str.starts_with("{")
    parse_error = _nulls("parse_error", lines.height)
    parse_kind = _nulls("parse_kind", lines.height)
    if not is_object.all():
        broken = (~is_object).arg_true()
        texts = lines.get_column("raw").gather(broken).to_list()
        parse_error = parse_error.scatter(broken, pl.Series([_json_problem(text) for text in texts], dtype=pl.String))
        kinds = ["not_object" if ok else "not_json" for ok in is_json.gather(broken).to_list()]
        parse_kind = parse_kind.scatter(broken, pl.Series(kinds, dtype=pl.String))
    schema = _text_frame_schema(fields)
    columns = {
        "source_line": lines.get_column("source_line"),
        "raw": lines.get_column("raw"),
        "parse_error": parse_error,
        "parse_kind": parse_kind,
        **_fields_from_json(values, fields),
    }
    return pl.DataFrame({name: columns[name].alias(name) for name in schema}, schema=schema)


def _lines(data: bytes, first_line: int) -> pl.DataFrame:
    """Numbered lines, "\r\n" or "\n"; bytes that are not UTF-8 become U+FFFD rather than losing the line."""
    try:
        lines = pl.read_lines(data, name="raw", row_index_name="source_line", row_index_offset=first_line)
    except pl.exceptions.ComputeError:
        repaired = data.decode("utf-8", errors="replace").encode()
        lines = pl.read_lines(repaired, name="raw", row_index_name="source_line", row_index_offset=first_line)
    return lines.with_columns(pl.col("source_line").cast(pl.Int64))


def _read_jsonl(path: Path, fields: dict[str, str], json_con: duckdb.DuckDBPyConnection) -> Iterator[pl.DataFrame]:
    next_line = 1
    with path.open("rb") as handle:
        while data := handle.read(JSONL_CHUNK_BYTES):
            if not data.endswith(b"\n"):
                data += handle.readline()  # finish the last line: a chunk never splits one
            if next_line == 1 and data.startswith(b"\xef\xbb\xbf"):
                data = data[3:]  # a BOM from a Windows editor is not part of the JSON
            lines = _lines(data, next_line)
            next_line += lines.height
            yield _jsonl_text_frame(lines.filter(pl.col("raw").str.strip_chars() != ""), fields, json_con)


def _normalise_properties(texts: pl.Series, json_con: duckdb.DuckDBPyConnection) -> tuple[pl.Series, pl.Series]:
    """JSON text from a CSV/Parquet column -> (the object minified as DuckDB does for JSONL, '{}' when
    blank or null, null when not an object; the offending text)."""
    texts = texts.cast(pl.String).alias("text")
    # try(): null where json() would raise on invalid text, so each text is parsed once (json_valid()
    # first, then json(), parsed it twice: a third of a Parquet file's checks).
    minified_text = _query(
        json_con, "property_texts", texts.to_frame(), "select try(json(text))::varchar as minified from property_texts"
    ).get_column("minified")
    is_json = minified_text.is_not_null()
    blank = (texts.is_null() | (texts.str.strip_chars() == "")).fill_null(True)
    properties = pl.select(
        pl.when(blank | (is_json & (minified_text == "null")))
        .then(pl.lit("{}"))
        .when(is_json & minified_text.str.starts_with("{"))
        .then(minified_text)
    ).to_series()
    offending = pl.select(pl.when(properties.is_null()).then(texts)).to_series()
    return properties.alias("properties"), offending.alias("properties_text")


def _text_frame_from_columns(
    frame: pl.DataFrame,
    fields: dict[str, str],
    source_line: pl.Series,
    raw: pl.Series,
    json_con: duckdb.DuckDBPyConnection,
) -> pl.DataFrame:
    """CSV/Parquet columns (any dtype) -> a text frame."""
    height = frame.height
    field_errors = _nulls("field_errors", height)
    out: dict[str, pl.Series] = {
        "source_line": source_line,
        "raw": raw,
        "parse_error": _nulls("parse_error", height),
        "parse_kind": _nulls("parse_kind", height),
    }
    for name, kind in fields.items():
        column = frame.get_column(name) if name in frame.columns else _nulls(name, height)
        dtype = column.dtype
        if kind == PROPERTIES:
            if isinstance(dtype, pl.Struct):
                column = pl.select(pl.when(column.is_not_null()).then(column.struct.json_encode())).to_series()
            elif dtype not in (pl.String, pl.Null):
                texts = [None if value is None else _json_text(value) for value in column.to_list()]
                column = pl.Series(name, texts, dtype=pl.String)
            out["properties"], out["properties_text"] = _normalise_properties(column, json_con)
            continue
        if isinstance(dtype, pl.Datetime):
            # A typed timestamp is as good as text with an offset, unless it carries no zone.
            if dtype.time_zone is not None:
                column = column.dt.convert_time_zone("UTC").dt.strftime("%Y-%m-%dT%H:%M:%S%.6f+00:00")
            else:
                column = column.dt.strftime("%Y-%m-%dT%H:%M:%S%.6f")
        elif dtype == pl.Boolean:
            column = column.cast(pl.String)
        elif dtype.is_nested() or dtype == pl.Binary or (dtype.is_float() and kind == TEXT):
            message = pl.lit(f"{name} must be text, not a {dtype} value")
            field_errors = pl.select(_append_error(pl.lit(field_errors), column.is_not_null(), message)).to_series()
            column = _nulls(name, height)
        else:
            column = column.cast(pl.String)
        out[f"{name}_text" if kind == FLAG else name] = column
    out["field_errors"] = field_errors
    schema = _text_frame_schema(fields)
    return pl.DataFrame({name: out[name].alias(name) for name in schema}, schema=schema)


def _with_original_rows(text_frame: pl.DataFrame, original: pl.DataFrame) -> pl.DataFrame:
    """Keep each row's original values beside a text frame whose rows have no line of their own.

    They become the row's "raw text" (as JSON) only if it is rejected, so good rows never pay for it.
    """
    if original.width == 0:
        return text_frame
    original = original.with_columns(_json_encodable(original.get_column(name)) for name in original.columns)
    return text_frame.with_columns(original.select(pl.struct(pl.all()).alias("_original")).to_series())


def _has_binary(dtype: pl.DataType) -> bool:
    if dtype == pl.Binary:
        return True
    if isinstance(dtype, pl.Struct):
        return any(_has_binary(f.dtype) for f in dtype.fields)
    inner = getattr(dtype, "inner", None)
    return inner is not None and _has_binary(inner)


def _bytes_as_text(value: object) -> object:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _json_encodable(column: pl.Series) -> pl.Series:
    """polars cannot write bytes as JSON (it panics), so bytes become text, as the row's raw shows them.

    A bytes column (old Spark and Hive write strings so) is read as UTF-8; a nested one is kept as its
    JSON text.
    """
    if column.dtype == pl.Binary:
        texts = [None if v is None else v.decode("utf-8", errors="replace") for v in column.to_list()]
        return pl.Series(column.name, texts, dtype=pl.String)
    if _has_binary(column.dtype):
        texts = [None if v is None else orjson.dumps(v, default=_bytes_as_text).decode() for v in column.to_list()]
        return pl.Series(column.name, texts, dtype=pl.String)
    return column


def _read_csv(path: Path, fields: dict[str, str], json_con: duckdb.DuckDBPyConnection) -> Iterator[pl.DataFrame]:
    frame = pl.read_csv(
        path,
        infer_schema=False,
        truncate_ragged_lines=True,
        encoding="utf8-lossy",
        raise_if_empty=False,
    )
    tidy = {name: name.strip().lower() for name in frame.columns}
    if len(set(tidy.values())) == len(tidy):
        frame = frame.rename(tidy)
    # Pair each record with its physical line; a quoted field spanning lines breaks the pairing,
    # and then the row itself, as JSON, stands in for its text.
    physical = path.read_text(encoding="utf-8", errors="replace").splitlines()
    data_lines = [(number, text) for number, text in enumerate(physical[1:], start=2) if text.strip()]
    if len(data_lines) == frame.height:
        source_line = pl.Series("source_line", [number for number, _ in data_lines], dtype=pl.Int64)
        raw = pl.Series("raw", [text for _, text in data_lines], dtype=pl.String)
        yield _text_frame_from_columns(frame, fields, source_line, raw, json_con)
    else:
        source_line = pl.int_range(2, 2 + frame.height, eager=True).alias("source_line")
        no_text = _nulls("raw", frame.height)
        yield _with_original_rows(_text_frame_from_columns(frame, fields, source_line, no_text, json_con), frame)


def _read_parquet(path: Path, fields: dict[str, str], json_con: duckdb.DuckDBPyConnection) -> Iterator[pl.DataFrame]:
    row_number = 1  # a Parquet "line" is the row's position in the file
    for batch in pq.ParquetFile(path).iter_batches(batch_size=PARQUET_BATCH_ROWS):
        frame = pl.from_arrow(batch)
        assert isinstance(frame, pl.DataFrame)
        source_line = pl.int_range(row_number, row_number + frame.height, eager=True).alias("source_line")
        no_text = _nulls("raw", frame.height)
        yield _with_original_rows(_text_frame_from_columns(frame, fields, source_line, no_text, json_con), frame)
        row_number += frame.height


READERS = {"jsonl": _read_jsonl, "csv": _read_csv, "parquet": _read_parquet}


# --- from text to typed values ----------------------------------------------------------------------


_ISO_WITH_OFFSET = "%Y-%m-%dT%H:%M:%S%.f%#z"  # %#z: Z, +01:00, +0100 or +01


# The moments a warehouse timestamp, Python and every dbt adapter can all hold. 0001-01-01T00:00+14:00
# is in year 0 in UTC, and such a value breaks whatever reads it as a datetime later (even the reason).
EARLIEST_UTC, LATEST_UTC = datetime(1, 1, 1), datetime(9999, 12, 31, 23, 59, 59, 999999)


def _to_utc(text: pl.Series) -> pl.Series:
    parsed = text.str.to_datetime(_ISO_WITH_OFFSET, strict=False, time_unit="us")
    utc = parsed.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
    return pl.select(pl.when(utc.is_between(EARLIEST_UTC, LATEST_UTC)).then(utc)).to_series().alias(text.name)


def parse_timestamps(text: pl.Series) -> pl.Series:
    """ISO 8601 with offset -> naive UTC; null for anything else (no offset, not a date, 2026-13-01)."""
    text = text.str.strip_chars()
    parsed = _to_utc(text)
    retry = (parsed.is_null() & text.is_not_null()).fill_null(False)
    if retry.any():
        # Less common spellings: a space for the T, minutes without seconds.
        positions = retry.arg_true()
        respelled = (
            text.gather(positions)
            .str.replace(r"^(\d{4}-\d{2}-\d{2})[ tT]", "${1}T")
            .str.replace(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2})([-+zZ])", "${1}:00${2}")
        )
        parsed = parsed.scatter(positions, _to_utc(respelled))
    return parsed


def _blank_to_null(column: str) -> pl.Expr:
    stripped = pl.col(column).str.strip_chars()
    return pl.when(stripped.str.len_chars() > 0).then(stripped).alias(column)


def _parse_flag(column: str) -> pl.Expr:
    text = pl.col(column).str.strip_chars().str.to_lowercase()
    return (
        pl.when(text.is_null() | text.is_in(FALSE_TEXTS))
        .then(pl.lit(False))
        .when(text.is_in(TRUE_TEXTS))
        .then(pl.lit(True))
        .otherwise(pl.lit(None, dtype=pl.Boolean))
    )


# Properties nested deeper than this are refused: Python's json (the send step's reader) gives up
# near 1,000 levels and orjson at 1,024, so a row that deep would crash every run that touched it.
MAX_PROPERTIES_DEPTH = 256
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


def _json_depth(text: str) -> int:
    depth = deepest = 0
    for char in _JSON_STRING.sub("", text):
        if char in "{[":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "}]":
            depth -= 1
    return deepest


def _too_deep(properties: pl.Series) -> pl.Series:
    """Whether each properties text nests deeper than MAX_PROPERTIES_DEPTH; only long texts can."""
    long = (properties.str.len_bytes() > 2 * MAX_PROPERTIES_DEPTH).fill_null(False)
    deep = pl.Series([False] * len(properties), dtype=pl.Boolean)
    if long.any():
        positions = long.arg_true()
        depths = [_json_depth(text) > MAX_PROPERTIES_DEPTH for text in properties.gather(positions).to_list()]
        deep = deep.scatter(positions, pl.Series(depths, dtype=pl.Boolean))
    return deep


def typed_frame(text_frame: pl.DataFrame, fields: dict[str, str]) -> pl.DataFrame:
    if "properties" in fields and text_frame.height:
        deep = _too_deep(text_frame.get_column("properties"))
        if deep.any():
            message = pl.lit(f"properties are nested more than {MAX_PROPERTIES_DEPTH} levels deep: flatten them")
            errors = _append_error(pl.col("field_errors"), pl.lit(deep), message)
            text_frame = text_frame.with_columns(errors.alias("field_errors"))
    exprs: list[pl.Expr] = []
    for name, kind in fields.items():
        if kind == FLAG:
            exprs.append(_parse_flag(f"{name}_text").alias(name))
        elif name in TIMESTAMP_FIELDS:
            exprs.append(pl.col(name).alias(f"{name}_text"))
            exprs.append(pl.col(name).map_batches(parse_timestamps, return_dtype=pl.Datetime("us")).alias(name))
        elif name == "status":
            exprs.append(_blank_to_null(name).str.to_lowercase())
        elif kind == TEXT:
            exprs.append(_blank_to_null(name))
    return text_frame.with_columns(exprs)


# --- writing ---------------------------------------------------------------------------------------


@dataclass
class _Target:
    table: str
    fields: dict[str, str]
    validate: Callable[[pl.DataFrame], tuple[pl.DataFrame, pl.DataFrame]]
    columns: tuple[str, ...]


EVENTS = _Target(
    "events",
    EVENT_FIELDS,
    validate_events,
    ("event_id", "contact_id", "anonymous_id", "name", "occurred_at", "properties", "is_syncing"),
)
CONTACTS = _Target(
    "contacts",
    CONTACT_FIELDS,
    validate_contacts,
    ("contact_id", "email", "status", "first_name", "last_name", "timezone", "properties", "updated_at"),
)


def _incoming(con: duckdb.DuckDBPyConnection, name: str, frame: pl.DataFrame) -> None:
    con.register(name, frame.to_arrow())


class _IdsOfThisRun:
    """Which event ids an ingest run may already have inserted, by their 64-bit hashes.

    Every insert must know which of its ids raw.events holds. Asking the table reads all of its ids,
    so an ingest of many inserts read the table once per insert, its time growing with the square of
    its size: a semi-join of 250,000 ids took 1.8 s against 100M stored, 0.2 s against 10M, and a
    first load of 100M events runs 400 inserts (556 s from Parquet that way, 258 s this way, session
    27; at 10M 18.5 and 18.8 s against 20.4 and 19.7 s, and about 100 MB more resident). A run's rows
    all carry its loaded_at; when the table held nothing at or after it before the run began, the
    stored ids split in two, each cheap to ask:
    - rows from earlier runs (loaded_at before this one's), read by the table's zonemaps without
      this run's row groups, and not at all when there were none;
    - this run's own rows, whose hashes are kept here (8 bytes an id, sorted runs merged as they
      grow). Only ids whose hash is here are looked up in this run's rows, so the table decides,
      and a hash that two ids share costs a lookup, never a row.
    Otherwise (the clock went back, or a file landed under a loaded_at already used) every insert
    reads all stored ids, as before.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, loaded_at: datetime):
        self.loaded_at = loaded_at
        # exists, not count: the zonemaps answer it without reading the column (0.002 s against
        # 0.1 to 0.15 s at 100M, once a tick)
        ((any_not_older, any_older),) = con.execute(
            "select exists (select 1 from raw.events where loaded_at >= $loaded_at or loaded_at is null),"
            " exists (select 1 from raw.events where loaded_at < $loaded_at)",
            {"loaded_at": loaded_at},
        ).fetchall()
        self.splits_the_table = not any_not_older
        self.earlier_runs_hold_rows = any_older
        self._sorted_hashes: list[pl.Series] = []

    def add(self, hashes: pl.Series) -> None:
        if hashes.is_empty():
            return
        run = hashes.sort()
        # Each kept run is at least twice the next: a few runs to search, each hash merged a few times.
        while self._sorted_hashes and self._sorted_hashes[-1].len() <= 2 * run.len():
            run = pl.concat([self._sorted_hashes.pop(), run]).sort()
        self._sorted_hashes.append(run)

    def may_hold(self, hashes: pl.Series) -> pl.Series:
        # Searched in order, neighbouring lookups share the cache: a quarter of the time (0.05 s
        # against 0.21 s for 250,000 hashes in 5M, and the sort 0.03 s).
        probes = hashes.sort()
        found = pl.repeat(False, probes.len(), eager=True)
        for run in self._sorted_hashes:
            at = run.search_sorted(probes).clip(upper_bound=run.len() - 1)
            found = found | (run.gather(at) == probes)
        return hashes.is_in(probes.filter(found).implode())


def _semi_join_stored(con: duckdb.DuckDBPyConnection, ids: pl.Series, stored_where: str = "",
                      parameters: dict[str, Any] | None = None) -> pl.Series:
    """Which of `ids` raw.events holds (among its rows matching `stored_where`), this transaction's included."""
    if ids.is_empty():
        return pl.Series("event_id", [], dtype=pl.String)
    _incoming(con, "incoming_ids", ids.to_frame("event_id"))
    try:
        return con.sql(
            "select i.event_id from incoming_ids as i semi join"
            f" (select event_id from raw.events {stored_where}) as e on e.event_id = i.event_id",
            params=parameters,
        ).pl().get_column("event_id")
    finally:
        con.unregister("incoming_ids")


def _stored_event_ids(
    con: duckdb.DuckDBPyConnection, firsts: pl.DataFrame, ids_of_this_run: _IdsOfThisRun
) -> pl.Series:
    """Which of the distinct ids of `firsts` raw.events already holds, this transaction's rows included
    (an hour's 16,000 against 10M: 0.16 s)."""
    ids = firsts.get_column("event_id")
    if not ids_of_this_run.splits_the_table:
        return _semi_join_stored(con, ids)
    at = {"loaded_at": ids_of_this_run.loaded_at}
    stored = []
    if ids_of_this_run.earlier_runs_hold_rows:
        stored.append(_semi_join_stored(con, ids, "where loaded_at < $loaded_at", at))
    again = ids.filter(ids_of_this_run.may_hold(firsts.get_column("_id_hash")))
    stored.append(_semi_join_stored(con, again, "where loaded_at = $loaded_at", at))
    return pl.concat(stored)


def _first_of_each_id(frame: pl.DataFrame) -> pl.Series:
    """True on the first row of each event_id; ids are only compared where their hashes meet (the hash,
    `_id_hash`, is computed while a chunk is checked)."""
    first = ~frame.get_column("_id_hash").is_duplicated()
    if not first.all():
        positions = (~first).arg_true()
        first = first.scatter(positions, frame.get_column("event_id").gather(positions).is_first_distinct())
    return first


def _insert_events(
    con: duckdb.DuckDBPyConnection, frame: pl.DataFrame, ids_of_this_run: _IdsOfThisRun
) -> pl.DataFrame:
    """Insert the rows whose event_id is new; return how many each source_file brought.

    The first row of an id wins within `frame` (rows in load order); against the table, the stored
    row wins. Nothing else keeps ids unique in raw.events (it has no key): every load passes here.
    """
    firsts = frame.filter(_first_of_each_id(frame))
    stored = _stored_event_ids(con, firsts, ids_of_this_run)
    new = firsts.filter(~pl.col("event_id").is_in(stored.implode()))
    # kept before the insert: should it fail, a hash of a row never written costs a lookup, not a row
    ids_of_this_run.add(new.get_column("_id_hash"))
    _incoming(con, "incoming_events", new.select(pl.exclude("^_.*$")))
    try:
        con.execute(
            """
            insert into raw.events
                (event_id, contact_id, anonymous_id, name, occurred_at, properties, is_syncing,
                 source_file, source_line, loaded_at)
            select event_id, contact_id, anonymous_id, name, occurred_at, properties, is_syncing,
                   source_file, source_line, loaded_at
            from incoming_events
            """
        ).fetchall()
    finally:
        con.unregister("incoming_events")
    return new.group_by("source_file").len("rows_loaded")


def _upsert_contacts(con: duckdb.DuckDBPyConnection, frame: pl.DataFrame) -> int:
    # Newest updated_at per contact; on a tie the earlier line, matching "the stored row wins a tie".
    frame = frame.sort(["contact_id", "updated_at", "source_line"], descending=[False, True, False]).unique(
        subset="contact_id", keep="first", maintain_order=True
    )
    _incoming(con, "incoming_contacts", frame)
    try:
        changed = con.execute(
            """
            insert into raw.contacts
                (contact_id, email, status, first_name, last_name, timezone, properties, updated_at,
                 source_file, source_line, loaded_at)
            select i.contact_id, i.email, i.status, i.first_name, i.last_name, i.timezone, i.properties,
                   i.updated_at, i.source_file, i.source_line, i.loaded_at
            from incoming_contacts as i
            where not exists (
                select 1 from raw.contacts as c where c.contact_id = i.contact_id and c.updated_at >= i.updated_at
            )
            on conflict (contact_id) do update set
                email = excluded.email,
                status = excluded.status,
                first_name = excluded.first_name,
                last_name = excluded.last_name,
                timezone = excluded.timezone,
                properties = excluded.properties,
                updated_at = excluded.updated_at,
                source_file = excluded.source_file,
                source_line = excluded.source_line,
                loaded_at = excluded.loaded_at
            """
        ).fetchall()
    finally:
        con.unregister("incoming_contacts")
    return int(changed[0][0]) if changed else 0


def _insert_rejections(con: duckdb.DuckDBPyConnection, frame: pl.DataFrame) -> None:
    if frame.is_empty():
        return
    _incoming(con, "incoming_rejections", frame)
    try:
        con.execute(
            """
            insert into raw.rejected_rows (source_table, source_file, line, raw, reason, rejected_at)
            select r.source_table, r.source_file, r.line, r.raw, r.reason, r.rejected_at
            from incoming_rejections as r
            where not exists (
                select 1 from raw.rejected_rows as x
                where x.source_table = r.source_table
                  and x.source_file is not distinct from r.source_file
                  and x.line is not distinct from r.line
                  and x.raw is not distinct from r.raw
            )
            """
        )
    finally:
        con.unregister("incoming_rejections")


REJECTIONS_FRAME_SCHEMA = {
    "source_table": pl.String,
    "source_file": pl.String,
    "line": pl.Int32,
    "raw": pl.String,
    "reason": pl.String,
    "rejected_at": pl.Datetime("us"),
}


@dataclass
class _FileResult:
    rows_read: int = 0
    rows_loaded: int = 0
    rows_duplicate: int = 0
    rows_rejected: int = 0
    reject_reasons: Counter[str] = field(default_factory=Counter)
    rows_valid: int = 0  # rows that passed the checks: loaded, or duplicates


@dataclass
class _Checked:
    """A chunk parsed, checked and split, ready to write; nothing of it has touched the warehouse."""

    rows: pl.DataFrame  # the valid rows, in the raw table's columns
    rejections: pl.DataFrame  # REJECTIONS_FRAME_SCHEMA
    rows_read: int
    reject_reasons: Counter[str]


# Columns a text frame carries for the rejected rows only; the checks never read them.
_REJECTION_ONLY = ("raw", "parse_error", "parse_kind", "_original")


def _check_chunk(target: _Target, text_frame: pl.DataFrame, source_file: str, loaded_at: datetime) -> _Checked:
    unparsed = text_frame.filter(pl.col("parse_error").is_not_null())
    parsed = typed_frame(text_frame.filter(pl.col("parse_error").is_null()), target.fields)
    valid, rejections = target.validate(parsed.drop(_REJECTION_ONLY, strict=False))

    rejected = parsed.gather(rejections["index"])
    if "_original" in rejected.columns:
        rejected = rejected.with_columns(raw=pl.coalesce("raw", pl.col("_original").struct.json_encode()))
    rejected = rejected.select("source_line", "raw")
    reasons = Counter(unparsed["parse_kind"].to_list())
    for kinds in rejections["kinds"].to_list():
        reasons.update(kinds)
    rejection_rows = pl.concat(
        [
            unparsed.select("source_line", "raw", reason="parse_error"),
            rejected.with_columns(reason=rejections["reason"]),
        ]
    ).select(
        source_table=pl.lit(target.table),
        source_file=pl.lit(source_file),
        line=pl.col("source_line").cast(pl.Int32),
        raw="raw",
        reason="reason",
        rejected_at=pl.lit(loaded_at, dtype=pl.Datetime("us")),
    )
    rows = valid.select(
        *target.columns,
        source_file=pl.lit(source_file),
        source_line=pl.col("source_line").cast(pl.Int32),
        loaded_at=pl.lit(loaded_at, dtype=pl.Datetime("us")),
        **({"_id_hash": pl.col("event_id").hash()} if target is EVENTS else {}),
    )
    return _Checked(rows, rejection_rows, text_frame.height, reasons)


def landing_files(folder: Path) -> list[Path]:
    """Loadable files under `folder`, oldest name first; dotfiles and _partial files are still being written."""
    if not folder.is_dir():
        return []
    return sorted(
        path
        for path in folder.rglob("*")
        if path.is_file()
        and path.suffix.lower() in LANDING_SUFFIXES
        and not any(part.startswith((".", "_")) for part in path.relative_to(folder).parts)
    )


def _already_loaded(con: duckdb.DuckDBPyConnection, table: str, path: str, size: int, mtime_ns: int) -> bool:
    return (
        con.execute(
            "select 1 from raw.loaded_files where source_table = ? and path = ? and size = ? and mtime_ns = ? limit 1",
            [table, path, size, mtime_ns],
        ).fetchall()
        != []
    )


def _record_file(
    con: duckdb.DuckDBPyConnection,
    table: str,
    path: str,
    size: int,
    mtime_ns: int,
    result: _FileResult,
    loaded_at: datetime,
) -> None:
    con.execute(
        "insert into raw.loaded_files (source_table, path, size, mtime_ns, rows_loaded, rows_rejected, loaded_at) "
        "values (?, ?, ?, ?, ?, ?, ?)",
        [table, path, size, mtime_ns, result.rows_loaded, result.rows_rejected, loaded_at],
    )


# Reading a file can fail as a whole (a corrupt Parquet footer, bytes that are no CSV). Only the
# readers are guarded by these: a failure while checking or writing rows is a bug and must surface.
_UNREADABLE_FILE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    pl.exceptions.ComputeError,
    pl.exceptions.NoDataError,
    pyarrow.ArrowException,
)


@dataclass
class _PendingFile:
    path: Path
    source_file: str
    size: int
    mtime_ns: int


class _UnreadableFileError(Exception):
    def __init__(self, pending: _PendingFile, cause: BaseException):
        super().__init__(str(cause))
        self.pending = pending
        self.cause = cause


def _pending_files(con: duckdb.DuckDBPyConnection, folder: Path, table: str) -> tuple[list[_PendingFile], int]:
    """New or changed files, and how many are unchanged since they were loaded."""
    pending, unchanged = [], 0
    for path in landing_files(folder):
        try:
            stat = path.stat()
        except FileNotFoundError:
            continue  # moved away between listing and reading
        source_file = str(path.resolve())
        if _already_loaded(con, table, source_file, stat.st_size, stat.st_mtime_ns):
            unchanged += 1
        else:
            pending.append(_PendingFile(path, source_file, stat.st_size, stat.st_mtime_ns))
    return pending, unchanged


def _add(report: IngestReport, result: _FileResult) -> None:
    report.files_loaded += 1
    report.rows_read += result.rows_read
    report.rows_loaded += result.rows_loaded
    report.rows_duplicate += result.rows_duplicate
    report.rows_rejected += result.rows_rejected
    report.reject_reasons.update(result.reject_reasons)


# Valid events wait in memory until about this many are checked (or the transaction ends), then go
# in as one insert: each insert asks the table once which of its ids it holds (_IdsOfThisRun), so
# few large ones cost least, but each holds its rows twice over while it runs (see COMMIT_EVERY_ROWS
# for the measured balance).
INSERT_EVERY_ROWS = 250_000


class _BatchWriter:
    """Writes one transaction's files: rejections and events in bulk, then each file's raw.loaded_files row.

    Events of several files share an insert; a file is recorded once all its rows are written, so its
    rows_loaded is known, and always in the same transaction as its rows.

    An insert runs on a thread of its own while the next chunks are read (the loading thread) and
    checked (_ChecksAhead's thread); DuckDB and polars let go of the interpreter, so the three share
    both cores. At most one insert is in flight, and the warehouse connection is only touched from one
    thread at a time: the writer's while an insert runs.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, target: _Target, loaded_at: datetime,
                 ids_of_this_run: _IdsOfThisRun | None):
        self.con = con
        self.target = target
        self.loaded_at = loaded_at
        self.ids_of_this_run = ids_of_this_run
        self.events: list[pl.DataFrame] = []
        self.buffered_rows = 0
        self.rejections: list[pl.DataFrame] = []
        self.results: dict[str, _FileResult] = {}
        self.finished: list[_PendingFile] = []
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nudge-ingest-insert")
        self._in_flight: Future[None] | None = None

    def add(self, file: _PendingFile, result: _FileResult, checked: _Checked) -> None:
        self.results[file.source_file] = result
        result.rows_read += checked.rows_read
        result.rows_rejected += checked.rejections.height
        result.rows_valid += checked.rows.height
        result.reject_reasons.update(checked.reject_reasons)
        if not checked.rejections.is_empty():
            self.rejections.append(checked.rejections)
        if checked.rows.is_empty():
            return
        if self.target is EVENTS:
            self.events.append(checked.rows)
            self.buffered_rows += checked.rows.height
            if self.buffered_rows >= INSERT_EVERY_ROWS:
                self._write_rows()
        else:
            # Contacts are few and upserted chunk by chunk, as "newest updated_at wins" reads the table.
            result.rows_loaded += _upsert_contacts(self.con, checked.rows)

    def finish_file(self, file: _PendingFile, result: _FileResult) -> None:
        self.results[file.source_file] = result
        self.finished.append(file)

    def flush(self) -> None:
        """Write everything held back and record the finished files."""
        self._write_rows()
        self._wait()
        for file in self.finished:
            result = self.results[file.source_file]
            result.rows_duplicate = result.rows_valid - result.rows_loaded
            _record_file(
                self.con, self.target.table, file.source_file, file.size, file.mtime_ns, result, self.loaded_at
            )
        self.finished.clear()

    def close(self) -> None:
        """Wait for an insert in flight (its error, if any, is the caller's to raise, not this one's)."""
        try:
            self._wait()
        except BaseException:  # noqa: BLE001 - the transaction is rolled back by the caller either way
            pass
        finally:
            self._writer.shutdown(wait=True)

    def _wait(self) -> None:
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is not None:
            in_flight.result()

    def _write_rows(self) -> None:
        rejections, events = self.rejections, self.events
        self.rejections, self.events, self.buffered_rows = [], [], 0
        if not rejections and not events:
            return
        self._wait()
        self._in_flight = self._writer.submit(self._insert, rejections, events)

    def _insert(self, rejections: list[pl.DataFrame], events: list[pl.DataFrame]) -> None:
        if rejections:
            _insert_rejections(self.con, pl.concat(rejections))
        if events:
            loaded = _insert_events(self.con, pl.concat(events), self.ids_of_this_run)
            for source_file, rows_loaded in loaded.iter_rows():
                self.results[source_file].rows_loaded += rows_loaded


def _ingest(
    con: duckdb.DuckDBPyConnection, landing_dir: Path, target: _Target, loaded_at: datetime | None
) -> IngestReport:
    ensure_raw_tables(con)
    report = IngestReport(table=target.table)
    loaded_at = (loaded_at or datetime.now(UTC)).astimezone(UTC).replace(tzinfo=None)
    pending, report.files_skipped = _pending_files(con, Path(landing_dir) / target.table, target.table)
    ids_of_this_run = _IdsOfThisRun(con, loaded_at) if target is EVENTS and pending else None
    # Parsing gets its own in-memory connection, so the warehouse's transactions hold only writes.
    with duckdb.connect() as json_con:
        start = 0
        while start < len(pending):
            try:
                start = _load_batch(con, json_con, target, pending, start, loaded_at, ids_of_this_run, report)
            except _UnreadableFileError as error:
                # The batch in progress was rolled back: record the file on its own, then redo the batch.
                _add(report, _unreadable_file(con, target.table, error.pending, error.cause, loaded_at))
                pending.remove(error.pending)
    return report


def _load_batch(
    con: duckdb.DuckDBPyConnection,
    json_con: duckdb.DuckDBPyConnection,
    target: _Target,
    pending: list[_PendingFile],
    start: int,
    loaded_at: datetime,
    ids_of_this_run: _IdsOfThisRun | None,
    report: IngestReport,
) -> int:
    """Load files from `start` in one transaction until about COMMIT_EVERY_ROWS rows; return where to go on.

    A file's rows, its rejections and its raw.loaded_files entry always commit together. Several files
    share a transaction because DuckDB writes a large transaction straight to the table's storage,
    while many small commits each go through the write-ahead log and a checkpoint.
    """
    results: list[_FileResult] = []
    rows = 0
    position = start
    writer = _BatchWriter(con, target, loaded_at, ids_of_this_run)
    checks = _ChecksAhead(writer, target, loaded_at)
    con.begin()
    try:
        while position < len(pending) and (rows < COMMIT_EVERY_ROWS or not results):
            file = pending[position]
            result, rows_read = _load_file(checks, json_con, target, file)
            results.append(result)
            rows += rows_read
            position += 1
        checks.finish()
        writer.flush()
        con.commit()
    except BaseException:
        checks.close()
        writer.close()  # no insert may still run when the transaction is rolled back
        rollback_if_open(con)
        raise
    checks.close()
    writer.close()
    for result in results:
        _add(report, result)
    return position


class _ChecksAhead:
    """Checks each chunk on a thread of its own while the next one is read, and hands the checked
    chunks to the writer in the order they were read (the first row of an id wins in load order).

    Reading, checking and inserting then share both cores: polars and DuckDB let go of the
    interpreter. At most one check waits to be handed over, so at most about three chunks are in
    memory at once: one being read, one checked, one inserted.
    """

    def __init__(self, writer: _BatchWriter, target: _Target, loaded_at: datetime):
        self._writer = writer
        self._target = target
        self._loaded_at = loaded_at
        self._checker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nudge-ingest-check")
        # (file, its result, the chunk's check) in reading order; no check marks the file's end
        self._queue: deque[tuple[_PendingFile, _FileResult, Future[_Checked] | None]] = deque()
        self._checking = 0

    def check(self, file: _PendingFile, result: _FileResult, chunk: pl.DataFrame) -> None:
        check = self._checker.submit(_check_chunk, self._target, chunk, file.source_file, self._loaded_at)
        self._queue.append((file, result, check))
        self._checking += 1
        self._hand_over(keep=1)

    def file_read(self, file: _PendingFile, result: _FileResult) -> None:
        self._queue.append((file, result, None))
        self._hand_over(keep=1)

    def finish(self) -> None:
        self._hand_over(keep=0)

    def close(self) -> None:
        for _, _, check in self._queue:
            if check is not None:
                check.cancel()
        self._queue.clear()
        self._checker.shutdown(wait=True)

    def _hand_over(self, keep: int) -> None:
        while self._queue and (self._queue[0][2] is None or self._checking > keep):
            file, result, check = self._queue.popleft()
            if check is None:
                self._writer.finish_file(file, result)
            else:
                self._checking -= 1
                self._writer.add(file, result, check.result())


def _load_file(
    checks: _ChecksAhead,
    json_con: duckdb.DuckDBPyConnection,
    target: _Target,
    file: _PendingFile,
) -> tuple[_FileResult, int]:
    """Read a file's chunks and hand them to be checked; its result fills in as they are written."""
    reader = READERS[LANDING_SUFFIXES[file.path.suffix.lower()]]
    result = _FileResult()
    rows_read = 0
    chunks = reader(file.path, target.fields, json_con)
    while True:
        try:
            chunk = next(chunks, None)
        except _UNREADABLE_FILE_ERRORS as error:
            raise _UnreadableFileError(file, error) from error
        if chunk is None:
            break
        rows_read += chunk.height
        checks.check(file, result, chunk)
    checks.file_read(file, result)
    return result, rows_read


def _unreadable_file(
    con: duckdb.DuckDBPyConnection, table: str, file: _PendingFile, error: BaseException, loaded_at: datetime
) -> _FileResult:
    """The whole file is one rejection; it is recorded so it is retried only once it changes."""
    result = _FileResult(rows_read=1, rows_rejected=1, reject_reasons=Counter({"unreadable_file": 1}))
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    con.begin()
    try:
        _insert_rejections(
            con,
            pl.DataFrame(
                {
                    "source_table": [table],
                    "source_file": [file.source_file],
                    "line": [None],
                    "raw": [None],
                    "reason": [f"the file could not be read ({type(error).__name__}: {message}); fix or replace it"],
                    "rejected_at": [loaded_at],
                },
                schema=REJECTIONS_FRAME_SCHEMA,
            ),
        )
        _record_file(con, table, file.source_file, file.size, file.mtime_ns, result, loaded_at)
        con.commit()
    except BaseException:
        rollback_if_open(con)
        raise
    return result


def ingest_events(
    con: duckdb.DuckDBPyConnection, landing_dir: Path, *, loaded_at: datetime | None = None
) -> IngestReport:
    """Load new or changed files under `landing_dir/events` into raw.events."""
    return _ingest(con, landing_dir, EVENTS, loaded_at)


def ingest_contacts(
    con: duckdb.DuckDBPyConnection, landing_dir: Path, *, loaded_at: datetime | None = None
) -> IngestReport:
    """Load new or changed files under `landing_dir/contacts` into raw.contacts (newest updated_at wins)."""
    return _ingest(con, landing_dir, CONTACTS, loaded_at)


# --- Dagster -----------------------------------------------------------------------------------------

EVENTS_KEY = dg.AssetKey(["raw", "events"])
CONTACTS_KEY = dg.AssetKey(["raw", "contacts"])
REJECT_SHARE_CHECK = "reject_share_within_limit"


class LandingFiles(dg.ConfigurableResource):
    """The folder the product drops its events/ and contacts/ files into."""

    path: str
    max_reject_share: float = 0.05

    @property
    def directory(self) -> Path:
        return Path(self.path)


def _reject_share_spec(key: dg.AssetKey) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec(
        REJECT_SHARE_CHECK,
        asset=key,
        description="The share of rows rejected by this load stays within the landing resource's max_reject_share.",
    )


def _top_reasons(report: IngestReport, limit: int = 5) -> str:
    if not report.reject_reasons:
        return "none"
    return "\n".join(f"- {kind}: {count}" for kind, count in report.reject_reasons.most_common(limit))


def materialize_result(
    report: IngestReport, row_count: int, max_reject_share: float, previews: dict[str, Any] | None = None
) -> dg.MaterializeResult:
    passed = report.reject_share <= max_reject_share
    share_text = (
        f"{report.reject_share:.2%} of the {report.rows_read} rows read were rejected "
        f"(limit {max_reject_share:.2%})"
    )
    description = share_text if passed else (
        f"{share_text}: see raw.rejected_rows where source_table = '{report.table}' for the reasons"
    )
    return dg.MaterializeResult(
        metadata={
            "files_loaded": report.files_loaded,
            "files_skipped": report.files_skipped,
            "rows_read": report.rows_read,
            "rows_loaded": report.rows_loaded,
            "rows_duplicate": report.rows_duplicate,
            "rows_rejected": report.rows_rejected,
            "reject_share": dg.MetadataValue.float(report.reject_share),
            "top_reject_reasons": dg.MetadataValue.md(_top_reasons(report)),
            "table_row_count": row_count,
            "dagster/row_count": row_count,
            **(previews or {}),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name=REJECT_SHARE_CHECK,
                passed=passed,
                description=description,
                metadata={
                    "reject_share": dg.MetadataValue.float(report.reject_share),
                    "max_reject_share": dg.MetadataValue.float(max_reject_share),
                    "rows_rejected": report.rows_rejected,
                    "rows_read": report.rows_read,
                },
            )
        ],
    )


def _run_ingest(
    context: AssetExecutionContext,
    warehouse: Warehouse,
    landing: LandingFiles,
    ingest: Callable[[duckdb.DuckDBPyConnection, Path], IngestReport],
) -> dg.MaterializeResult:
    with warehouse.connect() as con:
        ensure_raw_tables(con)
        report = ingest(con, landing.directory)
        ((row_count,),) = con.execute(f"select count(*) from raw.{report.table}").fetchall()
        # What this load brought, and what it turned away with the reason a person acts on.
        previews = {
            "preview": query_preview(
                con, f"select * exclude (source_file) from raw.{report.table} order by loaded_at desc nulls last"
            ),
            "rejected_preview": query_preview(
                con,
                "select source_file, line, reason, left(raw, 200) as raw from raw.rejected_rows "
                "where source_table = $table order by rejected_at desc nulls last, line",
                {"table": report.table},
            ),
        }
    context.log.info(
        f"raw.{report.table}: {report.files_loaded} files loaded, {report.files_skipped} unchanged; "
        f"{report.rows_loaded} rows loaded, {report.rows_duplicate} duplicates, {report.rows_rejected} rejected"
    )
    return materialize_result(report, row_count, landing.max_reject_share, previews)


@dg.asset(
    key=EVENTS_KEY,
    group_name="ingest",
    pool=WAREHOUSE_POOL,
    kinds={"duckdb", "polars"},
    check_specs=[_reject_share_spec(EVENTS_KEY)],
    description="The product's events from landing files (JSONL, CSV, Parquet), deduplicated by event_id.",
)
def raw_events(context: AssetExecutionContext, warehouse: Warehouse, landing: LandingFiles) -> dg.MaterializeResult:
    return _run_ingest(context, warehouse, landing, ingest_events)


@dg.asset(
    key=CONTACTS_KEY,
    group_name="ingest",
    pool=WAREHOUSE_POOL,
    kinds={"duckdb", "polars"},
    check_specs=[_reject_share_spec(CONTACTS_KEY)],
    description="Contacts from landing files; a row replaces the stored one only when its updated_at is newer.",
)
def raw_contacts(context: AssetExecutionContext, warehouse: Warehouse, landing: LandingFiles) -> dg.MaterializeResult:
    return _run_ingest(context, warehouse, landing, ingest_contacts)


INGEST_ASSETS = [raw_events, raw_contacts]
