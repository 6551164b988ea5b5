"""What a parsed landing row must satisfy before it reaches a raw table.

Ingestion parses a file into a polars frame (ids stripped, timestamps converted
to UTC, properties normalised to JSON text) and validates it here. The pandera
models are the declared contract; each row check is one polars expression
(`EVENT_CHECKS`, `CONTACT_CHECKS`) that the model's check runs, and that
`split_valid` runs for every row in one vectorised pass, so a million rows do
not pay for pandera's per-check collects and failure-case frames. pandera itself
checks the frame's columns and types, once per frame layout. Each failing row
becomes one rejection whose reason says what is wrong with the value and how to
fix it, e.g. "email 'not-an-email' is not a valid address: ...". The parse
keeps the original text of every parsed field (`occurred_at_text`,
`properties_text`, ...) so reasons can quote it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import email_validator
import pandera.polars as pa
import polars as pl
from pandera.api.polars.types import PolarsData

CONTACT_STATUSES = ("subscribed", "unsubscribed", "cleaned", "pending")
TIMESTAMP_EXAMPLE = "2026-10-31T21:14:05+01:00"

# What a timestamp without an offset looks like: the one mistake worth its own, precise reason.
_LOCAL_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?$")
# A timestamp with an offset at the first or last day of the calendar (or past it), which ingest
# rejects when its UTC moment falls outside 0001-01-01..9999-12-31.
_EDGE_OF_TIME = re.compile(
    r"^(0000-|0001-01-01|9999-12-31|\d{5,}-)[\d\-]*[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?([zZ]|[+-]\d{2}(:?\d{2})?)$"
)
_MAX_QUOTED = 80


def quote(value: Any) -> str:
    """A value as a reason shows it: quoted, shortened, one line."""
    text = str(value).replace("\n", " ")
    if len(text) > _MAX_QUOTED:
        text = text[: _MAX_QUOTED - 3] + "..."
    return f"'{text}'"


def _is_present(column: str) -> pl.Expr:
    return pl.col(column).is_not_null() & (pl.col(column).str.strip_chars().str.len_chars() > 0)


# Each row check, by its name, as one polars expression that is true where the row passes. The
# pandera models below run these very expressions, and split_valid runs them all at once.
EVENT_CHECKS: dict[str, pl.Expr] = {
    "event_id_present": _is_present("event_id"),
    # An anonymous event (an install before the signup) has only anonymous_id; dbt stitches it to
    # the contact once an event carries both ids. A row with neither belongs to nobody.
    "contact_id_or_anonymous_id_present": _is_present("contact_id") | _is_present("anonymous_id"),
    "name_present": _is_present("name"),
    "occurred_at_is_timestamp_with_offset": pl.col("occurred_at").is_not_null(),
    "properties_is_object": pl.col("properties").is_not_null(),
    "is_syncing_is_boolean": pl.col("is_syncing").is_not_null(),
    "fields_have_expected_types": pl.col("field_errors").is_null(),
}
CONTACT_CHECKS: dict[str, pl.Expr] = {
    "contact_id_present": _is_present("contact_id"),
    # email_is_valid_address needs the chunk's distinct addresses first: see contact_checks
    "status_is_known": pl.col("status").is_in(CONTACT_STATUSES).fill_null(False),
    "properties_is_object": pl.col("properties").is_not_null(),
    "updated_at_is_timestamp_with_offset": pl.col("updated_at").is_not_null(),
    "fields_have_expected_types": pl.col("field_errors").is_null(),
}


def _run(data: PolarsData, check: pl.Expr) -> pl.LazyFrame:
    return data.lazyframe.select(check)


# --- email addresses ------------------------------------------------------------------------------
# Addresses of this plain shape are certainly valid for email-validator (ASCII dot-atom local part,
# LDH labels without "--", an alphabetic TLD), so only the others pay for a full validation.
_PLAIN_EMAIL = (
    r"^[A-Za-z0-9_%+-]+(\.[A-Za-z0-9_%+-]+)*"
    r"@([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$"
)
_SPECIAL_USE_SUFFIXES = tuple(sorted(email_validator.SPECIAL_USE_DOMAIN_NAMES))


def _plain_emails(emails: pl.Series) -> pl.Series:
    lowered = emails.str.to_lowercase()
    domain = lowered.str.split("@").list.last()
    special = pl.Series([False] * len(emails), dtype=pl.Boolean)
    for suffix in _SPECIAL_USE_SUFFIXES:
        special = special | (domain == suffix) | domain.str.ends_with("." + suffix)
    return (
        emails.str.contains(_PLAIN_EMAIL)
        & (emails.str.len_bytes() <= 254)
        & (emails.str.split("@").list.first().str.len_bytes() <= 64)
        & ~domain.str.contains("--", literal=True)
        & ~special
    ).fill_null(False)


def email_problem(email: str) -> str | None:
    """email-validator's words for why `email` is not an address, or None when it is one."""
    try:
        email_validator.validate_email(email, check_deliverability=False)
    except email_validator.EmailNotValidError as error:
        return str(error)
    return None


