"""`nudge`: a thin command line over the same Dagster definitions the schedule runs."""

from __future__ import annotations

import io
import json
import shutil
import sys
from contextlib import nullcontext, redirect_stdout
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from dagster_project.clock import format_as_of, parse_as_of
from dagster_project.progress import progress_bar
from dagster_project.settings import NudgeSettings

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
# Piped into a file or CI log, rich would wrap the tables at 80 columns.
console = Console(width=None if sys.stdout.isatty() else 150)

AsOf = Annotated[Optional[str], typer.Option("--as-of", help="Evaluate as of this ISO 8601 instant (default: now).")]


def _settings() -> NudgeSettings:
    return NudgeSettings().resolved()


def _as_of(text: str | None) -> datetime:
    if text is None:
        return datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    try:
        return parse_as_of(text)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None


def _print_tick(tick, settings: NudgeSettings) -> None:  # noqa: ANN001 (TickResult; imported lazily)
    from dagster_project.backends import redact_url

    events, contacts = tick.assets.get("raw/events", {}), tick.assets.get("raw/contacts", {})
    table = Table(title=f"Tick as of {format_as_of(tick.as_of)} UTC", show_lines=False)
    for column in ("", "loaded", "duplicates", "rejected"):
        table.add_column(column, justify="right" if column else "left")
    for name, meta in (("events", events), ("contacts", contacts)):
        table.add_row(name, str(meta.get("rows_loaded", 0)), str(meta.get("rows_duplicate", 0)), str(meta.get("rows_rejected", 0)))
    console.print(table)

    sends = Table(title="Automations")
    columns = ("automation", "due", "sent", "held (quiet hours)", "held out", "failed", "skipped", "skipped by reason")
    for column in columns:
        sends.add_column(column, justify="left" if column in ("automation", "skipped by reason") else "right")
    for key, meta in sorted(tick.assets.items()):
        if not key.startswith("send_"):
            continue
        reasons = ", ".join(f"{name[len('skipped_'):]} {count}" for name, count in sorted(meta.items())
                            if name.startswith("skipped_") and count)
        sends.add_row(key[len("send_"):], *(str(meta.get(name, 0)) for name in (
            "due", "sent", "held_for_quiet_hours", "held_out", "failed", "skipped")), reasons or "-")
    console.print(sends)
    console.print(f"Emails went to: {redact_url(settings.email_url.get_secret_value())}")
    console.print(f"Warehouse: {settings.warehouse}")
    console.print(f"Tick wall time: {tick.seconds:.1f} s")
    if settings.uses_dev_secret:
        console.print(
            "Unsubscribe links are signed with the development secret: set NUDGE_UNSUBSCRIBE_SECRET in production.",
            style="yellow",
            markup=False,
        )
    for key, meta in sorted(tick.assets.items()):
        if key.startswith("send_") and meta.get("breaker_tripped") and not meta.get("breaker_released_by"):
            console.print(Text.assemble(("BREAKER ", "red"), f"{key[len('send_'):]}: {meta.get('breaker_reason')}"),
                          soft_wrap=True)
    for failure in tick.failures:
        console.print(Text.assemble(("FAILED ", "red"), failure))


Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Show Dagster's and dbt's step logs.")]


def _tick(as_of: datetime, settings: NudgeSettings, verbose: bool, spinner: bool = True):  # noqa: ANN202
    from dagster_project.definitions import build_defs
    from dagster_project.tick import run_tick

    defs = build_defs(settings)
    if verbose:
        return run_tick(defs, as_of, log_level="DEBUG")
    # dagster-dbt echoes dbt's log to stdout (the UI keeps it as the step's compute log); here
    # only the summary is wanted, and failures are reported with it.
    from dagster_project.send import progress_shown_to

    running = f"Running a tick as of {format_as_of(as_of)} UTC ..."
    status = console.status(running) if spinner else nullcontext()
    # A long send shows how far it is in the spinner's line.
    shown = progress_shown_to(lambda line: status.update(f"{running} {line}")) if spinner else nullcontext()
    with status, shown, redirect_stdout(io.StringIO()):
        return run_tick(defs, as_of, log_level="ERROR")


