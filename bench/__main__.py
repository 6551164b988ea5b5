"""`make bench`: Nudge's speed and memory at a chosen size, each figure beside its lower bound.

    python -m bench [--sizes 1m,10m] [--huge] [--messages 20000]

For each size: the ingest rate from Parquet and from JSON Lines, a full tick on a cold
warehouse, the same models as one plain DuckDB script (the SQL bound), an incremental
tick after one more hour of events, a tick with nothing new, and the tick's peak memory.
Once: render and send throughput (file backend, local SMTP server) beside a bare Jinja2
loop, a bare loop writing the same files and a bare smtplib loop. Prints one table and
writes it as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

import duckdb
from rich.console import Console

from bench.data import SIZES, Dataset, dataset
from bench.figures import Figure, markdown, table
from bench.ingest import run_ingest_process
from bench.sending import SMTP_CONNECTIONS, bench_sending
from bench.set_aside import remove_set_aside, set_aside
from bench.sql_bound import compile_models, run_script, script
from bench.tick import run_tick_process
from dagster_project.dbt_assets import tick_target_path
from dagster_project.progress import progress_bar
from dagster_project.settings import NudgeSettings

REPO = Path(__file__).resolve().parent.parent
DBT_PROJECT = REPO / "dbt_project"
# Wide enough for the table when the output goes to a file or a CI log.
console = Console(width=None if Console().is_terminal else 200)


# The targets for the incremental tick: 15 s at 10M events of history, and at 100M at
# most 1.5 times that.
INCREMENTAL_TARGETS = {"10m": 15.0, "100m": 1.5 * 15.0}

# Each step logs a line as it starts, and moves the progress bar (drawn on a terminal only).
STEPS_PER_SIZE = 8
SENDING_STEPS = 2 + len(SMTP_CONNECTIONS)
_advance = None


def _log(message: str) -> None:
    console.print(f"[dim]{datetime.now():%H:%M:%S}[/dim] {message}", highlight=False)
    if _advance is not None:
        _advance(description=message.split(":")[0])


def _link_tree(source: Path, target: Path) -> None:
    """The cached landing files, hard-linked (so nothing is copied) into a run's own folder."""
    for path in sorted(source.rglob("*")):
        if path.is_file():
            destination = target / path.relative_to(source)
            destination.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, destination)
            except OSError:
                shutil.copy2(path, destination)


def _read_rate(reader: str, database: Path) -> float:
    """Events per second DuckDB alone reads the same files into a table in a database file, as
    the ingest does: the ingest bound (no checks, no reasons for bad rows: malformed lines are
    skipped). A file, not memory: at 100M the table would not fit in memory."""
    con = duckdb.connect(str(database))
    try:
        started = time.perf_counter()
        con.sql(f"create table events as select * from {reader}")
        ((rows,),) = con.sql("select count(*) from events").fetchall()
        seconds = time.perf_counter() - started
    finally:
        con.close()
        database.unlink(missing_ok=True)
    return rows / seconds


def _prepare_dbt(warehouse: Path) -> None:
    """Parse once for this warehouse, as `make prepare` does for the default one: the ticks
    then start from dbt's partial-parse state instead of parsing the project themselves."""
    import subprocess
    import sys

    env = {**os.environ, "NUDGE_WAREHOUSE": str(warehouse), "DBT_PROFILES_DIR": str(DBT_PROJECT)}
    subprocess.run([str(Path(sys.executable).with_name("dbt")), "parse", "--quiet",
                    "--target-path", str(tick_target_path(warehouse))], cwd=DBT_PROJECT, env=env, check=True)


