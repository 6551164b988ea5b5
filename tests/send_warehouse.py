"""A compact warehouse for send tests: contacts and one due welcome each, and send_automation over it.

No dbt: the staging and trigger tables are written directly, so a test of delivery
runs in well under a second per tick on a real DuckDB file.
"""

from __future__ import annotations

from datetime import datetime

import duckdb

from dagster_project.automations import Policy, automation_from_node
from dagster_project.backends.base import EmailBackend
from dagster_project.ledger import ensure_ledger
from dagster_project.send import SendConfig, SendReport, send_automation
from dagster_project.settings import PROJECT_ROOT

AS_OF = datetime(2026, 11, 1, 12)
SENDER = "Nudge Fitness <hello@nudge.example>"

WELCOME = automation_from_node(
    {"unique_id": "model.nudge.trg_welcome", "resource_type": "model", "name": "trg_welcome", "schema": "triggers",
     "config": {"meta": {"nudge": {"send_window": "72h", "reentry": "once"}}}}
)
CONFIG = SendConfig(
    templates_dir=PROJECT_ROOT / "templates",
    sender=SENDER,
    postal_address="1 Example Street",
    unsubscribe_url="https://nudge.example/unsubscribe",
    unsubscribe_mailto="unsubscribe@nudge.example",
    unsubscribe_secret="test-secret",
    batch_size=2,
)


def welcome_warehouse(path, emails: list[str]) -> duckdb.DuckDBPyConnection:
    """Contacts c_0.. with these addresses, each due one welcome (trigger_key = contact_id) an hour ago."""
    con = duckdb.connect(str(path))
    con.execute("create schema triggers; create schema staging")
    con.execute(
        """
        create table staging.stg_contacts as
            select 'c_' || (i - 1) as contact_id, email, 'subscribed' as status, 'Person' as first_name,
                   'No' || (i - 1) as last_name, 'UTC' as timezone, '{}' as properties,
                   timestamp '2026-10-01' as updated_at
            from unnest($emails) with ordinality as t(email, i)
        """,
        {"emails": emails},
    )
    con.execute(
        """
        create table triggers.trg_welcome as
            select contact_id, contact_id as trigger_key, timestamp '2026-11-01 11:00' as qualified_at,
                   timestamp '2026-11-01 11:00' as due_at, '{}' as context
            from staging.stg_contacts
        """
    )
    ensure_ledger(con)
    return con


def send(con: duckdb.DuckDBPyConnection, backend: EmailBackend, as_of: datetime = AS_OF) -> SendReport:
    # No cap or quiet hours: these tests are about delivery, not policies.
    return send_automation(con, WELCOME, contacts_relation="staging.stg_contacts",
                           events_relation="intermediate.int_events", backend=backend, config=CONFIG, as_of=as_of,
                           policy=Policy(cap_per_day=None, cap_per_week=None), marketing_automations=["welcome"])


def ledger(con: duckdb.DuckDBPyConnection) -> dict[str, tuple]:
    """trigger_key -> (status, reason, attempts, error)."""
    rows = con.execute("select trigger_key, status, reason, attempts, error from nudge.messages order by 1").fetchall()
    return {row[0]: tuple(row[1:]) for row in rows}
