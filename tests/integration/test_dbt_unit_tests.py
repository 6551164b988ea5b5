"""The dbt unit tests of every model: the triggers' and carts' edge cases, in the warehouse's own SQL.

They test the SQL, not the data, so they run here rather than in every hourly build.
"""

from __future__ import annotations

import duckdb
from dbt.cli.main import dbtRunner

from dagster_project.ingest import ensure_raw_tables
from dagster_project.ledger import ensure_ledger
from dagster_project.settings import PROJECT_ROOT


def test_every_dbt_unit_test_passes(tmp_path, monkeypatch, dbt_manifest):
    project = str(PROJECT_ROOT / "dbt_project")

    def dbt(*args: str):
        # Its own target folder: the project's target/manifest.json is read by tests running beside it.
        return dbtRunner().invoke([*args, "--project-dir", project, "--profiles-dir", project,
                                   "--target-path", str(tmp_path / "target")])

    warehouse = tmp_path / "warehouse.duckdb"
    con = duckdb.connect(str(warehouse))
    ensure_raw_tables(con)
    ensure_ledger(con)
    con.close()
    monkeypatch.setenv("NUDGE_WAREHOUSE", str(warehouse))
    monkeypatch.setenv("NUDGE_AS_OF", "2026-11-01 00:00:00")

    # Unit tests read their parents' columns from the warehouse: build them empty first
    # (the seeds for real, since dbt run --empty does not load them).
    assert dbt("seed").success
    assert dbt("run", "--empty").success
    result = dbt("test", "--select", "test_type:unit")
    assert result.success, [(r.node.name, r.status, r.message) for r in result.result]
    names = {r.node.name for r in result.result}
    assert len(names) >= 10
    assert any("cart" in name for name in names) and any("signup" in name or "welcome" in name for name in names)
    assert all(r.status == "pass" for r in result.result)
