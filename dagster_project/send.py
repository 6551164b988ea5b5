"""Sending one automation: due qualifications minus the ledger, policies, render, deliver.

`send_automation` is plain Python over a DuckDB connection and a backend, so it
can be tested and reasoned about without Dagster; `build_send_asset` wraps it
as one Dagster asset per automation.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import parseaddr
from pathlib import Path
from typing import Any

import duckdb

from dagster_project.automations import Automation, Policy
from dagster_project.backends.base import BackendUnavailable, DeliveryUncertain, EmailBackend
from dagster_project.ledger import (
    CAPPED_STATUSES,
    ENTERED,
    LEDGER_TABLE,
    MAX_ATTEMPTS,
    Entry,
    Outcome,
    Reason,
    Status,
    ensure_ledger,
    mark,
    mark_interrupted,
    pending_keys,
    record,
    withdraw,
)
from dagster_project.messages import compose, message_id, sender_domain
from dagster_project.policies import Candidate, TickState, Verdict, decide
from dagster_project.rendering import EmailTemplate, RenderError
from dagster_project.suppressions import (
    UNSUBSCRIBES_TABLE,
    UnsubscribeGuard,
    UnsubscribeJournal,
    ensure_unsubscribes,
    move_to_warehouse,
)
from dagster_project.unsubscribe import UnsubscribeLinks, make_token, unsubscribe_links

MARKETING_LIST = "marketing"


@dataclass(frozen=True)
class SendConfig:
    templates_dir: Path
    sender: str
    postal_address: str
    unsubscribe_url: str
    unsubscribe_mailto: str
    unsubscribe_secret: str = field(repr=False)
    batch_size: int = 100
    # The journal `nudge serve` appends unsubscribes to; None where no endpoint runs (then
    # nudge.unsubscribes alone says who left).
    unsubscribe_journal: Path | None = None


@dataclass
class SendReport:
    automation: str
    due: int = 0
    sent: int = 0
    failed: int = 0
    held_out: int = 0
    held: int = 0  # waiting out quiet hours; decided again next tick
    skipped: Counter[str] = field(default_factory=Counter)
    interrupted: int = 0
    sample: EmailMessage | None = None

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())


def _candidates_sql(
    automation: Automation, contacts_relation: str, events_relation: str, suppressions_relation: str | None
) -> str:
    entered = ", ".join(f"'{status}'" for status in ENTERED)
    counted = ", ".join(f"'{status}'" for status in CAPPED_STATUSES)
    if automation.exit_events:
        # The first exit event after qualifying, by this tick. Imported history never exits anyone.
        exits = f"""
        exits as (
            select t.trigger_key, min(e.occurred_at) as exited_at, arg_min(e.event_name, e.occurred_at) as exit_event
            from {automation.relation} as t
            join {events_relation} as e
              on e.contact_id = t.contact_id
             and e.occurred_at > t.qualified_at and e.occurred_at <= $as_of
            where t.due_at <= $as_of and list_contains($exit_events, e.event_name) and not e.is_syncing
            group by t.trigger_key
        )"""
    else:
        exits = "exits as (select null::varchar as trigger_key, null::timestamp as exited_at, null::varchar as exit_event)"
    if suppressions_relation:
        # int_email_suppressions: one row per dead address, lowercased and trimmed as compared here.
        suppressions = f"""
        suppressions as (
            select email, reason as suppression, occurred_at as suppressed_at, event_id as suppression_event_id
            from {suppressions_relation}
        )"""
    else:
        suppressions = """
        suppressions as (
            select null::varchar as email, null::varchar as suppression, null::timestamp as suppressed_at,
                   null::varchar as suppression_event_id
        )"""
    # Retry only temporary failures and quiet-hours holds; re-deliver leftover claims only where
    # the backend dedupes.
    return f"""
        with {exits},{suppressions},
        history as (
            select contact_id, max(coalesce(sent_at, decided_at)) as last_entered_at
            from {LEDGER_TABLE}
            where automation = $automation and status in ({entered})
            group by contact_id
        ),
        marketing as (
            select
                contact_id,
                count(*) filter (where coalesce(sent_at, decided_at) > $as_of - interval 1 day) as last_day,
                count(*) as last_week
            from {LEDGER_TABLE}
            where list_contains($marketing_automations, automation)
              and status in ({counted})
              and coalesce(sent_at, decided_at) > $as_of - interval 7 day
              and coalesce(sent_at, decided_at) <= $as_of
            group by contact_id
        )
        select
            t.contact_id, t.trigger_key, t.qualified_at, t.due_at, t.context,
            c.contact_id is not null as has_contact,
            c.email, c.status as contact_status, c.first_name, c.last_name, c.timezone, c.properties,
            h.last_entered_at,
            m.status as ledger_status,
            coalesce(m.attempts, 0) as attempts,
            x.exited_at, x.exit_event,
            coalesce(k.last_day, 0) as marketing_last_day,
            coalesce(k.last_week, 0) as marketing_last_week,
            u.unsubscribed_at,
            s.suppression, s.suppressed_at, s.suppression_event_id
        from {automation.relation} as t
        left join {contacts_relation} as c on c.contact_id = t.contact_id
        left join history as h on h.contact_id = t.contact_id
        left join marketing as k on k.contact_id = t.contact_id
        left join exits as x on x.trigger_key = t.trigger_key
        left join {LEDGER_TABLE} as m on m.automation = $automation and m.trigger_key = t.trigger_key
        left join {UNSUBSCRIBES_TABLE} as u on u.contact_id = t.contact_id and u.list = $unsubscribe_list
        left join suppressions as s on s.email = lower(trim(c.email))
        where t.due_at <= $as_of
          and (
              m.trigger_key is null
              or (m.status = 'failed' and m.reason = 'temporary' and m.attempts < {MAX_ATTEMPTS})
              or m.status = 'held'
              or (m.status = 'pending' and $redeliver_pending)
          )
        order by t.due_at, t.trigger_key
    """


def _candidate_params(
    automation: Automation, as_of: datetime, redeliver_pending: bool, marketing_automations: Sequence[str]
) -> dict[str, Any]:
    params: dict[str, Any] = {
        "automation": automation.name,
        "as_of": as_of,
        "redeliver_pending": redeliver_pending,
        "marketing_automations": list(marketing_automations),
        "unsubscribe_list": MARKETING_LIST,
    }
    if automation.exit_events:
        params["exit_events"] = list(automation.exit_events)
    return params


def count_newly_due(
    con: duckdb.DuckDBPyConnection,
    automation: Automation,
    *,
    contacts_relation: str,
    events_relation: str,
    as_of: datetime,
) -> int:
    """How many of this tick's candidates were never decided and are inside their send window:
    what the circuit breaker measures. Retries and quiet-hours holds were counted when they came due."""
    ensure_ledger(con)  # the first tick measures before anything made the ledger
    ensure_unsubscribes(con)
    # Suppressed addresses are candidates too (skipped with a reason): they need not be joined to be counted.
    sql = _candidates_sql(automation, contacts_relation, events_relation, None)
    params = _candidate_params(automation, as_of, False, [])
    params["stale_before"] = as_of - automation.send_window  # the send window, as policies.decide reads it
    ((count,),) = con.sql(
        f"select count(*) from ({sql}) where ledger_status is null and due_at >= $stale_before", params=params
    ).fetchall()
    return int(count)


def _batches(
    con: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any], size: int
) -> Iterator[list[Candidate]]:
    # A separate cursor: its snapshot stays fixed while the ledger is written on `con`.
    reader = con.cursor().sql(sql, params=params).to_arrow_reader(size)
    for batch in reader:
        yield [Candidate(**row) for row in batch.to_pylist()]


def _unsubscribe(candidate: Candidate, automation: Automation, config: SendConfig) -> UnsubscribeLinks | None:
    """Marketing mail carries a signed one-click unsubscribe; transactional mail none."""
    if not automation.is_marketing:
        return None
    token = make_token(config.unsubscribe_secret, candidate.contact_id, MARKETING_LIST)
    return unsubscribe_links(config.unsubscribe_url, config.unsubscribe_mailto, token)


def template_variables(candidate: Candidate, automation: Automation, config: SendConfig, as_of: datetime) -> dict[str, Any]:
    links = _unsubscribe(candidate, automation, config)
    unsubscribe_url = links.https if links else ""
    sender = automation.sender or config.sender
    return {
        "contact": {
            "contact_id": candidate.contact_id,
            "email": candidate.email,
            "first_name": candidate.first_name,
            "last_name": candidate.last_name,
            "timezone": candidate.timezone,
            "properties": json.loads(candidate.properties or "{}"),
        },
        "context": json.loads(candidate.context or "{}"),
        "automation": automation.name,
        "unsubscribe_url": unsubscribe_url,
        "postal_address": config.postal_address,
        "sender_name": parseaddr(sender)[0] or sender,
        "as_of": as_of,
    }


def _message(
    candidate: Candidate,
    automation: Automation,
    template: EmailTemplate,
    config: SendConfig,
    as_of: datetime,
    now: datetime,
) -> EmailMessage:
    """Render and compose one message; RenderError or ValueError for this contact only."""
    sender = automation.sender or config.sender
    try:
        variables = template_variables(candidate, automation, config, as_of)
    except json.JSONDecodeError as error:
        raise RenderError(f"the trigger's context or the contact's properties are not JSON: {error}") from None
    rendered = template.render(variables)
    return compose(
        rendered=rendered,
        sender=sender,
        recipient=candidate.email or "",
        automation=automation.name,
        message_id=message_id(automation.name, candidate.trigger_key, sender_domain(sender)),
        date=now,
        unsubscribe=_unsubscribe(candidate, automation, config),
    )


def _entry(candidate: Candidate, automation: Automation, config: SendConfig, verdict: Verdict, subject: str | None) -> Entry:
    sender = automation.sender or config.sender
    return Entry(
        automation=automation.name,
        trigger_key=candidate.trigger_key,
        contact_id=candidate.contact_id,
        email=candidate.email,
        message_id=message_id(automation.name, candidate.trigger_key, sender_domain(sender)),
        status=verdict.status,
        reason=verdict.reason,
        error=verdict.detail,
        qualified_at=candidate.qualified_at,
        due_at=candidate.due_at,
        subject=subject,
    )


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def send_automation(
    con: duckdb.DuckDBPyConnection,
    automation: Automation,
    *,
    contacts_relation: str,
    events_relation: str,
    backend: EmailBackend,
    config: SendConfig,
    as_of: datetime,
    policy: Policy,
    marketing_automations: Sequence[str],
    suppressions_relation: str | None = None,
    clock: Callable[[], datetime] = _utcnow,
    log: Callable[[str], None] = lambda message: None,
) -> SendReport:
    """Send what is due for one automation as of `as_of`, exactly once per trigger key.

    `backend` must already be open. The template is compiled before anything is
    claimed, so a broken template stops this automation without a trace in the ledger.
    `suppressions_relation` (int_email_suppressions) lists the addresses no automation may
    mail; None where the warehouse has no such model.
    """
    template = EmailTemplate.load(config.templates_dir, automation.template, category=automation.category)
    ensure_ledger(con)
    ensure_unsubscribes(con)
    report = SendReport(automation.name)
    journal = UnsubscribeJournal(config.unsubscribe_journal) if config.unsubscribe_journal else None
    if journal is not None:
        # We hold the writer lock: bring the endpoint's unsubscribes into the warehouse first,
        # so the candidates query below sees every one recorded until now.
        moved = move_to_warehouse(journal, con)
        if moved:
            log(f"{moved} unsubscribes moved from {journal.path} into {UNSUBSCRIBES_TABLE}")

    if not backend.dedupes:
        report.interrupted = mark_interrupted(con, automation.name, pending_keys(con, automation.name), now=clock())
        if report.interrupted:
            log(f"{report.interrupted} claims of an interrupted run are now 'unknown' (never resent)")

    params = _candidate_params(automation, as_of, backend.dedupes, marketing_automations)
    state = TickState()
    sql = _candidates_sql(automation, contacts_relation, events_relation, suppressions_relation)
    # Transactional mail (a receipt, a password reset) is not stopped by leaving the marketing list.
    with UnsubscribeGuard(journal if automation.is_marketing else None, MARKETING_LIST) as guard:
        for candidates in _batches(con, sql, params, config.batch_size):
            _send_batch(con, candidates, automation, template, backend, config, as_of, policy, state, guard,
                        report, clock)
    return report


def _send_batch(
    con: duckdb.DuckDBPyConnection,
    candidates: list[Candidate],
    automation: Automation,
    template: EmailTemplate,
    backend: EmailBackend,
    config: SendConfig,
    as_of: datetime,
    policy: Policy,
    state: TickState,
    guard: UnsubscribeGuard,
    report: SendReport,
    clock: Callable[[], datetime],
) -> None:
    """Decide, claim, hand over and mark one batch of candidates."""
    report.due += len(candidates)
    decided: list[Entry] = []
    to_deliver: list[tuple[Candidate, EmailMessage]] = []
    now = clock()
    # Unsubscribes that reached the journal after the candidates query began.
    guard.refresh()
    for candidate in candidates:
        unsubscribed_at = guard.unsubscribed_at(candidate.contact_id)
        if unsubscribed_at is not None and candidate.unsubscribed_at is None:
            candidate = dataclasses.replace(candidate, unsubscribed_at=unsubscribed_at)
        verdict = decide(candidate, automation, as_of=as_of, policy=policy, state=state)
        subject = None
        if verdict.status == Status.PENDING:
            try:
                message = _message(candidate, automation, template, config, as_of, now)
                subject = str(message["Subject"])
                to_deliver.append((candidate, message))
            except (RenderError, ValueError) as error:
                verdict = Verdict(Status.SKIPPED, Reason.TEMPLATE_ERROR, str(error))
        decided.append(_entry(candidate, automation, config, verdict, subject))
        if verdict.status == Status.SKIPPED:
            report.skipped[verdict.reason or "unspecified"] += 1
        elif verdict.status == Status.HELD_OUT:
            report.held_out += 1
        elif verdict.status == Status.HELD:
            report.held += 1

    # Claim before handing over (one statement, so atomic): a crash from here on
    # leaves visible `pending` rows.
    record(con, decided, as_of=as_of, now=now)

    withdrawn: list[Outcome] = []
    try:
        outcomes = _deliver(backend, automation, to_deliver, report, guard, withdrawn)
    except _Unavailable as stop:
        withdraw(con, withdrawn, now=clock())
        mark(con, stop.outcomes, as_of=as_of, now=clock())
        raise stop.error from None
    withdraw(con, withdrawn, now=clock())
    mark(con, outcomes, as_of=as_of, now=clock())


def _deliver(
    backend: EmailBackend,
    automation: Automation,
    to_deliver: Sequence[tuple[Candidate, EmailMessage]],
    report: SendReport,
    guard: UnsubscribeGuard,
    withdrawn: list[Outcome],
) -> list[Outcome]:
    outcomes: list[Outcome] = []
    for index, (candidate, message) in enumerate(to_deliver):
        # The last look before the message leaves: an unsubscribe that landed since this
        # batch was decided stops it (claimed, never handed over: skipped, not an attempt).
        unsubscribed_at = guard.unsubscribed_now(candidate.contact_id)
        if unsubscribed_at is not None:
            withdrawn.append(Outcome(
                automation.name, candidate.trigger_key, Status.SKIPPED, Reason.UNSUBSCRIBED,
                f"unsubscribed from marketing mail at {unsubscribed_at:%Y-%m-%d %H:%M:%S} UTC, "
                "after this message was claimed and before it was handed over",
            ))
            report.skipped[Reason.UNSUBSCRIBED] += 1
            continue
        try:
            delivery = backend.send(message)
        except BackendUnavailable as error:
            unsent = to_deliver[index:]
            if isinstance(error, DeliveryUncertain):
                # The backend went silent while taking this one: it may have it. Never resend blindly.
                outcomes.append(
                    Outcome(automation.name, candidate.trigger_key, Status.UNKNOWN, Reason.INTERRUPTED, str(error))
                )
                unsent = unsent[1:]
            # Nothing after it reached the backend: free those claims for a later tick. Never handed
            # over, so not an attempt: an outage must not use up a message's retries.
            for later, _ in unsent:
                withdrawn.append(Outcome(automation.name, later.trigger_key, Status.FAILED, Reason.TEMPORARY, str(error)))
            report.failed += len(unsent)
            raise _Unavailable(outcomes, error) from error
        if delivery.ok:
            outcomes.append(Outcome(automation.name, candidate.trigger_key, Status.SENT))
            report.sent += 1
            if report.sample is None:
                report.sample = message
        else:
            reason = Reason.REJECTED if delivery.permanent else Reason.TEMPORARY
            outcomes.append(Outcome(automation.name, candidate.trigger_key, Status.FAILED, reason, delivery.detail))
            report.failed += 1
    return outcomes


class _Unavailable(Exception):
    def __init__(self, outcomes: list[Outcome], error: BackendUnavailable):
        super().__init__(str(error))
        self.outcomes = outcomes
        self.error = error
