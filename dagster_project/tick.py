"""One tick, in-process, through the same job the hourly schedule launches."""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import dagster as dg

from dagster_project.asset_metadata import plain_value
from dagster_project.clock import as_of_tags
from dagster_project.collector import objects_so_far_frozen
from dagster_project.definitions import TICK_JOB
from dagster_project.send_assets import SEND_STEP


def default_instance() -> dg.DagsterInstance:
    """The instance `dagster dev` uses when DAGSTER_HOME is set, so its pools and run history apply."""
    if os.environ.get("DAGSTER_HOME"):
        return dg.DagsterInstance.get()
    return dg.DagsterInstance.ephemeral()


@dataclass
class TickResult:
    as_of: datetime
    success: bool
    seconds: float
    # asset key (as "a/b") -> the metadata its materialization reported
    assets: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    # step key -> wall seconds of the steps that succeeded: where a tick's time went
    step_seconds: dict[str, float] = field(default_factory=dict)

    def metadata(self, key: str, name: str, default: Any = 0) -> Any:
        return self.assets.get(key, {}).get(name, default)


def _failure_message(error: Any) -> str:
    """What the step raised, not the wrapper Dagster puts around every exception from user code."""
    if error is None:
        return "failed"
    while error.cause is not None and error.cls_name == "DagsterExecutionStepExecutionError":
        error = error.cause
    message = error.message.strip()
    # A Failure's description is the message meant for people; drop the class name before it.
    return message.removeprefix("dagster._core.definitions.events.Failure:").strip()


_ASSET_LINE = re.compile(r"^send_\w+: ")


def _per_asset(step_key: str, message: str) -> list[str]:
    """The send step produces an asset per automation and fails with one line per automation
    that did not send, each naming it: keep them apart so each reads on its own."""
    lines = message.splitlines()
    if step_key == SEND_STEP and lines and all(_ASSET_LINE.match(line) for line in lines):
        return lines
    return [f"{step_key}: {message}"]


def run_tick(
    defs: dg.Definitions,
    as_of: datetime,
    instance: dg.DagsterInstance | None = None,
    log_level: str = "INFO",
    selection: dg.AssetSelection | None = None,
) -> TickResult:
    """Run the tick job as of `as_of`. `selection` runs part of it (a backtest leaves out
    ingestion and reporting); the steps that run are the job's own, unchanged."""
    started = time.perf_counter()
    job = defs.resolve_job_def(TICK_JOB)
    asset_keys = None
    if selection is not None:
        asset_keys = sorted(selection.resolve(defs.resolve_asset_graph()), key=lambda key: key.to_user_string())
        if not asset_keys:
            raise ValueError(f"the selection {selection} names none of the tick's assets")
    with objects_so_far_frozen():
        result = job.execute_in_process(
            instance=instance or default_instance(),
            tags=as_of_tags(as_of),
            raise_on_error=False,
            run_config={"loggers": {"console": {"config": {"log_level": log_level}}}},
            asset_selection=asset_keys,
        )
    tick = TickResult(as_of=as_of, success=result.success, seconds=time.perf_counter() - started)
    for event in result.get_asset_materialization_events():
        materialization = event.step_materialization_data.materialization
        tick.assets[materialization.asset_key.to_user_string()] = {
            name: plain_value(value) for name, value in materialization.metadata.items()
        }
    for event in result.get_step_success_events():
        tick.step_seconds[event.step_key] = event.step_success_data.duration_ms / 1000
    for event in result.get_step_failure_events():
        tick.failures.extend(_per_asset(event.step_key, _failure_message(event.step_failure_data.error)))
    return tick
