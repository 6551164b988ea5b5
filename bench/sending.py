"""Render and send throughput through Nudge's own send path, beside bare loops.

The workload: `messages` fresh qualifications of the transactional workout_completed
automation (real trigger contexts and contacts from a benchmarked warehouse, new
trigger keys), all due now. `send_automation` does for them what a tick does: the
candidates query, the policies, render, compose, claim in the ledger, hand over,
mark. Bounds: a bare Jinja2 loop over the same template files and variables; a bare loop
writing the same messages' bytes as files into a fresh folder beside the outbox, as the file
backend writes them (aside, then renamed; the filesystem synced once a batch); and a bare
smtplib loop over one connection sending the same messages to the same server; beside the
send over several connections, the same loop over as many (the server's own pace).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import smtplib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import time as clock_time
from datetime import timedelta
from email import policy as email_policy
from pathlib import Path

import duckdb
import jinja2

from bench.figures import Figure
from bench.set_aside import set_aside
from bench.smtp_sink import smtp_sink
from dagster_project.automations import Automation, Policy, project_automations
from dagster_project.backends import backend_from_url
from dagster_project.backends.base import EmailBackend
from dagster_project.backends.file import FileBackend, sync_filesystem
from dagster_project.composing import message_for, template_variables
from dagster_project.ledger import LEDGER_TABLE
from dagster_project.policies import Candidate
from dagster_project.rendering import EmailTemplate
from dagster_project.send import SendConfig, send_automation
from dagster_project.settings import NudgeSettings
from dagster_project.collector import objects_so_far_frozen

AUTOMATION = "workout_completed"
BURST = '"bench"."trg_burst"'
SMTP_CONNECTIONS = (1, 4)
BARE_SMTP_MESSAGES = 5000


def _config(templates: Path) -> SendConfig:
    return SendConfig(
        templates_dir=templates, sender="Nudge Fitness <hello@nudge.example>",
        postal_address="1 Example Street, Springfield", unsubscribe_url="https://nudge.example/unsubscribe",
        unsubscribe_mailto="unsubscribe@nudge.example", unsubscribe_secret="bench",
        # As a tick on this machine would send (NUDGE_COMPOSE_PROCESSES, by default one where a core is spare).
        compose_processes=NudgeSettings().compose_processes,
    )


def _burst(con: duckdb.DuckDBPyConnection, as_of, messages: int) -> int:  # noqa: ANN001
    """`messages` qualifications due now, made of real workouts of subscribed contacts."""
    con.sql("create schema if not exists bench")
    con.sql(f"""
        create or replace table {BURST} as
        select t.contact_id, 'bench:' || row_number() over (order by t.trigger_key) as trigger_key,
               $due as qualified_at, $due as due_at, t.context
        from triggers.trg_workout_completed as t
        join staging.stg_contacts as c using (contact_id)
        where c.status = 'subscribed' and c.email is not null
        order by t.trigger_key
        limit $messages
    """, params={"due": as_of - timedelta(minutes=5), "messages": messages})
    ((rows,),) = con.sql(f"select count(*) from {BURST}").fetchall()
    return int(rows)


def _fresh_ledger(con: duckdb.DuckDBPyConnection) -> None:
    con.sql(f"drop table if exists {LEDGER_TABLE}")


def _send(con, automation: Automation, backend: EmailBackend, config: SendConfig, as_of) -> tuple[float, int]:  # noqa: ANN001
    _fresh_ledger(con)
    # What the bench wrote before (the ticks' gigabytes, tens of thousands of .eml files) may still be
    # on its way to disk: each batch's syncfs and each ledger commit's fsync would wait for it. Written
    # out first, it is not billed to the send. (What it removed is set aside instead: bench/set_aside.py.)
    os.sync()
    backend.open()
    # As a tick sends: with what was loaded before kept out of the collector's full passes.
    with objects_so_far_frozen():
        started = time.perf_counter()
        try:
            report = send_automation(
                con, automation, contacts_relation='"staging"."stg_contacts"',
                events_relation='"intermediate"."int_events"', backend=backend, config=config, as_of=as_of,
                # quiet hours off: the figure is the send path's speed, not the clock's
                policy=Policy(quiet_start=clock_time(0), quiet_end=clock_time(0)), marketing_automations=[],
            )
        finally:
            backend.close()
        seconds = time.perf_counter() - started
    ((sent,),) = con.sql(f"select count(*) from {LEDGER_TABLE} where status = 'sent'").fetchall()
    if sent != report.sent or report.sent != report.due:
        raise RuntimeError(f"the ledger says {sent} sent, the send said {report.sent} of {report.due} due")
    return report.sent / seconds, report.sent


def _candidates(con: duckdb.DuckDBPyConnection) -> list[Candidate]:
    rows = con.sql(f"""
        select t.contact_id, t.trigger_key, t.qualified_at, t.due_at, t.context, true as has_contact,
               c.email, c.status as contact_status, c.first_name, c.last_name, c.timezone, c.properties,
               null as last_entered_at, null as ledger_status, 0 as attempts
        from {BURST} as t join staging.stg_contacts as c using (contact_id)
        order by t.trigger_key
    """).to_arrow_table().to_pylist()
    return [Candidate(**row) for row in rows]


def _render_rates(templates: Path, automation: Automation, config: SendConfig, candidates: list[Candidate], as_of) -> tuple[float, float]:  # noqa: ANN001
    """Messages per second: Nudge's EmailTemplate, and a bare Jinja2 loop over the same files."""
    variables = [template_variables(candidate, automation, config, as_of) for candidate in candidates]
    template = EmailTemplate.load(templates, automation.template, category=automation.category)
    started = time.perf_counter()
    for values in variables:
        template.render(values)
    ours = len(variables) / (time.perf_counter() - started)

    # The same files and options, without the sandbox, CSS inlining or the link check.
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(templates), autoescape=jinja2.select_autoescape(["html"]),
                             trim_blocks=True, lstrip_blocks=True, auto_reload=False)
    env.filters.update(_filters())
    subject, html, text = (env.get_template(f"{automation.template}/{name}") for name in ("subject.txt", "body.html", "body.txt"))
    started = time.perf_counter()
    for values in variables:
        rendered_subject = subject.render(values)
        html.render(values, subject=rendered_subject)
        text.render(values, subject=rendered_subject)
    bare = len(variables) / (time.perf_counter() - started)
    return ours, bare


