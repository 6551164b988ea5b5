"""The instance's event log (dagster_project/event_log.py): Dagster's SQLite storage with one
engine per file kept, configured by the repository's dagster.yaml, storing and reading back
what a run writes where Dagster's default would."""

from __future__ import annotations

import shutil

import dagster as dg
import pytest
from dagster._core.instance.ref import InstanceRef

from dagster_project.event_log import NudgeSqliteEventLogStorage
from dagster_project.settings import PROJECT_ROOT


@dg.asset(check_specs=[dg.AssetCheckSpec("has_rows", asset="numbers")])
def numbers() -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"rows": 3}, check_results=[dg.AssetCheckResult(passed=True)])


@dg.asset(deps=[numbers])
def doubled() -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"rows": 6})


@pytest.fixture
def home(tmp_path, monkeypatch):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT_ROOT / ".dagster" / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


def instance_at(home) -> dg.DagsterInstance:
    return dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))


def test_runs_are_stored_where_dagster_keeps_them_and_read_back_by_another_instance(home):
    with instance_at(home) as instance:
        assert isinstance(instance.event_log_storage, NudgeSqliteEventLogStorage)
        runs = [dg.materialize([numbers, doubled], instance=instance) for _ in range(3)]
        assert all(run.success for run in runs)

    # A fresh instance on the same home, as the webserver opens it, sees every run and event.
    with instance_at(home) as reader:
        assert {run.run_id for run in runs} <= {record.dagster_run.run_id for record in reader.get_run_records()}
        latest = reader.get_latest_materialization_event(dg.AssetKey("doubled"))
        assert latest is not None and latest.run_id == runs[-1].run_id
        assert latest.asset_materialization.metadata["rows"] == dg.IntMetadataValue(6)
        check = reader.event_log_storage.get_latest_asset_check_execution_by_key(
            [dg.AssetCheckKey(dg.AssetKey("numbers"), "has_rows")]
        )
        assert check[dg.AssetCheckKey(dg.AssetKey("numbers"), "has_rows")].run_id == runs[-1].run_id
        for run in runs:
            events = reader.all_logs(run.run_id)
            assert [event.dagster_event_type for event in events if event.is_dagster_event][-1] == (
                dg.DagsterEventType.RUN_SUCCESS
            )
    assert {path.stem for path in (home / "history" / "runs").glob("*.db")} >= {run.run_id for run in runs} | {"index"}


def test_one_engine_per_database_file_for_the_life_of_the_process(home):
    with instance_at(home) as instance:
        storage = instance.event_log_storage
        run = dg.materialize([numbers, doubled], instance=instance)
        assert run.success
        # the index and the run's own file; dozens of events, two engines
        assert set(storage._engines) == {"index", run.run_id}  # noqa: SLF001


def test_wal_files_skip_the_sync_per_commit_and_other_files_keep_it(home, tmp_path):
    import sqlite3

    with instance_at(home) as instance:
        storage = instance.event_log_storage
        run = dg.materialize([numbers, doubled], instance=instance)
        assert run.success
        for shard in ("index", run.run_id):
            with storage._connect(shard) as conn:  # noqa: SLF001
                assert conn.exec_driver_sql("pragma journal_mode").scalar() == "wal"
                assert conn.exec_driver_sql("pragma synchronous").scalar() == 1  # NORMAL

        # A file in the old rollback-journal mode keeps SQLite's FULL sync: NORMAL could corrupt it.
        sqlite3.connect(tmp_path / "runs_dir_shard.db").execute("create table t (x)").connection.close()
        storage._base_dir = str(tmp_path)  # noqa: SLF001
        storage._initialized_dbs.add("runs_dir_shard")  # noqa: SLF001
        with storage._connect("runs_dir_shard") as conn:  # noqa: SLF001
            assert conn.exec_driver_sql("pragma journal_mode").scalar() == "delete"
            assert conn.exec_driver_sql("pragma synchronous").scalar() == 2  # FULL


def test_asking_for_a_table_makes_no_engine_of_its_own(home, monkeypatch):
    """Dagster asks whether a table exists before storing each asset check result; its own
    storage made an engine and a connection for every such question."""
    from dagster._core.storage.event_log.sqlite import sqlite_event_log

    with instance_at(home) as instance:
        storage = instance.event_log_storage
        assert dg.materialize([numbers, doubled], instance=instance).success
        made = []
        real_create_engine = sqlite_event_log.create_engine

        def counted(*args, **kwargs):
            made.append(args)
            return real_create_engine(*args, **kwargs)

        monkeypatch.setattr(sqlite_event_log, "create_engine", counted)
        run = dg.materialize([numbers, doubled], instance=instance)
        assert run.success
        assert made == []
        assert storage.has_table("asset_check_executions") is True
        assert storage.has_table("no_such_table") is False
        # the check result was stored in the index all the same
        check = storage.get_latest_asset_check_execution_by_key([dg.AssetCheckKey(dg.AssetKey("numbers"), "has_rows")])
        assert check[dg.AssetCheckKey(dg.AssetKey("numbers"), "has_rows")].run_id == run.run_id