def invalid_emails(emails: pl.Series) -> pl.Series:
    """The distinct values of `emails` that are not valid addresses."""
    distinct = emails.drop_nulls().unique()
    suspicious = distinct.filter(~_plain_emails(distinct))
    return pl.Series("email", [email for email in suspicious.to_list() if email_problem(email)], dtype=pl.String)


def _email_passes(emails: pl.Series) -> pl.Expr:
    """True where the email column holds a valid address; a null email passes (a contact may have none)."""
    return pl.col("email").is_null() | ~pl.col("email").is_in(invalid_emails(emails).implode())


def contact_checks(emails: pl.Series) -> dict[str, pl.Expr]:
    """Every contact check for a chunk whose email column is `emails`, in the model's column order
    (the order a rejection names its reasons in)."""
    first, *rest = CONTACT_CHECKS.items()
    return dict([first, ("email_is_valid_address", _email_passes(emails)), *rest])


def _email_check(data: PolarsData) -> pl.LazyFrame:
    emails = data.lazyframe.select(pl.col(data.key)).collect().to_series()
    return data.lazyframe.select(_email_passes(emails))


# --- schemas -------------------------------------------------------------------------------------


class EventsFrame(pa.DataFrameModel):
    """A parsed events chunk: one row per landing row that was a JSON object (or CSV/Parquet row)."""

    event_id: str = pa.Field(nullable=True)
    contact_id: str = pa.Field(nullable=True)
    anonymous_id: str = pa.Field(nullable=True)
    name: str = pa.Field(nullable=True)
    occurred_at: pl.Datetime = pa.Field(nullable=True)
    occurred_at_text: str = pa.Field(nullable=True)
    properties: str = pa.Field(nullable=True)
    properties_text: str = pa.Field(nullable=True)
    is_syncing: bool = pa.Field(nullable=True)
    is_syncing_text: str = pa.Field(nullable=True)
    field_errors: str = pa.Field(nullable=True)

    class Config:
        strict = False  # source_line and friends ride along
        coerce = False

    @pa.check("event_id", name="event_id_present", ignore_na=False)
    def event_id_present(cls, data: PolarsData) -> pl.LazyFrame:
        return _run(data, EVENT_CHECKS["event_id_present"])

    @pa.check("contact_id", name="contact_id_or_anonymous_id_present", ignore_na=False)
    def contact_id_or_anonymous_id_present(cls, data: PolarsData) -> pl.LazyFrame:
        return _run(data, EVENT_CHECKS["contact_id_or_anonymous_id_present"])

    @pa.check("name", name="name_present", ignore_na=False)
    def name_present(cls, data: PolarsData) -> pl.LazyFrame:
        return _run(data, EVENT_CHECKS["name_present"])

    @pa.check("occurred_at", name="occurred_at_is_timestamp_with_offset", ignore_na=False)
    def occurred_at_parsed(cls, data: PolarsData) -> pl.LazyFrame:
        return _run(data, EVENT_CHECKS["occurred_at_is_timestamp_with_offset"])

    @pa.check("properties", name="properties_is_object", ignore_na=False)
    def properties_is_object(cls, data: PolarsData) -> pl.LazyFrame:
        return _run(data, EVENT_CHECKS["properties_is_object"])

    @pa.check("is_syncing", name="is_syncing_is_boolean", ignore_na=False)
    def is_syncing_is_boolean(cls, data: PolarsData) -> pl.LazyFrame:
        return _run(data, EVENT_CHECKS["is_syncing_is_boolean"])

    @pa.check("field_errors", name="fields_have_expected_types", ignore_na=False)
    def fields_have_expected_types(cls, data: PolarsData) -> pl.LazyFrame:
        return _run(data, EVENT_CHECKS["fields_have_expected_types"])


