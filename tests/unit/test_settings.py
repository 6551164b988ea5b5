from pathlib import Path

from pydantic import SecretStr

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