@app.command()
def run(as_of: AsOf = None, verbose: Verbose = False) -> None:
    """Run one tick in-process: ingest, build the models, send what is due."""
    settings = _settings()
    tick = _tick(_as_of(as_of), settings, verbose)
    _print_tick(tick, settings)
    raise typer.Exit(0 if tick.success else 1)


@app.command()
def demo(
    contacts: Annotated[int, typer.Option(help="How many contacts the sample app has.")] = 2000,
    seed: Annotated[int, typer.Option(help="Seed of the sample data.")] = 7,
    fresh: Annotated[bool, typer.Option(help="Start from an empty warehouse, landing folder and outbox.")] = True,
    verbose: Verbose = False,
) -> None:
    """Write sample data, run the ticks of a day before the data's end and at it, and print a summary."""
    from dagster_project.sample_data import DEFAULT_END, generate

    settings = _settings()
    if fresh:
        for path in (settings.warehouse, settings.landing_dir, _outbox(settings)):
            _remove(path)
    end = parse_as_of(DEFAULT_END.isoformat())
    # Two ticks a day apart, not one: a single catch-up tick would see a welcome and the
    # next day's follow-up due at once, and the frequency cap would keep only the first.
    first, second = end - timedelta(days=1), end
    succeeded = True
    with progress_bar(console, "writing sample data", 5) as advance:
        summary = generate(settings.landing_dir, contacts=contacts, seed=seed)
        console.print(f"Sample data: {summary.contacts} contacts, {summary.events} events in {settings.landing_dir}")
        for as_of in (first, second):
            advance(description=f"tick as of {format_as_of(as_of)} UTC")
            tick = _tick(as_of, settings, verbose, spinner=False)
            _print_tick(tick, settings)
            succeeded = succeeded and tick.success
            if as_of == first:
                # What recipients did with the first tick's emails by the second tick, so the
                # report has opens, clicks and conversions to show.
                from dagster_project.sample_engagement import write_engagement

                advance(description="writing sample engagement")
                engagement = write_engagement(
                    settings.warehouse, settings.landing_dir, settings.dbt_project_dir,
                    settings.dbt_project_dir / "target" / "manifest.json", until=second, seed=seed,
                )
                console.print(f"Sample engagement: {engagement.describe()}", markup=False, highlight=False, soft_wrap=True)
        advance(description="writing the report")
        if succeeded:
            _write_report(settings, out=None, open_browser=False)
        advance()
    raise typer.Exit(0 if succeeded else 1)


def _outbox(settings: NudgeSettings) -> Path | None:
    url = settings.email_url.get_secret_value()
    return Path(url[len("file://"):]) if url.startswith("file://") else None


def _remove(path: Path | None) -> None:
    if path is None or not path.exists():
        return
    if path.is_dir():
        shutil.rmtree(path)
    else:
        for sibling in path.parent.glob(path.name + "*"):  # the .wal and .lock beside a DuckDB file
            sibling.unlink()


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on; put a TLS reverse proxy in front.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = 8000,
) -> None:
    """Serve the one-click unsubscribe endpoint (at the path of NUDGE_UNSUBSCRIBE_URL) and /healthz."""
    import logging

    import uvicorn

    from dagster_project.serve import create_app, unsubscribe_path

    settings = _settings()
    if settings.uses_dev_secret:
        console.print(
            "Unsubscribe links are checked with the development secret: set NUDGE_UNSUBSCRIBE_SECRET in production.",
            style="yellow",
            markup=False,
        )
    console.print(
        f"Unsubscribe endpoint at {unsubscribe_path(settings.unsubscribe_url)}; journal {settings.unsubscribe_journal}",
        markup=False,
        highlight=False,
    )
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(message)s")
    # No access log: every request line carries a token that unsubscribes someone.
    uvicorn.run(create_app(settings), host=host, port=port, access_log=False, log_level="info")


