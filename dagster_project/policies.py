"""Who of the due qualifications gets a message, and why the others do not.

Pure functions over one candidate row at a time, so every rule is a unit test
and every "no" carries a reason that lands in the ledger.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from functools import cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dagster_project.automations import Automation, Policy
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
    ledger_status: str | None  # None: never decided; failed: a retry; held: quiet hours; pending: a dead run's claim
    attempts: int
    exited_at: datetime | None = None  # the first exit event after qualifying, by this tick
    exit_event: str | None = None
    marketing_last_day: int = 0  # marketing messages to this contact in the 24 hours before the tick
    marketing_last_week: int = 0  # ... and in the 7 days before it
    unsubscribed_at: datetime | None = None  # a one-click unsubscribe from marketing mail (nudge.unsubscribes or the journal)
    suppression: str | None = None  # hard_bounce or complaint: the address is dead for all mail (int_email_suppressions)
    suppressed_at: datetime | None = None
    suppression_event_id: str | None = None


@dataclass
class TickState:
    """What one automation's send has decided so far in this tick, for rules across its candidates."""

    entered: dict[str, datetime] = field(default_factory=dict)
    marketing_sent: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True)
class Verdict:
    status: Status  # PENDING (send it), SKIPPED, HELD_OUT or HELD
    reason: Reason | None = None
    detail: str | None = None
    until: datetime | None = None  # HELD: when the quiet hours end for the contact (naive UTC)


SEND = Verdict(Status.PENDING)


def in_holdout(automation: str, contact_id: str, percent: float) -> bool:
    """A stable coin per contact and automation: the same person is always in or out."""
    if percent <= 0:
        return False
    digest = hashlib.sha256(f"{automation}\0{contact_id}".encode()).digest()
    bucket = int.from_bytes(digest[:8], "big") % 10_000
    return bucket < percent * 100


@cache
def contact_zone(name: str | None) -> ZoneInfo:
    """The contact's timezone; UTC where it is missing or not an IANA name."""
    if name:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    return ZoneInfo("UTC")


def quiet_hours_end(after: datetime, timezone: str | None, end: time) -> datetime:
    """The first end of quiet hours after `after` (naive UTC), in the contact's own timezone."""
    zone = contact_zone(timezone)
    local = after.replace(tzinfo=UTC).astimezone(zone)
    ends = datetime.combine(local.date(), end, tzinfo=zone)
    if ends <= local:
        ends = datetime.combine(local.date() + timedelta(days=1), end, tzinfo=zone)
    return ends.astimezone(UTC).replace(tzinfo=None)


def _quiet_hours(candidate: Candidate, policy: Policy, as_of: datetime) -> Verdict | None:
    zone = contact_zone(candidate.timezone)
    local = as_of.replace(tzinfo=UTC).astimezone(zone)
    if not policy.in_quiet_hours(local.time()):
        return None
    return Verdict(
        Status.HELD,
        Reason.QUIET_HOURS,
        f"{local:%H:%M} in {zone.key} is inside quiet hours "
        f"({policy.quiet_start:%H:%M}-{policy.quiet_end:%H:%M}); held until {policy.quiet_end:%H:%M} there",
        # Ticks before then leave it alone (the candidates query): it is decided again from this moment.
        until=quiet_hours_end(as_of, candidate.timezone, policy.quiet_end),
    )


def _capped(candidate: Candidate, policy: Policy, state: TickState) -> Verdict | None:
    this_tick = state.marketing_sent[candidate.contact_id]
    for limit, sent, period in (
        (policy.cap_per_day, candidate.marketing_last_day, "24 hours"),
        (policy.cap_per_week, candidate.marketing_last_week, "7 days"),
    ):
        if limit is not None and sent + this_tick >= limit:
            return Verdict(
                Status.SKIPPED,
                Reason.CAPPED,
                f"the contact already got {sent + this_tick} marketing messages in {period}; the cap is {limit}",
            )
    return None


def _reachable(candidate: Candidate, automation: Automation) -> Verdict | None:
    if not candidate.has_contact:
        return Verdict(Status.SKIPPED, Reason.UNKNOWN_CONTACT, f"no contact {candidate.contact_id} in stg_contacts")
    if not candidate.email:
        return Verdict(Status.SKIPPED, Reason.NO_EMAIL, "the contact has no email address")
    if candidate.suppression:
        # Every category: mailing an address that bounced hard or complained hurts all our mail.
        what = "bounced hard" if candidate.suppression == "hard_bounce" else "complained (reported a message as spam)"
        when = f" at {candidate.suppressed_at:%Y-%m-%d %H:%M} UTC" if candidate.suppressed_at else ""
        return Verdict(
            Status.SKIPPED,
            Reason.SUPPRESSED,
            f"{candidate.suppression}: {candidate.email} {what}{when} (event {candidate.suppression_event_id}); "
            "no automation mails it again",
        )
    if automation.is_marketing and candidate.unsubscribed_at is not None:
        # Our own record wins over the contact source, which may not know yet.
        return Verdict(
            Status.SKIPPED,
            Reason.UNSUBSCRIBED,
            f"unsubscribed from marketing mail at {candidate.unsubscribed_at:%Y-%m-%d %H:%M:%S} UTC "
            "with the one-click link",
        )
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
    policy: Policy,
    state: TickState,
) -> Verdict:
    """The verdict for one due candidate; `state` records a send or hold-out for the next ones.

    The send decides the verdicts that need only the data (the pending check, before_start, stale,
    exited and _reachable: none of them reads or writes `state`) in SQL, in one statement
    (send._verdicts_sql), and calls this for the rest. A change to those rules changes both:
    tests/integration/test_send_verdicts_in_sql.py fails until they agree row for row."""
    if candidate.ledger_status == Status.PENDING:
        # Already decided by the run that claimed it; only a new "no" from the contact stops it.
        return _reachable(candidate, automation) or SEND

    if automation.start_at is not None and candidate.qualified_at < automation.start_at:
        return Verdict(
            Status.SKIPPED,
            Reason.BEFORE_START,
            f"qualified {candidate.qualified_at:%Y-%m-%d %H:%M} UTC, before the automation's start_at "
            f"{automation.start_at:%Y-%m-%d %H:%M} UTC",
        )
    age = as_of - candidate.due_at
    if age > automation.send_window:
        return Verdict(
            Status.SKIPPED,
            Reason.STALE,
            f"due {candidate.due_at:%Y-%m-%d %H:%M} UTC, {age} before this tick, past the send window",
        )
    if candidate.exited_at is not None:
        return Verdict(
            Status.SKIPPED,
            Reason.EXITED,
            f"{candidate.exit_event} at {candidate.exited_at:%Y-%m-%d %H:%M} UTC, after qualifying",
        )
    unreachable = _reachable(candidate, automation)
    if unreachable:
        return unreachable

    last_entered = state.entered.get(candidate.contact_id) or candidate.last_entered_at
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

    if in_holdout(automation.name, candidate.contact_id, automation.holdout_percent):
        state.entered[candidate.contact_id] = as_of
        return Verdict(Status.HELD_OUT, None, f"control group ({automation.holdout_percent:g}%)")
    if automation.respects_quiet_hours:
        held = _quiet_hours(candidate, policy, as_of)
        if held:
            return held
    if automation.is_marketing:
        capped = _capped(candidate, policy, state)
        if capped:
            return capped
        state.marketing_sent[candidate.contact_id] += 1
    state.entered[candidate.contact_id] = as_of
    return SEND