def bench_size(data: Dataset, work: Path, figures: list[Figure]) -> None:
    """Measures one size, adding each figure to `figures` as soon as it is taken: a tick that
    fails part way (at 100M, models out of memory under the tick's limit) keeps the ingest's."""
    label = data.size.label
    counts = data.counts()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    _log(f"{label}: ingest rate from JSON Lines")
    jsonl = run_ingest_process(work / "jsonl.duckdb", data.jsonl)
    (work / "jsonl.duckdb").unlink()
    figures.append(Figure(label, "ingest, JSON Lines", jsonl.events_per_second, "events/s", _read_rate(f"read_json('{data.jsonl}/events/*.jsonl', format = 'newline_delimited', ignore_errors = true)", work / "read-bound.duckdb"),
                          "DuckDB read_json alone", target=200_000, higher_is_better=True))

    landing = work / "landing"
    _link_tree(data.history, landing)
    warehouse = work / "warehouse" / "warehouse.duckdb"
    warehouse.parent.mkdir()
    _log(f"{label}: ingest rate from Parquet ({counts['history_events']:,} events)")
    parquet = run_ingest_process(warehouse, landing)
    figures.append(Figure(label, "ingest, Parquet", parquet.events_per_second, "events/s", _read_rate(f"read_parquet('{landing}/events/*.parquet')", work / "read-bound.duckdb"),
                          "DuckDB read_parquet alone", target=1_000_000, higher_is_better=True))
    # A first tick over this history ingests it inside the tick: the tick's memory target holds.
    figures.append(Figure(label, "peak RSS of the ingest", max(jsonl.peak_rss_mb, parquet.peak_rss_mb), "MB", None, "",
                          target=1536.0 if label == "10m" else None,
                          detail=f"JSON Lines {jsonl.peak_rss_mb:,.0f} MB, Parquet {parquet.peak_rss_mb:,.0f} MB "
                                 "(contacts, then events, in a process of their own under the tick's DuckDB memory limit)"))

    env = {
        "NUDGE_WAREHOUSE": str(warehouse),
        "NUDGE_LANDING_DIR": str(landing),
        "NUDGE_EMAIL_URL": f"file://{work / 'outbox'}",
        "DAGSTER_HOME": str(work / "dagster"),
        "DBT_PROFILES_DIR": str(DBT_PROJECT),
    }
    (work / "dagster").mkdir()
    shutil.copy(REPO / ".dagster" / "dagster.yaml", work / "dagster" / "dagster.yaml")
    _log(f"{label}: preparing dbt for this warehouse (once, not timed)")
    _prepare_dbt(warehouse)

    _log(f"{label}: full tick on the cold warehouse as of {data.cold_as_of:%Y-%m-%d %H:%M} UTC")
    cold = run_tick_process(data.cold_as_of, env)
    _check(cold, "full tick")

    _log(f"{label}: the same models as one DuckDB script (SQL bound)")
    bound_warehouse = work / "bound" / "warehouse.duckdb"
    bound_warehouse.parent.mkdir()
    shutil.copy(warehouse, bound_warehouse)
    manifest = compile_models(DBT_PROJECT, bound_warehouse, data.cold_as_of)
    sql_seconds, _ = run_script(bound_warehouse, script(manifest))
    # Not the bound, but where a tick's SQL stands: the same script under the memory limit the
    # tick's DuckDB connections and dbt's have (the peak RSS target needs one).
    tick_memory_limit = NudgeSettings().duckdb_memory_limit
    _log(f"{label}: the same script under the tick's DuckDB memory limit ({tick_memory_limit})")
    shutil.copy(warehouse, bound_warehouse)
    limited_seconds, _ = run_script(bound_warehouse, script(manifest), memory_limit=tick_memory_limit)
    bound_warehouse.unlink()
    figures.append(Figure(label, "full tick (cold warehouse)", cold.wall_seconds, "s", sql_seconds,
                          "models as one DuckDB script", target=2 * sql_seconds + 10,
                          detail=f"{_where(cold)}; the script under the tick's memory limit of "
                                 f"{tick_memory_limit}: {limited_seconds:.1f} s"))

    _log(f"{label}: incremental tick after one more hour ({counts['next_hour_events']:,} events)")
    _link_tree(data.next_hour.parent, landing / "events")
    incremental = run_tick_process(data.end, env)
    _check(incremental, "incremental tick")
    figures.append(Figure(label, "incremental tick (+1 hour)", incremental.wall_seconds, "s", None, "",
                          target=INCREMENTAL_TARGETS.get(label), detail=_where(incremental)))
    # The same hour again, nothing new landed: what a tick costs before it reads anything new, so
    # the incremental tick's figure splits into that fixed part and what the hour's events add.
    _log(f"{label}: a tick with nothing new (the same hour again)")
    nothing_new = run_tick_process(data.end, env)
    _check(nothing_new, "tick with nothing new")
    figures.append(Figure(label, "tick with nothing new (same hour again)", nothing_new.wall_seconds, "s", None, "",
                          detail=_where(nothing_new)))
    figures.append(Figure(label, "peak RSS of a tick", max(cold.peak_rss_mb, incremental.peak_rss_mb), "MB", None, "",
                          target=1536.0 if label == "10m" else None,
                          detail=f"cold {cold.peak_rss_detail}; incremental {incremental.peak_rss_detail}"))
    set_aside(work / "outbox", work.parent)


