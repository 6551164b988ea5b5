from datetime import timedelta

import pytest

from dagster_project.automations import AutomationConfigError, automation_from_node, automations_from_manifest


def node(name="trg_welcome", **nudge):
    return {
        "unique_id": f"model.nudge.{name}",
        "resource_type": "model",
        "name": name,
        "schema": "triggers",
        "alias": name,
        "original_file_path": f"models/triggers/{name}.sql",
        "config": {"meta": {"nudge": nudge}},
    }


def test_meta_becomes_an_automation_with_defaults():
    automation = automation_from_node(node(send_window="48h", reentry="once", **{"from": "A <a@b.example>"}))
    assert automation.name == "welcome"
    assert automation.template == "welcome"
    assert automation.relation == '"triggers"."trg_welcome"'
    assert automation.send_window == timedelta(hours=48)
    assert automation.reentry == "once"
    assert automation.sender == "A <a@b.example>"
    assert automation.is_marketing
    assert automation.delay == timedelta(0)


def test_reentry_period_and_conversion():
    automation = automation_from_node(
        node("trg_cart_abandoned", reentry="24h", conversion={"event": "purchased", "window": "72h"})
    )
    assert automation.reentry == timedelta(hours=24)
    assert automation.conversion_event == "purchased"
    assert automation.conversion_window == timedelta(hours=72)


@pytest.mark.parametrize(
    ("model", "meta", "message"),
    [
        ("trg_welcome", {"send_window": "two days"}, "send_window"),
        ("trg_welcome", {"reentry": "sometimes"}, "reentry"),
        ("trg_welcome", {"category": "spam"}, "category"),
        ("trg_welcome", {"holdout_percent": 150}, "holdout_percent"),
        ("trg_welcome", {"templte": "welcome"}, "templte"),
        ("trg_welcome", {"template": "../../etc/passwd"}, "template"),
        ("welcome_trigger", {}, "must be named trg_"),
        ("trg_Bad-Name", {}, "automation name"),
    ],
)
def test_bad_meta_fails_loudly_naming_the_file_and_field(model, meta, message):
    with pytest.raises(AutomationConfigError) as error:
        automation_from_node(node(model, **meta))
    assert message in str(error.value)
    assert f"models/triggers/{model}.sql" in str(error.value)


def test_only_models_with_a_nudge_block_are_automations():
    plain = {"unique_id": "model.nudge.stg_events", "resource_type": "model", "name": "stg_events", "config": {"meta": {}}}
    manifest = {"nodes": {n["unique_id"]: n for n in (node(), plain, node("trg_cart_abandoned"))}}
    assert [a.name for a in automations_from_manifest(manifest)] == ["cart_abandoned", "welcome"]
