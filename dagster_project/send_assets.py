"""One Dagster asset per automation, and the ledger asset they all feed.

Lineage reads trg_<automation> -> send_<automation> -> nudge/messages -> rpt_*.
"""


import time
from collections.abc import Sequence

import dagster as dg

from dagster_project.automations import Automation
from dagster_project.builds import NotBuiltError, require_built
from dagster_project.clock import as_of_for, format_as_of
from dagster_project.dbt_assets import LEDGER_KEY
from dagster_project.ledger import LEDGER_TABLE, ensure_ledger, status_counts
from dagster_project.resources import EmailBackendResource, SendSettings
from dagster_project.send import SendReport, send_automation
from dagster_project.warehouse import WAREHOUSE_POOL, Warehouse


def _metadata(report: SendReport, backend: str, seconds: float) -> dict[str, object]:
    metadata: dict[str, object] = {
        "due": report.due,
        "sent": report.sent,
        "failed": report.failed,
        "held_out": report.held_out,
        "skipped": report.skipped_total,
        "interrupted_now_unknown": report.interrupted,
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


def build_send_asset(
    automation: Automation,
    *,
    trigger_key: dg.AssetKey,
    contacts_key: dg.AssetKey,
    contacts_relation: str,
) -> dg.AssetsDefinition:
    @dg.asset(
        name=f"send_{automation.name}",
        group_name="send",
        deps=[trigger_key, contacts_key],
        pool=WAREHOUSE_POOL,
        kinds={"python", "email"},
        description=(
            f"Sends `{automation.name}` ({automation.category}, template `{automation.template}`) to every "
            f"contact newly due in `{automation.model_name}`, exactly once per trigger key."
        ),
        metadata={
            "send_window": str(automation.send_window),
            "reentry": str(automation.reentry),
            "holdout_percent": automation.holdout_percent,
        },
    )
    def send(
        context: dg.AssetExecutionContext,
        warehouse: Warehouse,
        email: EmailBackendResource,
        send_settings: SendSettings,
    ) -> dg.MaterializeResult:
        as_of = as_of_for(context)
        started = time.perf_counter()
        with warehouse.connect() as con:
            try:
                # Our own gate: a failed dbt test upstream must stop this send, whatever the orchestrator does.
                require_built(con, automation.model_unique_id, as_of)
            except NotBuiltError as error:
                raise dg.Failure(description=str(error)) from None
            with email.open() as backend:
                report = send_automation(
                    con,
                    automation,
                    contacts_relation=contacts_relation,
                    backend=backend,
                    config=send_settings.config(),
                    as_of=as_of,
                    log=context.log.info,
                )
        context.log.info(
            f"{automation.name} as of {format_as_of(as_of)}: {report.due} due, {report.sent} sent, "
            f"{report.skipped_total} skipped, {report.held_out} held out, {report.failed} failed"
        )
        return dg.MaterializeResult(metadata=_metadata(report, email.description, time.perf_counter() - started))

    return send


def build_ledger_asset(send_keys: Sequence[dg.AssetKey]) -> dg.AssetsDefinition:
    @dg.asset(
        key=LEDGER_KEY,
        group_name="send",
        deps=list(send_keys),
        pool=WAREHOUSE_POOL,
        kinds={"duckdb"},
        description=(
            f"`{LEDGER_TABLE}`: one row per automation and trigger key, with its status "
            "(pending, sent, failed, skipped with a reason, held_out, unknown)."
        ),
        check_specs=[
            dg.AssetCheckSpec(
                "no_unknown_messages",
                asset=LEDGER_KEY,
                description="No message is in doubt (claimed, then the run died before the backend answered).",
            )
        ],
    )
    def messages(warehouse: Warehouse) -> dg.MaterializeResult:
        with warehouse.connect() as con:
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
        return dg.MaterializeResult(
            metadata={
                "rows": sum(by_status.values()),
                **{f"status_{status}": n for status, n in sorted(by_status.items())},
                "by_automation": dg.MetadataValue.md(table),
            },
            check_results=[
                dg.AssetCheckResult(
                    check_name="no_unknown_messages",
                    passed=unknown == 0,
                    severity=dg.AssetCheckSeverity.WARN,
                    description=(
                        f"{unknown} messages are 'unknown': see `nudge status` and check the provider's logs"
                        if unknown
                        else "no message is in doubt"
                    ),
                )
            ],
        )

    return messages
