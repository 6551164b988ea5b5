"""The shape of the Dagster graph: lineage, groups, pools and the schedule."""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg
import pytest

from dagster_project.clock import AS_OF_TAG
from dagster_project.warehouse import WAREHOUSE_POOL
from tests.nudge_env import make_env


@pytest.fixture(scope="module")
def defs(tmp_path_factory, dbt_manifest):
    return make_env(tmp_path_factory.mktemp("defs")).defs()


def key(path: str) -> dg.AssetKey:
    return dg.AssetKey(path.split("/"))


def upstream_closure(graph, asset: dg.AssetKey) -> set[dg.AssetKey]:
    seen, todo = set(), [asset]
    while todo:
        for parent in graph.get(todo.pop()).parent_keys:
            if parent not in seen:
                seen.add(parent)
                todo.append(parent)
    return seen


def test_lineage_runs_from_landing_files_to_messages_to_reporting(defs):
    graph = defs.resolve_asset_graph()
    report_inputs = upstream_closure(graph, key("rpt_automation_performance"))
    for path in ("raw/events", "raw/contacts", "stg_events", "stg_contacts", "trg_welcome", "trg_cart_abandoned",
                 "send_welcome", "send_cart_abandoned", "nudge/messages"):
        assert key(path) in report_inputs, path
    assert key("trg_cart_abandoned") in graph.get(key("send_cart_abandoned")).parent_keys
    assert key("send_welcome") in graph.get(key("nudge/messages")).parent_keys
    assert key("nudge/messages") in graph.get(key("rpt_automation_performance")).parent_keys


def test_assets_are_grouped_by_stage(defs):
    graph = defs.resolve_asset_graph()
    groups = {k.to_user_string(): graph.get(k).group_name for k in graph.get_all_asset_keys()}
    assert groups["raw/events"] == groups["raw/contacts"] == "ingest"
    assert groups["stg_events"] == "staging"
    assert groups["trg_welcome"] == groups["trg_cart_abandoned"] == "triggers"
    assert groups["send_welcome"] == groups["nudge/messages"] == "send"
    assert groups["rpt_automation_performance"] == "reporting"


def test_every_warehouse_writer_is_in_the_warehouse_pool(defs):
    for assets_def in defs.resolve_asset_graph().assets_defs:
        if assets_def.is_executable:
            pools = {node.pool for node in assets_def.node_def.iterate_op_defs()} if hasattr(
                assets_def.node_def, "iterate_op_defs") else {assets_def.op.pool}
            assert pools == {WAREHOUSE_POOL}, assets_def.keys


def test_the_hourly_schedule_passes_its_tick_time_as_as_of(defs):
    schedule = defs.resolve_schedule_def("hourly_tick")
    assert schedule.cron_schedule == "0 * * * *"
    tick_time = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
    with dg.build_schedule_context(scheduled_execution_time=tick_time) as context:
        request = schedule.evaluate_tick(context).run_requests[0]
    assert request.tags[AS_OF_TAG] == "2026-11-01 09:00:00"
    assert schedule.job_name == "tick"
