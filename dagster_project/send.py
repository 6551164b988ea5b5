"""Sending one automation: due qualifications minus the ledger, policies, render, deliver.

`send_automation` is plain Python over a DuckDB connection and a backend, so it
can be tested and reasoned about without Dagster; `build_send_asset` wraps it
as one Dagster asset per automation.
"""

from __future__ import annotations

import dataclasses
import re
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any

import duckdb

from dagster_project.automations import Automation, Policy
from dagster_project.backends.base import (
    BackendUnavailable,
    Delivery,
    DeliveryUncertain,
    EmailBackend,
    stored_header,
)
from dagster_project.due_scope import DueScope, due_scope, record_finished
from dagster_project.ledger import (
    CAPPED_STATUSES,
    ENTERED,
    LEDGER_TABLE,
    MAX_ATTEMPTS,
    DuplicateKeys,
    Entry,
    Outcome,
    Reason,
    Status,
    ensure_ledger,
    mark,
    mark_interrupted,
    pending_keys,
    record,
    record_query,
    withdraw,
)
from dagster_project.composing import (
    MARKETING_LIST,
    ComposedBatch,
    ComposeJob,
    Composers,
    SendConfig,
    arrived,
    message_or_reason,
)
from dagster_project.messages import Portable, message_id, sender_domain
from dagster_project.policies import Candidate, TickState, Verdict, decide
from dagster_project.rendering import EmailTemplate
from dagster_project.suppressions import (
    UNSUBSCRIBES_TABLE,
    UnsubscribeGuard,
    UnsubscribeJournal,
    ensure_unsubscribes,
    move_to_warehouse,
)

# Below this many candidates for Python to decide, a send renders in its own process: a worker
# takes about a third of a second of a core to start, what a thousand messages take to render.
COMPOSE_IN_PROCESSES_FROM = 1_000


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
    # Of `due`, the verdicts decided in SQL, never seen by Python (all of them skips).
    decided_in_sql: int = 0

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())


def _due_sql(automation: Automation, scope: DueScope) -> str:
    """The trigger rows the ledger has not settled, due by this tick: new qualifications, retries of
    temporary failures, quiet-hours holds that come back, and (where the backend dedupes) claims a
    crash left pending. Found among every trigger row, or among the rows `scope` names."""
    unsettled = f"""
          (
              m.trigger_key is null
              or (m.status = 'failed' and m.reason = 'temporary' and m.attempts < {MAX_ATTEMPTS})
              -- a hold comes back when the contact's quiet hours end, or to be skipped as stale
              or (m.status = 'held' and (m.held_until is null or m.held_until <= $as_of
                                         or epoch_us($as_of) - epoch_us(t.due_at) > $send_window_us))
              or (m.status = 'pending' and $redeliver_pending)
          )"""
    if scope.every_row:
        return f"""
        select t.contact_id, t.trigger_key, t.qualified_at, t.due_at,
               m.status as ledger_status, coalesce(m.attempts, 0) as attempts
        from {automation.relation} as t
        left join {LEDGER_TABLE} as m on m.automation = $automation and m.trigger_key = t.trigger_key
        where t.due_at <= $as_of
          and {unsettled}
        """
    # The ledger is read for the few keys looked at, not joined whole (due_scope.py).
    return f"""
        with
        rebuilt as (
            select contact_id from {scope.rebuilt_relation}
            where model_name = $trigger_table and invocation_id = $trigger_build and contact_id is not null
        ),
        retried as (
            select trigger_key from {LEDGER_TABLE}
            where automation = $automation and status in ('{Status.FAILED}', '{Status.HELD}', '{Status.PENDING}')
        ),
        looked_at as (
            select contact_id, trigger_key, qualified_at, due_at
            from {automation.relation}
            where due_at <= $as_of
              and (
                  contact_id in (select contact_id from rebuilt)
                  or due_at > $decided_through
                  or trigger_key in (select trigger_key from retried)
              )
        ),
        settled as (
            select * from {LEDGER_TABLE}
            where automation = $automation and trigger_key in (select trigger_key from looked_at)
        )
        select t.contact_id, t.trigger_key, t.qualified_at, t.due_at,
               m.status as ledger_status, coalesce(m.attempts, 0) as attempts
        from looked_at as t
        left join settled as m on m.trigger_key = t.trigger_key
        where {unsettled}
        """


# The due rows are written out before the joins that read them, so DuckDB plans those joins knowing
# how many there are. Inline, it guessed from the ledger join and its retry rules: 118,234 for
# browse_abandoned's 2,955,863 at 100M events, with a ledger of 20 million rows. It then built its
# hash tables on the due rows rather than on the contacts, and ran out of 768 MB.
_DUE = "nudge_due"


def _write_due(con: duckdb.DuckDBPyConnection, automation: Automation, params: dict[str, Any], scope: DueScope) -> None:
    """The due rows into the temporary table _candidates_sql reads (on `con`: each connection,
    each cursor, has its own)."""
    sql = _due_sql(automation, scope)
    scope_params = {"trigger_table": scope.trigger_table, "trigger_build": scope.trigger_build,
                    "decided_through": scope.decided_through}
    con.execute(f"create or replace temp table {_DUE} as {sql}", _params_of(sql, {**params, **scope_params}))