@app.command()
def status(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Summarise the ledger: messages per automation, status and reason."""
    from dagster_project.ledger import LEDGER_TABLE, ensure_ledger, status_counts
    from dagster_project.warehouse import connect

    settings = _settings()
    with connect(settings.warehouse, settings.lock_timeout_seconds) as con:
        ensure_ledger(con)
        counts = status_counts(con)
        unknown = con.execute(
            f"select automation, trigger_key, contact_id, error from {LEDGER_TABLE} where status = 'unknown' "
            "order by automation, trigger_key"
        ).fetchall()
    if as_json:
        rows = [{"automation": a, "status": s, "reason": r, "count": n} for a, s, r, n in counts]
        unknown_rows = [{"automation": a, "trigger_key": k, "contact_id": c, "error": e} for a, k, c, e in unknown]
        typer.echo(json.dumps({"messages": rows, "unknown": unknown_rows}, indent=2))
        return
    table = Table(title=f"Ledger {LEDGER_TABLE}")
    for column in ("automation", "status", "reason", "messages"):
        table.add_column(column, justify="right" if column == "messages" else "left")
    for automation, state, reason, count in counts:
        table.add_row(automation, state, reason or "", str(count))
    console.print(table)
    for automation, key, contact, error in unknown:
        console.print(Text.assemble(("unknown ", "yellow"), f"{automation} {key} (contact {contact}): {error}"))


breaker_app = typer.Typer(no_args_is_help=True, help="The circuit breaker: see why an automation stopped, release it.")
app.add_typer(breaker_app, name="breaker")


@breaker_app.command("release")
def breaker_release(
    automation: Annotated[str, typer.Argument(help="The automation whose next tick may send despite the breaker.")],
    reason: Annotated[Optional[str], typer.Option(help="Why: kept with the release, shown by the check.")] = None,
    by: Annotated[Optional[str], typer.Option(help="Who releases it (default: the login name).")] = None,
) -> None:
    """Let AUTOMATION's next tick send once despite a tripped circuit breaker."""
    import getpass

    from dagster_project import breaker
    from dagster_project.automations import SAFE_NAME
    from dagster_project.warehouse import connect

    if not SAFE_NAME.match(automation):
        raise typer.BadParameter(f"{automation!r} is not an automation name", param_hint="AUTOMATION")
    settings = _settings()
    with connect(settings.warehouse, settings.lock_timeout_seconds) as con:
        done = breaker.release(con, automation, by=by or getpass.getuser(), reason=reason,
                               now=datetime.now(UTC).replace(tzinfo=None))
    console.print(f"Released {automation} for its next tick (by {done.released_by}).", markup=False, highlight=False)


@breaker_app.command("status")
def breaker_status(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Each automation's last tick: newly due, trailing median, tripped or not, and any release waiting."""
    from dagster_project import breaker
    from dagster_project.warehouse import connect

    settings = _settings()
    with connect(settings.warehouse, settings.lock_timeout_seconds) as con:
        rows = breaker.status(con)
    if as_json:
        typer.echo(json.dumps([
            {"automation": r.automation, "as_of": format_as_of(r.as_of) if r.as_of else None, "due": r.due,
             "trailing_median": r.trailing_median, "tripped": r.tripped, "released": r.released, "reason": r.reason,
             "pending_release": None if r.pending_release is None else {
                 "released_by": r.pending_release.released_by, "reason": r.pending_release.reason,
                 "released_at": format_as_of(r.pending_release.released_at)}}
            for r in rows
        ], indent=2))
        return
    table = Table(title="Circuit breaker")
    for column in ("automation", "last tick", "newly due", "trailing median", "state", "pending release"):
        table.add_column(column, justify="right" if column in ("newly due", "trailing median") else "left")
    for r in rows:
        state = "released" if r.tripped and r.released else "TRIPPED" if r.tripped else "ok"
        median = "-" if r.trailing_median is None else f"{r.trailing_median:g}"
        waiting = "-" if r.pending_release is None else f"by {r.pending_release.released_by}"
        table.add_row(r.automation, format_as_of(r.as_of) if r.as_of else "-", str(r.due), median, state, waiting)
    console.print(table)
    for r in rows:
        if r.tripped and not r.released:
            console.print(Text.assemble(("TRIPPED ", "red"), f"{r.automation}: {r.reason}"), soft_wrap=True)


@app.command()
def preview(
    automation: Annotated[str, typer.Argument(help="The automation, e.g. cart_abandoned.")],
    contact: Annotated[
        Optional[str],
        typer.Option(help="A contact id; default: the latest qualified contact, or a sample contact when none is."),
    ] = None,
    out: Annotated[Optional[Path], typer.Option(help="Where to write the HTML part.")] = None,
    open_browser: Annotated[bool, typer.Option("--open", help="Open the HTML in the default browser.")] = False,
) -> None:
    """Render an automation's email for one contact without sending anything, and write its HTML to a file."""
    from dagster_project.preview import render_preview

    settings = _settings()
    try:
        rendered = render_preview(settings, automation, contact)
    except LookupError as error:
        console.print(str(error), style="red", markup=False, highlight=False)
        raise typer.Exit(1) from None
    from dagster_project.backends.file import safe_filename

    # The contact id is data: it names a file only through safe_filename, never as a path.
    path = (out or settings.warehouse.parent / "previews" / safe_filename(f"{automation}-{rendered.contact_id}.html")).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(rendered.email.html, encoding="utf-8")
    if rendered.is_sample:
        console.print(
            f"Nobody qualifies for {automation} yet: rendered for a sample contact with an empty context.",
            style="yellow", markup=False, highlight=False, soft_wrap=True,
        )
    console.print(Text.assemble(("Subject: ", "bold"), rendered.email.subject))
    # The email's own text, as is: never read as rich markup, never re-wrapped (links must stay whole).
    console.print(rendered.email.text, markup=False, highlight=False, soft_wrap=True)
    console.print(f"HTML written to {path}", markup=False, highlight=False, soft_wrap=True)
    if open_browser:
        _open_in_browser(path)


def _write_report(settings: NudgeSettings, out: Path | None, open_browser: bool) -> Path:
    from dagster_project.report import ReportUnavailable, write_report

    path = (out or settings.warehouse.parent / "report.html").resolve()
    try:
        write_report(settings.warehouse, path)
    except ReportUnavailable as error:
        console.print(str(error), style="red", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    console.print(f"Report written to {path} ({path.stat().st_size // 1024} KB)", markup=False, highlight=False,
                  soft_wrap=True)
    if open_browser:
        _open_in_browser(path)
    return path


def _open_in_browser(path: Path) -> None:
    import webbrowser

    if not webbrowser.open(path.resolve().as_uri()):
        console.print("No browser found to open it; open the file above yourself.", style="yellow")


Open = Annotated[bool, typer.Option("--open", help="Open the file in the default browser.")]


@app.command()
def report(
    out: Annotated[Optional[Path], typer.Option(help="The HTML file to write; default: report.html beside the warehouse.")] = None,
    open_browser: Open = False,
) -> None:
    """Write the reporting models as one self-contained HTML file (charts included, opens offline)."""
    _write_report(_settings(), out, open_browser)


@app.command("sample-data")
def sample_data(
    contacts: Annotated[int, typer.Option()] = 2000,
    days: Annotated[int, typer.Option()] = 40,
    seed: Annotated[int, typer.Option()] = 7,
    out: Annotated[Optional[Path], typer.Option(help="Default: NUDGE_LANDING_DIR.")] = None,
) -> None:
    """Write landing files of the sample fitness-and-shop app."""
    from dagster_project.sample_data import generate

    target = out or _settings().landing_dir
    summary = generate(target, contacts=contacts, days=days, seed=seed)
    console.print(f"{summary.contacts} contacts and {summary.events} events written to {target}")


@app.command()
def backtest(
    automation: Annotated[str, typer.Argument(help="The automation the report is about, e.g. cart_abandoned.")],
    start: Annotated[str, typer.Option("--from", help="The first tick to replay, ISO 8601 (UTC if no offset).")],
    end: Annotated[str, typer.Option("--to", help="The last tick to replay, inclusive.")],
    every: Annotated[str, typer.Option(help="Time between replayed ticks: 1h (the schedule's), 6h, 1d ...")] = "1h",
    out: Annotated[
        Optional[Path], typer.Option(help="Output folder; default data/backtests/<automation>_<from>_<to>/.")
    ] = None,
    keep_warehouse: Annotated[
        bool, typer.Option(help="Keep the replay's warehouse in the output folder (for `nudge explain --warehouse`).")
    ] = False,
    verbose: Verbose = False,
) -> None:
    """Replay past ticks on a copy of the warehouse, sending nothing: who would have got AUTOMATION, and why not the others."""
    from dagster_project.backtest import BacktestError, run_backtest
    from dagster_project.durations import parse_duration

    first, last = _given_as_of(start, "--from"), _given_as_of(end, "--to")
    try:
        interval = parse_duration(every)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--every") from None

    def progress(index: int, count: int, tick, decided) -> None:  # noqa: ANN001 (TickResult, rows)
        advance(description=f"replayed {format_as_of(tick.as_of)} UTC")
        would = sum(1 for row in decided if row["status"] == "sent")
        console.print(
            f"tick {index + 1}/{count} as of {format_as_of(tick.as_of)} UTC: {automation} would send {would}, "
            f"{len(decided) - would} other decisions ({tick.seconds:.1f} s)",
            markup=False,
            highlight=False,
        )
        for failure in tick.failures:
            console.print(Text.assemble(("FAILED ", "red"), failure))

    settings = _settings()
    console.print(
        f"Replaying the ticks from {format_as_of(first)} to {format_as_of(last)} UTC every {every} on a copy of "
        f"{settings.warehouse} (taken when no tick is writing it); nothing is sent.",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    ticks = int((last - first) / interval) + 1 if last >= first else None
    try:
        with progress_bar(console, "replaying", ticks) as advance:
            result = run_backtest(
                settings, automation, first, last, interval, out_dir=out, keep_warehouse=keep_warehouse,
                log_level="DEBUG" if verbose else "ERROR", quiet=not verbose, on_tick=progress,
            )
    except BacktestError as error:
        console.print(str(error), style="red", markup=False, highlight=False)
        raise typer.Exit(1) from None
    console.print(result.report, markup=False, highlight=False, soft_wrap=True)
    for kind, path in result.files.items():
        console.print(f"{kind}: {path}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(0 if result.success else 1)


def _given_as_of(text: str, option: str) -> datetime:
    try:
        return parse_as_of(text)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint=option) from None


@app.command()
def explain(
    contact: Annotated[str, typer.Argument(help="The contact id.")],
    automation: Annotated[Optional[str], typer.Argument(help="One automation (default: every one).")] = None,
    as_of: Annotated[
        Optional[str], typer.Option("--as-of", help="Only qualifications and decisions at or before this instant.")
    ] = None,
    warehouse: Annotated[
        Optional[Path], typer.Option(help="Another warehouse file, e.g. a backtest's kept copy.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Why a contact did or did not get each automation's email, from the trigger tables and the ledger."""
    from dagster_project.explain import explain_contact

    settings = _settings()
    if warehouse is not None:
        settings = settings.model_copy(update={"warehouse": warehouse.resolve()})
    try:
        found = explain_contact(settings, contact, automation, _given_as_of(as_of, "--as-of") if as_of else None)
    except LookupError as error:
        console.print(str(error), style="red", markup=False, highlight=False)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps(found.to_json(), indent=2))
        return
    console.print(found.headline, markup=False, highlight=False, soft_wrap=True)
    for explanation in found.explanations:
        console.print(explanation.sentence, markup=False, highlight=False, soft_wrap=True)


if __name__ == "__main__":
    app()
