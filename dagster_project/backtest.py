"""Backtest: replay the ticks of a stretch of history without sending anything.

The replay runs the tick job itself (`run_tick`, the same Definitions the
schedule runs) once per tick time, on a scratch copy of the warehouse:

- the copy is taken under the warehouse's writer lock, so it is one consistent state;
- its ledger is rewound to how it stood at the first tick: rows decided at or after
  it are deleted, and so are earlier rows that only went out at or after it (held or
  retried then); earlier decisions stay, because re-entry and the frequency cap read them;
- incremental models were built later, from later events: an append-only history stamped
  with the tick that recorded each row (a `recorded_as_of` column, like the segment
  membership history) loses the rows recorded at or after the first tick, so the replay
  continues it as the real ticks did; any other incremental model is dropped, and the
  first replayed tick builds it from scratch (what `dbt build --full-refresh` does);
- no ingestion (the events already in the warehouse are the history) and no reporting;
- the email backend is null://, which accepts every message and delivers none.

Every automation is replayed, because they compete through the frequency cap; the
decisions and the report are about one of them. A ledger row `sent` in the replay
means "would have been sent".
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Callable
from contextlib import nullcontext, redirect_stdout
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import polars as pl
from pydantic import SecretStr

from dagster_project.automations import automations_from_manifest, relation_of
from dagster_project.clock import format_as_of
from dagster_project.dbt_assets import dbt_project, load_manifest
from dagster_project.definitions import build_defs
from dagster_project.durations import format_duration
from dagster_project.ledger import LEDGER_TABLE, ensure_ledger
from dagster_project.settings import NudgeSettings
from dagster_project.tick import TickResult, run_tick
from dagster_project.warehouse import connect, writer_lock

NULL_EMAIL_URL = "null://"
# The tick minus what a replay must not do: load landing files, rebuild reports on the ledger.
REPLAY_SELECTION = dg.AssetSelection.all() - dg.AssetSelection.groups("ingest", "reporting")
REPORTING_PATH = "models/reporting/"
# The column of an append-only incremental history that names the tick which recorded a row.
HISTORY_COLUMN = "recorded_as_of"

DECISIONS_SCHEMA = {
    "tick": pl.Datetime("us"),
    "contact_id": pl.String,
    "trigger_key": pl.String,
    "qualified_at": pl.Datetime("us"),
    "due_at": pl.Datetime("us"),
    "status": pl.String,
    "reason": pl.String,
    "detail": pl.String,
}
# How many contacts a report names per tick; the table has them all.
NAMED_PER_TICK = 20


class BacktestError(ValueError):
    pass


@dataclass(frozen=True)
class Rewind:
    """What was undone in the copy before the first replayed tick."""

    decided_later: int  # ledger rows decided at or after the first tick
    sent_later: int  # rows decided before it that went out at or after it (held or retried)
    rewound_models: tuple[str, ...]  # incremental histories cut back to the rows recorded before the first tick
    rebuilt_models: tuple[str, ...]  # incremental models dropped, rebuilt from scratch by the first tick


@dataclass
class Backtest:
    automation: str
    start: datetime
    end: datetime
    every: timedelta
    source: Path
    out_dir: Path
    rewind: Rewind
    ticks: list[TickResult] = field(default_factory=list)
    decisions: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=DECISIONS_SCHEMA))
    report: str = ""
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def success(self) -> bool:
        return all(tick.success for tick in self.ticks)


def tick_times(start: datetime, end: datetime, every: timedelta) -> list[datetime]:
    if every <= timedelta(0):
        raise BacktestError(f"--every must be positive, not {format_duration(every)}")
    if end < start:
        raise BacktestError(f"--to {format_as_of(end)} is before --from {format_as_of(start)}")
    times, at = [], start
    while at <= end:
        times.append(at)
        at += every
    return times


def _stamp(value: datetime) -> str:
    return value.strftime("%Y%m%dT%H%MZ")


def default_out_dir(settings: NudgeSettings, automation: str, start: datetime, end: datetime) -> Path:
    """data/backtests/<automation>_<from>_<to>/, beside the warehouse."""
    return settings.warehouse.parent / "backtests" / f"{automation}_{_stamp(start)}_{_stamp(end)}"


def _remove_database(path: Path) -> None:
    for sibling in (path, path.with_name(path.name + ".wal"), path.with_name(path.name + ".lock")):
        sibling.unlink(missing_ok=True)


def copy_warehouse(source: Path, target: Path, timeout_seconds: float) -> None:
    """A consistent copy: no tick writes while it is taken, and the log is folded in first."""
    if not source.exists():
        raise BacktestError(f"there is no warehouse at {source}: run a tick first")
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_database(target)
    with writer_lock(source, timeout_seconds):
        con = duckdb.connect(str(source))
        try:
            con.execute("checkpoint")
        finally:
            con.close()
        shutil.copyfile(source, target)


def incremental_models(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The incremental models a tick builds (reporting is not replayed)."""
    return sorted(
        (
            node
            for node in manifest["nodes"].values()
            if node.get("resource_type") == "model"
            and (node.get("config") or {}).get("materialized") == "incremental"
            and not node.get("original_file_path", "").startswith(REPORTING_PATH)
        ),
        key=lambda node: node["name"],
    )


