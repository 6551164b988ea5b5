"""The send step: one asset per automation and the ledger they all feed, in one step.

Lineage reads trg_<automation> -> send_<automation> -> nudge/messages -> rpt_*.
The automations run in one step, one after the other in priority order, because the
marketing frequency cap is shared: a contact due for two automations in one tick gets
the one that matters more, whatever order an orchestrator would pick for separate steps.
"""


import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import dagster as dg
import duckdb

from dagster_project import breaker
from dagster_project.asset_metadata import query_preview
from dagster_project.automations import Automation, Policy
from dagster_project.backends.base import BackendUnavailable, EmailBackend
from dagster_project.builds import NotBuiltError, require_built
from dagster_project.clock import as_of_for, format_as_of
from dagster_project.dbt_assets import LEDGER_KEY
from dagster_project.ledger import LEDGER_TABLE, DuplicateKeys, ensure_ledger, status_counts
from dagster_project.rendering import TemplateError
from dagster_project.resources import EmailBackendResource, SendSettings
from dagster_project.send import SendConfig, SendReport, send_automation
from dagster_project.warehouse import WAREHOUSE_POOL, Warehouse

LEDGER_CHECK = "no_unknown_messages"
SEND_STEP = "send"


def _metadata(report: SendReport, backend: str, seconds: float) -> dict[str, object]:
    metadata: dict[str, object] = {
        "due": report.due,
        "sent": report.sent,
        "failed": report.failed,
        "held_out": report.held_out,
        "held_for_quiet_hours": report.held,
        "skipped": report.skipped_total,
        "interrupted_now_unknown": report.interrupted,
        "decided_in_sql": report.decided_in_sql,
        "backend": backend,
        "seconds": round(seconds, 3),
    }
    for reason, count in sorted(report.skipped.items()):
        metadata[f"skipped_{reason}"] = count
    if report.sample is not None:
        sample = report.sample
        body = sample.get_body(preferencelist=("plain",))
        metadata["sample_message"] = dg.MetadataValue.md(
            f"**To:** {sample['To']}  \n**Subject:** {sample['Subject']}  \n"
            f"**Message-ID:** `{sample['Message-ID']}`\n\n```\n{body.get_content() if body else ''}\n```"
        )
    return metadata


@dataclass(frozen=True)
class SendTarget:
    """One automation and where its send step reads from."""

    automation: Automation
    trigger_key: dg.AssetKey
    contacts_key: dg.AssetKey
    events_key: dg.AssetKey
    suppressions_key: dg.AssetKey | None = None  # int_email_suppressions: addresses never mailed again

    @property
    def key(self) -> dg.AssetKey:
        return dg.AssetKey(f"send_{self.automation.name}")


def _send_spec(target: SendTarget) -> dg.AssetSpec:
    automation = target.automation
    return dg.AssetSpec(
        target.key,
        group_name="send",
        deps=[target.trigger_key, target.contacts_key, target.events_key,
              *([target.suppressions_key] if target.suppressions_key else [])],
        kinds={"python", "email"},
        skippable=True,
        description=(
            f"Sends `{automation.name}` ({automation.category}, template `{automation.template}`) to every "
            f"contact newly due in `{automation.model_name}`, exactly once per trigger key."
        ),
        metadata={
            "category": automation.category,
            "priority": automation.priority,
            "send_window": str(automation.send_window),
            "reentry": str(automation.reentry),
            "holdout_percent": automation.holdout_percent,
            "exit_events": ", ".join(automation.exit_events) or "none",
            "quiet_hours": automation.respects_quiet_hours,
        },
    )


def _ledger_spec(send_keys: Sequence[dg.AssetKey]) -> dg.AssetSpec:
    return dg.AssetSpec(
        LEDGER_KEY,
        group_name="send",
        deps=list(send_keys),
        kinds={"duckdb"},
        skippable=True,
        description=(
            f"`{LEDGER_TABLE}`: one row per automation and trigger key, with its status "
            "(pending, sent, failed, skipped with a reason, held_out, held, unknown)."
        ),
    )


