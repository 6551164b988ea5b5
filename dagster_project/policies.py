"""Who of the due qualifications gets a message, and why the others do not.

Pure functions over one candidate row at a time, so every rule is a unit test
and every "no" carries a reason that lands in the ledger.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from dagster_project.automations import Automation
from dagster_project.ledger import Reason, Status


@dataclass(frozen=True)
class Candidate:
    """A due qualification joined to its contact and the automation's history."""

    contact_id: str
    trigger_key: str
    qualified_at: datetime
    due_at: datetime
    context: str | None
    has_contact: bool
    email: str | None
    contact_status: str | None
    first_name: str | None
    last_name: str | None
    timezone: str | None
    properties: str | None
    last_entered_at: datetime | None  # the latest time this contact entered the automation before
    ledger_status: str | None  # None: never decided; failed: a retry; pending: a claim from a dead run
    attempts: int


@dataclass(frozen=True)
class Verdict:
    status: Status  # PENDING (send it), SKIPPED or HELD_OUT
    reason: Reason | None = None
    detail: str | None = None


SEND = Verdict(Status.PENDING)


def in_holdout(automation: str, contact_id: str, percent: float) -> bool:
    """A stable coin per contact and automation: the same person is always in or out."""
    if percent <= 0:
        return False
    digest = hashlib.sha256(f"{automation}\0{contact_id}".encode()).digest()
    bucket = int.from_bytes(digest[:8], "big") % 10_000
    return bucket < percent * 100


def _reachable(candidate: Candidate, automation: Automation) -> Verdict | None:
    if not candidate.has_contact:
        return Verdict(Status.SKIPPED, Reason.UNKNOWN_CONTACT, f"no contact {candidate.contact_id} in stg_contacts")
    if not candidate.email:
        return Verdict(Status.SKIPPED, Reason.NO_EMAIL, "the contact has no email address")
    if automation.is_marketing and candidate.contact_status != "subscribed":
        return Verdict(
            Status.SKIPPED,
            Reason.NOT_SUBSCRIBED,
            f"marketing mail goes only to subscribed contacts; this one is {candidate.contact_status}",
        )
    return None


def decide(
    candidate: Candidate,
    automation: Automation,
    *,
    as_of: datetime,
    entered_this_tick: dict[str, datetime],
) -> Verdict:
    """The verdict for one due candidate. `entered_this_tick` is updated for a send or hold."""
    if candidate.ledger_status == Status.PENDING:
        # Already decided by the run that claimed it; only a new "no" from the contact stops it.
        return _reachable(candidate, automation) or SEND

    age = as_of - candidate.due_at
    if age > automation.send_window:
        return Verdict(
            Status.SKIPPED,
            Reason.STALE,
            f"due {candidate.due_at:%Y-%m-%d %H:%M} UTC, {age} before this tick, past the send window",
        )
    unreachable = _reachable(candidate, automation)
    if unreachable:
        return unreachable

    last_entered = entered_this_tick.get(candidate.contact_id) or candidate.last_entered_at
    if last_entered is not None:
        if automation.reentry == "once":
            return Verdict(Status.SKIPPED, Reason.REENTRY, "this automation goes to a contact once ever")
        if automation.reentry != "every_time" and as_of - last_entered < automation.reentry:
            return Verdict(
                Status.SKIPPED,
                Reason.REENTRY,
                f"the contact entered this automation at {last_entered:%Y-%m-%d %H:%M} UTC, "
                f"less than {automation.reentry} before",
            )

    entered_this_tick[candidate.contact_id] = as_of
    if in_holdout(automation.name, candidate.contact_id, automation.holdout_percent):
        return Verdict(Status.HELD_OUT, None, f"control group ({automation.holdout_percent:g}%)")
    return SEND
