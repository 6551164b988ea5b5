"""A send process to kill: one automation's send_automation() over a DuckDB file.

    python -m tests.faults.send_worker --build F [--qualifications N]
        a fresh warehouse: N welcome qualifications, some unsubscribed, without email,
        without a contact, or in the 20% holdout, so every kind of decision occurs
    python -m tests.faults.send_worker --warehouse F --email-url U --as-of T --batch-size N
        [--die {after-claim,after-send,before-mark}:K] [--compose-processes N]
        one send, as the send asset does it; --die makes the process SIGKILL itself at a
        chosen point (after the claim of batch K, after the backend took message K, right
        before the mark of batch K), so the worst cases are covered deterministically
    python -m tests.faults.send_worker --serve
        a fork server for many short-lived workers: every stdin line is a JSON object
        {"argv": [...], "kill_after": seconds or null}; it forks a worker with those
        arguments, SIGKILLs it after kill_after seconds if it is still running, and answers
        {"pid", "exit", "killed", "elapsed"} on stdout. Python and the send code are
        imported once, so a trial costs the send, not the interpreter's start-up.

Run from the project root (the package `dagster_project` must be importable).
Run by hand, run 300 random trials:  NUDGE_FAULT_TRIALS=300 python -m pytest -q tests/faults
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb

import dagster_project.send as send_module
from dagster_project import ledger
from dagster_project.automations import Automation, Policy, automation_from_node
from dagster_project.backends import EmailBackend, backend_from_url
from dagster_project.backends.base import Delivery
from dagster_project.send import SendConfig, send_automation

PROJECT_ROOT = Path(__file__).resolve().parents[2]
AS_OF = datetime(2026, 11, 1, 12)
SENDER = "Nudge Fitness <hello@nudge.example>"
HOLDOUT_PERCENT = 20
DIE_POINTS = ("after-claim", "after-send", "before-mark")

AUTOMATION: Automation = automation_from_node(
    {"unique_id": "model.nudge.trg_welcome", "resource_type": "model", "name": "trg_welcome", "schema": "triggers",
     "config": {"meta": {"nudge": {"send_window": "48h", "reentry": "once", "holdout_percent": HOLDOUT_PERCENT}}}}
)


def build_warehouse(path: Path, qualifications: int = 300) -> None:
    """Contacts and one welcome qualification each; every 20th is unsubscribed, every 20th
    (offset) has no email, every 25th qualification has no contact at all."""
    con = duckdb.connect(str(path))
    try:
        n = int(qualifications)
        con.execute(
            f"""
            create schema triggers; create schema staging; create schema intermediate;
            create table staging.stg_contacts as
                select 'c_' || lpad(i::varchar, 5, '0') as contact_id,
                       case when i % 20 = 7 then null else 'person' || i || '@example.com' end as email,
                       case when i % 20 = 3 then 'unsubscribed' else 'subscribed' end as status,
                       'Person' as first_name, 'No' || i as last_name, 'UTC' as timezone,
                       '{{}}' as properties, timestamp '2026-10-01' as updated_at
                from range({n}) t(i)
                where i % 25 <> 11;
            create table intermediate.int_events (
                event_id varchar, contact_id varchar, event_name varchar, occurred_at timestamp,
                is_syncing boolean
            );
            create table triggers.trg_welcome as
                select 'c_' || lpad(i::varchar, 5, '0') as contact_id, 'c_' || lpad(i::varchar, 5, '0') as trigger_key,
                       timestamp '2026-11-01 11:00' as qualified_at, timestamp '2026-11-01 11:00' as due_at,
                       '{{}}' as context
                from range({n}) t(i);
            """
        )
    finally:
        con.close()


def _die() -> None:
    # No cleanup of any kind: not a Python exception, not atexit, not a closed connection.
    os.kill(os.getpid(), signal.SIGKILL)


class _DyingBackend(EmailBackend):
    """The real backend, and a SIGKILL right after it has taken message number `at` (1-based)."""

    def __init__(self, inner: EmailBackend, at: int) -> None:
        self.inner, self.at, self.taken = inner, at, 0
        self.dedupes, self.description = inner.dedupes, inner.description

    def open(self) -> None:
        self.inner.open()

    def close(self) -> None:
        self.inner.close()

    def send(self, message: Any) -> Delivery:
        delivery = self.inner.send(message)
        self.taken += 1
        if self.taken == self.at:
            _die()
        return delivery


def _instrument(
    original: Callable[..., None], op: str, journal: Path | None, die_at: int | None, before: bool
) -> Callable[..., None]:
    """Wrap ledger.record or ledger.mark as send.py calls them (once per batch each).

    After every committed call, append the rows it wrote to `journal` (one JSON line), so
    the test can tell a write DuckDB lost from one that never happened. Die before or after
    call number `die_at`.
    """
    calls = 0

    def wrapper(con: Any, rows: Sequence[Any], **kwargs: Any) -> None:
        nonlocal calls
        calls += 1
        if before and calls == die_at:
            _die()
        original(con, rows, **kwargs)
        if journal is not None and rows:
            line = json.dumps({"op": op, "rows": {row.trigger_key: str(row.status) for row in rows}})
            with journal.open("a") as handle:  # flushed to the OS on close: a SIGKILL cannot lose it
                handle.write(line + "\n")
        if not before and calls == die_at:
            _die()

    return wrapper


def run(argv: Sequence[str]) -> dict[str, Any]:
    options = _parser().parse_args(argv)
    if options.build:
        build_warehouse(Path(options.build), options.qualifications)
        return {"built": options.build}
    backend = backend_from_url(options.email_url)
    point, _, number = (options.die or "").partition(":")
    if point and point not in DIE_POINTS:
        raise SystemExit(f"--die {options.die!r}: the point is one of {', '.join(DIE_POINTS)}")
    at = int(number) if point else None
    if point == "after-send":
        backend = _DyingBackend(backend, at or 1)
    journal = Path(options.journal) if options.journal else None
    # Forked workers start from the server's pristine module, so wrapping here never stacks.
    send_module.record = _instrument(  # type: ignore[assignment]
        ledger.record, "record", journal, at if point == "after-claim" else None, before=False
    )
    send_module.mark = _instrument(  # type: ignore[assignment]
        ledger.mark, "mark", journal, at if point == "before-mark" else None, before=True
    )
    config = SendConfig(
        templates_dir=PROJECT_ROOT / "templates",
        sender=SENDER,
        postal_address="1 Example Street",
        unsubscribe_url="https://nudge.example/unsubscribe",
        unsubscribe_mailto="unsubscribe@nudge.example",
        unsubscribe_secret="fault-secret",
        batch_size=options.batch_size,
        # The file trials kill inside batches of this size too (the file backend's batches are
        # larger by default).
        local_batch_size=options.batch_size,
        compose_processes=options.compose_processes,
    )
    if options.compose_processes:
        send_module.COMPOSE_IN_PROCESSES_FROM = 1  # workers however small the send
        # and ready from its first batch (a send does not wait for them to start)
        composers = send_module.Composers
        send_module.Composers = lambda processes: composers(processes).wait_until_ready()  # type: ignore[assignment]
    con = duckdb.connect(options.warehouse)
    try:
        with backend:
            report = send_automation(
                con, AUTOMATION, contacts_relation="staging.stg_contacts", events_relation="intermediate.int_events",
                backend=backend, config=config, as_of=datetime.fromisoformat(options.as_of),
                policy=Policy(cap_per_day=None, cap_per_week=None), marketing_automations=[AUTOMATION.name],
            )
    finally:
        con.close()
    return {"due": report.due, "sent": report.sent, "interrupted": report.interrupted}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tests.faults.send_worker", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build", metavar="FILE", help="create a fresh warehouse and exit")
    parser.add_argument("--qualifications", type=int, default=300)
    parser.add_argument("--warehouse", metavar="FILE")
    parser.add_argument("--email-url", default="file://data/outbox")
    parser.add_argument("--as-of", default=AS_OF.isoformat())
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--die", metavar="POINT:K", help=f"SIGKILL self at one of {', '.join(DIE_POINTS)}")
    parser.add_argument("--journal", metavar="FILE", help="append every committed ledger write (JSON lines)")
    parser.add_argument("--compose-processes", type=int, default=0, help="render in worker processes (composing.py)")
    parser.add_argument("--serve", action="store_true", help="fork server: JSON commands on stdin")
    return parser


def _child(argv: Sequence[str]) -> None:
    """In the forked child: run, then leave without touching the parent's Python state."""
    code = 0
    try:
        os.dup2(2, 1)  # stdout is the server's answer channel
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        print(json.dumps(run(argv)), file=sys.stderr, flush=True)
    except BaseException:  # noqa: BLE001  (report anything, then exit non-zero)
        traceback.print_exc()
        sys.stderr.flush()
        code = 1
    os._exit(code)


def serve() -> None:
    for line in sys.stdin:
        if not line.strip():
            continue
        command = json.loads(line)
        started = time.monotonic()
        pid = os.fork()
        if pid == 0:
            _child(command["argv"])
        # A pidfd: waiting with a timeout, and no risk of signalling a recycled pid (the
        # child is ours and unreaped until waitpid below).
        pidfd = os.pidfd_open(pid)
        killed = False
        try:
            kill_after = command.get("kill_after")
            ready, _, _ = select.select([pidfd], [], [], kill_after)
            if not ready and kill_after is not None:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                killed = True
        finally:
            os.close(pidfd)
        _, status = os.waitpid(pid, 0)
        exit_code = os.waitstatus_to_exitcode(status)
        answer = {"pid": pid, "exit": exit_code, "killed": killed and exit_code == -signal.SIGKILL,
                  "elapsed": time.monotonic() - started}
        print(json.dumps(answer), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--serve" in argv:
        serve()
        return 0
    print(json.dumps(run(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