def _any_due(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether _write_due wrote a row (on `con`)."""
    ((found,),) = con.execute(f"select exists (select 1 from {_DUE})").fetchall()
    return bool(found)


def _params_of(sql: str, params: dict[str, Any]) -> dict[str, Any]:
    """The parameters `sql` names (DuckDB refuses one it does not)."""
    named = set(re.findall(r"\$(\w+)", sql))
    return {name: value for name, value in params.items() if name in named}


def _candidates_sql(
    automation: Automation, contacts_relation: str, events_relation: str, suppressions_relation: str | None
) -> str:
    """Every due row (_write_due) with what its verdict needs: the contact, exits, the ledger's history."""
    entered = ", ".join(f"'{status}'" for status in ENTERED)
    counted = ", ".join(f"'{status}'" for status in CAPPED_STATUSES)
    if automation.exit_events:
        # The first exit event after qualifying, by this tick. Imported history never exits anyone.
        # Looked for only where it can decide (the verdicts' order, _verdicts_sql): a stale
        # qualification is skipped as stale, a claim left pending is decided by who the contact is.
        # On a cold tick that spares joining most of the history with the contacts' events.
        exits = f"""
        exits as (
            select t.trigger_key, min(e.occurred_at) as exited_at, arg_min(e.event_name, e.occurred_at) as exit_event
            from (
                select * from due
                where epoch_us($as_of) - epoch_us(due_at) <= $send_window_us
                  and ledger_status is distinct from '{Status.PENDING}'
            ) as t
            join {events_relation} as e
              on e.contact_id = t.contact_id
             and e.occurred_at > t.qualified_at and e.occurred_at <= $as_of
            where list_contains($exit_events, e.event_name) and not e.is_syncing
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
    # The rest of the query (exit events above all, a join with every event) works on the due
    # rows, not on the history.
    return f"""
        with
        due as (select * from {_DUE}),
        {exits},{suppressions},
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
            t.contact_id, t.trigger_key, t.qualified_at, t.due_at,
            c.contact_id is not null as has_contact,
            c.email, c.status as contact_status, c.first_name, c.last_name, c.timezone, c.properties,
            h.last_entered_at,
            t.ledger_status,
            t.attempts,
            x.exited_at, x.exit_event,
            coalesce(k.last_day, 0) as marketing_last_day,
            coalesce(k.last_week, 0) as marketing_last_week,
            u.unsubscribed_at,
            s.suppression, s.suppressed_at, s.suppression_event_id
        from due as t
        left join {contacts_relation} as c on c.contact_id = t.contact_id
        left join history as h on h.contact_id = t.contact_id
        left join marketing as k on k.contact_id = t.contact_id
        left join exits as x on x.trigger_key = t.trigger_key
        left join {UNSUBSCRIBES_TABLE} as u on u.contact_id = t.contact_id and u.list = $unsubscribe_list
        left join suppressions as s on s.email = lower(trim(c.email))
    """


# The columns of a candidate, as policies.Candidate reads them.
CANDIDATE_COLUMNS = tuple(f.name for f in dataclasses.fields(Candidate))


def _timestamp(column: str, seconds: bool = False) -> str:
    """A timestamp as Python's f"{value:%Y-%m-%d %H:%M}" writes it (with :%S when asked)."""
    return f"strftime({column}, '%Y-%m-%d %H:%M{':%S' if seconds else ''}')"


# str(timedelta) of a positive age in microseconds: "1 day, 2:03:04", "3 days, 0:00:00.250000", "5:06:07".
_AGE_TEXT = """
    case when age_us // 86400000000 <> 0
         then (age_us // 86400000000)::varchar || ' day' || case when age_us // 86400000000 <> 1 then 's' else '' end
              || ', '
         else '' end
    || (age_us % 86400000000 // 3600000000)::varchar
    || ':' || lpad((age_us % 3600000000 // 60000000)::varchar, 2, '0')
    || ':' || lpad((age_us % 60000000 // 1000000)::varchar, 2, '0')
    || case when age_us % 1000000 <> 0 then '.' || lpad((age_us % 1000000)::varchar, 6, '0') else '' end
"""


def _verdicts_sql(candidates_sql: str, automation: Automation) -> str:
    """The candidates with the verdicts that are pure data, decided here in SQL; `verdict_reason` is
    null for the rows policies.decide must see (re-entry, hold-out, quiet hours, the cap: a send).

    Each verdict is the one policies.decide returns, in the same order of rules and with the same
    error text (f-strings spelled in SQL: a missing value reads "None" as Python prints it); every
    one is a skip. tests/integration/test_send_verdicts_in_sql.py holds the two to each other."""
    marketing = "true" if automation.is_marketing else "false"
    # policies._reachable
    unreachable = f"""
        case
            when not has_contact then '{Reason.UNKNOWN_CONTACT}'
            when email is null or email = '' then '{Reason.NO_EMAIL}'
            when suppression is not null and suppression <> '' then '{Reason.SUPPRESSED}'
            when {marketing} and unsubscribed_at is not null then '{Reason.UNSUBSCRIBED}'
            when {marketing} and contact_status is distinct from 'subscribed' then '{Reason.NOT_SUBSCRIBED}'
        end"""
    before_start = "qualified_at < $start_at" if automation.start_at is not None else "false"
    return f"""
        with candidates as ({candidates_sql}),
        aged as (
            select *, epoch_us($as_of) - epoch_us(due_at) as age_us from candidates
        ),
        decided as (
            select *,
                case
                    -- already decided by the run that claimed it; only a new "no" from the contact stops it
                    when ledger_status = '{Status.PENDING}' then {unreachable}
                    when {before_start} then '{Reason.BEFORE_START}'
                    when age_us > $send_window_us then '{Reason.STALE}'
                    when exited_at is not null then '{Reason.EXITED}'
                    else {unreachable}
                end as verdict_reason
            from aged
        )
        select *,
            case verdict_reason
                when '{Reason.BEFORE_START}' then
                    'qualified ' || {_timestamp("qualified_at")} || ' UTC, before the automation''s start_at '
                    || $start_at_text || ' UTC'
                when '{Reason.STALE}' then
                    'due ' || {_timestamp("due_at")} || ' UTC, ' || {_AGE_TEXT} || ' before this tick, past the send window'
                when '{Reason.EXITED}' then
                    coalesce(exit_event, 'None') || ' at ' || {_timestamp("exited_at")} || ' UTC, after qualifying'
                when '{Reason.UNKNOWN_CONTACT}' then 'no contact ' || contact_id || ' in stg_contacts'
                when '{Reason.NO_EMAIL}' then 'the contact has no email address'
                when '{Reason.SUPPRESSED}' then
                    suppression || ': ' || email || ' '
                    || case when suppression = 'hard_bounce' then 'bounced hard'
                            else 'complained (reported a message as spam)' end
                    || coalesce(' at ' || {_timestamp("suppressed_at")} || ' UTC', '')
                    || ' (event ' || coalesce(suppression_event_id, 'None') || '); no automation mails it again'
                when '{Reason.UNSUBSCRIBED}' then
                    'unsubscribed from marketing mail at ' || {_timestamp("unsubscribed_at", seconds=True)}
                    || ' UTC with the one-click link'
                when '{Reason.NOT_SUBSCRIBED}' then
                    'marketing mail goes only to subscribed contacts; this one is '
                    || coalesce(contact_status, 'None')
            end as verdict_error
        from decided
    """


def _verdict_params(automation: Automation, params: dict[str, Any]) -> dict[str, Any]:
    params = dict(params)
    if automation.start_at is not None:
        params["start_at"] = automation.start_at
        params["start_at_text"] = f"{automation.start_at:%Y-%m-%d %H:%M}"
    else:
        params["start_at_text"] = None
    return params


def _record_sql_verdicts(
    con: duckdb.DuckDBPyConnection, verdicts_relation: str, automation: Automation, config: SendConfig,
    as_of: datetime, now: datetime,
) -> Counter[str]:
    """Write every verdict SQL decided, in two statements; how many of each reason.

    Each is written: a key the ledger already holds is a retry, a hold or a claim (the candidates
    query lets no other through), never a skip, so the upsert never keeps the stored row. The keys
    it does not hold yet (nearly all of a cold tick's millions) go in by a plain insert."""
    params = {"automation": automation.name, "domain": sender_domain(automation.sender or config.sender)}
    for new in (True, False):
        record_query(
            con,
            f"""
            select $automation as automation, trigger_key, contact_id, email,
                   -- messages.message_id, spelled in SQL
                   '<' || left(sha256($automation || chr(0) || trigger_key), 32) || '@' || $domain || '>' as message_id,
                   '{Status.SKIPPED}' as status, verdict_reason as reason, verdict_error as error,
                   qualified_at, due_at, null as subject, null::timestamp as held_until
            from {verdicts_relation}
            where verdict_reason is not null and ledger_status is {'' if new else 'not '}null
            """,
            params,
            as_of=as_of,
            now=now,
            new=new,
        )
    counts = con.execute(
        f"select verdict_reason, count(*) from {verdicts_relation} where verdict_reason is not null group by all"
    ).fetchall()
    return Counter(dict(counts))


def _candidate_params(
    automation: Automation, as_of: datetime, redeliver_pending: bool, marketing_automations: Sequence[str]
) -> dict[str, Any]:
    params: dict[str, Any] = {
        "automation": automation.name,
        "as_of": as_of,
        "send_window_us": automation.send_window // timedelta(microseconds=1),
        "redeliver_pending": redeliver_pending,
        "marketing_automations": list(marketing_automations),
        "unsubscribe_list": MARKETING_LIST,
    }
    if automation.exit_events:
        params["exit_events"] = list(automation.exit_events)
    return params


def _batches(con: duckdb.DuckDBPyConnection, sql: str, size: int) -> Iterator[tuple[list[Candidate], int]]:
    """Candidates `size` at a time, with how many the query holds in all (its column to_decide)."""
    for batch in con.sql(sql).to_arrow_reader(size):
        rows = batch.to_pylist()
        total = rows[0].pop("to_decide") if rows else 0
        for row in rows[1:]:
            del row["to_decide"]
        yield [Candidate(**row) for row in rows], total


def _batch_size(config: SendConfig, backend: EmailBackend) -> int:
    """Claims per ledger write: NUDGE_SEND_BATCH_SIZE is the most one crash can leave `unknown`,
    which matters only where a claim left open is never handed over again."""
    if backend.dedupes and backend.local:
        return max(config.batch_size, config.local_batch_size)
    return config.batch_size


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
        held_until=verdict.until,
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
    gate: Callable[[int], bool] | None = None,
) -> SendReport:
    """Send what is due for one automation as of `as_of`, exactly once per trigger key.

    `backend` must already be open. The template is compiled before anything is
    claimed, so a broken template stops this automation without a trace in the ledger.
    `suppressions_relation` (int_email_suppressions) lists the addresses no automation may
    mail; None where the warehouse has no such model. `gate` (the circuit breaker) is
    called with how many of the due rows were never decided and are inside their send
    window, before the template is loaded or anything decided; False stops this automation
    there, with nothing written.
    """
    ensure_ledger(con)
    report = SendReport(automation.name)
    params = _verdict_params(automation, _candidate_params(automation, as_of, backend.dedupes, marketing_automations))
    # The due rows, and the candidates and their verdicts after them, are worked out once (the
    # joins over the trigger table's whole history are most of a send's SQL) into temporary
    # tables of a cursor of their own: their rows stay as they are while the ledger is written
    # on `con`.
    reader = con.cursor()
    with ExitStack() as closing:
        closing.callback(reader.close)
        # Nothing written or read on this cursor needs the rows in the order they were made (every
        # read sorts): DuckDB then writes in parallel. The cold 10M tick's 3.3 million skips took
        # 9.6 to 9.8 s instead of 11.4 s.
        reader.execute("set session preserve_insertion_order = false")
        scope = due_scope(con, automation, as_of)
        _write_due(reader, automation, params, scope)
        if gate is not None and not gate(_newly_due(reader, automation, as_of)):
            return report
        template = EmailTemplate.load(config.templates_dir, automation.template, category=automation.category)
        ensure_unsubscribes(con)
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
        if not _any_due(reader):
            # Most automations, most hours: the candidates' joins (the contacts, the ledger's history
            # of each contact) would find nothing to decide. The template was still loaded and checked.
            record_finished(con, automation, scope, as_of)
            return report

        candidates = _candidates_sql(automation, contacts_relation, events_relation, suppressions_relation)
        sql = _verdicts_sql(candidates, automation)
        progress = _Progress(automation.name, log)
        reader.execute(f"create or replace temp table {_CANDIDATES} as {sql}", _params_of(sql, params))
        _refuse_keys_named_twice(reader, automation)
        # Started now, compose workers are ready by the first batch: they start while the skips are written.
        composers = _start_composers(reader, config, closing)
        # Most candidates of a cold tick are history skipped for what the data says alone (stale,
        # exited, unreachable): one statement writes them all, so a tick costs what it sends. None of
        # them touches TickState, so the rows left for Python are decided as if they had been there.
        # (On the reader: only it sees its temporary table.)
        skipped = _record_sql_verdicts(reader, _CANDIDATES, automation, config, as_of, clock())
        report.decided_in_sql = skipped.total()
        report.due += report.decided_in_sql
        report.skipped.update(skipped)
        if skipped:
            log(f"{automation.name}: {skipped.total():,} skipped in one statement "
                f"({', '.join(f'{reason} {count:,}' for reason, count in skipped.most_common())}) "
                f"in {progress.elapsed():.1f} s")
        progress.begin()
        state = TickState()
        # The trigger rows' context (JSON text, the widest column) is read only for the rows left for
        # Python, not carried through the candidates query's joins for every due row: with it, the
        # cold 100M send of upgrade_moment's 773,069 due rows ran out of 768 MB; without it, 1.1 s.
        # The row is the candidate's own: same key, contact and times (a key twice among the
        # candidates was refused above).
        columns = ", ".join("t.context" if name == "context" else f"c.{name}" for name in CANDIDATE_COLUMNS)
        to_decide = f"""
            select {columns}, count(*) over () as to_decide
            from {_CANDIDATES} as c
            inner join {automation.relation} as t
                on t.trigger_key = c.trigger_key
                and t.contact_id is not distinct from c.contact_id
                and t.qualified_at is not distinct from c.qualified_at
                and t.due_at = c.due_at
            where c.verdict_reason is null
            order by c.due_at, c.trigger_key
        """
        # Transactional mail (a receipt, a password reset) is not stopped by leaving the marketing list.
        with (
            UnsubscribeGuard(journal if automation.is_marketing else None, MARKETING_LIST) as guard,
            _Handover(backend) as handover,
            _Undelivered(con, as_of, clock) as undelivered,
        ):
            batches = _batches(reader, to_decide, _batch_size(config, backend))

            def decide_next() -> _Decisions | None:
                following = next(batches, None)
                if following is None:
                    return None
                return _Decisions(following[0], following[1], automation, template, config, as_of, policy, state,
                                  guard, clock, composers)

            upcoming = decide_next()
            if upcoming is not None:
                upcoming.submit()
            while upcoming is not None:
                # The next batch's verdicts are reached while the workers still make this one's messages,
                # and its own go to them as soon as they have answered: they do not wait while this batch
                # is settled and the next one read. It is decided while this one is handed over (render and
                # compose wait for no answer), and claimed only once this one is marked, so a crash leaves
                # one batch open.
                following = decide_next()
                upcoming.collect()
                if following is not None:
                    following.submit()
                decisions = upcoming.finish()
                _send_batch(con, decisions, automation, handover, as_of, guard, report, clock, undelivered,
                            idle=following.step if following is not None else None)
                progress.update(report, decisions.total)
                upcoming = following
        progress.finish(report)
        # Every due row is decided: the next send can start from here (a send stopped by its gate
        # or an error above does not get this far).
        record_finished(con, automation, scope, as_of)
    return report


