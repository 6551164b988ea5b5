"""`nudge explain`: why a contact did or did not get an automation's email, in plain words.

The sentences are pure functions of rows: the contact (stg_contacts), its rows in
the automation's trigger table as last built, and its rows in the ledger. The
reader at the bottom fetches those rows and nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, time
from typing import Any

import duckdb

from dagster_project.automations import Automation, find_node, project_automations, relation_of
from dagster_project.builds import BUILDS_TABLE
from dagster_project.dbt_assets import dbt_project, load_manifest
from dagster_project.durations import format_duration
from dagster_project.ledger import LEDGER_TABLE, MAX_ATTEMPTS
from dagster_project.policies import quiet_hours_end
from dagster_project.settings import NudgeSettings
from dagster_project.warehouse import connect

# Not decided: the state of an explanation without a ledger row.
DECIDED, NOT_DECIDED, NEVER_QUALIFIED, NOT_BUILT = "decided", "not_decided", "never_qualified", "not_built"


@dataclass(frozen=True)
class ContactRow:
    contact_id: str
    email: str | None
    status: str | None
    timezone: str | None


@dataclass(frozen=True)
class Qualification:
    """A row of the automation's trigger table."""

    trigger_key: str
    qualified_at: datetime
    due_at: datetime


@dataclass(frozen=True)
class Decision:
    """A row of the ledger; `detail` is its `error` column (the verdict's words)."""

    trigger_key: str
    status: str
    reason: str | None
    detail: str | None
    message_id: str | None
    qualified_at: datetime | None
    due_at: datetime | None
    decided_at: datetime
    sent_at: datetime | None = None
    attempts: int = 0


@dataclass(frozen=True)
class Explanation:
    automation: str
    state: str  # decided | not_decided | never_qualified | not_built
    sentence: str
    trigger_key: str | None = None
    qualified_at: datetime | None = None
    due_at: datetime | None = None
    status: str | None = None
    reason: str | None = None
    detail: str | None = None
    decided_at: datetime | None = None
    sent_at: datetime | None = None
    message_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {name: value.isoformat() if isinstance(value, datetime) else value for name, value in asdict(self).items()}


def when(value: datetime) -> str:
    return f"{value:%Y-%m-%d %H:%M} UTC"


def _reentry(automation: Automation) -> str:
    if automation.reentry == "once":
        return "once ever"
    if automation.reentry == "every_time":
        return "every time"
    return f"at most once per {format_duration(automation.reentry)}"


SKIP_LABELS = {
    "stale": "stale",
    "not_subscribed": "not subscribed",
    "no_email": "no email address",
    "unknown_contact": "unknown contact",
    "reentry": "re-entry",
    "template_error": "the template failed for this contact",
    "exited": "exited",
    "capped": "frequency cap",
    "before_start": "before the automation's start",
    "unsubscribed": "unsubscribed with the one-click link",
    "suppressed": "the address bounced hard or complained",
}


def _skip_label(reason: str | None, automation: Automation) -> str:
    if reason == "reentry":
        return f"re-entry ({_reentry(automation)})"
    return SKIP_LABELS.get(reason or "", reason or "no reason recorded")


def qualification_phrase(trigger_key: str, qualified_at: datetime | None, due_at: datetime | None, contact_id: str) -> str:
    key = "" if trigger_key == contact_id else f" (trigger {trigger_key})"
    if qualified_at is None:
        return f"qualified{key}"
    due = "" if due_at is None else ", due at once" if due_at == qualified_at else f", due {when(due_at)}"
    return f"qualified {when(qualified_at)}{key}{due}"


def _would_skip(automation: Automation, contact: ContactRow | None) -> str:
    """What the send step will say when it decides, as far as the contact row tells."""
    if contact is None:
        return "; it will be skipped: the contact is not in stg_contacts"
    if not contact.email:
        return "; it will be skipped: the contact has no email address"
    if automation.is_marketing and contact.status != "subscribed":
        return f"; it will be skipped: marketing mail goes only to subscribed contacts, this one is {contact.status}"
    return ""


