"""The `nudge` command line, end to end: configured only by NUDGE_* variables, as a user would."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from datetime import timedelta

import pytest
from markupsafe import escape
from typer.testing import CliRunner

from dagster_project.cli import app
from dagster_project.clock import format_as_of
from dagster_project.sample_data import DEFAULT_END
from dagster_project.settings import PROJECT_ROOT
from tests.nudge_env import NudgeEnv, make_env

pytestmark = pytest.mark.e2e

AS_OF = DEFAULT_END.replace(tzinfo=None)
AN_HOUR_LATER = AS_OF + timedelta(hours=1)
AUTOMATIONS = ("cart_abandoned", "welcome")


def per_tick(output: str) -> list[str]:
    """The output of each tick a command ran, in order."""
    return ["Tick as of" + part for part in output.split("Tick as of")[1:]]


def table_rows(output: str) -> dict[str, list[str]]:
    """Body rows of the rich tables in `output`, by their first cell."""
    rows: dict[str, list[str]] = {}
    for line in output.splitlines():
        if line.startswith("│"):
            cells = [cell.strip() for cell in line.strip("│").split("│")]
            if cells[0]:  # a wrapped continuation line has an empty first cell
                rows.setdefault(cells[0], cells[1:])
    return rows


def one_line(text: str) -> str:
    """Output with rich's panel borders and line wrapping undone, for phrase matching."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def ledger_counts(env: NudgeEnv) -> list[tuple[str, str, str | None, int]]:
    return env.query(
        "select automation, status, reason, count(*) from nudge.messages group by all order by all"
    )


def decisions(env: NudgeEnv) -> dict[str, tuple[str, str]]:
    """'automation/trigger_key' -> (status, message_id)."""
    rows = env.query("select automation || '/' || trigger_key, status, message_id from nudge.messages")
    return {key: (status, message_id) for key, status, message_id in rows}