def _newly_due(reader: duckdb.DuckDBPyConnection, automation: Automation, as_of: datetime) -> int:
    """How many of the due rows (_write_due, on `reader`) were never decided and are inside their
    send window: what the circuit breaker measures. Retries and quiet-hours holds were counted
    when they came due. Counted from the due rows the send reads anyway: a query of its own
    joined each trigger table's history with the ledger a second time (0.24 s of a 10M tick's
    nine automations with nothing new)."""
    ((count,),) = reader.execute(
        f"select count(*) from {_DUE} where ledger_status is null and due_at >= $stale_before",
        # the send window, as policies.decide reads it
        {"stale_before": as_of - automation.send_window},
    ).fetchall()
    return int(count)


# A temporary table: each connection (here, each send's own cursor) has its own.
_CANDIDATES = "nudge_candidates"


def _refuse_keys_named_twice(reader: duckdb.DuckDBPyConnection, automation: Automation) -> None:
    """Stop before anything is written if a key is among the candidates twice: the ledger has no index
    that would refuse the second row (ledger.py), and a claim twice is a message twice. The trigger
    model's unique test should have stopped such a table; a contact twice in the contacts model would
    do it too. 0.15 s for the 1.65 million candidates of a cold 10M tick's largest automation."""
    ((twice,),) = reader.execute(f"select count(*) - count(distinct trigger_key) from {_CANDIDATES}").fetchall()
    if not twice:
        return
    examples = reader.execute(
        f"select trigger_key, count(*) from {_CANDIDATES} group by all having count(*) > 1 order by 1 limit 3"
    ).fetchall()
    raise DuplicateKeys(
        f"{automation.name}: {twice:,} candidate rows repeat a trigger_key ("
        + ", ".join(f"{key!r} {count} times" for key, count in examples)
        + f"); check that {automation.relation} has one row per trigger_key and the contacts model one per"
        " contact_id. Nothing of this automation was decided or sent."
    )


