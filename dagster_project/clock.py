"""The clock of a run: every run evaluates "as of" one instant.

The schedule's tick time, `--as-of` for a manual run, or the run's creation
time otherwise. It travels as a run tag, so every step of a run, dbt's
subprocess included, sees the same instant, and the Dagster UI shows it.
"""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg

AS_OF_TAG = "nudge/as_of"


def parse_as_of(text: str) -> datetime:
    """ISO 8601 to naive UTC (the warehouse's convention); a bare time is read as UTC."""
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"as_of {text!r} is not an ISO 8601 timestamp such as 2026-11-01T09:00:00Z") from None
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.replace(microsecond=0)


def format_as_of(value: datetime) -> str:
    """The form dbt's `as_of` var and the run tag carry: 'YYYY-MM-DD HH:MM:SS' in UTC."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.strftime("%Y-%m-%d %H:%M:%S")


def as_of_tags(value: datetime) -> dict[str, str]:
    return {AS_OF_TAG: format_as_of(value)}


def as_of_for(context: dg.AssetExecutionContext | dg.OpExecutionContext) -> datetime:
    tag = context.run.tags.get(AS_OF_TAG)
    if tag:
        return parse_as_of(tag)
    record = context.instance.get_run_record_by_id(context.run_id)
    created = record.create_timestamp if record else datetime.now(UTC)
    return parse_as_of(created.isoformat())
