"""Render an automation's email for one contact, from the warehouse, without sending."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import duckdb

from dagster_project.automations import find_node, project_automations, relation_of
from dagster_project.clock import parse_as_of
from dagster_project.composing import template_variables
from dagster_project.dbt_assets import dbt_project, load_manifest
from dagster_project.policies import Candidate
from dagster_project.rendering import EmailTemplate, RenderedEmail
from dagster_project.send import SendConfig
from dagster_project.settings import NudgeSettings
from dagster_project.warehouse import connect


@dataclass(frozen=True)
class Preview:
    contact_id: str
    trigger_key: str
    email: RenderedEmail
    # True when nothing qualified yet and a made-up contact with an empty context stands in
    is_sample: bool = False


# Who a preview is for when no contact is named and nobody has qualified yet (a fresh
# install, before the first tick): every template renders with an empty context.
SAMPLE_CONTACT = {
    "contact_id": "sample",
    "trigger_key": "sample",
    "qualified_at": None,
    "due_at": None,
    "context": "{}",
    "has_contact": True,
    "email": "sam.sample@example.com",
    "contact_status": "subscribed",
    "first_name": "Sam",
    "last_name": "Sample",
    "timezone": "UTC",
    "properties": '{"plan": "free"}',
}


def render_preview(settings: NudgeSettings, automation_name: str, contact_id: str | None = None) -> Preview:
    manifest = load_manifest(dbt_project(settings.dbt_project_dir))
    automations = {a.name: a for a in project_automations(settings.dbt_project_dir, manifest)[0]}
    if automation_name not in automations:
        raise LookupError(f"no automation {automation_name!r}; there are: {', '.join(sorted(automations))}")
    automation = automations[automation_name]
    contacts = relation_of(find_node(manifest, "stg_contacts"))
    template = EmailTemplate.load(settings.templates_dir, automation.template, category=automation.category)

    row = _qualification(settings, automation.relation, contacts, contact_id)
    is_sample = row is None and contact_id is None
    if row is None and not is_sample:
        raise LookupError(f"{automation.model_name} has no qualification for contact {contact_id}; run a tick first")
    row = row or dict(SAMPLE_CONTACT)
    candidate = Candidate(**row, last_entered_at=None, ledger_status=None, attempts=0)
    config = SendConfig(
        templates_dir=settings.templates_dir,
        sender=settings.sender,
        postal_address=settings.postal_address,
        unsubscribe_url=settings.unsubscribe_url,
        unsubscribe_mailto=settings.unsubscribe_mailto,
        unsubscribe_secret=settings.unsubscribe_secret.get_secret_value(),
    )
    as_of = parse_as_of(str(candidate.due_at)) if candidate.due_at else datetime.now(UTC).replace(tzinfo=None)
    variables = template_variables(candidate, automation, config, as_of)
    return Preview(candidate.contact_id, candidate.trigger_key, template.render(variables), is_sample)


def _qualification(
    settings: NudgeSettings, trigger: str, contacts: str, contact_id: str | None
) -> dict[str, Any] | None:
    """The named contact's latest qualification, or the latest of anyone's; None when there
    is none (or the trigger table is not built yet)."""
    if not settings.warehouse.exists():
        return None
    with connect(settings.warehouse, settings.lock_timeout_seconds) as con:
        try:
            rows = con.sql(
                f"""
                select t.contact_id, t.trigger_key, t.qualified_at, t.due_at, t.context,
                       c.contact_id is not null as has_contact, c.email, c.status as contact_status,
                       c.first_name, c.last_name, c.timezone, c.properties
                from {trigger} as t
                left join {contacts} as c on c.contact_id = t.contact_id
                where $contact is null or t.contact_id = $contact
                order by t.due_at desc, t.trigger_key
                limit 1
                """,
                params={"contact": contact_id},
            ).to_arrow_table().to_pylist()
        except duckdb.CatalogException:
            return None
    return rows[0] if rows else None
