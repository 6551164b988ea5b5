"""The lineage a data team sees: the real Dagster webserver, asked over GraphQL.

The webserver loads the project from workspace.yaml exactly as `make dev` does,
in its own code-server process; the test reads the asset graph the UI draws and
walks it from every landing file to every send and on to the reports.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import deque
from pathlib import Path

import pytest

from dagster_project.settings import PROJECT_ROOT
from smtp_sink import free_port

pytestmark = pytest.mark.e2e

ASSET_GRAPH = """
{
  assetNodes {
    assetKey { path }
    dependencyKeys { path }
    groupName
  }
}
"""


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 (loopback only)
        return response.read()


def _graphql(base: str, query: str) -> dict:
    request = urllib.request.Request(
        f"{base}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
        payload = json.loads(response.read())
    assert "errors" not in payload, payload["errors"]
    return payload["data"]


@pytest.fixture
def webserver(tmp_path: Path, dbt_manifest):
    port = free_port()
    home = tmp_path / "dagster_home"
    home.mkdir()
    # The repository's instance settings, as `make dev` uses them (its event log storage included).
    shutil.copy(PROJECT_ROOT / ".dagster" / "dagster.yaml", home / "dagster.yaml")
    environment = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "NUDGE_WAREHOUSE": str(tmp_path / "warehouse.duckdb"),
        "NUDGE_LANDING_DIR": str(tmp_path / "landing"),
    }
    executable = Path(sys.executable).with_name("dagster-webserver")
    log = (tmp_path / "webserver.log").open("wb")
    process = subprocess.Popen(
        [str(executable), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        cwd=PROJECT_ROOT,
        env=environment,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, (tmp_path / "webserver.log").read_text()[-3000:]
            try:
                _get(f"{base}/server_info")
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, "the webserver did not answer within 120 s"
                time.sleep(0.5)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def _reachable(start: str, children: dict[str, set[str]]) -> set[str]:
    seen, queue = {start}, deque([start])
    while queue:
        for child in children.get(queue.popleft(), ()):
            if child not in seen:
                seen.add(child)
                queue.append(child)
    return seen


def _path(start: str, goal: str, children: dict[str, set[str]]) -> list[str] | None:
    parents: dict[str, str | None] = {start: None}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        if node == goal:
            path = [node]
            while parents[path[-1]] is not None:
                path.append(parents[path[-1]])  # type: ignore[arg-type]
            return path[::-1]
        for child in sorted(children.get(node, ())):
            if child not in parents:
                parents[child] = node
                queue.append(child)
    return None


def test_the_ui_graph_leads_from_each_landing_table_through_dbt_to_every_send_and_the_reports(webserver):
    nodes = _graphql(webserver, ASSET_GRAPH)["assetNodes"]
    key = lambda node: "/".join(node["assetKey"]["path"])  # noqa: E731
    group = {key(node): node["groupName"] for node in nodes}
    children: dict[str, set[str]] = {}
    for node in nodes:
        for parent in node["dependencyKeys"]:
            children.setdefault("/".join(parent["path"]), set()).add(key(node))

    ingest = sorted(name for name, g in group.items() if g == "ingest")
    sends = sorted(name for name, g in group.items() if name.startswith("send_"))
    # The reports on what was sent: every reporting model that reads the ledger.
    reports = sorted(name for name, g in group.items() if g == "reporting" and name in _reachable("nudge/messages", children))
    assert ingest == ["raw/contacts", "raw/events"]
    assert len(sends) >= 9, sends
    assert {"rpt_automation_performance", "rpt_conversions", "rpt_engagement"} <= set(reports), reports

    for source in ingest:
        downstream = _reachable(source, children)
        for target in (*sends, "nudge/messages", *reports):
            assert target in downstream, f"no path from {source} to {target}"

    for send in sends:
        trigger = f"trg_{send.removeprefix('send_')}"
        # Each send reads its own trigger model, and that model's path from the events runs
        # through staging; the send then feeds the ledger and every report.
        assert send in children.get(trigger, set()), f"{send} does not read {trigger}"
        path = _path("raw/events", trigger, children)
        assert path is not None, f"no path from raw/events to {trigger}"
        assert any(group[step] == "staging" for step in path), path
        assert "nudge/messages" in children.get(send, set())
        for report in reports:
            assert report in _reachable(send, children), f"{send} does not lead to {report}"