def _start_composers(reader: duckdb.DuckDBPyConnection, config: SendConfig, closing: ExitStack) -> Composers | None:
    """Worker processes for a send with COMPOSE_IN_PROCESSES_FROM candidates or more for Python to
    decide (closed with `closing`); None for a smaller one, or where none are configured."""
    if config.compose_processes < 1:
        return None
    ((to_decide,),) = reader.execute(f"select count(*) from {_CANDIDATES} where verdict_reason is null").fetchall()
    if to_decide < COMPOSE_IN_PROCESSES_FROM:
        return None
    return closing.enter_context(Composers(config.compose_processes))


# Who else wants to see a long send move (`nudge run` puts the lines in its spinner): called with
# each progress line, at most once a second, on the sending thread.
_PROGRESS_WATCHERS: list[Callable[[str], None]] = []


@contextmanager
def progress_shown_to(watch: Callable[[str], None]) -> Iterator[None]:
    """Call `watch` with the progress lines of every send while this is open."""
    _PROGRESS_WATCHERS.append(watch)
    try:
        yield
    finally:
        _PROGRESS_WATCHERS.remove(watch)


class _Progress:
    """Log lines for a long send, at most one every `every` seconds: "welcome: 12,000 of 40,000
    decided, 1,850 msg/s". The send step's log shows them in the Dagster UI (and in
    `nudge run --verbose`); progress watchers (`nudge run`'s spinner) get them every second."""

    def __init__(self, automation: str, log: Callable[[str], None], every: float = 10.0) -> None:
        self.automation = automation
        self.log = log
        self.every = every
        self.started = self.last = self.watched = time.monotonic()
        self.logged = False

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def begin(self) -> None:
        """The rows Python decides start here: rates count from now."""
        self.started = self.last = time.monotonic()

    def update(self, report: SendReport, total: int) -> None:
        now = time.monotonic()
        logs, watched = now - self.last >= self.every, _PROGRESS_WATCHERS and now - self.watched >= 1.0
        if not (logs or watched):
            return
        decided = report.due - report.decided_in_sql
        line = (f"{self.automation}: {decided:,} of {total:,} decided, {report.sent:,} sent, "
                f"{report.sent / max(now - self.started, 1e-9):,.0f} msg/s")
        if watched:
            self.watched = now
            for watch in _PROGRESS_WATCHERS:
                watch(line)
        if logs:
            self.last, self.logged = now, True
            self.log(line)

    def finish(self, report: SendReport) -> None:
        if self.logged:
            self.log(f"{self.automation}: {report.due - report.decided_in_sql:,} decided, {report.sent:,} sent "
                     f"in {self.elapsed():.1f} s, {report.sent / max(self.elapsed(), 1e-9):,.0f} msg/s")


