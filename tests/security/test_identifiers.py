"""Names that reach SQL or a path are validated where they enter, with a clear error.

Automation, template, event and relation names come from the dbt manifest (model names,
`meta.nudge`, custom schemas and aliases) and are spliced into SQL (send.py's candidate
query, explain, preview, backtest) and file paths (templates/<name>/, the outbox). Contact
ids, trigger keys and addresses are data: they only ever travel as bound parameters or,
for file names, through safe_filename.
"""

from __future__ import annotations

from datetime import datetime, timezone

import duckdb
import pytest

from dagster_project.automations import (
    AutomationConfigError,
    Policy,
    automation_from_node,
    automations_from_manifest,
    relation_of,
)
from dagster_project.backends.file import FileBackend, safe_filename
from dagster_project.messages import compose, message_id
from dagster_project.rendering import EmailTemplate, RenderedEmail, TemplateError
from dagster_project.send import SendConfig, send_automation
from dagster_project.settings import PROJECT_ROOT, NudgeSettings
from tests.unit.test_rendering import template_tree

SQL_INJECTIONS = [
    "welcome'; drop table nudge.messages; --",
    'welcome"; drop table nudge.messages; --',
    "welcome or 1=1",
    "welcome/*x*/",
    "welcome\nunion select 1",
]
PATH_ESCAPES = ["../../etc/passwd", "..", "welcome/../../x", "/etc/passwd", "welcome\\..\\x", "~root", "welcome\x00"]


def node(name="trg_welcome", schema="triggers", alias=None, **nudge):
    return {
        "unique_id": f"model.nudge.{name}",
        "resource_type": "model",
        "name": name,
        "schema": schema,
        "alias": alias or name,
        "original_file_path": f"models/triggers/{name}.sql",
        "config": {"meta": {"nudge": nudge}},
    }


@pytest.mark.parametrize("name", SQL_INJECTIONS + PATH_ESCAPES + ["Welcome", "wélcome", "1welcome", "", "a" * 64])
def test_an_automation_name_from_a_model_name_must_be_plain(name):
    with pytest.raises(AutomationConfigError, match="automation name"):
        automation_from_node(node(f"trg_{name}"))


@pytest.mark.parametrize("template", SQL_INJECTIONS + PATH_ESCAPES + ["Welcome", "wel come"])
def test_a_template_name_from_meta_must_be_plain(template):
    with pytest.raises(AutomationConfigError, match="template"):
        automation_from_node(node(template=template))
    # and the renderer refuses it again on its own
    with pytest.raises(TemplateError, match="invalid"):
        EmailTemplate.load(PROJECT_ROOT / "templates", template)


@pytest.mark.parametrize(
    ("schema", "alias"),
    [
        ('triggers"; drop table nudge.messages; --', None),
        ("triggers", 'trg_welcome" as t; drop table nudge.messages; --'),
        ("triggers", "trg_welcome'"),
        ("my schema", None),
        ("triggers.x", None),
        ("", None),
        (None, None),
        ("triggers", "trg-welcome"),
    ],
)
def test_a_relation_from_the_manifest_must_be_plain_identifiers(schema, alias):
    with pytest.raises(AutomationConfigError) as raised:
        automation_from_node(node(schema=schema, alias=alias))
    assert "models/triggers/trg_welcome.sql" in str(raised.value)
    assert "to be used in SQL" in str(raised.value)


def test_the_contacts_and_events_relations_are_checked_the_same_way():
    contacts = {"unique_id": "model.nudge.stg_contacts", "name": "stg_contacts", "resource_type": "model",
                "schema": 'staging" ; drop table nudge.messages; --', "alias": "stg_contacts"}
    with pytest.raises(AutomationConfigError, match="schema"):
        relation_of(contacts)
    assert relation_of({**contacts, "schema": "dbt_ana_staging"}) == '"dbt_ana_staging"."stg_contacts"'


def test_a_manifest_with_one_bad_automation_fails_as_a_whole():
    nodes = [node(), node("trg_cart", schema='x"."y')]
    with pytest.raises(AutomationConfigError, match="trg_cart"):
        automations_from_manifest({"nodes": {n["unique_id"]: n for n in nodes}})


@pytest.mark.parametrize("event", SQL_INJECTIONS + ["Order Completed"])
def test_exit_and_conversion_event_names_must_be_plain(event):
    with pytest.raises(AutomationConfigError, match="exit event"):
        automation_from_node(node(exit_events=[event]))
    with pytest.raises(AutomationConfigError, match="conversion event"):
        automation_from_node(node(conversion={"event": event}))


