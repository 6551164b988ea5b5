"""`nudge report` over a real warehouse: what the reporting models say agrees with the ledger and the
project's YAML, and the command says plainly when it cannot read them (busy, not built yet)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict

import duckdb
import pytest
from typer.testing import CliRunner

from dagster_project.automations import project_automations
from dagster_project.cli import app
from dagster_project.ledger import ensure_ledger
from dagster_project.settings import PROJECT_ROOT
from tests.report_warehouse import report_warehouse_copy


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory, dbt_manifest):
    return report_warehouse_copy(tmp_path_factory, tmp_path_factory.mktemp("report"))


def query(warehouse, sql: str) -> list[tuple]:
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def report(warehouse, out) -> object:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NUDGE_WAREHOUSE", str(warehouse))
        return CliRunner().invoke(app, ["report", "--out", str(out)])


def test_rpt_automations_is_what_the_send_step_reads_from_the_yaml(warehouse, dbt_manifest):
    automations, _ = project_automations(PROJECT_ROOT / "dbt_project", dbt_manifest)
    expected = {
        (a.name, a.category, a.holdout_percent, a.conversion_event,
         int(a.conversion_window.total_seconds()) if a.conversion_window else None)
        for a in automations
    }
    rows = query(warehouse, "select automation, category, holdout_percent, conversion_event, "
                            "conversion_window_seconds from reporting.rpt_automations")
    assert set(rows) == expected and len(rows) == len(automations)


def test_engagement_counts_each_sent_message_once(warehouse):
    """An independent count in Python of the events the model joins in SQL."""
    sent = dict(query(warehouse, "select message_id, automation from nudge.messages where status = 'sent'"))
    opened, clicked = defaultdict(set), defaultdict(set)
    for name, properties in query(warehouse, "select name, properties from raw.events where name like 'email_%'"):
        message = json.loads(properties)["message_id"]
        if name in ("email_opened", "email_clicked"):
            opened[sent[message]].add(message)
        if name == "email_clicked":
            clicked[sent[message]].add(message)
    rows = query(warehouse, "select automation, sent, opened, clicked from reporting.rpt_engagement")
    assert rows
    for automation, sent_count, opened_count, clicked_count in rows:
        assert sent_count == sum(1 for a in sent.values() if a == automation)
        assert (opened_count, clicked_count) == (len(opened[automation]), len(clicked[automation]))


def test_conversion_groups_are_the_ledgers_contacts_and_the_interval_holds_the_lift(warehouse):
    rows = query(warehouse, """
        select c.automation, c.sent_contacts, c.holdout_contacts, c.lift, c.lift_ci_low, c.lift_ci_high,
               (select count(distinct contact_id) from nudge.messages m where m.automation = c.automation and m.status = 'sent'),
               (select count(distinct contact_id) from nudge.messages m where m.automation = c.automation and m.status = 'held_out')
        from reporting.rpt_conversions c
    """)
    with_holdout = [row for row in rows if row[2] > 0]
    assert with_holdout, "the planted winback has a holdout"
    for _, sent, holdout, lift, low, high, ledger_sent, ledger_holdout in rows:
        assert (sent, holdout) == (ledger_sent, ledger_holdout)
        if holdout and sent:
            assert -1 <= low < lift < high <= 1


def test_the_warehouse_holds_each_reporting_table_to_its_grain_and_statuses(warehouse, tmp_path):
    # the grain and the accepted values are constraints of the tables as built, not test queries:
    # a row that breaks one fails the model's build
    keys = dict(query(warehouse, """
        select table_name, constraint_column_names from duckdb_constraints()
        where schema_name = 'reporting' and constraint_type = 'PRIMARY KEY'
    """))
    assert keys == {
        "rpt_automation_performance": ["automation", "decided_on"], "rpt_automations": ["automation"],
        "rpt_conversions": ["automation"], "rpt_engagement": ["automation"],
        "rpt_skip_reasons": ["automation", "status", "reason"],
    }
    copy = tmp_path / "copy.duckdb"
    copy.write_bytes(warehouse.read_bytes())
    con = duckdb.connect(str(copy))
    try:
        with pytest.raises(duckdb.ConstraintException, match="primary key"):
            con.execute("insert into reporting.rpt_engagement select * from reporting.rpt_engagement limit 1")
        with pytest.raises(duckdb.ConstraintException, match="CHECK constraint"):
            con.execute("insert into reporting.rpt_skip_reasons values ('welcome', 'sent', 'none', 1)")
        with pytest.raises(duckdb.ConstraintException, match="CHECK constraint"):
            con.execute("update reporting.rpt_automations set category = 'newsletter'")
    finally:
        con.close()


def test_the_report_is_written_from_a_read_only_connection(warehouse, tmp_path):
    # a second reader (as the report is one) is allowed beside it; a writer would not be
    reader = duckdb.connect(str(warehouse), read_only=True)
    try:
        result = report(warehouse, tmp_path / "r.html")
    finally:
        reader.close()
    assert result.exit_code == 0, result.output
    assert "Report written to" in result.output and (tmp_path / "r.html").stat().st_size > 1_000_000


def test_a_busy_warehouse_is_said_so(warehouse, tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys, time; con = duckdb.connect(sys.argv[1]); print('ready', flush=True); "
                               "time.sleep(60)", str(warehouse)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        result = report(warehouse, tmp_path / "busy.html")
    finally:
        holder.kill()
        holder.wait()
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert "is busy" in text and "again when the tick has finished" in text
    assert not (tmp_path / "busy.html").exists()


def test_a_warehouse_without_reporting_tables_is_said_so(tmp_path):
    fresh = tmp_path / "fresh.duckdb"
    con = duckdb.connect(str(fresh))
    ensure_ledger(con)
    con.close()
    result = report(fresh, tmp_path / "x.html")
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert "reporting.rpt_automation_performance" in text and "nudge run" in text

    missing = report(tmp_path / "nowhere.duckdb", tmp_path / "y.html")
    assert missing.exit_code == 1 and "no warehouse" in " ".join(missing.output.split())
    assert not (tmp_path / "nowhere.duckdb").exists(), "reading never creates a warehouse"


def test_open_hands_the_file_to_the_default_browser(warehouse, tmp_path, monkeypatch):
    opened: list[str] = []
    monkeypatch.setattr("webbrowser.open", lambda url, *args, **kwargs: opened.append(url) or True)
    monkeypatch.setenv("NUDGE_WAREHOUSE", str(warehouse))
    runner = CliRunner()
    assert runner.invoke(app, ["report", "--out", str(tmp_path / "r.html"), "--open"]).exit_code == 0
    preview = runner.invoke(app, ["preview", "winback", "--out", str(tmp_path / "p.html"), "--open"])
    assert preview.exit_code == 0, preview.output
    assert opened == [(tmp_path / "r.html").as_uri(), (tmp_path / "p.html").as_uri()]
    assert "<html" in (tmp_path / "p.html").read_text().lower()