def build_send_assets(
    targets: Sequence[SendTarget],
    *,
    contacts_relation: str,
    events_relation: str,
    policy: Policy,
    suppressions_relation: str | None = None,
    suppressions_model: str | None = None,
) -> dg.AssetsDefinition:
    """`targets` in the order they send (see automations_from_manifest).

    `suppressions_model` (int_email_suppressions' unique id) must be built and tested for the
    tick like a trigger model: sending from a stale or broken list of dead addresses is
    worse than not sending."""
    marketing = [t.automation.name for t in targets if t.automation.is_marketing]

    @dg.multi_asset(
        name=SEND_STEP,
        specs=[*(_send_spec(t) for t in targets), _ledger_spec([t.key for t in targets])],
        check_specs=[
            dg.AssetCheckSpec(
                LEDGER_CHECK,
                asset=LEDGER_KEY,
                description="No message is in doubt (claimed, then the run died before the backend answered).",
            ),
            *(_breaker_check_spec(t) for t in targets),
        ],
        can_subset=True,
        pool=WAREHOUSE_POOL,
    )
    def send(
        context: dg.AssetExecutionContext,
        warehouse: Warehouse,
        email: EmailBackendResource,
        send_settings: SendSettings,
    ) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
        as_of = as_of_for(context)
        selected = context.selected_asset_keys
        failures: list[str] = []
        config = send_settings.config()
        wanted = [target for target in targets if target.key in selected]
        finished: set[dg.AssetKey] = set()
        released = breaker.tag_releases(context.run.tags.get(breaker.RELEASE_TAG))
        with warehouse.connect() as con:
            gate = _Gate(context, policy, breaker.newest_event_loaded_at(con), released)
            try:
                # One connection to the backend for the whole tick; opening it decides nothing yet.
                with email.open() as backend:
                    for target in wanted:
                        outcome = _send_one(context, con, target, backend, config, as_of, policy, marketing,
                                            contacts_relation, events_relation, email.description, gate,
                                            suppressions_relation, suppressions_model)
                        finished.add(target.key)
                        if isinstance(outcome, str):
                            failures.append(outcome)
                            context.log.error(outcome)
                        else:
                            yield from outcome
            except BackendUnavailable as error:
                # The one that was sending when it went down marked its unsent claims `failed`
                # (temporary): a later tick retries them.
                failures.extend(
                    f"{target.key.to_user_string()}: not sent, the email backend is unavailable: {error}"
                    for target in wanted
                    if target.key not in finished
                )
            if LEDGER_KEY in selected:
                yield from _ledger_results(con)
        if failures:
            # After the ledger is reported: what did send is on record, what did not fails the run.
            raise dg.Failure(description="\n".join(failures))

    return send


def _send_one(
    context: dg.AssetExecutionContext,
    con: duckdb.DuckDBPyConnection,
    target: SendTarget,
    backend: EmailBackend,
    config: SendConfig,
    as_of: datetime,
    policy: Policy,
    marketing: Sequence[str],
    contacts_relation: str,
    events_relation: str,
    backend_description: str,
    gate: "_Gate",
    suppressions_relation: str | None = None,
    suppressions_model: str | None = None,
) -> list[dg.MaterializeResult | dg.AssetCheckResult] | str:
    """One automation's send: its materialization and breaker check, or why it did not run
    (BackendUnavailable propagates)."""
    automation = target.automation
    try:
        # Our own gate: a failed dbt test upstream stops this automation, whatever the orchestrator does.
        require_built(con, automation.model_unique_id, as_of)
        if suppressions_model:
            require_built(con, suppressions_model, as_of)
    except NotBuiltError as error:
        return f"{target.key.to_user_string()}: {error}"
    started = time.perf_counter()
    judged: list[breaker.BreakerState] = []

    def breaker_lets_through(newly_due: int) -> bool:
        # The other gate, also our own: a surge or stale events trips the breaker, and nothing is
        # claimed. It measures the due rows the send has just worked out.
        judged.append(gate.judge(con, target, as_of, newly_due))
        return not judged[-1].blocks

    try:
        report = send_automation(
            con,
            automation,
            contacts_relation=contacts_relation,
            events_relation=events_relation,
            backend=backend,
            config=config,
            as_of=as_of,
            policy=policy,
            marketing_automations=marketing,
            suppressions_relation=suppressions_relation,
            log=context.log.info,
            gate=breaker_lets_through,
        )
    except (TemplateError, DuplicateKeys) as error:
        # A template that does not compile, candidates that repeat a key: both found before anything
        # is claimed. This automation stops, the others still go.
        return f"{target.key.to_user_string()}: {error}"
    (state,) = judged
    if state.blocks:
        return [
            dg.MaterializeResult(asset_key=target.key, metadata={"due": state.due, "sent": 0, **state.metadata()}),
            *gate.check_result(target, state),
        ]
    context.log.info(
        f"{automation.name} as of {format_as_of(as_of)}: {report.due} due, {report.sent} sent, "
        f"{report.skipped_total} skipped, {report.held_out} held out, {report.held} held, {report.failed} failed"
    )
    metadata = _metadata(report, backend_description, time.perf_counter() - started)
    metadata["decisions"] = query_preview(
        con,
        f"""
        select trigger_key, contact_id, status, reason, error, subject
        from {LEDGER_TABLE}
        where automation = $automation and (decided_at = $as_of or sent_at = $as_of)
        order by status = 'sent' desc, status, trigger_key
        """,
        {"automation": automation.name, "as_of": as_of},
    )
    return [
        dg.MaterializeResult(asset_key=target.key, metadata={**metadata, **state.metadata()}),
        *gate.check_result(target, state),
    ]