class _Decisions:
    """One batch's verdicts, and its messages rendered and composed; nothing here touches the
    ledger or the report.

    Without `composers` the work is done a candidate at a time (`step`), so that it can fill the
    waits of the batch before it. With them, every verdict is reached at once; once `submit`ted, the
    workers make their share of the messages while this thread hands the batch before over and then
    makes the rest (`step`, then `collect`, which takes the workers' share, and `finish`)."""

    def __init__(
        self,
        candidates: list[Candidate],
        total: int,
        automation: Automation,
        template: EmailTemplate,
        config: SendConfig,
        as_of: datetime,
        policy: Policy,
        state: TickState,
        guard: UnsubscribeGuard,
        clock: Callable[[], datetime],
        composers: Composers | None = None,
    ) -> None:
        self.candidates, self.total = candidates, total
        self.automation, self.template, self.config, self.as_of = automation, template, config, as_of
        self.policy, self.state, self.guard = policy, state, guard
        self.decided: list[Entry] = []
        self.to_deliver: list[tuple[Candidate, EmailMessage]] = []
        self.skipped: Counter[str] = Counter()
        self.held_out = self.held = 0
        # No claim of this batch has a ledger row yet (no retry, no held message): claimed by a plain insert.
        self.claims_are_new = True
        self.now = clock()
        # Unsubscribes that reached the journal after the candidates query began.
        guard.refresh()
        self._next = 0
        self._error: BaseException | None = None
        # With composers: every verdict, in order (TickState counts each pending one as it is reached,
        # as one at a time would); the messages the workers make, and those left to make here.
        self._verdicts: list[tuple[Candidate, Verdict]] | None = None
        self._messages: list[EmailMessage | str | None] = []
        self._here: deque[int] = deque()
        self._composed: ComposedBatch | None = None
        self._by_workers: list[int] = []
        self._composers = composers
        self._pending: list[int] = []
        self._answers: list[Portable | str] = []
        self._settled = False
        if composers is not None:
            try:
                self._verdicts = [self._verdict(candidate) for candidate in candidates]
                self._pending = [index for index, (_, verdict) in enumerate(self._verdicts)
                                 if verdict.status == Status.PENDING]
                self._messages = [None] * len(candidates)
            except BaseException as error:  # raised by finish(), as step() defers its own
                self._error = error

    def submit(self) -> None:
        """With composers: hand the workers their share of the messages (the rest is made here, by
        step()); only once they have answered for the batch before."""
        if self._composers is None or self._error is not None:
            return
        try:
            self._composed = self._composers.submit(ComposeJob(self.automation, self.config, self.as_of, self.now),
                                                    [self._verdicts[index][0] for index in self._pending])
            self._by_workers = self._pending[:self._composed.taken]
            self._here.extend(self._pending[self._composed.taken:])
        except BaseException as error:  # raised by finish()
            self._error = error

    def step(self) -> bool:
        """Decide one more candidate (with composers: make one more message here); False when there is
        none left (or deciding failed: finish raises)."""
        if self._error is not None:
            return False
        try:
            if self._verdicts is not None:
                if not self._here:
                    return False
                index = self._here.popleft()
                self._messages[index] = self._message(self._verdicts[index][0])
                return True
            if self._next >= len(self.candidates):
                return False
            candidate, verdict = self._verdict(self.candidates[self._next])
            self._next += 1
            self._settle(candidate, verdict, self._message(candidate) if verdict.status == Status.PENDING else None)
        except BaseException as error:  # raised by finish(), after the batch being handed over is marked
            self._error = error
            return False
        return True

    def collect(self) -> None:
        """Make what is left here, and take the workers' messages: they are free for the next batch."""
        while self.step():
            pass
        if self._error is not None:
            raise self._error
        if self._composed is not None:
            self._answers = self._composed.answers()
            self._composed = None

    def finish(self) -> "_Decisions":
        self.collect()
        if self._verdicts is not None and not self._settled:
            self._settled = True
            for index, message in zip(self._by_workers, arrived(self._answers), strict=True):
                self._messages[index] = message
            for (candidate, verdict), message in zip(self._verdicts, self._messages, strict=True):
                self._settle(candidate, verdict, message)
        return self

    def _message(self, candidate: Candidate) -> EmailMessage | str:
        return message_or_reason(candidate, self.automation, self.template, self.config, self.as_of, self.now)

    def _verdict(self, candidate: Candidate) -> tuple[Candidate, Verdict]:
        unsubscribed_at = self.guard.unsubscribed_at(candidate.contact_id)
        if unsubscribed_at is not None and candidate.unsubscribed_at is None:
            candidate = dataclasses.replace(candidate, unsubscribed_at=unsubscribed_at)
        verdict = decide(candidate, self.automation, as_of=self.as_of, policy=self.policy, state=self.state)
        if verdict.status == Status.PENDING and candidate.ledger_status is not None:
            self.claims_are_new = False
        return candidate, verdict

    def _settle(self, candidate: Candidate, verdict: Verdict, message: EmailMessage | str | None) -> None:
        """Record one decision; `message` is the pending candidate's message, or why it has none."""
        subject = None
        if isinstance(message, str):
            verdict = Verdict(Status.SKIPPED, Reason.TEMPLATE_ERROR, message)
        elif message is not None:
            subject = stored_header(message, "Subject")
            self.to_deliver.append((candidate, message))
        self.decided.append(_entry(candidate, self.automation, self.config, verdict, subject))
        if verdict.status == Status.SKIPPED:
            self.skipped[verdict.reason or "unspecified"] += 1
        elif verdict.status == Status.HELD_OUT:
            self.held_out += 1
        elif verdict.status == Status.HELD:
            self.held += 1


