from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from dagster_project.settings import NudgeSettings


def test_paths_and_the_file_outbox_resolve_to_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = NudgeSettings(warehouse=Path("w.duckdb"), email_url=SecretStr("file://out")).resolved()
    assert settings.warehouse == tmp_path / "w.duckdb"
    assert settings.email_url.get_secret_value() == f"file://{tmp_path / 'out'}"


def test_the_development_secret_is_recognised(monkeypatch):
    monkeypatch.delenv("NUDGE_UNSUBSCRIBE_SECRET", raising=False)
    assert NudgeSettings().uses_dev_secret
    monkeypatch.setenv("NUDGE_UNSUBSCRIBE_SECRET", "a-real-secret")
    settings = NudgeSettings()
    assert not settings.uses_dev_secret
    assert "a-real-secret" not in repr(settings)  # secrets never print


def test_the_duckdb_memory_limit_reaches_the_ticks_connections_and_a_bad_one_is_refused(tmp_path, monkeypatch):
    from dagster_project.definitions import build_defs

    monkeypatch.setenv("NUDGE_DUCKDB_MEMORY_LIMIT", "512MB")
    monkeypatch.setenv("NUDGE_WAREHOUSE", str(tmp_path / "w.duckdb"))
    warehouse = build_defs(NudgeSettings().resolved()).resources["warehouse"]
    with warehouse.connect() as con:
        ((limit,),) = con.sql("select current_setting('memory_limit')").fetchall()
    assert limit == "488.2 MiB"  # DuckDB's way of writing 512 MB

    monkeypatch.setenv("NUDGE_DUCKDB_MEMORY_LIMIT", "lots")
    with pytest.raises(ValidationError, match="duckdb_memory_limit"):
        NudgeSettings()
