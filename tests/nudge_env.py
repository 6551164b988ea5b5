"""A Nudge installation in a temporary folder: its own warehouse, landing files and outbox."""

from __future__ import annotations

import email
import email.policy
import shutil
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from pathlib import Path

import dagster as dg
import duckdb
from pydantic import SecretStr

from dagster_project.settings import PROJECT_ROOT, NudgeSettings


@dataclass
class NudgeEnv:
    root: Path
    settings: NudgeSettings

    @property
    def outbox(self) -> Path:
        return self.root / "outbox"

    def defs(self) -> dg.Definitions:
        from dagster_project.definitions import build_defs

        return build_defs(self.settings)

    def tick(self, as_of: datetime):
        from dagster_project.tick import run_tick

        return run_tick(self.defs(), as_of, instance=dg.DagsterInstance.ephemeral())

    def query(self, sql: str, params: list | None = None) -> list[tuple]:
        con = duckdb.connect(str(self.settings.warehouse), read_only=True)
        try:
            return con.execute(sql, params or []).fetchall()
        finally:
            con.close()

    def scalar(self, sql: str, params: list | None = None):
        return self.query(sql, params)[0][0]

    def categories(self) -> dict[str, str]:
        """automation -> marketing | transactional, as the project declares them."""
        from dagster_project.automations import project_automations

        manifest = self.settings.dbt_project_dir / "target" / "manifest.json"
        return {a.name: a.category for a in project_automations(self.settings.dbt_project_dir, manifest)[0]}

    def emails(self) -> list[EmailMessage]:
        return [
            email.message_from_bytes(path.read_bytes(), policy=email.policy.default)  # type: ignore[misc]
            for path in sorted(self.outbox.rglob("*.eml"))
        ]


def make_env(root: Path, *, email_url: str | None = None, dbt_project_dir: Path | None = None,
             templates_dir: Path | None = None) -> NudgeEnv:
    root.mkdir(parents=True, exist_ok=True)
    settings = NudgeSettings(
        warehouse=root / "warehouse.duckdb",
        landing_dir=root / "landing",
        email_url=SecretStr(email_url or f"file://{root / 'outbox'}"),
        unsubscribe_secret=SecretStr("test-secret"),
        dbt_project_dir=dbt_project_dir or PROJECT_ROOT / "dbt_project",
        templates_dir=templates_dir or PROJECT_ROOT / "templates",
    ).resolved()
    return NudgeEnv(root, settings)


def copy_project(root: Path) -> tuple[Path, Path]:
    """A scratch copy of the dbt project and templates, for tests that change them."""
    dbt_dir, templates_dir = root / "dbt_project", root / "templates"
    shutil.copytree(
        PROJECT_ROOT / "dbt_project", dbt_dir, ignore=shutil.ignore_patterns("target", "logs", "dbt_packages")
    )
    shutil.copytree(PROJECT_ROOT / "templates", templates_dir)
    return dbt_dir, templates_dir


def env_for_copy(root: Path, *, contacts: int, seed: int) -> NudgeEnv:
    """An installation running the scratch copy under `root` (copy_project, then changed by
    the test): the copy parsed, and sample landing files to ingest."""
    from dagster_project.dbt_assets import prepare_manifest
    from dagster_project.sample_data import generate

    dbt_dir, templates_dir = root / "dbt_project", root / "templates"
    prepare_manifest(dbt_dir)
    env = make_env(root, dbt_project_dir=dbt_dir, templates_dir=templates_dir)
    generate(env.settings.landing_dir, contacts=contacts, seed=seed)
    return env