def decision_phrase(
    decision: Decision,
    automation: Automation,
    *,
    contact: ContactRow | None,
    now: datetime | None,
    as_of: datetime | None = None,
    quiet_end: time | None = None,
) -> str:
    """The ledger's verdict on one qualification, with what happens next where something does."""
    status, reason, detail = decision.status, decision.reason, decision.detail
    decided = when(decision.decided_at)
    if status == "sent":
        sent_at = decision.sent_at or decision.decided_at
        if as_of is not None and sent_at > as_of:
            return f"first decided {decided}; not sent as of {when(as_of)} (it went out later, at {when(sent_at)})"
        return f"sent {when(sent_at)} as {decision.message_id}"
    if status == "skipped" and reason == "stale" and decision.due_at is not None:
        # Said from the row: the step's own words carry a raw timedelta.
        return (
            f"skipped {decided} — stale: due {when(decision.due_at)}, longer than the send window "
            f"({format_duration(automation.send_window)}) before that tick, so never sent"
        )
    if status == "skipped":
        return f"skipped {decided} — {_skip_label(reason, automation)}" + (f": {detail}" if detail else "")
    if status == "held":
        what = "quiet hours" if reason == "quiet_hours" else (reason or "no reason recorded")
        held = f"held since {decided} for {what}" + (f" ({detail})" if detail else "")
        retry_at = None
        if quiet_end is not None and now is not None:
            retry_at = quiet_hours_end(now, contact.timezone if contact else None, quiet_end)
        stale_at = decision.due_at + automation.send_window if decision.due_at else None
        if retry_at and stale_at and stale_at < retry_at:
            return (
                f"{held}; it goes stale after {when(stale_at)}, before quiet hours end at {when(retry_at)}: "
                "a tick will skip it as stale, it will not be sent"
            )
        retry = f"the first tick at or after {when(retry_at)} retries it" if retry_at else (
            "the next tick outside the contact's quiet hours retries it"
        )
        until = f", until it goes stale after {when(stale_at)}" if stale_at else ""
        return f"{held}; {retry}{until}"
    if status == "held_out":
        return (
            f"held out {decided}: in the control group ({automation.holdout_percent:g}% of contacts), "
            "never sent; it measures what the email changes"
        )
    if status == "pending":
        return (
            f"claimed {decided} as {decision.message_id}, not confirmed: a run is handing it over or stopped "
            "while it did; the next tick resends it to a backend that deduplicates, or marks it unknown"
        )
    if status == "unknown":
        return (
            f"in doubt since {decided}" + (f": {detail}" if detail else "")
            + "; never resent automatically, check the email provider's logs"
        )
    if status == "failed":
        if reason == "temporary":
            more = "the next tick retries it" if decision.attempts < MAX_ATTEMPTS else "no more retries"
            return (
                f"failed {decided}, temporarily" + (f" ({detail})" if detail else "")
                + f"; attempt {decision.attempts} of {MAX_ATTEMPTS}, {more}"
            )
        if reason == "attempts_exhausted":
            return (
                f"failed {decided}: refused for now on each of {decision.attempts} attempts"
                + (f", last with: {detail}" if detail else "") + "; given up, never retried"
            )
        return f"failed {decided}: refused by the email provider" + (f" ({detail})" if detail else "") + "; never retried"
    return f"{status} {decided}" + (f" ({reason})" if reason else "") + (f": {detail}" if detail else "")


def explain_automation(
    automation: Automation,
    contact_id: str,
    *,
    contact: ContactRow | None,
    qualifications: Sequence[Qualification],
    decisions: Sequence[Decision],
    built_as_of: datetime | None,
    as_of: datetime | None = None,
    quiet_end: time | None = None,
) -> list[Explanation]:
    """One explanation per qualification of this contact (trigger rows and ledger rows, by
    trigger key), or one saying why there is none. `as_of` is the instant asked about;
    without it, the last build's."""
    name, model = automation.name, automation.model_name
    now = as_of or built_as_of
    by_key = {decision.trigger_key: decision for decision in decisions}
    rows: dict[str, tuple[Qualification | None, Decision | None]] = {
        q.trigger_key: (q, by_key.get(q.trigger_key)) for q in qualifications
    }
    for decision in decisions:
        # A ledger row outlives its trigger row (a cart bought later leaves trg_cart_abandoned).
        rows.setdefault(decision.trigger_key, (None, decision))

    if not rows:
        if built_as_of is None:
            return [Explanation(name, NOT_BUILT, f"{name}: {model} has not been built in this warehouse yet; run a tick")]
        by = f" at or before {when(as_of)}" if as_of else ""
        return [
            Explanation(
                name,
                NEVER_QUALIFIED,
                f"{name}: never qualified{by} (no row in {model} as of the last build at {when(built_as_of)})",
            )
        ]

    explanations = []
    for trigger_key, (qualification, decision) in rows.items():
        qualified_at = qualification.qualified_at if qualification else decision.qualified_at  # type: ignore[union-attr]
        due_at = qualification.due_at if qualification else decision.due_at  # type: ignore[union-attr]
        qualified = qualification_phrase(trigger_key, qualified_at, due_at, contact_id)
        if decision is not None:
            outcome = decision_phrase(decision, automation, contact=contact, now=now, as_of=as_of, quiet_end=quiet_end)
            explanations.append(
                Explanation(
                    name, DECIDED, f"{name}: {qualified}; {outcome}", trigger_key, qualified_at, due_at,
                    decision.status, decision.reason, decision.detail, decision.decided_at, decision.sent_at,
                    decision.message_id,
                )
            )
            continue
        if now is not None and due_at is not None and due_at > now:
            outcome = "not decided yet: the next tick after that will decide"
        elif as_of is not None:
            outcome = f"not decided as of {when(as_of)}: the next tick will decide"
        elif built_as_of is not None:
            outcome = (
                f"not decided by the tick at {when(built_as_of)} (its send step did not run or failed "
                "for this automation): the next tick will decide"
            )
        else:
            outcome = "not decided yet: the next tick will decide"
        explanations.append(
            Explanation(
                name, NOT_DECIDED, f"{name}: {qualified}; {outcome}{_would_skip(automation, contact)}",
                trigger_key, qualified_at, due_at,
            )
        )
    return sorted(explanations, key=lambda e: (e.qualified_at or datetime.min, e.trigger_key or ""))


