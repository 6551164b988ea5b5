"""Render an automation's email for one contact, from the warehouse, without sending."""

from __future__ import annotations

from dataclasses import dataclass

from dagster_project.automations import find_node, project_automations, relation_of
from dagster_project.clock import parse_as_of
from dagster_project.dbt_assets import dbt_project, load_manifest
from dagster_project.policies import Candidate
from dagster_project.rendering import EmailTemplate, RenderedEmail
from dagster_project.send import SendConfig, template_variables
from dagster_project.settings import NudgeSettings
from dagster_project.warehouse import connect


@dataclass(frozen=True)
class Preview:
    contact_id: str
    trigger_key: str
    email: RenderedEmail


def render_preview(settings: NudgeSettings, automation_name: str, contact_id: str | None = None) -> Preview:
    manifest = load_manifest(dbt_project(settings.dbt_project_dir))
    automations = {a.name: a for a in project_automations(settings.dbt_project_dir, manifest)[0]}
    if automation_name not in automations:
        raise LookupError(f"no automation {automation_name!r}; there are: {', '.join(sorted(automations))}")
    automation = automations[automation_name]
    contacts = relation_of(find_node(manifest, "stg_contacts"))
    template = EmailTemplate.load(settings.templates_dir, automation.template, category=automation.category)

    with connect(settings.warehouse, settings.lock_timeout_seconds) as con:
        row = con.sql(
            f"""
            select t.contact_id, t.trigger_key, t.qualified_at, t.due_at, t.context,
                   c.contact_id is not null as has_contact, c.email, c.status as contact_status,
                   c.first_name, c.last_name, c.timezone, c.properties
            from {automation.relation} as t
            left join {contacts} as c on c.contact_id = t.contact_id
            where $contact is null or t.contact_id = $contact
            order by t.due_at desc, t.trigger_key
            limit 1
            """,
            params={"contact": contact_id},
        ).to_arrow_table().to_pylist()
    if not row:
        who = f"contact {contact_id}" if contact_id else "any contact"
        raise LookupError(f"{automation.model_name} has no qualification for {who}; run a tick first")
    candidate = Candidate(**row[0], last_entered_at=None, ledger_status=None, attempts=0)
    config = SendConfig(
        templates_dir=settings.templates_dir,
        sender=settings.sender,
        postal_address=settings.postal_address,
        unsubscribe_url=settings.unsubscribe_url,
        unsubscribe_mailto=settings.unsubscribe_mailto,
        unsubscribe_secret=settings.unsubscribe_secret.get_secret_value(),
    )
    variables = template_variables(candidate, automation, config, parse_as_of(str(candidate.due_at)))
    return Preview(candidate.contact_id, candidate.trigger_key, template.render(variables))