def rewind(con: duckdb.DuckDBPyConnection, start: datetime, manifest: dict[str, Any]) -> Rewind:
    """Put the copy back to how it stood when the tick at `start` began, as far as it can be known."""
    ensure_ledger(con)
    # DuckDB answers a delete with the number of rows it removed.
    (decided_later,) = con.execute(f"delete from {LEDGER_TABLE} where decided_at >= ?", [start]).fetchall()[0]
    # Decided earlier, but went out only at or after `start`: at `start` it was still held or
    # waiting for a retry. The replay decides it again, with the same policies.
    (sent_later,) = con.execute(f"delete from {LEDGER_TABLE} where sent_at >= ?", [start]).fetchall()[0]

    rewound, rebuilt = [], []
    for node in incremental_models(manifest):
        columns = _columns(con, node)
        if not columns:
            continue  # never built here: the first replayed tick builds it from scratch anyway
        if HISTORY_COLUMN in columns:
            con.execute(f"delete from {relation_of(node)} where {HISTORY_COLUMN} >= ?", [start])
            rewound.append(node["name"])
        else:
            con.execute(f"drop table {relation_of(node)}")
            rebuilt.append(node["name"])
    return Rewind(decided_later, sent_later, tuple(rewound), tuple(rebuilt))


def _columns(con: duckdb.DuckDBPyConnection, node: dict[str, Any]) -> set[str]:
    rows = con.execute(
        "select column_name from information_schema.columns where table_schema = ? and table_name = ?",
        [node["schema"], node.get("alias") or node["name"]],
    ).fetchall()
    return {name for (name,) in rows}


def tick_decisions(
    con: duckdb.DuckDBPyConnection, automation: str, as_of: datetime, since: datetime
) -> list[dict[str, Any]]:
    """What the tick at `as_of` decided for `automation`: rows it recorded or marked (their
    updated_at is the wall clock of the write, at or after `since`, when the tick began), and
    rows whose decision or delivery carries its time."""
    rows = con.sql(
        f"""
        select $as_of as tick, contact_id, trigger_key, qualified_at, due_at, status, reason, error as detail
        from {LEDGER_TABLE}
        where automation = $automation
          and (updated_at >= $since or decided_at = $as_of or sent_at = $as_of)
        order by trigger_key
        """,
        params={"automation": automation, "as_of": as_of, "since": since},
    ).to_arrow_table()
    return rows.to_pylist()


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def run_backtest(
    settings: NudgeSettings,
    automation: str,
    start: datetime,
    end: datetime,
    every: timedelta = timedelta(hours=1),
    *,
    out_dir: Path | None = None,
    keep_warehouse: bool = False,
    log_level: str = "ERROR",
    quiet: bool = False,
    on_tick: Callable[[int, int, TickResult, list[dict[str, Any]]], None] | None = None,
) -> Backtest:
    """Replay every tick from `start` to `end` (inclusive) every `every`, then write the
    decisions about `automation` and a report to `out_dir`.

    `quiet` swallows what dbt prints while a tick runs; `on_tick(index, count, tick, decisions)`
    hears about each tick as it finishes.
    """
    settings = settings.resolved()
    times = tick_times(start, end, every)
    manifest = load_manifest(dbt_project(settings.dbt_project_dir))
    names = [known.name for known in automations_from_manifest(manifest)]
    if automation not in names:
        raise BacktestError(f"no automation {automation!r}; there are: {', '.join(sorted(names))}")

    out_dir = (out_dir or default_out_dir(settings, automation, start, end)).resolve()
    scratch = out_dir / settings.warehouse.name  # the file's name is its DuckDB catalog: keep it
    if scratch == settings.warehouse:
        raise BacktestError(f"--out {out_dir} holds the warehouse itself; the replay needs a folder of its own")
    copy_warehouse(settings.warehouse, scratch, settings.lock_timeout_seconds)
    with connect(scratch) as con:
        undone = rewind(con, start, manifest)

    replay_settings = settings.model_copy(update={"warehouse": scratch, "email_url": SecretStr(NULL_EMAIL_URL)})
    defs = build_defs(replay_settings)
    # Its own instance: replayed runs must not show up as the real warehouse's materializations.
    instance = dg.DagsterInstance.ephemeral()
    backtest = Backtest(automation, start, end, every, settings.warehouse, out_dir, undone)
    rows: list[dict[str, Any]] = []
    try:
        for index, as_of in enumerate(times):
            began = _utcnow()
            with redirect_stdout(io.StringIO()) if quiet else nullcontext():
                tick = run_tick(defs, as_of, instance=instance, log_level=log_level, selection=REPLAY_SELECTION)
            with connect(scratch) as con:
                decided = tick_decisions(con, automation, as_of, began)
            backtest.ticks.append(tick)
            rows.extend(decided)
            if on_tick:
                on_tick(index, len(times), tick, decided)
    finally:
        if not keep_warehouse:
            _remove_database(scratch)

    backtest.decisions = pl.DataFrame(rows, schema=DECISIONS_SCHEMA)
    backtest.report = render_report(backtest)
    backtest.files = write_outputs(backtest)
    if keep_warehouse:
        backtest.files["warehouse"] = scratch
    return backtest