@pytest.mark.parametrize(
    "sender",
    ["Nudge <hello@nudge.example>\r\nBcc: x@attacker.example", "hello@nudge.example, x@attacker.example",
     "Nudge Fitness", "hello@-bad-.example", "hello@nudge..example", "hello@nudge.example>"],
)
def test_a_sender_is_checked_when_the_configuration_is_read(sender, monkeypatch):
    with pytest.raises(AutomationConfigError, match="from"):
        automation_from_node(node(**{"from": sender}))
    monkeypatch.setenv("NUDGE_SENDER", sender)
    with pytest.raises(ValueError, match="sender"):
        NudgeSettings()


# --- data travels as parameters: SQL in keys and ids is stored as written ---------------------


def test_sql_in_contact_ids_and_trigger_keys_is_only_ever_data(tmp_path):
    as_of = datetime(2026, 11, 1, 12)
    hostile = ["c1'); drop table nudge.messages; --", 'c2" or 1=1 --', "../../../../tmp/c3", "c4\x00"]
    con = duckdb.connect(str(tmp_path / "warehouse.duckdb"))
    con.execute("create schema triggers; create schema staging")
    con.execute("create table staging.stg_contacts as select * from (values "
                "('x', 'x@example.com', 'subscribed', 'A', 'B', 'UTC', '{}')) "
                "t(contact_id, email, status, first_name, last_name, timezone, properties) where false")
    con.execute("create table triggers.trg_welcome (contact_id varchar, trigger_key varchar, "
                "qualified_at timestamp, due_at timestamp, context varchar)")
    for i, value in enumerate(hostile):
        con.execute("insert into staging.stg_contacts values (?, ?, 'subscribed', 'A', 'B', 'UTC', '{}')",
                    [value, f"p{i}@example.com"])
        con.execute("insert into triggers.trg_welcome values (?, ?, ?, ?, '{}')", [value, value, as_of, as_of])
    templates = template_tree(tmp_path / "templates", "welcome")
    config = SendConfig(templates_dir=templates, sender="Nudge <hello@nudge.example>", postal_address="1 Street",
                        unsubscribe_url="https://nudge.example/u", unsubscribe_mailto="u@nudge.example",
                        unsubscribe_secret="test-secret")
    outbox = tmp_path / "outbox"
    with FileBackend(outbox) as backend:
        report = send_automation(
            con, automation_from_node(node()), contacts_relation='"staging"."stg_contacts"',
            events_relation='"staging"."none"', backend=backend, config=config, as_of=as_of,
            policy=Policy(cap_per_day=None, cap_per_week=None, quiet_start=as_of.time(), quiet_end=as_of.time()),
            marketing_automations=["welcome"],
        )
    assert report.sent == len(hostile)
    stored = sorted(row[0] for row in con.execute("select trigger_key from nudge.messages").fetchall())
    assert stored == sorted(hostile)
    files = list(outbox.rglob("*.eml"))
    assert len(files) == len(hostile)
    assert all(path.resolve().parent == (outbox / "welcome").resolve() for path in files)
    con.close()


# --- paths built from data ---------------------------------------------------------------------


@pytest.mark.parametrize("text", PATH_ESCAPES + [".", "", "/", ".hidden", "a/../../b", "\u2024\u2024/x", "é" * 300])
def test_safe_filename_never_names_a_path(text):
    name = safe_filename(text)
    assert name and "/" not in name and "\\" not in name and "\x00" not in name
    assert name not in (".", "..") and not name.startswith(".")
    assert len(name) <= 200


@pytest.mark.parametrize("automation", ["../../../../tmp/evil", "/etc", "..", "a/../../b"])
@pytest.mark.parametrize("id_part", ["../../../../tmp/evil", "..", "a/../../b"])
def test_the_file_backend_writes_only_inside_its_outbox(tmp_path, automation, id_part):
    outbox = tmp_path / "outbox"
    message = compose(
        rendered=RenderedEmail(subject="Hi", html="<p>x</p>", text="x"),
        sender="Nudge <hello@nudge.example>",
        recipient="ana@example.com",
        automation=automation,
        message_id=f"<{id_part}@nudge.example>",
        date=datetime(2026, 11, 1, tzinfo=timezone.utc),
        unsubscribe=None,
    )
    with FileBackend(outbox) as backend:
        delivery = backend.send(message)
    written = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert len(written) == 1 and written[0].resolve().is_relative_to(outbox.resolve())
    assert delivery.detail == str(written[0])


def test_message_ids_carry_no_data():
    # The id is a digest of automation and key: whatever the key holds, the file name is hex.
    assert message_id("welcome", "../../etc/passwd\r\n", "nudge.example").startswith("<")
    assert "/" not in message_id("welcome", "../../etc/passwd", "nudge.example")