@pytest.fixture(scope="module")
def env(tmp_path_factory, dbt_manifest):
    """NUDGE_* pointing at a temporary installation; no DAGSTER_HOME, so ticks use an ephemeral instance."""
    env = make_env(tmp_path_factory.mktemp("cli"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NUDGE_WAREHOUSE", str(env.settings.warehouse))
        patch.setenv("NUDGE_LANDING_DIR", str(env.settings.landing_dir))
        patch.setenv("NUDGE_EMAIL_URL", f"file://{env.outbox}")
        patch.setenv("NUDGE_UNSUBSCRIBE_SECRET", "test-secret")
        patch.delenv("DAGSTER_HOME", raising=False)
        yield env


@pytest.fixture(scope="module")
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture(scope="module")
def demo(env, runner):
    result = runner.invoke(app, ["demo", "--contacts", "200", "--seed", "3"])
    return result


def test_demo_runs_a_tick_and_sends(env, demo):
    assert demo.exit_code == 0, demo.output
    assert "Sample data: 200 contacts" in demo.output
    sent = env.scalar("select count(*) from nudge.messages where status = 'sent'")
    emails = env.emails()
    assert sent > 0 and len(emails) == sent
    assert {str(message["Message-ID"]) for message in emails} == {
        row[0] for row in env.query("select message_id from nudge.messages where status = 'sent'")
    }


def test_demo_reports_events_loaded_and_rejected(env, demo):
    # the first tick loads the sample data, the second what recipients did with the first tick's emails
    ticks = [[int(cell) for cell in table_rows(tick)["events"][:3]] for tick in per_tick(demo.output)]
    loaded, rejected = sum(tick[0] for tick in ticks), sum(tick[2] for tick in ticks)
    assert loaded == env.scalar("select count(*) from raw.events")
    assert ticks[1][0] == env.scalar("select count(*) from raw.events where source_file like '%email-engagement%'") > 0
    assert rejected == env.scalar("select count(*) from raw.rejected_rows where source_table = 'events'")
    assert rejected > 0  # the sample data plants bad rows on purpose


def test_demo_reports_each_automation_as_the_ledger_has_it(env, demo):
    ticks = [table_rows(tick) for tick in per_tick(demo.output)]
    assert len(ticks) == 2, "a tick a day before the data's end, then one at it"
    categories = env.categories()
    assert set(categories) <= set(ticks[-1])
    for automation in categories:
        # due, sent, held (quiet hours), held out, failed, skipped per tick
        counts = [[int(cell) for cell in rows[automation][:6]] for rows in ticks]
        by_status = Counter(
            dict(env.query("select status, count(*) from nudge.messages where automation = ? group by 1", [automation]))
        )
        # a decision is final once made, except a hold, which the next tick decides again
        assert sum(tick[1] for tick in counts) == by_status["sent"]
        assert sum(tick[5] for tick in counts) == by_status["skipped"]
        assert sum(tick[3] for tick in counts) == by_status["held_out"]
        assert counts[-1][2] == by_status["held"]
    assert all(by_status_sent > 0 for by_status_sent in (
        env.scalar("select count(*) from nudge.messages where automation = ? and status = 'sent'", [automation])
        for automation in AUTOMATIONS
    ))


def test_demo_says_where_the_emails_went_and_how_long_it_took(env, demo):
    text = one_line(demo.output)
    assert f"Emails went to: file://{env.outbox}" in text
    seconds = re.search(r"Tick wall time: (\d+\.\d) s", text)
    assert seconds and float(seconds.group(1)) > 0


def test_status_json_is_the_ledger(env, demo, runner):
    result = runner.invoke(app, ["status", "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    shown = sorted(
        (row["automation"], row["status"], row["reason"] or "", row["count"]) for row in document["messages"]
    )
    assert shown == sorted((a, s, r or "", n) for a, s, r, n in ledger_counts(env))
    assert document["unknown"] == []


def test_status_prints_a_table(env, demo, runner):
    result = runner.invoke(app, ["status"])
    assert result.exit_code == 0, result.output
    assert "Ledger nudge.messages" in result.output
    lines = [one_line(line.replace("│", " ")) for line in result.output.splitlines() if line.startswith("│")]
    for automation, status, reason, count in ledger_counts(env):
        expected = " ".join(part for part in (automation, status, reason, str(count)) if part)
        assert expected in lines, (expected, result.output)


@pytest.fixture(scope="module")
def cart(env, demo):
    """The cart `nudge preview` shows for its contact: the latest due, as the command picks it."""
    contact_id = env.scalar("select contact_id from triggers.trg_cart_abandoned order by contact_id limit 1")
    context = env.scalar(
        "select context from triggers.trg_cart_abandoned where contact_id = ? "
        "order by due_at desc, trigger_key limit 1",
        [contact_id],
    )
    return contact_id, [item["name"] for item in json.loads(context)["items"]]


def test_preview_renders_the_contacts_cart(env, runner, cart, tmp_path):
    contact_id, item_names = cart
    html_path = tmp_path / "preview.html"
    result = runner.invoke(app, ["preview", "cart_abandoned", "--contact", contact_id, "--out", str(html_path)])
    assert result.exit_code == 0, result.output
    count = len(item_names)
    assert f"Subject: You left {count} item{'' if count == 1 else 's'} in your cart" in result.output
    for name in item_names:
        assert name in result.output
    html = html_path.read_text()
    for name in item_names:
        assert str(escape(name)) in html
    assert "{{" not in html and "{%" not in html


def test_preview_of_an_unknown_automation_lists_the_real_ones(env, demo, runner):
    result = runner.invoke(app, ["preview", "nope"])
    assert result.exit_code != 0
    text = one_line(result.output)
    assert "nope" in text
    for automation in AUTOMATIONS:
        assert automation in text


def test_run_refuses_an_as_of_that_is_not_iso_8601(env, demo, runner):
    ledger_before = env.query("select * from nudge.messages order by all")
    result = runner.invoke(app, ["run", "--as-of", "yesterday"])
    assert result.exit_code == 2, result.output
    assert "ISO 8601" in one_line(result.output)
    assert env.query("select * from nudge.messages order by all") == ledger_before


# A real product variant name: square brackets are plain text in an email, not console markup.
PLANTED_ITEM = "Trail Running Shoes [size 42]"
PLANTED_EVENT_ID = "e_cli_planted_cart"


@pytest.fixture(scope="module")
def later_run(env, demo, runner):
    """Ten minutes before the data's end, a contact with no cart history adds an item: due an hour after
    (50 minutes past the end), so `nudge run` an hour later has exactly that to send, beside whatever
    else falls due in that hour."""
    contact_id = env.scalar(
        """
        select contact_id from staging.stg_contacts
        where status = 'subscribed' and email is not null
          and contact_id not in (select contact_id from raw.events where name in ('added_to_cart', 'purchased'))
          -- awake an hour after the end (01:00 UTC), and not capped by a message of the demo
          and timezone in ('America/Los_Angeles', 'Asia/Tokyo', 'Australia/Sydney')
          and contact_id not in (select contact_id from nudge.messages where status in ('sent', 'pending'))
        order by contact_id limit 1
        """
    )
    event = {
        "event_id": PLANTED_EVENT_ID,
        "contact_id": contact_id,
        "name": "added_to_cart",
        "occurred_at": format_as_of(AS_OF - timedelta(minutes=10)).replace(" ", "T") + "Z",
        "properties": {
            "product_id": "p_001", "name": PLANTED_ITEM, "category": "footwear", "price": 119.0, "quantity": 1
        },
    }
    (env.settings.landing_dir / "events" / "late-arrivals.jsonl").write_text(json.dumps(event) + "\n")
    before = decisions(env)
    result = runner.invoke(app, ["run", "--as-of", (DEFAULT_END + timedelta(hours=1)).isoformat()])
    return contact_id, before, result


def test_run_an_hour_later_sends_only_what_became_due(env, later_run):
    _, before, result = later_run
    assert result.exit_code == 0, result.output
    assert f"Tick as of {format_as_of(AN_HOUR_LATER)} UTC" in result.output

    after = decisions(env)
    final = {key: value for key, value in before.items() if value[0] != "held"}
    assert {key: after[key] for key in final} == final  # nothing decided before changes; holds are decided again
    newly_due = {
        f"{automation}/{key}"
        for automation in AUTOMATIONS
        for (key,) in env.query(
            f"select trigger_key from triggers.trg_{automation} where due_at > ? and due_at <= ?",
            [AS_OF, AN_HOUR_LATER],
        )
    }
    assert f"cart_abandoned/{PLANTED_EVENT_ID}" in newly_due
    assert set(after) - set(before) == newly_due
    assert after[f"cart_abandoned/{PLANTED_EVENT_ID}"][0] == "sent"
    sent = [message_id for status, message_id in after.values() if status == "sent"]
    assert sorted(str(m["Message-ID"]) for m in env.emails()) == sorted(sent)


def test_the_late_cart_email_names_its_item_as_written(env, later_run):
    [message_id] = env.query(
        "select message_id from nudge.messages where automation = 'cart_abandoned' and trigger_key = ?",
        [PLANTED_EVENT_ID],
    )[0]
    message = next(m for m in env.emails() if str(m["Message-ID"]) == message_id)
    assert PLANTED_ITEM in message.get_body(("plain",)).get_content()


def test_preview_prints_the_text_part_verbatim(env, later_run, runner, tmp_path):
    """What `nudge preview` prints is the email's text: brackets kept, links unbroken."""
    contact_id, _, _ = later_run
    html_path = tmp_path / "late.html"
    result = runner.invoke(app, ["preview", "cart_abandoned", "--contact", contact_id, "--out", str(html_path)])
    assert result.exit_code == 0, result.output
    assert str(escape(PLANTED_ITEM)) in html_path.read_text()
    assert PLANTED_ITEM in result.output, result.output
    links = re.findall(r'href="(https://nudge\.example/unsubscribe\?token=[^"]+)"', html_path.read_text())
    [unsubscribe_url] = set(links)
    assert f"Unsubscribe: {unsubscribe_url}" in result.output.splitlines(), result.output


def test_status_json_in_a_real_process(env, demo):
    environment = {key: value for key, value in os.environ.items() if key != "DAGSTER_HOME"}
    completed = subprocess.run(
        [sys.executable, "-m", "dagster_project.cli", "status", "--json"],
        env=environment,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    document = json.loads(completed.stdout)
    total = sum(row["count"] for row in document["messages"])
    assert total == env.scalar("select count(*) from nudge.messages") > 0


def test_demo_answers_its_first_emails_and_ends_with_the_report(env, demo):
    """Between its ticks the demo writes what recipients did with the first tick's emails; the
    second tick ingests it, and the report the demo writes shows it."""
    text = one_line(demo.output)
    assert "Sample engagement:" in text
    opened = env.scalar("select count(*) from raw.events where name in ('email_opened', 'email_clicked')")
    assert opened > 0
    assert env.scalar("select sum(opened) from reporting.rpt_engagement") > 0
    # every engagement event names a message the ledger sent
    assert env.scalar(
        "select count(*) from raw.events e where e.name like 'email_%' and e.name <> 'email_clicked' "
        "and json_extract_string(e.properties, '$.message_id') not in "
        "(select message_id from nudge.messages where status = 'sent')"
    ) == 0
    match = re.search(r"Report written to (\S+\.html) \((\d+) KB\)", text)
    assert match, text[-2000:]
    html = open(match.group(1), encoding="utf-8").read()
    assert "<section id=\"welcome\" class=\"automation\">" in html and int(match.group(2)) > 1000