def write_outputs(backtest: Backtest) -> dict[str, Path]:
    backtest.out_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "parquet": backtest.out_dir / "decisions.parquet",
        "csv": backtest.out_dir / "decisions.csv",
        "report": backtest.out_dir / "report.md",
    }
    backtest.decisions.write_parquet(files["parquet"])
    backtest.decisions.write_csv(files["csv"])
    files["report"].write_text(backtest.report)
    return files


def _minute(value: datetime) -> str:
    return f"{value:%Y-%m-%d %H:%M}"


def _outcome(status: str, reason: str | None) -> str:
    if status == "sent":
        return "would send"
    return f"{status} ({reason})" if reason else status


def render_report(backtest: Backtest) -> str:
    """A short markdown report: who would have been emailed per tick, and what stopped the others."""
    decisions = backtest.decisions
    name = backtest.automation
    lines = [
        f"# Backtest of {name}: {_minute(backtest.start)} to {_minute(backtest.end)} UTC, "
        f"every {format_duration(backtest.every)}",
        "",
        f"{len(backtest.ticks)} ticks replayed on a copy of {backtest.source}, with every automation "
        "(they compete through the frequency cap) and the email backend null://: nothing was delivered.",
        f"Ledger rewound to {_minute(backtest.start)} UTC: {backtest.rewind.decided_later} rows decided at or "
        f"after it removed, {backtest.rewind.sent_later} rows that went out only then decided again.",
        "Incremental histories cut back to the rows recorded before it: "
        + (", ".join(backtest.rewind.rewound_models) or "none")
        + "; incremental models rebuilt from scratch by the first tick: "
        + (", ".join(backtest.rewind.rebuilt_models) or "none")
        + ".",
        "",
        "## Per tick",
        "",
        "| tick (UTC) | would send | to contacts | other decisions |",
        "|---|---:|---|---|",
    ]
    for tick in backtest.ticks:
        here = decisions.filter(pl.col("tick") == tick.as_of)
        sent = here.filter(pl.col("status") == "sent").sort("contact_id")["contact_id"].to_list()
        named = ", ".join(sent[:NAMED_PER_TICK]) + (f" and {len(sent) - NAMED_PER_TICK} more" if len(sent) > NAMED_PER_TICK else "")
        others = (
            here.filter(pl.col("status") != "sent")
            .group_by("status", "reason")
            .len()
            .sort("status", "reason", nulls_last=True)
            .iter_rows()
        )
        other_text = ", ".join(f"{_outcome(status, reason)} {count}" for status, reason, count in others)
        failed = " (tick failed)" if not tick.success else ""
        lines.append(f"| {_minute(tick.as_of)}{failed} | {len(sent)} | {named or '-'} | {other_text or '-'} |")

    # Each qualification once, by the last thing the replay decided about it.
    final = decisions.sort("tick").group_by("trigger_key", maintain_order=True).last()
    would_send = final.filter(pl.col("status") == "sent").height
    lines += [
        "",
        "## Totals",
        "",
        f"{final.height} qualifications of {name} decided in the replay: {would_send} would have been sent.",
        "What stopped the others, by the last decision about each:",
        "",
        "| status | reason | qualifications |",
        "|---|---|---:|",
    ]
    stopped = (
        final.filter(pl.col("status") != "sent")
        .group_by("status", "reason")
        .len()
        .sort(["len", "status", "reason"], descending=[True, False, False], nulls_last=True)
    )
    for status, reason, count in stopped.iter_rows():
        lines.append(f"| {status} | {reason or '-'} | {count} |")
    if stopped.is_empty():
        lines.append("| - | - | 0 |")
    failures = [(tick.as_of, failure) for tick in backtest.ticks for failure in tick.failures]
    if failures:
        lines += ["", "## Failed steps", ""]
        lines += [f"- {_minute(as_of)}: {failure}" for as_of, failure in failures]
    lines += [
        "",
        "Contacts are replayed as they are now (subscription status, email, timezone): "
        "the warehouse keeps no history of them.",
        "",
    ]
    return "\n".join(lines)