class ContactsFrame(pa.DataFrameModel):
    """A parsed contacts chunk."""

    contact_id: str = pa.Field(nullable=True)
    email: str = pa.Field(nullable=True)
    status: str = pa.Field(nullable=True)
    first_name: str = pa.Field(nullable=True)
    last_name: str = pa.Field(nullable=True)
    timezone: str = pa.Field(nullable=True)
    properties: str = pa.Field(nullable=True)
    properties_text: str = pa.Field(nullable=True)
    updated_at: pl.Datetime = pa.Field(nullable=True)
    updated_at_text: str = pa.Field(nullable=True)
    field_errors: str = pa.Field(nullable=True)

    class Config:
        strict = False
        coerce = False

    @pa.check("contact_id", name="contact_id_present", ignore_na=False)
    def contact_id_present(cls, data: PolarsData) -> pl.LazyFrame:
        return _run(data, CONTACT_CHECKS["contact_id_present"])

    @pa.check("status", name="status_is_known", ignore_na=False)
    def status_is_known(cls, data: PolarsData) -> pl.LazyFrame:
        return _run(data, CONTACT_CHECKS["status_is_known"])

    @pa.check("email", name="email_is_valid_address", ignore_na=False)
    def email_is_valid_address(cls, data: PolarsData) -> pl.LazyFrame:
        return _email_check(data)

    @pa.check("updated_at", name="updated_at_is_timestamp_with_offset", ignore_na=False)
    def updated_at_parsed(cls, data: PolarsData) -> pl.LazyFrame:
        return _run(data, CONTACT_CHECKS["updated_at_is_timestamp_with_offset"])

    @pa.check("properties", name="properties_is_object", ignore_na=False)
    def properties_is_object(cls, data: PolarsData) -> pl.LazyFrame:
        return _run(data, CONTACT_CHECKS["properties_is_object"])

    @pa.check("field_errors", name="fields_have_expected_types", ignore_na=False)
    def fields_have_expected_types(cls, data: PolarsData) -> pl.LazyFrame:
        return _run(data, CONTACT_CHECKS["fields_have_expected_types"])


# --- reasons -------------------------------------------------------------------------------------
# A reason is (kind, message): the kind is short and countable (metadata, dashboards), the
# message is what a person reads in raw.rejected_rows to fix the source.
Reason = tuple[str, str]


def timestamp_problem(field: str, text: str | None) -> Reason:
    if text is None or not str(text).strip():
        return f"missing_{field}", f"{field} is missing: every row needs one, e.g. {TIMESTAMP_EXAMPLE}"
    text = str(text).strip()
    if _LOCAL_TIMESTAMP.match(text):
        return (
            f"{field}_without_offset",
            f"{field} {quote(text)} has no UTC offset, so the moment is ambiguous: "
            f"an offset is required, e.g. {text.replace(' ', 'T')}Z or {text.replace(' ', 'T')}+01:00",
        )
    if _EDGE_OF_TIME.match(text):
        return (
            f"{field}_out_of_range",
            f"{field} {quote(text)} is outside the years 1 to 9999 once converted to UTC, which the warehouse "
            "cannot hold: check the year (a placeholder date?)",
        )
    return (
        f"bad_{field}",
        f"{field} {quote(text)} is not an ISO 8601 timestamp with offset, e.g. {TIMESTAMP_EXAMPLE}",
    )


def _missing(field: str, what: str) -> Callable[[Mapping[str, Any]], Reason]:
    return lambda row: (f"missing_{field}", f"{field} is missing or empty: {what}")


def _no_owner_problem(row: Mapping[str, Any]) -> Reason:
    return "missing_contact_id_and_anonymous_id", (
        "neither contact_id nor anonymous_id is set: every event must say whose it is, by the "
        "contact's contact_id or, before the contact is known (an app install before the signup), "
        "by the device's anonymous_id"
    )


def _properties_problem(row: Mapping[str, Any]) -> Reason:
    return "properties_not_object", (
        f"properties must be a JSON object like {{\"plan\": \"free\"}}, got {quote(row.get('properties_text'))}"
    )


def _is_syncing_problem(row: Mapping[str, Any]) -> Reason:
    return "bad_is_syncing", f"is_syncing {quote(row.get('is_syncing_text'))} is not true or false"


def _status_problem(row: Mapping[str, Any]) -> Reason:
    allowed = ", ".join(CONTACT_STATUSES)
    if row.get("status") is None:
        return "missing_status", f"status is missing: use one of {allowed}"
    return "unknown_status", f"status {quote(row['status'])} is not one of {allowed}"


def _email_problem(row: Mapping[str, Any]) -> Reason:
    email = row.get("email")
    return "invalid_email", f"email {quote(email)} is not a valid address: {email_problem(str(email))}"


def _type_problem(row: Mapping[str, Any]) -> Reason:
    return "wrong_type", str(row.get("field_errors"))


EVENT_REASONS: dict[str, Callable[[Mapping[str, Any]], Reason]] = {
    "event_id_present": _missing("event_id", "every event needs a unique id (it is the key that dedupes retries)"),
    "contact_id_or_anonymous_id_present": _no_owner_problem,
    "name_present": _missing("name", "the event name, e.g. signed_up"),
    "occurred_at_is_timestamp_with_offset": lambda row: timestamp_problem("occurred_at", row.get("occurred_at_text")),
    "properties_is_object": _properties_problem,
    "is_syncing_is_boolean": _is_syncing_problem,
    "fields_have_expected_types": _type_problem,
}
CONTACT_REASONS: dict[str, Callable[[Mapping[str, Any]], Reason]] = {
    "contact_id_present": _missing("contact_id", "every contact needs its id"),
    "status_is_known": _status_problem,
    "email_is_valid_address": _email_problem,
    "updated_at_is_timestamp_with_offset": lambda row: timestamp_problem("updated_at", row.get("updated_at_text")),
    "properties_is_object": _properties_problem,
    "fields_have_expected_types": _type_problem,
}

