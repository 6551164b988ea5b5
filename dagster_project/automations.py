"""Automations are declared by analytics engineers, not in Python.

Each trigger model whose YAML carries `config.meta.nudge` is an automation; this
module reads those blocks from the prepared dbt manifest and validates them, so
a typo in YAML fails loudly when the code loads, before anything is sent.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from dagster_project.breaker import BreakerConfig, BreakerPolicy
from dagster_project.durations import parse_duration
from dagster_project.messages import sender_domain

TRIGGER_PREFIX = "trg_"
# Names reach SQL literals, file paths and asset keys: keep them boring.
SAFE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
# Schemas and tables from the manifest are spliced into SQL (quoted): nothing that could close a quote.
SAFE_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


class AutomationConfigError(ValueError):
    pass


class _Conversion(BaseModel):
    model_config = ConfigDict(extra="forbid")
    event: str
    window: str = "72h"

    @field_validator("event")
    @classmethod
    def _is_event_name(cls, value: str) -> str:
        # Reporting models put it in SQL.
        if not SAFE_NAME.match(value):
            raise ValueError(f"conversion event {value!r} must be lowercase letters, digits and _")
        return value


class _NudgeMeta(BaseModel):
    """The `nudge` block of a trigger model's meta, as written in YAML."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    template: str | None = None
    category: Literal["marketing", "transactional"] = "marketing"
    sender: str | None = Field(default=None, alias="from")
    delay: str = "0h"
    send_window: str = "48h"
    reentry: str = "every_time"
    holdout_percent: float = Field(default=0, ge=0, le=100)
    conversion: _Conversion | None = None
    exit_events: list[str] = Field(default_factory=list)
    priority: int = 100
    start_at: datetime | None = None
    # None: marketing mail waits out quiet hours, transactional mail does not.
    quiet_hours: bool | None = None

    @field_validator("sender")
    @classmethod
    def _is_one_address(cls, value: str | None) -> str | None:
        # It becomes the From header and the Message-ID's domain: refuse it here, not at every message.
        if value is not None:
            sender_domain(value)
        return value

    @field_validator("start_at")
    @classmethod
    def _is_utc(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("start_at needs a UTC offset, e.g. 2026-10-01T00:00:00Z")
        return value.astimezone(UTC).replace(tzinfo=None)

    @field_validator("exit_events")
    @classmethod
    def _are_event_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not SAFE_NAME.match(name):
                raise ValueError(f"exit event {name!r} must be lowercase letters, digits and _")
        return value

    @field_validator("delay", "send_window")
    @classmethod
    def _is_duration(cls, value: str) -> str:
        parse_duration(value)
        return value

    @field_validator("reentry")
    @classmethod
    def _is_reentry(cls, value: str) -> str:
        if value not in ("once", "every_time"):
            try:
                parse_duration(value)
            except ValueError:
                raise ValueError(
                    f"reentry {value!r} must be 'once', 'every_time' or a period such as 24h or 30d"
                ) from None
        return value


@dataclass(frozen=True)
class Automation:
    name: str
    model_unique_id: str
    model_name: str
    relation: str  # schema-qualified, e.g. "triggers"."trg_welcome"
    template: str
    category: Literal["marketing", "transactional"]
    sender: str | None
    delay: timedelta
    send_window: timedelta
    reentry: Literal["once", "every_time"] | timedelta
    holdout_percent: float
    conversion_event: str | None
    conversion_window: timedelta | None
    exit_events: tuple[str, ...] = ()
    priority: int = 100
    start_at: datetime | None = None  # naive UTC, like every timestamp in the warehouse
    respects_quiet_hours: bool = True
    description: str = ""

    @property
    def is_marketing(self) -> bool:
        return self.category == "marketing"


class _FrequencyCap(BaseModel):
    model_config = ConfigDict(extra="forbid")
    per_day: int | None = Field(default=1, ge=0)
    per_week: int | None = Field(default=3, ge=0)


class _QuietHours(BaseModel):
    model_config = ConfigDict(extra="forbid")
    start: time = time(21, 0)
    end: time = time(8, 0)


class _ProjectPolicy(BaseModel):
    """`vars: nudge:` in dbt_project.yml: the rules across automations, and defaults for each."""

    model_config = ConfigDict(extra="forbid")
    frequency_cap: _FrequencyCap = Field(default_factory=_FrequencyCap)
    quiet_hours: _QuietHours = Field(default_factory=_QuietHours)
    circuit_breaker: BreakerConfig = Field(default_factory=BreakerConfig)
    defaults: dict[str, Any] = Field(default_factory=dict)


@dataclass(frozen=True)
class Policy:
    """What holds across automations: the marketing frequency cap, the quiet hours, the circuit breaker."""

    cap_per_day: int | None = 1
    cap_per_week: int | None = 3
    quiet_start: time = time(21, 0)
    quiet_end: time = time(8, 0)
    defaults: tuple[tuple[str, Any], ...] = ()
    breaker: BreakerPolicy = BreakerPolicy()

    def in_quiet_hours(self, local: time) -> bool:
        if self.quiet_start == self.quiet_end:
            return False
        if self.quiet_start < self.quiet_end:
            return self.quiet_start <= local < self.quiet_end
        return local >= self.quiet_start or local < self.quiet_end  # the window spans midnight


def load_policy(dbt_project_dir: Path) -> Policy:
    """The one place for defaults: `vars: nudge:` of the dbt project, validated here."""
    path = Path(dbt_project_dir) / "dbt_project.yml"
    project = yaml.safe_load(path.read_text()) or {}
    raw = (project.get("vars") or {}).get("nudge") or {}
    try:
        policy = _ProjectPolicy.model_validate(raw)
        _NudgeMeta.model_validate(policy.defaults)
    except ValidationError as error:
        raise AutomationConfigError(f"{path} (vars.nudge): {error}") from None
    return Policy(
        cap_per_day=policy.frequency_cap.per_day,
        cap_per_week=policy.frequency_cap.per_week,
        quiet_start=policy.quiet_hours.start,
        quiet_end=policy.quiet_hours.end,
        defaults=tuple(sorted(policy.defaults.items())),
        breaker=policy.circuit_breaker.policy(),
    )


def _nudge_meta(node: dict[str, Any]) -> dict[str, Any] | None:
    meta = (node.get("config") or {}).get("meta") or node.get("meta") or {}
    return meta.get("nudge")


def automation_from_node(node: dict[str, Any], defaults: dict[str, Any] | None = None) -> Automation:
    model_name = node["name"]
    where = f"{node.get('original_file_path', model_name)} (meta.nudge)"
    if not model_name.startswith(TRIGGER_PREFIX):
        raise AutomationConfigError(f"{where}: a model with a nudge block must be named {TRIGGER_PREFIX}<automation>")
    name = model_name[len(TRIGGER_PREFIX) :]
    if not SAFE_NAME.match(name):
        raise AutomationConfigError(f"{where}: automation name {name!r} must be lowercase letters, digits and _")
    try:
        meta = _NudgeMeta.model_validate({**(defaults or {}), **(_nudge_meta(node) or {})})
    except ValidationError as error:
        raise AutomationConfigError(f"{where}: {error}") from None
    template = meta.template or name
    if not SAFE_NAME.match(template):
        raise AutomationConfigError(f"{where}: template {template!r} must be lowercase letters, digits and _")
    reentry: Literal["once", "every_time"] | timedelta = (
        meta.reentry if meta.reentry in ("once", "every_time") else parse_duration(meta.reentry)  # type: ignore[assignment]
    )
    return Automation(
        name=name,
        model_unique_id=node["unique_id"],
        model_name=model_name,
        relation=relation_of(node),
        template=template,
        category=meta.category,
        sender=meta.sender,
        delay=parse_duration(meta.delay),
        send_window=parse_duration(meta.send_window),
        reentry=reentry,
        holdout_percent=meta.holdout_percent,
        conversion_event=meta.conversion.event if meta.conversion else None,
        conversion_window=parse_duration(meta.conversion.window) if meta.conversion else None,
        exit_events=tuple(meta.exit_events),
        priority=meta.priority,
        start_at=meta.start_at,
        respects_quiet_hours=meta.category == "marketing" if meta.quiet_hours is None else meta.quiet_hours,
        description=node.get("description") or "",
    )


def automations_from_manifest(
    manifest: dict[str, Any] | Path, defaults: dict[str, Any] | None = None
) -> list[Automation]:
    """Every automation, in the order a tick sends them: transactional first (the cap never
    holds them back), then marketing by priority, so the frequency cap keeps what matters most."""
    if isinstance(manifest, Path):
        manifest = json.loads(manifest.read_text())
    nodes = manifest["nodes"].values()
    found = [
        automation_from_node(node, defaults)
        for node in nodes
        if node.get("resource_type") == "model" and _nudge_meta(node) is not None
    ]
    return sorted(found, key=lambda automation: (automation.is_marketing, automation.priority, automation.name))


def relation_of(node: dict[str, Any]) -> str:
    """Schema and table without the database: DuckDB names the database after the
    file, which differs between the manifest's parse and a test's warehouse.

    The result is spliced into SQL, so both parts must be plain identifiers (a custom
    schema or alias could otherwise close the quote and add SQL of its own)."""
    schema, table = node.get("schema"), node.get("alias") or node.get("name")
    for part, value in (("schema", schema), ("alias", table)):
        if not isinstance(value, str) or not SAFE_IDENTIFIER.match(value):
            where = node.get("original_file_path") or node.get("unique_id") or "a dbt model"
            raise AutomationConfigError(
                f"{where}: {part} {value!r} must be letters, digits and _ (starting with a letter or _) "
                "to be used in SQL"
            )
    return f'"{schema}"."{table}"'


def find_node(manifest: dict[str, Any], model_name: str) -> dict[str, Any]:
    for node in manifest["nodes"].values():
        if node.get("resource_type") == "model" and node["name"] == model_name:
            return node
    raise KeyError(f"the dbt project has no model named {model_name}")


def project_automations(dbt_project_dir: Path, manifest: dict[str, Any] | Path) -> tuple[list[Automation], Policy]:
    """The automations of a prepared dbt project with the project's defaults applied, and its policy."""
    policy = load_policy(dbt_project_dir)
    return automations_from_manifest(manifest, dict(policy.defaults)), policy
