"""The lower bound of a tick's models: the same SQL, run as one script in one DuckDB connection.

dbt compiles each model as of the tick; the script creates every model the triggers need
(staging, intermediate, segments, triggers; seeds are already loaded) in dependency order,
as the view or table dbt would make, with no dbt, no Dagster and no tests around it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from graphlib import TopologicalSorter
from pathlib import Path

import duckdb

from dagster_project.clock import format_as_of

REPORTING_FOLDER = "reporting"


def compile_models(project_dir: Path, warehouse: Path, as_of, target: str = "target/bench_compile") -> dict:
    env = {**os.environ, "NUDGE_WAREHOUSE": str(warehouse), "NUDGE_AS_OF": format_as_of(as_of),
           "DBT_PROFILES_DIR": str(project_dir)}
    # --full-refresh: the warehouse copied already holds the incremental models, and compiled
    # against them they would read only what is new; the bound is the whole work.
    subprocess.run(
        [str(Path(sys.executable).with_name("dbt")), "compile", "--quiet", "--full-refresh", "--exclude",
         f"path:models/{REPORTING_FOLDER}", "--target-path", target, "--select", "resource_type:model"],
        cwd=project_dir, env=env, check=True,
    )
    return json.loads((project_dir / target / "manifest.json").read_text())


def script(manifest: dict) -> list[tuple[str, str]]:
    """(model, statement) for every non-reporting model, parents first."""
    models = {
        unique_id: node for unique_id, node in manifest["nodes"].items()
        if node["resource_type"] == "model" and REPORTING_FOLDER not in node["fqn"][1:2]
    }
    graph = {unique_id: [parent for parent in node["depends_on"]["nodes"] if parent in models]
             for unique_id, node in models.items()}
    statements = []
    for unique_id in TopologicalSorter(graph).static_order():
        node = models[unique_id]
        kind = "view" if node["config"]["materialized"] == "view" else "table"
        relation = f'"{node["database"]}"."{node["schema"]}"."{node["alias"]}"'
        statements.append((node["name"], f"create or replace {kind} {relation} as (\n{node['compiled_code']}\n)"))
    return statements


def run_script(
    warehouse: Path, statements: list[tuple[str, str]], memory_limit: str | None = None
) -> tuple[float, dict[str, float]]:
    """Wall seconds of the whole script, and each model's; with DuckDB's own memory limit (80% of
    the machine's) unless `memory_limit` is given."""
    con = duckdb.connect(str(warehouse), config={"memory_limit": memory_limit} if memory_limit else {})
    per_model: dict[str, float] = {}
    started = time.perf_counter()
    try:
        for name, statement in statements:
            began = time.perf_counter()
            con.execute(statement)
            per_model[name] = time.perf_counter() - began
    finally:
        con.close()
    return time.perf_counter() - started, per_model