def _breaker_check_spec(target: SendTarget) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec(
        breaker.CHECK_NAME,
        asset=target.key,
        description=(
            "The circuit breaker did not trip: no surge of newly due qualifications against the automation's "
            "recent ticks, and the events are fresh. Fails (ERROR) when it tripped and nothing was sent."
        ),
    )


@dataclass
class _Gate:
    """The circuit breaker as the send step uses it: one freshness reading and one run's tag per step."""

    context: dg.AssetExecutionContext
    policy: Policy
    newest_event_at: datetime | None
    released_by_tag: set[str]

    def judge(
        self, con: duckdb.DuckDBPyConnection, target: SendTarget, as_of: datetime, due: int
    ) -> breaker.BreakerState:
        """`due`: this tick's newly due rows of the automation (what the breaker measures)."""
        name = target.automation.name
        by_tag = f"run {self.context.run_id} (tag {breaker.RELEASE_TAG})" if name in self.released_by_tag else None
        state = breaker.check(con, name, as_of=as_of, due=due, newest_event_at=self.newest_event_at,
                              policy=self.policy.breaker, released_by_tag=by_tag, now=_wall_clock())
        line = f"{name}: {state.summary}"
        if state.blocks:
            self.context.log.warning(line)
        else:
            self.context.log.info(line)
        return state

    def check_result(self, target: SendTarget, state: breaker.BreakerState) -> list[dg.AssetCheckResult]:
        if dg.AssetCheckKey(target.key, breaker.CHECK_NAME) not in self.context.selected_asset_check_keys:
            return []
        # ERROR, not WARN: mail a person meant to go out is being withheld until someone looks.
        # Not blocking and no run failure: the other automations sent, and the ledger and
        # reports downstream are right as they are.
        return [
            dg.AssetCheckResult(
                asset_key=target.key,
                check_name=breaker.CHECK_NAME,
                passed=not state.blocks,
                severity=dg.AssetCheckSeverity.ERROR,
                description=state.summary,
                metadata=state.metadata(),
            )
        ]


def _wall_clock() -> datetime:
    """Wall clock, only for when a release was used (an audit column, never a decision)."""
    return datetime.now(UTC).replace(tzinfo=None)


def _ledger_results(con: duckdb.DuckDBPyConnection) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    ensure_ledger(con)
    counts = status_counts(con)
    by_status: dict[str, int] = {}
    for _automation, status, _reason, count in counts:
        by_status[status] = by_status.get(status, 0) + count
    unknown = by_status.get("unknown", 0)
    table = "\n".join(
        ["| automation | status | reason | rows |", "|---|---|---|---|"]
        + [f"| {a} | {s} | {r or ''} | {n} |" for a, s, r, n in counts]
    )
    yield dg.MaterializeResult(
        asset_key=LEDGER_KEY,
        metadata={
            "rows": sum(by_status.values()),
            "dagster/row_count": sum(by_status.values()),
            **{f"status_{status}": n for status, n in sorted(by_status.items())},
            "by_automation": dg.MetadataValue.md(table),
        },
    )
    yield dg.AssetCheckResult(
        asset_key=LEDGER_KEY,
        check_name=LEDGER_CHECK,
        passed=unknown == 0,
        severity=dg.AssetCheckSeverity.WARN,
        description=(
            f"{unknown} messages are 'unknown': see `nudge status` and check the provider's logs"
            if unknown
            else "no message is in doubt"
        ),
    )