def _filters() -> dict[str, Callable]:
    from dagster_project.rendering import money, number

    return {"money": money, "number": number}


def _bare_file_rate(folder: Path, messages: list[tuple[str, bytes]], batch: int) -> float:
    """Files per second: `messages` (name, bytes) written into `folder` as the file backend writes a
    message (a new file aside, then renamed into place), the filesystem synced every `batch` files.
    On this machine's ext4 (no journal) a new file's inode skips over every one freed in the last
    minute (several, while its block is not yet written back): what else was just removed sets the
    pace, so this is measured right beside the send."""
    folder.mkdir(parents=True)
    os.sync()
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        started = time.perf_counter()
        for count, (name, data) in enumerate(messages, start=1):
            temporary = f".{name}.tmp"
            file = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=descriptor)
            try:
                os.write(file, data)
            finally:
                os.close(file)
            os.replace(temporary, name, src_dir_fd=descriptor, dst_dir_fd=descriptor)
            if count % batch == 0 or count == len(messages):
                sync_filesystem(folder, descriptor)
        return len(messages) / (time.perf_counter() - started)
    finally:
        os.close(descriptor)


def _bare_smtp_rate(port: int, messages: list[bytes], sender: str, recipients: list[str], connections: int = 1) -> float:
    """smtplib alone, the same messages already rendered, over `connections` connections (a thread
    each, the messages dealt out in turn): on one, the bound; on several, the server's own pace."""
    clients = [smtplib.SMTP("127.0.0.1", port) for _ in range(connections)]

    def send(client: smtplib.SMTP, turn: int) -> None:
        for data, recipient in zip(messages[turn::connections], recipients[turn::connections]):
            client.sendmail(sender, [recipient], data)

    started = time.perf_counter()
    with ThreadPoolExecutor(connections) as pool:
        for sent in [pool.submit(send, client, turn) for turn, client in enumerate(clients)]:
            sent.result()
    seconds = time.perf_counter() - started
    for client in clients:
        client.quit()
    return len(messages) / seconds


