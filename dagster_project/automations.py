"""Automations are declared by analytics engineers, not in Python.

Each trigger model whose YAML carries `config.meta.nudge` is an automation; this
module reads those blocks from the prepared dbt manifest and validates them, so
a typo in YAML fails loudly when the code loads, before anything is sent.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from dagster_project.durations import parse_duration

TRIGGER_PREFIX = "trg_"
# Names reach SQL literals, file paths and asset keys: keep them boring.
SAFE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


class AutomationConfigError(ValueError):
    pass


class _Conversion(BaseModel):
    model_config = ConfigDict(extra="forbid")
    event: str
    window: str = "72h"


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
    # Read by the send step (issue #3); declared here so trigger models using them load.
    exit_events: list[str] = []
    priority: int = 100
    start_at: str | None = None
    quiet_hours: bool | None = None

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
    description: str = ""

    @property
    def is_marketing(self) -> bool:
        return self.category == "marketing"


def _nudge_meta(node: dict[str, Any]) -> dict[str, Any] | None:
    meta = (node.get("config") or {}).get("meta") or node.get("meta") or {}
    return meta.get("nudge")


def automation_from_node(node: dict[str, Any]) -> Automation:
    model_name = node["name"]
    where = f"{node.get('original_file_path', model_name)} (meta.nudge)"
    if not model_name.startswith(TRIGGER_PREFIX):
        raise AutomationConfigError(f"{where}: a model with a nudge block must be named {TRIGGER_PREFIX}<automation>")
    name = model_name[len(TRIGGER_PREFIX) :]
    if not SAFE_NAME.match(name):
        raise AutomationConfigError(f"{where}: automation name {name!r} must be lowercase letters, digits and _")
    try:
        meta = _NudgeMeta.model_validate(_nudge_meta(node) or {})
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
        description=node.get("description") or "",
    )


def automations_from_manifest(manifest: dict[str, Any] | Path) -> list[Automation]:
    if isinstance(manifest, Path):
        manifest = json.loads(manifest.read_text())
    nodes = manifest["nodes"].values()
    found = [
        automation_from_node(node)
        for node in nodes
        if node.get("resource_type") == "model" and _nudge_meta(node) is not None
    ]
    return sorted(found, key=lambda automation: automation.name)


def relation_of(node: dict[str, Any]) -> str:
    """Schema and table without the database: DuckDB names the database after the
    file, which differs between the manifest's parse and a test's warehouse."""
    return f'"{node["schema"]}"."{node.get("alias") or node["name"]}"'


def find_node(manifest: dict[str, Any], model_name: str) -> dict[str, Any]:
    for node in manifest["nodes"].values():
        if node.get("resource_type") == "model" and node["name"] == model_name:
            return node
    raise KeyError(f"the dbt project has no model named {model_name}")