def _send_batch(
    con: duckdb.DuckDBPyConnection,
    decisions: _Decisions,
    automation: Automation,
    handover: "_Handover",
    as_of: datetime,
    guard: UnsubscribeGuard,
    report: SendReport,
    clock: Callable[[], datetime],
    undelivered: "_Undelivered",
    idle: Callable[[], bool] | None = None,
) -> None:
    """Claim, hand over and mark one batch of decided candidates; `idle` is called for other work
    while every sending thread is busy, until it returns False."""
    report.due += len(decisions.candidates)
    report.skipped.update(decisions.skipped)
    report.held_out += decisions.held_out
    report.held += decisions.held
    decided = decisions.decided

    # Claim before handing over (one statement, so atomic): a crash from here on
    # leaves visible `pending` rows. The other decisions wait for a larger statement.
    record(con, [entry for entry in decided if entry.status == Status.PENDING], as_of=as_of, now=decisions.now,
           new=decisions.claims_are_new)
    undelivered.add(entry for entry in decided if entry.status != Status.PENDING)

    withdrawn: list[Outcome] = []
    try:
        outcomes = _deliver(handover, automation, decisions.to_deliver, report, guard, withdrawn, idle)
    except _Unavailable as stop:
        withdraw(con, withdrawn, now=clock())
        mark(con, stop.outcomes, as_of=as_of, now=clock())
        raise stop.error from None
    withdraw(con, withdrawn, now=clock())
    mark(con, outcomes, as_of=as_of, now=clock())