def contact_sentence(contact_id: str, contact: ContactRow | None) -> str:
    if contact is None:
        return f"Contact {contact_id}: not in stg_contacts as last built (a trigger naming it is skipped as unknown_contact)"
    email = contact.email or "no email address"
    return f"Contact {contact_id} ({email}): {contact.status}, timezone {contact.timezone or 'UTC'}"


# The reader: rows from the warehouse, as last built.


@dataclass
class ContactExplanation:
    contact_id: str
    as_of: datetime | None
    contact: ContactRow | None
    headline: str
    explanations: list[Explanation]

    def to_json(self) -> dict[str, Any]:
        return {
            "contact_id": self.contact_id,
            "as_of": self.as_of.isoformat() if self.as_of else None,
            "contact": asdict(self.contact) if self.contact else None,
            "headline": self.headline,
            "explanations": [explanation.to_json() for explanation in self.explanations],
        }


def _rows(con: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any]) -> list[dict[str, Any]] | None:
    """Rows as dicts; None when a table is missing (never built in this warehouse)."""
    try:
        return con.sql(sql, params=params).to_arrow_table().to_pylist()
    except duckdb.CatalogException:
        return None


def explain_contact(
    settings: NudgeSettings, contact_id: str, automation: str | None = None, as_of: datetime | None = None
) -> ContactExplanation:
    settings = settings.resolved()
    manifest = load_manifest(dbt_project(settings.dbt_project_dir))
    automations, policy = project_automations(settings.dbt_project_dir, manifest)
    if automation is not None:
        names = sorted(known.name for known in automations)
        automations = [known for known in automations if known.name == automation]
        if not automations:
            raise LookupError(f"no automation {automation!r}; there are: {', '.join(names)}")
    if not settings.warehouse.exists():
        raise LookupError(f"there is no warehouse at {settings.warehouse}: run a tick first")
    contacts_relation = relation_of(find_node(manifest, "stg_contacts"))
    params = {"contact": contact_id, "as_of": as_of}
    with connect(settings.warehouse, settings.lock_timeout_seconds) as con:
        found = _rows(
            con,
            f"select contact_id, email, status, timezone from {contacts_relation} where contact_id = $contact",
            {"contact": contact_id},
        )
        contact = ContactRow(**found[0]) if found else None
        explanations = []
        for known in sorted(automations, key=lambda a: a.name):
            built = _rows(con, f"select as_of from {BUILDS_TABLE} where unique_id = $id", {"id": known.model_unique_id})
            qualifications = _rows(
                con,
                f"""
                select trigger_key, qualified_at, due_at from {known.relation}
                where contact_id = $contact and ($as_of is null or qualified_at <= $as_of)
                """,
                params,
            )
            decisions = _rows(
                con,
                f"""
                select trigger_key, status, reason, error as detail, message_id, qualified_at, due_at,
                       decided_at, sent_at, attempts
                from {LEDGER_TABLE}
                where automation = $automation and contact_id = $contact
                  and ($as_of is null or decided_at <= $as_of)
                """,
                {**params, "automation": known.name},
            )
            explanations += explain_automation(
                known,
                contact_id,
                contact=contact,
                qualifications=[Qualification(**row) for row in qualifications or []],
                decisions=[Decision(**row) for row in decisions or []],
                built_as_of=built[0]["as_of"] if built and qualifications is not None else None,
                as_of=as_of,
                quiet_end=policy.quiet_end,
            )
    return ContactExplanation(contact_id, as_of, contact, contact_sentence(contact_id, contact), explanations)
