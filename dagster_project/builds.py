"""Which dbt models were built, and tested clean, for which `as_of`.

Failed dbt tests do not reliably stop a downstream Python asset, so the dbt
step records each model's outcome here and a send step refuses to read a
trigger table that was not built and tested for its own tick. The next build's
data tests read it too: a per-contact model whose last build (by dbt's
invocation id) passed every one of its tests is tested over the rows its new
build rewrote (dbt_project/macros/rebuilt_rows.sql).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import duckdb

BUILDS_TABLE = "nudge.model_builds"

DDL = f"""
create schema if not exists nudge;
create table if not exists {BUILDS_TABLE} (
    unique_id    varchar   primary key,
    as_of        timestamp not null,
    status       varchar   not null,
    failed_tests varchar   not null,
    recorded_at  timestamp not null
);
-- added since: a warehouse of before gets them empty, and its next tests look at every row
alter table {BUILDS_TABLE} add column if not exists invocation_id varchar;
alter table {BUILDS_TABLE} add column if not exists tests_passed integer;
"""


class NotBuiltError(RuntimeError):
    pass


def model_outcomes(run_results: Mapping[str, Any], manifest: Mapping[str, Any]) -> dict[str, tuple[str, list[str]]]:
    """unique_id of each model in the run -> (its status, the tests on it that failed or errored)."""
    tested = {**manifest.get("nodes", {}), **manifest.get("unit_tests", {})}
    statuses: dict[str, str] = {}
    failures: dict[str, list[str]] = defaultdict(list)
    for result in run_results.get("results", []):
        unique_id = result["unique_id"]
        if unique_id.startswith("model."):
            statuses[unique_id] = result["status"]
        elif result["status"] in ("fail", "error"):
            test = tested.get(unique_id, {})
            for model in test.get("depends_on", {}).get("nodes", []):
                failures[model].append(test.get("name", unique_id))
    return {model: (status, sorted(failures.get(model, []))) for model, status in statuses.items()}


def passed_test_counts(run_results: Mapping[str, Any], manifest: Mapping[str, Any]) -> dict[str, int]:
    """unique_id of each model -> how many tests on it passed in the run (a test reading two
    models counts for both, as a failure is charged to both)."""
    nodes = manifest.get("nodes", {})
    passed: dict[str, int] = defaultdict(int)
    for result in run_results.get("results", []):
        if result["status"] == "pass":
            for model in nodes.get(result["unique_id"], {}).get("depends_on", {}).get("nodes", []):
                passed[model] += 1
    return dict(passed)


def record_builds(
    con: duckdb.DuckDBPyConnection,
    outcomes: Mapping[str, tuple[str, list[str]]],
    *,
    as_of: datetime,
    now: datetime,
    invocation_id: str | None = None,
    passed: Mapping[str, int] | None = None,
) -> None:
    """Each model's outcome in one build; `invocation_id` is dbt's for the build and `passed`
    (passed_test_counts) how many tests passed on each model."""
    con.execute(DDL)
    if not outcomes:
        return
    passed = passed or {}
    # One statement: the models of a build are recorded together or not at all, and the
    # warehouse commits once, not once a model.
    rows = [(unique_id, as_of, status, ", ".join(failed_tests), now, invocation_id, passed.get(unique_id, 0))
            for unique_id, (status, failed_tests) in outcomes.items()]
    con.execute(
        f"""
        insert or replace into {BUILDS_TABLE}
            (unique_id, as_of, status, failed_tests, recorded_at, invocation_id, tests_passed)
        values {", ".join(["(?, ?, ?, ?, ?, ?, ?)"] * len(rows))}
        """,
        [value for row in rows for value in row],
    )


def require_built(con: duckdb.DuckDBPyConnection, unique_id: str, as_of: datetime) -> None:
    """Raise unless `unique_id` was built successfully, with no failing test, for this `as_of`."""
    con.execute(DDL)
    # fetchall, not fetchone: DuckDB keeps a half-read result open and refuses the next query.
    rows = con.execute(
        f"select as_of, status, failed_tests from {BUILDS_TABLE} where unique_id = ?", [unique_id]
    ).fetchall()
    row = rows[0] if rows else None
    if row is None:
        raise NotBuiltError(f"{unique_id} has never been built by a tick; nothing sent")
    built_as_of, status, failed_tests = row
    if built_as_of != as_of:
        raise NotBuiltError(f"{unique_id} was last built for {built_as_of}, not this tick's {as_of}; nothing sent")
    if status != "success":
        raise NotBuiltError(f"{unique_id} did not build for {as_of} (dbt status {status}); nothing sent")
    if failed_tests:
        raise NotBuiltError(f"dbt tests on {unique_id} failed for {as_of}: {failed_tests}; nothing sent")