def _check(run, what: str) -> None:  # noqa: ANN001
    if not run.success:
        raise SystemExit(f"the {what} failed (the figures so far are written): {run.failures}")


def _where(run) -> str:  # noqa: ANN001
    """Where a tick's time went: its steps, the models' own SQL inside dbt, and the rest."""
    steps = run.step_seconds
    ingest = steps.get("raw__events", 0) + steps.get("raw__contacts", 0)
    dbt_steps = steps.get("nudge_models", 0) + steps.get("nudge_reporting", 0)
    send = steps.get("send", 0)
    rest = run.wall_seconds - ingest - dbt_steps - send
    return (f"ingest {ingest:.1f} s; dbt {dbt_steps:.1f} s (models' SQL {run.dbt_model_seconds:.1f} s, "
            f"dbt start-up and tests {dbt_steps - run.dbt_model_seconds:.1f} s); send {send:.1f} s "
            f"({run.sent:,} sent); process start-up and Dagster {rest:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(prog="make bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1m,10m", help="comma-separated: 100k (a quick look), 1m, 10m, 100m")
    parser.add_argument("--huge", action="store_true", help="add the 100M-event size")
    parser.add_argument("--messages", type=int, default=20_000, help="messages for the send and render figures")
    parser.add_argument("--cache", type=Path, default=REPO / "data" / "bench" / "cache")
    parser.add_argument("--out", type=Path, default=REPO / "data" / "bench" / "results.json")
    args = parser.parse_args()
    # Dagster wants DAGSTER_HOME absolute, and the tick runs in a child process of its own.
    args.out, args.cache = args.out.resolve(), args.cache.resolve()
    labels = [label.strip() for label in args.sizes.split(",") if label.strip()]
    if args.huge and "100m" not in labels:
        labels.append("100m")
    unknown = [label for label in labels if label not in SIZES]
    if unknown:
        raise SystemExit(f"unknown size {', '.join(unknown)}: choose from {', '.join(SIZES)}")

    global _advance
    figures: list[Figure] = []
    steps = STEPS_PER_SIZE * len(labels) + (SENDING_STEPS if args.messages else 0)
    with progress_bar(console, "make bench", steps) as advance:
        _advance = advance
        try:
            for label in labels:
                data = dataset(SIZES[label], args.cache, log=console.print)
                try:
                    bench_size(data, args.out.parent / f"run-{label}", figures)
                finally:
                    _write(args.out, figures)
            if args.messages and labels:
                # Sending does not depend on the history's size: once, on the first size's warehouse.
                built = args.out.parent / f"run-{labels[0]}" / "warehouse" / "warehouse.duckdb"
                figures.extend(bench_sending(args.out.parent / "send", built, DBT_PROJECT, REPO / "templates",
                                             args.messages, log=_log))
                _write(args.out, figures)
        finally:
            _advance = None
            remove_set_aside(args.out.parent)

    console.print(table(figures))
    console.print(f"Written to {args.out} and {args.out.with_suffix('.md')}")


def _write(out: Path, figures: list[Figure]) -> None:
    """The figures so far, as JSON and as the README's Markdown table: rewritten after each
    size, so a long run stopped early keeps what it measured."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "duckdb": duckdb.__version__,
                    "load_average": os.getloadavg(), "duckdb_memory_limit": NudgeSettings().duckdb_memory_limit},
        "figures": [figure.as_json() for figure in figures],
        "where_the_time_goes": {f"{figure.size} {figure.name}": figure.detail for figure in figures if figure.detail},
    }, indent=2))
    out.with_suffix(".md").write_text(markdown(figures) + "\n")


if __name__ == "__main__":
    main()
