"""A small warehouse for the report's tests: a ledger of three days and the events that follow it,
with the reporting models built over them by a real dbt run.

Faster than a demo's two ticks (which rebuild every model twice): only the reporting models and
their parents (stg_events, int_identity_map, int_events) are built, on rows planted the way
the send step and ingestion write them. The engagement events come from the demo's own module
(sample_engagement), so the report sees what `nudge demo` makes it see.

The build is the same for every test file (seeded), so a test session builds it once, under a
file lock shared by the xdist workers, and hands each module a copy of its own (one module may
hold a writer on its copy while another reads).
"""

from __future__ import annotations

import fcntl
import os
import random
import shutil
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import orjson
import pytest

from dagster_project.automations import project_automations
from dagster_project.ingest import ensure_raw_tables
from dagster_project.ledger import ensure_ledger
from dagster_project.messages import message_id
from dagster_project.sample_engagement import engagement_events
from dagster_project.settings import PROJECT_ROOT

AS_OF = datetime(2026, 11, 1)
DAYS = (datetime(2026, 10, 29, 9), datetime(2026, 10, 30, 9), datetime(2026, 10, 31, 9))
# automation -> (decisions a day, statuses and their weights)
PLAN = {
    "welcome": (40, [("sent", 6), ("skipped:stale", 2), ("skipped:not_subscribed", 1), ("skipped:capped", 1)]),
    "cart_abandoned": (25, [("sent", 5), ("skipped:exited", 2), ("skipped:stale", 1), ("failed:rejected", 0.3)]),
    "winback": (60, [("sent", 6), ("held_out", 3), ("skipped:stale", 1)]),
}
# Conversions the contacts make on their own, emails or not (the holdout's rate).
BASELINE_CONVERSION = 0.08


def build_report_warehouse(root: Path, seed: int = 5) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    warehouse = root / "warehouse.duckdb"
    rng = random.Random(seed)
    manifest = PROJECT_ROOT / "dbt_project" / "target" / "manifest.json"
    automations = {a.name: a for a in project_automations(PROJECT_ROOT / "dbt_project", manifest)[0]}
    ledger, events = [], []
    serial = 0
    for automation, (per_day, outcomes) in PLAN.items():
        statuses, weights = zip(*outcomes, strict=True)
        for day in DAYS:
            for _ in range(per_day):
                serial += 1
                contact, key = f"c{serial:04d}", f"k{serial:04d}"
                status, _, reason = rng.choices(statuses, weights)[0].partition(":")
                decided_at = day + timedelta(minutes=rng.randint(0, 600))
                ledger.append({
                    "automation": automation, "trigger_key": key, "contact_id": contact,
                    "email": f"{contact}@example.com", "message_id": message_id(automation, key, "nudge.example"),
                    "status": status, "reason": reason or None, "attempts": int(status in ("sent", "failed")),
                    "qualified_at": decided_at - timedelta(hours=1), "due_at": decided_at,
                    "decided_at": decided_at, "sent_at": decided_at if status == "sent" else None,
                    "updated_at": decided_at,
                })
                goal = automations[automation].conversion_event
                if goal and status in ("sent", "held_out") and rng.random() < BASELINE_CONVERSION:
                    events.append({
                        "event_id": f"e_base_{serial}", "contact_id": contact, "name": goal,
                        "occurred_at": decided_at + timedelta(hours=rng.randint(1, 20)),
                        "properties": '{"order_id": "o_base", "total": 42.0}' if goal == "purchased" else "{}",
                    })
    goals = {name: (a.conversion_event, a.conversion_window) for name, a in automations.items() if a.conversion_event}
    sent = [row for row in ledger if row["status"] == "sent"]
    for row in engagement_events(sent, goals, until=AS_OF, seed=seed):
        events.append({**row, "occurred_at": datetime.fromisoformat(row["occurred_at"].removesuffix("Z")),
                       "properties": orjson.dumps(row["properties"]).decode()})

    con = duckdb.connect(str(warehouse))
    try:
        ensure_raw_tables(con)
        ensure_ledger(con)
        con.executemany(
            "insert into nudge.messages (automation, trigger_key, contact_id, email, message_id, status, reason, "
            "attempts, qualified_at, due_at, decided_at, sent_at, updated_at) "
            "values ($automation, $trigger_key, $contact_id, $email, $message_id, $status, $reason, $attempts, "
            "$qualified_at, $due_at, $decided_at, $sent_at, $updated_at)",
            ledger,
        )
        con.executemany(
            "insert into raw.events (event_id, contact_id, name, occurred_at, properties, is_syncing) "
            "values ($event_id, $contact_id, $name, $occurred_at, $properties, false)",
            events,
        )
    finally:
        con.close()

    # dbt in a process of its own: dbt-duckdb keeps its connection open in-process, and the
    # report must open the file read-only afterwards
    project = str(PROJECT_ROOT / "dbt_project")
    completed = subprocess.run(
        [str(Path(sys.executable).parent / "dbt"), "run", "--select", "+path:models/reporting",
         "--vars", f"{{as_of: '{AS_OF:%Y-%m-%d %H:%M:%S}'}}", "--project-dir", project, "--profiles-dir", project,
         "--target-path", str(root / "target"), "--log-path", str(root / "logs"), "--quiet"],
        env={**os.environ, "NUDGE_WAREHOUSE": str(warehouse)},  # profiles.yml reads it
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return warehouse


def report_warehouse_copy(tmp_path_factory: pytest.TempPathFactory, root: Path) -> Path:
    """A copy in `root` of build_report_warehouse's warehouse, built once per test session.

    Under xdist every worker has a base temporary folder of its own inside one for the session
    (the pattern pytest-xdist documents for session-wide data); the lock makes the first worker
    build and the others wait for it and copy."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    built = shared / "report-warehouse"
    with open(shared / "report-warehouse.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not (built / "built").exists():
                shutil.rmtree(built, ignore_errors=True)  # a build that failed half-way
                build_report_warehouse(built)
                (built / "built").touch()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    root.mkdir(parents=True, exist_ok=True)
    warehouse = root / "warehouse.duckdb"
    shutil.copy(built / "warehouse.duckdb", warehouse)
    if (built / "warehouse.duckdb.wal").exists():
        shutil.copy(built / "warehouse.duckdb.wal", root / "warehouse.duckdb.wal")
    return warehouse
