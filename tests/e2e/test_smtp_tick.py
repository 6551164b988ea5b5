"""Whole ticks against a real SMTP server (aiosmtpd on 127.0.0.1), and templates that break.

Ticks are expensive (dbt), so one installation lives through a sequence of them:
the server down, then up with one recipient refused for good (550) and one
deferred (451), then an hour later with the deferral lifted, then that hour again.
Each fixture snapshots what it saw, so a test reads the state of its own tick.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, timedelta

import pytest
from smtp_sink import HOST, ReceivedMessage, SmtpSink, free_port

from dagster_project.automations import load_policy
from dagster_project.dbt_assets import prepare_manifest
from dagster_project.policies import contact_zone
from dagster_project.sample_data import DEFAULT_END, generate
from dagster_project.tick import TickResult
from tests.nudge_env import NudgeEnv, copy_project, make_env

pytestmark = pytest.mark.e2e

AS_OF = DEFAULT_END.replace(tzinfo=None)
AN_HOUR_LATER = AS_OF + timedelta(hours=1)
SEED = 23
# Columns of a ledger snapshot, in this order.
LEDGER_COLUMNS = (
    "automation, trigger_key, contact_id, email, message_id, status, reason, error, attempts, decided_at, sent_at"
)


def ledger(env: NudgeEnv) -> dict[tuple[str, str], dict]:
    """Every ledger row by (automation, trigger_key); empty when no send step ever created the table."""
    exists = env.scalar(
        "select count(*) from information_schema.tables where table_schema = 'nudge' and table_name = 'messages'"
    )
    if not exists:
        return {}
    names = [name.strip() for name in LEDGER_COLUMNS.split(",")]
    rows = env.query(f"select {LEDGER_COLUMNS} from nudge.messages")
    return {(row[0], row[1]): dict(zip(names, row, strict=True)) for row in rows}


def sent_message_ids(rows: dict[tuple[str, str], dict]) -> list[str]:
    return sorted(row["message_id"] for row in rows.values() if row["status"] == "sent")


@dataclass
class TickSnapshot:
    tick: TickResult
    ledger: dict[tuple[str, str], dict]
    # Everything the server had received when the tick ended.
    received: list[ReceivedMessage]


@dataclass
class Installation:
    env: NudgeEnv
    sink: SmtpSink
    rejected_email: str
    deferred_email: str


@pytest.fixture(scope="module")
def sink():
    with SmtpSink() as server:
        yield server


@pytest.fixture(scope="module")
def server_down(tmp_path_factory, dbt_manifest):
    """A tick whose SMTP server is not listening: nothing may be claimed."""
    closed_port = free_port()
    env = make_env(tmp_path_factory.mktemp("smtp"), email_url=f"smtp://{HOST}:{closed_port}?timeout=5")
    generate(env.settings.landing_dir, contacts=500, seed=SEED)
    tick = env.tick(AS_OF)
    return env, closed_port, TickSnapshot(tick, ledger(env), [])


def _two_plain_welcome_recipients(env: NudgeEnv) -> tuple[str, str]:
    """Two subscribed contacts due a welcome, whose address nobody else has, who are due nothing
    else and are awake at both ticks, so refusing their address at the server touches exactly one
    ledger row each."""
    others = " union all ".join(
        f"select contact_id from triggers.trg_{name} where due_at <= ? + interval 1 hour"
        for name in env.categories() if name != "welcome"
    )
    rows = env.query(
        f"""
        select c.email, c.timezone
        from triggers.trg_welcome as t
        join staging.stg_contacts as c on c.contact_id = t.contact_id
        where t.due_at <= ? and t.due_at >= ? - interval 48 hours
          and c.status = 'subscribed' and c.email is not null
          and c.email not in (
              select email from staging.stg_contacts where email is not null group by email having count(*) > 1
          )
          and t.contact_id not in ({others})
        order by t.contact_id
        """,
        [AS_OF, AS_OF, *([AS_OF] * (len(env.categories()) - 1))],
    )
    policy = load_policy(env.settings.dbt_project_dir)
    awake = [
        email for email, timezone in rows
        if not any(
            policy.in_quiet_hours(moment.replace(tzinfo=UTC).astimezone(contact_zone(timezone)).time())
            for moment in (AS_OF, AN_HOUR_LATER)
        )
    ]
    assert len(awake) >= 2, "the sample data should have several welcomes due at its end"
    return awake[0], awake[1]


@pytest.fixture(scope="module")
def installation(server_down, sink) -> Installation:
    down_env, _, _ = server_down
    # The failed tick still built the triggers: they tell which addresses will be mailed.
    rejected, deferred = _two_plain_welcome_recipients(down_env)
    env = make_env(down_env.root, email_url=sink.url)
    return Installation(env, sink, rejected, deferred)


@pytest.fixture(scope="module")
def first_tick(installation) -> TickSnapshot:
    installation.sink.reject.add(installation.rejected_email)
    installation.sink.defer.add(installation.deferred_email)
    tick = installation.env.tick(AS_OF)
    return TickSnapshot(tick, ledger(installation.env), installation.sink.messages)


@pytest.fixture(scope="module")
def later_tick(installation, first_tick) -> TickSnapshot:
    installation.sink.defer.clear()
    tick = installation.env.tick(AN_HOUR_LATER)
    return TickSnapshot(tick, ledger(installation.env), installation.sink.messages)


@pytest.fixture(scope="module")
def same_hour_again(installation, later_tick) -> TickSnapshot:
    tick = installation.env.tick(AN_HOUR_LATER)
    return TickSnapshot(tick, ledger(installation.env), installation.sink.messages)


# --- the server is down ----------------------------------------------------------------


def test_a_tick_fails_naming_the_server_when_it_cannot_be_reached(server_down):
    _, closed_port, snapshot = server_down
    assert not snapshot.tick.success
    send_failures = [failure for failure in snapshot.tick.failures if failure.startswith("send_")]
    env = server_down[0]
    assert {line.split(":", 1)[0] for line in send_failures} == {f"send_{name}" for name in env.categories()}
    for failure in send_failures:
        assert f"{HOST}:{closed_port}" in failure, failure
    assert env.scalar("select count(*) from triggers.trg_welcome") > 0


def test_nothing_is_claimed_when_the_server_cannot_be_reached(server_down):
    env, _, snapshot = server_down
    due = env.scalar("select count(*) from triggers.trg_welcome where due_at <= ?", [AS_OF])
    assert due > 0, "the triggers were built; only the send could not start"
    assert not any(row["status"] in ("sent", "pending") for row in snapshot.ledger.values())
    assert snapshot.ledger == {}  # the backend is opened before anything is decided


# --- the server is up: what it receives is what the ledger says ---------------------------


def test_the_server_receives_exactly_the_ledgers_sent_messages(first_tick):
    received_ids = [message.message_id for message in first_tick.received]
    assert len(received_ids) == len(set(received_ids)), "a message reached the server twice"
    assert sorted(received_ids) == sent_message_ids(first_tick.ledger)
    automations = {row["automation"] for row in first_tick.ledger.values() if row["status"] == "sent"}
    assert {"welcome", "cart_abandoned"} <= automations
    for automation in automations:
        sent = sum(
            1 for row in first_tick.ledger.values() if row["automation"] == automation and row["status"] == "sent"
        )
        assert first_tick.tick.metadata(f"send_{automation}", "sent") == sent


def test_each_message_goes_to_the_ledgers_address_with_its_headers_and_envelope(installation, first_tick):
    transactional = {name for name, category in installation.env.categories().items() if category == "transactional"}
    by_message_id = {row["message_id"]: row for row in first_tick.ledger.values()}
    for received in first_tick.received:
        row = by_message_id[received.message_id]
        parsed = received.parsed()
        assert received.rcpt_tos == (row["email"],)
        assert [address.addr_spec for address in parsed["To"].addresses] == [row["email"]]
        assert str(parsed["X-Nudge-Automation"]) == row["automation"]
        if row["automation"] in transactional:
            assert parsed["List-Unsubscribe"] is None
        else:
            assert "<https://" in str(parsed["List-Unsubscribe"]) and "<mailto:" in str(parsed["List-Unsubscribe"])
            assert str(parsed["List-Unsubscribe-Post"]) == "List-Unsubscribe=One-Click"
        [sender] = parsed["From"].addresses
        assert received.mail_from == sender.addr_spec


def test_a_550_is_a_final_rejection_with_the_servers_words(installation, first_tick):
    [row] = [row for row in first_tick.ledger.values() if row["email"] == installation.rejected_email]
    assert (row["status"], row["reason"], row["attempts"]) == ("failed", "rejected", 1)
    assert "550" in row["error"] and "mailbox unavailable" in row["error"]
    assert not installation.sink.by_recipient(installation.rejected_email)


def test_a_451_is_a_temporary_failure(installation, first_tick):
    [row] = [row for row in first_tick.ledger.values() if row["email"] == installation.deferred_email]
    assert (row["status"], row["reason"], row["attempts"]) == ("failed", "temporary", 1)
    assert "451" in row["error"] and "try again later" in row["error"]


def test_apart_from_the_refused_two_every_message_claimed_was_sent(installation, first_tick):
    refused = {installation.rejected_email, installation.deferred_email}
    failed = {row["email"] for row in first_tick.ledger.values() if row["status"] == "failed"}
    assert failed == refused
    assert not any(row["status"] in ("pending", "unknown") for row in first_tick.ledger.values())
    # The tick itself succeeds: refusals of single recipients are outcomes, not failures of the run.
    assert first_tick.tick.success, first_tick.tick.failures


def test_an_hour_later_the_deferred_message_is_sent_on_its_second_attempt(installation, first_tick, later_tick):
    [row] = [row for row in later_tick.ledger.values() if row["email"] == installation.deferred_email]
    assert (row["status"], row["reason"], row["attempts"]) == ("sent", None, 2)
    assert row["sent_at"] == AN_HOUR_LATER and row["decided_at"] == AS_OF
    assert len(installation.sink.by_recipient(installation.deferred_email)) == 1
    [rejected] = [row for row in later_tick.ledger.values() if row["email"] == installation.rejected_email]
    assert (rejected["status"], rejected["attempts"]) == ("failed", 1)  # a 550 is never retried


def test_an_hour_later_only_the_retry_and_newly_due_messages_reach_the_server(first_tick, later_tick):
    assert later_tick.tick.success, later_tick.tick.failures
    new = later_tick.received[len(first_tick.received):]
    new_ids = sorted(message.message_id for message in new)
    newly_sent = sorted(set(sent_message_ids(later_tick.ledger)) - set(sent_message_ids(first_tick.ledger)))
    assert new_ids == newly_sent
    for message_id in newly_sent:
        row = next(row for row in later_tick.ledger.values() if row["message_id"] == message_id)
        was = first_tick.ledger.get((row["automation"], row["trigger_key"]))
        assert was is None or (was["status"], was["reason"]) == ("failed", "temporary")


def test_the_same_hour_again_delivers_nothing_more(later_tick, same_hour_again):
    assert same_hour_again.tick.success, same_hour_again.tick.failures
    assert len(same_hour_again.received) == len(later_tick.received)
    assert same_hour_again.ledger == later_tick.ledger
    received_ids = [message.message_id for message in same_hour_again.received]
    assert sorted(received_ids) == sent_message_ids(same_hour_again.ledger)


# --- templates that break ------------------------------------------------------------------

# Fails for contacts whose id ends in an even digit, renders for the others.
FAILS_FOR_SOME = "{% if contact.contact_id[-1] in '02468' %}{{ context.no_such_field }}{% endif %}\n"
# A filter with no name: a syntax error on the line after the block opens.
DOES_NOT_COMPILE = "{{ contact.first_name | }}\n"
POLICY_SKIPS = ("stale", "unknown_contact", "no_email", "not_subscribed", "reentry", "exited", "quiet_hours", "capped",
                "before_start")


def _insert_after_content_block(path, line: str) -> None:
    source = path.read_text()
    marker = "{% block content %}\n"
    assert marker in source, f"{path} has no content block to edit"
    path.write_text(source.replace(marker, marker + line, 1))


@pytest.fixture(scope="module")
def broken_templates(tmp_path_factory, dbt_manifest):
    root = tmp_path_factory.mktemp("templates")
    dbt_dir, templates_dir = copy_project(root)
    prepare_manifest(dbt_dir)
    _insert_after_content_block(templates_dir / "welcome" / "body.txt", FAILS_FOR_SOME)
    _insert_after_content_block(templates_dir / "cart_abandoned" / "body.html", DOES_NOT_COMPILE)
    env = make_env(root, dbt_project_dir=dbt_dir, templates_dir=templates_dir)
    generate(env.settings.landing_dir, contacts=500, seed=SEED)
    tick = env.tick(AS_OF)
    return env, tick


def test_a_template_failing_for_some_contacts_skips_only_them(broken_templates):
    env, tick = broken_templates
    rows = env.query(
        "select contact_id, status, reason, error from nudge.messages where automation = 'welcome'"
    )
    due = env.scalar("select count(*) from triggers.trg_welcome where due_at <= ?", [AS_OF])
    assert len(rows) == due
    reachable = [row for row in rows if row[2] not in POLICY_SKIPS]
    failing = [row for row in reachable if row[0][-1] in "02468"]
    rendering = [row for row in reachable if row[0][-1] not in "02468"]
    assert failing and rendering, "the sample should have due welcomes on both sides of the rule"
    for contact_id, status, reason, error in failing:
        assert (status, reason) == ("skipped", "template_error"), contact_id
        assert "no_such_field" in error and "welcome/body.txt" in error, error
    assert {(status, reason) for _, status, reason, _ in rendering} == {("sent", None)}
    assert tick.metadata("send_welcome", "skipped_template_error") == len(failing)
    assert len(list((env.outbox / "welcome").glob("*.eml"))) == len(rendering)


def test_a_template_that_does_not_compile_stops_its_automation_before_claiming(broken_templates):
    env, tick = broken_templates
    assert not tick.success
    due = env.scalar("select count(*) from triggers.trg_cart_abandoned where due_at <= ?", [AS_OF])
    assert due > 0
    assert env.scalar("select count(*) from nudge.messages where automation = 'cart_abandoned'") == 0
    assert not (env.outbox / "cart_abandoned").exists()


def test_the_failure_of_a_template_that_does_not_compile_names_the_file(broken_templates):
    _, tick = broken_templates
    [failure] = [failure for failure in tick.failures if failure.startswith("send_cart_abandoned")]
    assert "cart_abandoned/body.html" in failure and "syntax error" in failure, failure


def test_an_independent_automation_still_sends_beside_a_broken_one(broken_templates):
    env, tick = broken_templates
    # The send step sends every other automation, records the ledger, then fails naming the
    # broken one; only what runs after the step (reporting) is skipped.
    assert "send_welcome" in tick.assets and "send_cart_abandoned" not in tick.assets
    assert tick.metadata("send_welcome", "sent") > 0
    assert [failure.split(":", 1)[0] for failure in tick.failures] == ["send_cart_abandoned"]
    assert "nudge/messages" in tick.assets and "rpt_automation_performance" not in tick.assets
