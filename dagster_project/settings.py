"""Configuration from the environment, with defaults that work out of the box.

Relative paths are read relative to the working directory (the repository root
for `make`, `nudge` and `dagster dev`) and resolved once, here, so dbt's
subprocess and the Python steps always agree on which files they touch.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# Only good enough to try Nudge on a laptop: anyone holding it can forge
# unsubscribe links, so production sets NUDGE_UNSUBSCRIBE_SECRET.
DEV_UNSUBSCRIBE_SECRET = "nudge-dev-only-not-a-secret"


def journal_path_for(warehouse: Path) -> Path:
    """The unsubscribe journal's default place: beside the warehouse, named after it
    (warehouse.unsubscribes.sqlite). Not warehouse.duckdb.*: removing a warehouse with
    its .wal and .lock (`nudge demo --fresh`) must not forget who unsubscribed."""
    return warehouse.with_name(f"{warehouse.stem}.unsubscribes.sqlite")


class NudgeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NUDGE_", extra="ignore")

    warehouse: Path = Path("data/warehouse.duckdb")
    landing_dir: Path = Path("data/landing")
    email_url: SecretStr = SecretStr("file://data/outbox")
    unsubscribe_secret: SecretStr = SecretStr(DEV_UNSUBSCRIBE_SECRET)

    sender: str = "Nudge Fitness <hello@nudge.example>"
    postal_address: str = "Nudge Fitness, 1 Example Street, Springfield, 12345"
    unsubscribe_url: str = "https://nudge.example/unsubscribe"
    unsubscribe_mailto: str = "unsubscribe@nudge.example"
    # Where `nudge serve` appends unsubscribes before they reach the warehouse (SQLite);
    # default: beside the warehouse, <warehouse name>.unsubscribes.sqlite.
    unsubscribe_journal: Path | None = None

    dbt_project_dir: Path = PROJECT_ROOT / "dbt_project"
    templates_dir: Path = PROJECT_ROOT / "templates"

    # A load that rejects more than this share of its rows fails its asset check.
    max_reject_share: float = Field(default=0.05, ge=0, le=1)
    # Rows claimed in the ledger per transaction: the most a crash can leave ambiguous.
    send_batch_size: int = Field(default=100, ge=1)
    # Processes that render and compose a big send's messages beside the one that hands them over
    # (dagster_project.composing); 0 makes every message in the send's own process. By default one
    # where the machine has a core to spare.
    compose_processes: int = Field(default_factory=lambda: 1 if (os.cpu_count() or 1) > 1 else 0, ge=0)
    # How long a tick waits for another writer of the warehouse before giving up.
    lock_timeout_seconds: float = Field(default=1800, gt=0)
    # DuckDB's memory in each process that opens the warehouse (dbt's and the tick's); past it
    # DuckDB spills to disk beside the warehouse instead of growing to 80% of the machine.
    duckdb_memory_limit: str = Field(default="768MB", pattern=r"^\d+(\.\d+)?\s*(KB|MB|GB|TB|KiB|MiB|GiB|TiB)$")

    @field_validator("sender")
    @classmethod
    def _is_one_address(cls, value: str) -> str:
        # The From header of every message and the domain of its Message-ID: refuse it at start-up.
        from dagster_project.messages import sender_domain

        sender_domain(value)
        return value

    def resolved(self) -> "NudgeSettings":
        """A copy whose paths are absolute (and the file:// outbox too)."""
        email_url = self.email_url.get_secret_value()
        if email_url.startswith("file://") and not email_url.startswith("file:///"):
            email_url = "file://" + str(Path(email_url[len("file://") :]).resolve())
        return self.model_copy(
            update={
                "warehouse": self.warehouse.resolve(),
                "unsubscribe_journal": (self.unsubscribe_journal or journal_path_for(self.warehouse)).resolve(),
                "landing_dir": self.landing_dir.resolve(),
                "dbt_project_dir": self.dbt_project_dir.resolve(),
                "templates_dir": self.templates_dir.resolve(),
                "email_url": SecretStr(email_url),
            }
        )

    @property
    def uses_dev_secret(self) -> bool:
        return self.unsubscribe_secret.get_secret_value() == DEV_UNSUBSCRIBE_SECRET