def bench_sending(work: Path, source_warehouse: Path, dbt_project: Path, templates: Path, messages: int, *, log) -> list[Figure]:  # noqa: ANN001
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    warehouse = work / "warehouse.duckdb"
    shutil.copy(source_warehouse, warehouse)
    automations, _ = project_automations(dbt_project, dbt_project / "target" / "manifest.json")
    automation = next(a for a in automations if a.name == AUTOMATION)
    automation = dataclasses.replace(automation, relation=BURST)
    config = _config(templates)
    con = duckdb.connect(str(warehouse))
    try:
        ((as_of,),) = con.sql("select max(occurred_at) from intermediate.int_events").fetchall()
        count = _burst(con, as_of, messages)
        candidates = _candidates(con)
        log(f"render: {count:,} messages")
        rendered, bare_render = _render_rates(templates, automation, config, candidates, as_of)
        figures = [Figure("-", "render", rendered, "msg/s", bare_render, "bare Jinja2 loop", target=0.8 * bare_render,
                          higher_is_better=True)]

        # The bare loops' messages: the same ones, rendered and composed before any clock starts.
        template = EmailTemplate.load(templates, automation.template, category=automation.category)
        composed = [message_for(candidate, automation, template, config, as_of, as_of) for candidate in candidates]
        files = [(FileBackend.names(message)[1], message.as_bytes(policy=email_policy.SMTP)) for message in composed]

        log(f"send to the file backend: {count:,} messages")
        file_rate, _ = _send(con, automation, backend_from_url(f"file://{work / 'outbox'}"), config, as_of)
        bare_files = _bare_file_rate(work / "bare-outbox" / AUTOMATION, files, config.local_batch_size)
        figures.append(Figure("-", "send, file backend", file_rate, "msg/s", bare_files,
                              "bare loop writing the same files", target=5000, higher_is_better=True))
        set_aside(work / "outbox", work.parent)
        set_aside(work / "bare-outbox", work.parent)

        data = [message_data for _, message_data in files[:BARE_SMTP_MESSAGES]]
        recipients = [candidate.email for candidate in candidates[:BARE_SMTP_MESSAGES]]
        for connections in SMTP_CONNECTIONS:
            with smtp_sink() as sink:
                log(f"send to a local SMTP server over {connections} connection(s): {count:,} messages")
                before = sink.received()
                rate, sent = _send(con, automation, backend_from_url(f"smtp://127.0.0.1:{sink.port}?connections={connections}"), config, as_of)
                if sink.received() - before != sent:
                    raise RuntimeError(f"the SMTP server received {sink.received() - before}, the ledger says {sent} sent")
                bare = _bare_smtp_rate(sink.port, data, "hello@nudge.example", recipients)
                # Not the bound (one connection), but what the server takes from a client that
                # does nothing else: how far the send over several connections is from the server's limit.
                server_pace = _bare_smtp_rate(sink.port, data, "hello@nudge.example", recipients, connections) if connections > 1 else None
            figures.append(Figure("-", f"send, SMTP, {connections} connection{'s' if connections > 1 else ''}", rate,
                                  "msg/s", bare, "bare smtplib loop, 1 connection", target=1500, higher_is_better=True))
            if server_pace is not None:
                figures.append(Figure("-", f"bare smtplib loop, {connections} connections (the server's pace)", server_pace,
                                      "msg/s", None, ""))
    finally:
        con.close()
    return figures