def _deliver(
    handover: "_Handover",
    automation: Automation,
    to_deliver: Sequence[tuple[Candidate, EmailMessage]],
    report: SendReport,
    guard: UnsubscribeGuard,
    withdrawn: list[Outcome],
    idle: Callable[[], bool] | None = None,
) -> list[Outcome]:
    results: dict[int, Delivery | BackendUnavailable] = {}
    never_handed_over: list[int] = []
    with handover.batch(results, idle) as hand_over:
        for index, (candidate, message) in enumerate(to_deliver):
            if not hand_over.stopped():
                hand_over.ready()
            if hand_over.stopped():
                # The backend went away: nothing after it is handed over.
                hand_over.unready()
                never_handed_over.append(index)
                continue
            # The last look before the message leaves: an unsubscribe that landed since this
            # batch was decided stops it (claimed, never handed over: skipped, not an attempt).
            # A thread is free now and hand_over() starts the send on it, so nothing waits between.
            unsubscribed_at = guard.unsubscribed_now(candidate.contact_id)
            if unsubscribed_at is not None:
                hand_over.unready()
                withdrawn.append(Outcome(
                    automation.name, candidate.trigger_key, Status.SKIPPED, Reason.UNSUBSCRIBED,
                    f"unsubscribed from marketing mail at {unsubscribed_at:%Y-%m-%d %H:%M:%S} UTC, "
                    "after this message was claimed and before it was handed over",
                ))
                report.skipped[Reason.UNSUBSCRIBED] += 1
                continue
            hand_over(index, message)

    outcomes: list[Outcome] = []
    stop: BackendUnavailable | None = None
    for index, (candidate, message) in enumerate(to_deliver):
        result = results.get(index)
        if result is None:
            continue  # withdrawn above, or never handed over (below)
        if isinstance(result, BackendUnavailable):
            stop = stop or result
            if isinstance(result, DeliveryUncertain):
                # The backend went silent while taking this one: it may have it. Never resend blindly.
                outcomes.append(
                    Outcome(automation.name, candidate.trigger_key, Status.UNKNOWN, Reason.INTERRUPTED, str(result))
                )
            else:
                never_handed_over.append(index)
        elif result.ok:
            outcomes.append(Outcome(automation.name, candidate.trigger_key, Status.SENT))
            report.sent += 1
            if report.sample is None:
                report.sample = message
        else:
            reason = Reason.REJECTED if result.permanent else Reason.TEMPORARY
            outcomes.append(Outcome(automation.name, candidate.trigger_key, Status.FAILED, reason, result.detail))
            report.failed += 1
    if stop is not None:
        # Nothing after it reached the backend: free those claims for a later tick. Never handed
        # over, so not an attempt: an outage must not use up a message's retries.
        for index in never_handed_over:
            error = results.get(index, stop)
            withdrawn.append(Outcome(
                automation.name, to_deliver[index][0].trigger_key, Status.FAILED, Reason.TEMPORARY, str(error)
            ))
        report.failed += len(never_handed_over)
        raise _Unavailable(outcomes, stop)
    return outcomes


