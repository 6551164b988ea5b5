"""The one set of Dagster definitions: `dagster dev`, the schedule, `nudge` and the tests load this."""

from __future__ import annotations

import os

import dagster as dg

from dagster_project.automations import find_node, project_automations, relation_of
from dagster_project.clock import as_of_tags
from dagster_project.collector import no_full_collections_at_exit
from dagster_project.dbt_assets import NudgeDbtTranslator, build_dbt_assets, dbt_project, load_manifest
from dagster_project.dbt_runner import DbtProjectResource
from dagster_project.ingest import INGEST_ASSETS, LandingFiles
from dagster_project.resources import EmailBackendResource, SendSettings
from dagster_project.send_assets import SendTarget, build_send_assets
from dagster_project.settings import NudgeSettings
from dagster_project.warehouse import Warehouse

TICK_JOB = "tick"


def _secret(env_name: str, value: str) -> str | dg.EnvVar:
    """Read secrets through EnvVar when they come from the environment, so Dagster never shows them."""
    return dg.EnvVar(env_name) if os.environ.get(env_name) == value else value


def build_tick_schedule(job: dg.UnresolvedAssetJobDefinition) -> dg.ScheduleDefinition:
    @dg.schedule(
        name="hourly_tick",
        job=job,
        cron_schedule="0 * * * *",
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
    )
    def hourly_tick(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
        # The tick's own time, not "now": a late or replayed tick evaluates the hour it stands for.
        return dg.RunRequest(tags=as_of_tags(context.scheduled_execution_time))

    return hourly_tick


def build_defs(settings: NudgeSettings | None = None) -> dg.Definitions:
    no_full_collections_at_exit()
    settings = (settings or NudgeSettings()).resolved()
    project = dbt_project(settings.dbt_project_dir)
    manifest = load_manifest(project)
    translator = NudgeDbtTranslator()
    contacts_node = find_node(manifest, "stg_contacts")
    events_node = find_node(manifest, "int_events")
    suppressions_node = find_node(manifest, "int_email_suppressions")
    automations, policy = project_automations(settings.dbt_project_dir, manifest)

    send = build_send_assets(
        [
            SendTarget(
                automation,
                trigger_key=translator.get_asset_key(manifest["nodes"][automation.model_unique_id]),
                contacts_key=translator.get_asset_key(contacts_node),
                events_key=translator.get_asset_key(events_node),
                suppressions_key=translator.get_asset_key(suppressions_node),
            )
            for automation in automations
        ],
        contacts_relation=relation_of(contacts_node),
        events_relation=relation_of(events_node),
        suppressions_relation=relation_of(suppressions_node),
        suppressions_model=suppressions_node["unique_id"],
        policy=policy,
    )
    tick = dg.define_asset_job(
        TICK_JOB,
        selection=dg.AssetSelection.all(),
        description="One hourly tick: ingest new landing files, build the models, send what is due, report.",
    )
    email_url = settings.email_url.get_secret_value()
    return dg.Definitions(
        assets=[*INGEST_ASSETS, *build_dbt_assets(project), send],
        jobs=[tick],
        schedules=[build_tick_schedule(tick)],
        resources={
            "warehouse": Warehouse(path=str(settings.warehouse), lock_timeout_seconds=settings.lock_timeout_seconds,
                                   memory_limit=settings.duckdb_memory_limit),
            "landing": LandingFiles(path=str(settings.landing_dir), max_reject_share=settings.max_reject_share),
            "dbt": DbtProjectResource(project_dir=str(project.project_dir)),
            "email": EmailBackendResource(
                url=email_url if email_url.startswith("file://") else _secret("NUDGE_EMAIL_URL", email_url)
            ),
            "send_settings": SendSettings(
                templates_dir=str(settings.templates_dir),
                sender=settings.sender,
                postal_address=settings.postal_address,
                unsubscribe_url=settings.unsubscribe_url,
                unsubscribe_mailto=settings.unsubscribe_mailto,
                unsubscribe_secret=_secret(
                    "NUDGE_UNSUBSCRIBE_SECRET", settings.unsubscribe_secret.get_secret_value()
                ),
                batch_size=settings.send_batch_size,
                unsubscribe_journal=str(settings.unsubscribe_journal),
                compose_processes=settings.compose_processes,
            ),
        },
    )


@dg.definitions
def defs() -> dg.Definitions:
    """What `dagster dev` and the webserver load from workspace.yaml. Built when Dagster asks,
    not on import: `nudge run` and the tests build their own from their settings, and a tick's
    process would otherwise build them twice (the manifest read and every asset made again)."""
    return build_defs()
