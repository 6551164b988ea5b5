"""The dbt project as Dagster assets, built with the run's `as_of`.

Two selections of one project: the models that decide who qualifies, and the
reporting models that read the ledger. Splitting them keeps the graph acyclic
(triggers -> send -> ledger -> reporting) without asking Dagster to subset.
"""


import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
from dagster_dbt import DagsterDbtTranslator, DbtProject, dbt_assets
from dagster_dbt.asset_utils import get_updated_cli_invocation_params_for_context
from dagster_dbt.core.dbt_cli_event import DbtCoreCliEventMessage
from dagster_dbt.core.resource import DBT_INDIRECT_SELECTION_ENV

from dagster_project.asset_metadata import plain_value, relation_metadata
from dagster_project.automations import relation_of
from dagster_project.builds import model_outcomes, passed_test_counts, record_builds
from dagster_project.clock import as_of_for, format_as_of
from dagster_project.dbt_runner import DbtProjectResource, forget_manifests, run_dbt
from dagster_project.warehouse import WAREHOUSE_POOL, Warehouse

REPORTING = "path:models/reporting"
LEDGER_KEY = dg.AssetKey(["nudge", "messages"])


class ManifestMissingError(FileNotFoundError):
    pass


@cache
def dbt_project(project_dir: Path) -> DbtProject:
    project = DbtProject(project_dir=project_dir)
    if not project.manifest_path.exists():
        # Parsing here would run dbt on every code load; it is a build step instead.
        raise ManifestMissingError(
            f"{project.manifest_path} is missing: run `make prepare` "
            f"(or `dbt parse` in {project_dir}) before loading the Dagster code"
        )
    return project


def load_manifest(project: DbtProject) -> dict[str, Any]:
    return json.loads(project.manifest_path.read_text())


class NudgeDbtTranslator(DagsterDbtTranslator):
    """Groups follow the project's folders; sources point at the assets that write them."""

    def get_asset_key(self, dbt_resource_props: Mapping[str, Any]) -> dg.AssetKey:
        if dbt_resource_props["resource_type"] == "source":
            return dg.AssetKey([dbt_resource_props["source_name"], dbt_resource_props["name"]])
        return dg.AssetKey(dbt_resource_props["name"])

    def get_asset_check_spec(
        self, asset_spec: dg.AssetSpec, manifest: Mapping[str, Any], unique_id: str, project: DbtProject | None
    ) -> dg.AssetCheckSpec | None:
        spec = super().get_asset_check_spec(asset_spec, manifest, unique_id, project)
        if spec is None:
            return None
        # A failed test shows as a failed check but does not fail the whole dbt step: each send
        # asset's own gate stops the automations it guards, and the other automations still go.
        return dg.AssetCheckSpec(
            name=spec.name,
            asset=spec.asset_key,
            description=spec.description,
            additional_deps=spec.additional_deps,
            metadata=spec.metadata,
            blocking=False,
        )

    def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str | None:
        if dbt_resource_props["resource_type"] == "seed":
            return "seeds"  # reference data (dbt_project/seeds), loaded by the same dbt build
        fqn = dbt_resource_props.get("fqn", [])
        # fqn is [project, folder, ..., model]; a model at the root has no folder.
        return fqn[1] if len(fqn) > 2 else "dbt"


DBT_BUILD_ARGS = ["build", "--exclude-resource-type", "unit_test"]


def dbt_environment(as_of: datetime, warehouse: Path | str, memory_limit: str | None = None) -> dict[str, str]:
    """What a tick tells dbt, as environment variables rather than --vars: dbt re-parses the
    whole project whenever --vars change, and as_of changes every hour."""
    environment = {"NUDGE_AS_OF": format_as_of(as_of), "NUDGE_WAREHOUSE": str(warehouse)}
    if memory_limit:
        environment["NUDGE_DUCKDB_MEMORY_LIMIT"] = memory_limit  # read by profiles.yml
    return environment


def tick_target_path(warehouse: Path | str) -> Path:
    """One dbt target folder per warehouse, reused by both dbt steps of every tick: dbt keeps
    its partial-parse state there (valid only for the warehouse it parsed with), so only the
    first build after a change parses, and the folders do not pile up one per run. The steps
    never run at once: each holds the warehouse lock while dbt runs."""
    digest = hashlib.sha1(str(warehouse).encode()).hexdigest()[:8]
    return Path("target") / f"tick_{digest}"


@contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    # dagster-dbt hands the subprocess a copy of os.environ; steps of one process run one at a time.
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _build(
    context: dg.AssetExecutionContext,
    dbt: DbtProjectResource,
    warehouse: Warehouse,
    manifest: Mapping[str, Any],
    project: DbtProject,
    translator: DagsterDbtTranslator,
) -> Iterator[Any]:
    as_of = as_of_for(context)
    # What of the selection this run asked for (a backtest or a retry may ask for part of it).
    selection = get_updated_cli_invocation_params_for_context(
        context=context, manifest=manifest, dagster_dbt_translator=translator, runtime_selects=[], runtime_excludes=[]
    )
    project_dir = Path(selection.dbt_project.project_dir if selection.dbt_project else dbt.project_dir)
    target_path = project_dir / tick_target_path(warehouse.path)
    environment = dbt_environment(as_of, warehouse.path, warehouse.memory_limit)
    if selection.indirect_selection:
        environment[DBT_INDIRECT_SELECTION_ENV] = selection.indirect_selection
    # dbt is the writer while it runs; the lock keeps other processes off the file meanwhile.
    with warehouse.lock():
        with _environment(environment):
            # One `build` per selection, so dbt's start-up is paid once; dbt unit tests check
            # the SQL, not the data, so they run in `make test`, not every hour.
            run = run_dbt(
                [*DBT_BUILD_ARGS, *selection.selection_args],
                project_dir=project_dir,
                profiles_dir=dbt.profiles,
                target_path=target_path,
            )
        run_results = run.run_results
        outcomes = model_outcomes(run_results, manifest)
        # Held back until dbt has let go of the file, so each model's row count and preview
        # can be read and shown with its materialization.
        con = duckdb.connect(warehouse.path)
        try:
            record_builds(
                con, outcomes, as_of=as_of, now=datetime.now(UTC).replace(tzinfo=None),
                invocation_id=run_results.get("metadata", {}).get("invocation_id"),
                passed=passed_test_counts(run_results, manifest),
            )
            events = [
                _with_table_metadata(con, event, manifest)
                for result in run.results
                for event in DbtCoreCliEventMessage(raw_event=result, event_history_metadata={}).to_default_asset_events(
                    manifest=manifest, dagster_dbt_translator=translator, context=context,
                    target_path=target_path, project=project,
                )
            ]
        finally:
            con.close()
    yield from events
    if run.success:
        return
    not_built = _not_built(run_results, outcomes)
    if not_built or not outcomes:
        # Dagster runs no step downstream of a model that did not build (an error, a NULL its
        # contract refuses, or skipped after a failure upstream): the send step would be skipped
        # and the tick called a success. Failing here says why nothing was sent.
        raise dg.Failure(
            description=f"dbt build failed for as_of {format_as_of(as_of)}; nothing downstream of it runs this tick:\n"
            + ("\n".join(not_built) if not_built else run.error or "see the dbt log above")
        )
    # Only tests failed, on models that built: they show as failed checks, and each send asset's
    # gate stops the automations whose trigger they guard, so one broken automation does not stop
    # the others.
    failing = {model: tests for model, (_, tests) in outcomes.items() if tests}
    context.log.warning(f"dbt tests failed for as_of {format_as_of(as_of)}: {failing}")


def _with_table_metadata(con: duckdb.DuckDBPyConnection, event: Any, manifest: Mapping[str, Any]) -> Any:
    """A model's materialization, with the rows it now holds and the first few of them."""
    if not isinstance(event, dg.Output | dg.AssetMaterialization):
        return event
    node = manifest["nodes"].get(str(plain_value(event.metadata.get("unique_id"))))
    if node is None or node.get("resource_type") not in ("model", "seed"):
        return event
    return event.with_metadata({**event.metadata, **relation_metadata(con, relation_of(node))})


def _not_built(run_results: Mapping[str, Any], outcomes: Mapping[str, tuple[str, list[str]]]) -> list[str]:
    """One line per model that dbt did not build, with dbt's error, and the failed tests that
    made dbt skip the models downstream of them."""
    messages = {result["unique_id"]: result.get("message") or "" for result in run_results.get("results", [])}
    lines = [
        f"{model}: {' '.join(messages.get(model, '').split()) or 'error'}"
        for model, (status, _) in sorted(outcomes.items())
        if status == "error"
    ]
    skipped = sorted(model for model, (status, _) in outcomes.items() if status == "skipped")
    if skipped:
        failed_tests = sorted(f"{model} ({', '.join(tests)})" for model, (_, tests) in outcomes.items() if tests)
        if failed_tests:
            lines.append(f"tests failed on {'; '.join(failed_tests)}")
        lines.append(f"skipped after a failure upstream: {', '.join(skipped)}")
    return lines


def build_dbt_assets(project: DbtProject) -> list[dg.AssetsDefinition]:
    manifest = load_manifest(project)
    translator = NudgeDbtTranslator()

    @dbt_assets(
        manifest=manifest,
        project=project,
        dagster_dbt_translator=translator,
        exclude=REPORTING,
        name="nudge_models",
        pool=WAREHOUSE_POOL,
    )
    def nudge_models(context: dg.AssetExecutionContext, dbt: DbtProjectResource, warehouse: Warehouse):
        yield from _build(context, dbt, warehouse, manifest, project, translator)

    @dbt_assets(
        manifest=manifest,
        project=project,
        dagster_dbt_translator=translator,
        select=REPORTING,
        name="nudge_reporting",
        pool=WAREHOUSE_POOL,
    )
    def nudge_reporting(context: dg.AssetExecutionContext, dbt: DbtProjectResource, warehouse: Warehouse):
        yield from _build(context, dbt, warehouse, manifest, project, translator)

    return [nudge_models, nudge_reporting]


def prepare_manifest(project_dir: Path) -> Path:
    """`dbt parse` once, ahead of loading the code (make prepare, test sessions, a copied project)."""
    from dbt.cli.main import dbtRunner

    result = dbtRunner().invoke(
        ["parse", "--quiet", "--project-dir", str(project_dir), "--profiles-dir", str(project_dir)]
    )
    if not result.success:
        raise RuntimeError(f"dbt parse failed in {project_dir}: {result.exception}")
    dbt_project.cache_clear()
    forget_manifests()
    return project_dir / "target" / "manifest.json"