class _Handover:
    """Hands messages to the backend: on this thread, or on `backend.concurrency` threads at once,
    each with its own connection (SMTP keeps one per thread in its pool; the rate limit is shared).
    While every such thread waits for its server, this one decides the next batch.

    A message is handed to a thread only once one is free, and the unsubscribe guard's last look
    comes after that wait, so it stays right before the message goes. The batch ends when every
    message handed over has its answer, so nothing is marked while a thread still holds one."""

    def __init__(self, backend: EmailBackend) -> None:
        self.backend = backend
        self.threads = max(1, backend.concurrency)
        # One at a time is sent on this thread: handing each message to a thread of its own, to decide
        # the next batch meanwhile, measured slower (the two threads take turns at the interpreter).
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="nudge-send") if self.threads > 1 else None
        self._free = threading.Semaphore(self.threads)

    def __enter__(self) -> "_Handover":
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    @contextmanager
    def batch(
        self, results: dict[int, Delivery | BackendUnavailable], idle: Callable[[], bool] | None = None
    ) -> Iterator["_Batch"]:
        batch = _Batch(self, results, idle)
        try:
            yield batch
        finally:
            batch.wait()
        batch.raise_unexpected()
        # Before anything is marked sent, what was handed over must be safe with the backend.
        if any(isinstance(result, Delivery) and result.ok for result in results.values()):
            self.backend.flush()


class _Batch:
    """One batch's hand-over: `ready()` waits for a free thread, then `batch(index, message)`
    starts sending on it (or `unready()` gives it back); `results` gets each answer, or the
    BackendUnavailable it raised, by index. While every thread is busy, `idle()` is called for
    other work, until it returns False."""

    def __init__(
        self, handover: _Handover, results: dict[int, Delivery | BackendUnavailable],
        idle: Callable[[], bool] | None,
    ) -> None:
        self.handover = handover
        self.results = results
        self.futures: list[Future[None]] = []
        self.unexpected: BaseException | None = None
        self._stopped = False
        self._idle = idle
        self._reserved = False

    def stopped(self) -> bool:
        """The backend went away (or a send raised what it should not): hand nothing more over."""
        return self._stopped

    def ready(self) -> None:
        """Return once a thread is free (and held for the next message)."""
        free = self.handover._free
        while not free.acquire(blocking=False):
            if not self._idle_step():
                free.acquire()
                break
        self._reserved = True

    def unready(self) -> None:
        if self._reserved:
            self._reserved = False
            self.handover._free.release()

    def __call__(self, index: int, message: EmailMessage) -> None:
        if not self._reserved:
            self.ready()
        self._reserved = False
        pool = self.handover._pool
        if pool is None:
            self._send(index, message)
        else:
            self.futures.append(pool.submit(self._send, index, message))

    def _idle_step(self) -> bool:
        if self._idle is None:
            return False
        if not self._idle():
            self._idle = None
            return False
        return True

    def _send(self, index: int, message: EmailMessage) -> None:
        try:
            self.results[index] = self.handover.backend.send(message)
        except BackendUnavailable as error:
            self._stopped = True
            self.results[index] = error
        except BaseException as error:
            self._stopped = True
            self.unexpected = self.unexpected or error
            if self.handover._pool is None:
                raise
        finally:
            self.handover._free.release()

    def wait(self) -> None:
        self.unready()
        # At most one message per thread is outstanding: the last ones handed over.
        recent = self.futures[-self.handover.threads:]
        while not all(future.done() for future in recent) and self._idle_step():
            pass
        wait(self.futures)

    def raise_unexpected(self) -> None:
        if self.unexpected is not None:
            # As on one thread: the batch's claims stay `pending`, for the next run to settle.
            raise self.unexpected


class _Undelivered:
    """Decisions that hand nothing over (held, skipped, held out), written many batches at a time.

    A write to the ledger costs about the same for one row as for thousands: DuckDB matches the
    keys by scanning the automation's rows (30-40 ms a statement at 10M events), so the quiet-hours
    holds decided again every hour cost a statement per batch. They need no claim: nothing is
    handed over for them, and decisions within a tick read TickState, not the ledger. A crash
    before they are written loses nothing; the next tick decides them again."""

    ROWS_PER_WRITE = 10_000

    def __init__(self, con: duckdb.DuckDBPyConnection, as_of: datetime, clock: Callable[[], datetime]) -> None:
        self.con, self.as_of, self.clock = con, as_of, clock
        self.entries: list[Entry] = []

    def add(self, entries: Iterable[Entry]) -> None:
        self.entries.extend(entries)
        if len(self.entries) >= self.ROWS_PER_WRITE:
            self.write()

    def write(self) -> None:
        entries, self.entries = self.entries, []
        record(self.con, entries, as_of=self.as_of, now=self.clock())

    def __enter__(self) -> "_Undelivered":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is None:
            self.write()
            return
        # Keep what was decided if the warehouse still takes it; the error that stopped the send
        # is the one to see either way.
        with suppress(duckdb.Error):
            self.write()


class _Unavailable(Exception):
    def __init__(self, outcomes: list[Outcome], error: BackendUnavailable):
        super().__init__(str(error))
        self.outcomes = outcomes
        self.error = error