REJECTIONS_SCHEMA = {"index": pl.Int64, "reason": pl.String, "kinds": pl.List(pl.String)}


def _typed_fields(field_errors: str | None) -> set[str]:
    """Fields that had a value of the wrong type: their "missing" reason would only repeat it."""
    if not field_errors:
        return set()
    return {message.split(" ", 1)[0] for message in field_errors.split("; ")}


def _missing_fields(kind: str) -> set[str]:
    """The fields a "missing" kind is about: missing_name -> {name}, missing_a_and_b -> {a, b}."""
    if not kind.startswith("missing_"):
        return set()
    return set(kind[len("missing_") :].split("_and_"))


def explain(
    frame: pl.DataFrame,
    failed_checks: Mapping[int, Iterable[str]],
    reasons: Mapping[str, Callable[[Mapping[str, Any]], Reason]],
) -> pl.DataFrame:
    """One rejection per failing row: its index, every reason joined, and their kinds."""
    indexes = sorted(failed_checks)
    # Only the parsed fields: a row's original Parquet values (`_original`) may hold what no Python
    # object can (a timestamp in year 0), and no reason reads them.
    fields = frame.select(pl.exclude("^_.*$"))
    rows = fields[indexes].to_dicts() if indexes else []
    out_reasons: list[str] = []
    out_kinds: list[list[str]] = []
    for index, row in zip(indexes, rows):
        typed = _typed_fields(row.get("field_errors"))
        found: list[Reason] = []
        for check in failed_checks[index]:
            kind, message = reasons[check](row)
            if _missing_fields(kind) & typed:
                continue
            if (kind, message) not in found:
                found.append((kind, message))
        out_reasons.append("; ".join(message for _, message in found))
        out_kinds.append([kind for kind, _ in found])
    return pl.DataFrame({"index": indexes, "reason": out_reasons, "kinds": out_kinds}, schema=REJECTIONS_SCHEMA)


_LAYOUTS_CHECKED: set[tuple[type[pa.DataFrameModel], tuple[tuple[str, pl.DataType], ...]]] = set()


def _check_layout(schema: type[pa.DataFrameModel], frame: pl.DataFrame) -> None:
    """pandera checks the frame's columns and dtypes (on no rows: the rows are checked by expression).

    A parse turns out frames of one layout per file format, so each layout is checked once a process.
    """
    layout = (schema, tuple(frame.schema.items()))
    if layout not in _LAYOUTS_CHECKED:
        schema.validate(frame.clear(), lazy=True)
        _LAYOUTS_CHECKED.add(layout)


def failed_checks(frame: pl.DataFrame, checks: Mapping[str, pl.Expr]) -> pl.DataFrame:
    """One boolean column per check, true where the row fails it (a null result fails too)."""
    return frame.select(~expr.fill_null(False).alias(name) for name, expr in checks.items())


def split_valid(
    schema: type[pa.DataFrameModel],
    frame: pl.DataFrame,
    checks: Mapping[str, pl.Expr],
    reasons: Mapping[str, Callable[[Mapping[str, Any]], Reason]],
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Check every row of `frame` and split it.

    Returns the valid rows and the rejections (index into `frame`, reason, kinds).
    A failure that is not about rows (a missing column, a wrong dtype) is a bug in
    the parse, not bad data, so it raises pandera's SchemaErrors.
    """
    _check_layout(schema, frame)
    failures = failed_checks(frame, checks)
    failing = failures.select(pl.any_horizontal(pl.all())).to_series()
    if not failing.any():
        return frame, pl.DataFrame(schema=REJECTIONS_SCHEMA)
    positions = failing.arg_true()
    names = list(checks)
    failed: dict[int, list[str]] = {
        int(index): [name for name, failed in zip(names, row) if failed]
        for index, row in zip(positions.to_list(), failures.gather(positions).iter_rows())
    }
    return frame.filter(~failing), explain(frame, failed, reasons)


def validate_events(frame: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    return split_valid(EventsFrame, frame, EVENT_CHECKS, EVENT_REASONS)


def validate_contacts(frame: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    _check_layout(ContactsFrame, frame)
    return split_valid(ContactsFrame, frame, contact_checks(frame.get_column("email")), CONTACT_REASONS)
