"""`nudge explain`'s sentences, from rows: one case per ledger status and reason."""

from __future__ import annotations

from datetime import datetime, time, timedelta

import pytest

from dagster_project.automations import Automation
from dagster_project.explain import (
    DECIDED,
    NEVER_QUALIFIED,
    NOT_BUILT,
    NOT_DECIDED,
    ContactRow,
    Decision,
    Qualification,
    contact_sentence,
    explain_automation,
    quiet_hours_end,
)

QUALIFIED = datetime(2026, 10, 30, 14, 2)
TICK = datetime(2026, 10, 31, 2, 0)
BUILT = datetime(2026, 10, 31, 22, 0)
MESSAGE_ID = "<abc@nudge.example>"
SUBSCRIBED = ContactRow("c1", "anna@example.com", "subscribed", "Europe/Berlin")


def automation(name: str = "cart_abandoned", **changes) -> Automation:
    fields = dict(
        name=name,
        model_unique_id=f"model.nudge.trg_{name}",
        model_name=f"trg_{name}",
        relation=f'"triggers"."trg_{name}"',
        template=name,
        category="marketing",
        sender=None,
        delay=timedelta(0),
        send_window=timedelta(hours=48),
        reentry="every_time",
        holdout_percent=0,
        conversion_event=None,
        conversion_window=None,
    )
    return Automation(**{**fields, **changes})


def decision(status: str, reason: str | None = None, detail: str | None = None, **changes) -> Decision:
    fields = dict(
        trigger_key="e_1",
        status=status,
        reason=reason,
        detail=detail,
        message_id=MESSAGE_ID,
        qualified_at=QUALIFIED,
        due_at=QUALIFIED,
        decided_at=TICK,
        sent_at=TICK if status == "sent" else None,
        attempts=1 if status in ("sent", "failed") else 0,
    )
    return Decision(**{**fields, **changes})


def explain_one(decided: Decision | None = None, *, qualification: Qualification | None = None, of=None, **kwargs):
    kwargs.setdefault("contact", SUBSCRIBED)
    kwargs.setdefault("built_as_of", BUILT)
    [explanation] = explain_automation(
        of or automation(),
        "c1",
        qualifications=[qualification] if qualification else [],
        decisions=[decided] if decided else [],
        **kwargs,
    )
    return explanation


def test_sent_names_when_and_the_message_id():
    explanation = explain_one(decision("sent"), of=automation("welcome"))
    assert explanation.sentence == (
        "welcome: qualified 2026-10-30 14:02 UTC (trigger e_1), due at once; "
        f"sent 2026-10-31 02:00 UTC as {MESSAGE_ID}"
    )
    assert (explanation.state, explanation.status) == (DECIDED, "sent")


def test_the_trigger_key_is_not_repeated_when_it_is_the_contact():
    explanation = explain_one(decision("sent", trigger_key="c1"), of=automation("welcome"))
    assert explanation.sentence.startswith("welcome: qualified 2026-10-30 14:02 UTC, due at once; sent")


def test_a_delay_shows_the_due_time():
    due = QUALIFIED + timedelta(hours=24)
    explanation = explain_one(decision("sent", due_at=due))
    assert "qualified 2026-10-30 14:02 UTC (trigger e_1), due 2026-10-31 14:02 UTC;" in explanation.sentence


def test_sent_after_the_as_of_asked_about_is_not_sent_yet():
    explanation = explain_one(decision("sent", sent_at=TICK + timedelta(hours=6)), as_of=TICK + timedelta(hours=1))
    assert "first decided 2026-10-31 02:00 UTC; not sent as of 2026-10-31 03:00 UTC" in explanation.sentence
    assert "it went out later, at 2026-10-31 08:00 UTC" in explanation.sentence


def test_held_for_quiet_hours_says_when_it_is_retried_and_until_when():
    held = decision(
        "held", "quiet_hours", "23:00 in Europe/Berlin is inside quiet hours (21:00-08:00); held until 08:00 there"
    )
    explanation = explain_one(held, quiet_end=time(8, 0))
    # As of the last build, 22:00 UTC is 23:00 in Berlin (CET): quiet hours end at 07:00 UTC.
    assert explanation.sentence == (
        "cart_abandoned: qualified 2026-10-30 14:02 UTC (trigger e_1), due at once; held since 2026-10-31 02:00 UTC "
        "for quiet hours (23:00 in Europe/Berlin is inside quiet hours (21:00-08:00); held until 08:00 there); "
        "the first tick at or after 2026-11-01 07:00 UTC retries it, until it goes stale after 2026-11-01 14:02 UTC"
    )
    assert (explanation.status, explanation.reason) == ("held", "quiet_hours")


def test_held_past_its_send_window_before_quiet_hours_end_will_not_be_sent():
    # Due 2026-10-30 14:02 with a 24h window: stale after 2026-10-31 14:02, and in Tokyo
    # (UTC+9) quiet hours that began at 21:00 end at 08:00, i.e. 23:00 UTC.
    tokyo = ContactRow("c1", "anna@example.com", "subscribed", "Asia/Tokyo")
    held = decision("held", "quiet_hours")
    explanation = explain_one(
        held, of=automation(send_window=timedelta(hours=24)), contact=tokyo, built_as_of=datetime(2026, 10, 31, 13, 0),
        quiet_end=time(8, 0),
    )
    assert explanation.sentence.endswith(
        "held since 2026-10-31 02:00 UTC for quiet hours; it goes stale after 2026-10-31 14:02 UTC, before quiet "
        "hours end at 2026-10-31 23:00 UTC: a tick will skip it as stale, it will not be sent"
    )


def test_held_without_a_known_policy_still_says_it_is_retried():
    explanation = explain_one(decision("held", "quiet_hours"))
    assert "the next tick outside the contact's quiet hours retries it" in explanation.sentence


def test_quiet_hours_end_in_the_contacts_timezone_across_a_daylight_saving_change():
    # 2026-10-24 22:00 UTC is midnight in Berlin (CEST); by 08:00 the clocks went back to CET.
    assert quiet_hours_end(datetime(2026, 10, 24, 22, 0), "Europe/Berlin", time(8, 0)) == datetime(2026, 10, 25, 7, 0)
    # Already past today's end: tomorrow's.
    assert quiet_hours_end(datetime(2026, 11, 1, 9, 0), "UTC", time(8, 0)) == datetime(2026, 11, 2, 8, 0)
    # A missing or invalid timezone is UTC, as for the send step.
    assert quiet_hours_end(datetime(2026, 11, 1, 1, 0), "Mars/Olympus", time(8, 0)) == datetime(2026, 11, 1, 8, 0)
    assert quiet_hours_end(datetime(2026, 11, 1, 1, 0), "", time(8, 0)) == datetime(2026, 11, 1, 8, 0)


@pytest.mark.parametrize(
    ("reason", "detail", "expected"),
    [
        (
            "exited",
            "purchased at 2026-10-31 01:30 UTC, after qualifying",
            "skipped 2026-10-31 02:00 UTC — exited: purchased at 2026-10-31 01:30 UTC, after qualifying",
        ),
        (
            "capped",
            "the contact already got 1 marketing messages in 24 hours; the cap is 1",
            "skipped 2026-10-31 02:00 UTC — frequency cap: the contact already got 1 marketing messages in 24 hours",
        ),
        (
            "before_start",
            "qualified 2026-10-30 14:02 UTC, before the automation's start_at 2026-11-01 00:00 UTC",
            "skipped 2026-10-31 02:00 UTC — before the automation's start: qualified 2026-10-30 14:02 UTC, before",
        ),
        (
            "not_subscribed",
            "marketing mail goes only to subscribed contacts; this one is unsubscribed",
            "skipped 2026-10-31 02:00 UTC — not subscribed: marketing mail goes only to subscribed contacts",
        ),
        ("no_email", "the contact has no email address", "— no email address: the contact has no email address"),
        ("unknown_contact", "no contact c1 in stg_contacts", "— unknown contact: no contact c1 in stg_contacts"),
        (
            "template_error",
            "'dict object' has no attribute 'items'",
            "— the template failed for this contact: 'dict object' has no attribute 'items'",
        ),
        ("reentry", None, "skipped 2026-10-31 02:00 UTC — re-entry (at most once per 1d)"),
        ("some_new_reason", None, "skipped 2026-10-31 02:00 UTC — some_new_reason"),
    ],
)
def test_skipped_gives_the_reason_in_words(reason, detail, expected):
    explanation = explain_one(decision("skipped", reason, detail), of=automation(reentry=timedelta(hours=24)))
    assert expected in explanation.sentence
    assert (explanation.status, explanation.reason, explanation.detail) == ("skipped", reason, detail)


def test_stale_is_said_from_the_row_and_the_send_window():
    stale = decision("skipped", "stale", "due 2026-10-27 08:24 UTC, 3 days, 15:35:32 before this tick, past the send window")
    explanation = explain_one(stale, of=automation(send_window=timedelta(hours=24)))
    assert explanation.sentence.endswith(
        "skipped 2026-10-31 02:00 UTC — stale: due 2026-10-30 14:02 UTC, longer than the send window (1d) "
        "before that tick, so never sent"
    )


def test_reentry_once_ever():
    explanation = explain_one(decision("skipped", "reentry"), of=automation(reentry="once"))
    assert "re-entry (once ever)" in explanation.sentence


@pytest.mark.parametrize(
    ("decided", "expected"),
    [
        (decision("held_out"), "held out 2026-10-31 02:00 UTC: in the control group (10% of contacts), never sent"),
        (decision("pending"), f"claimed 2026-10-31 02:00 UTC as {MESSAGE_ID}, not confirmed"),
        (
            decision("unknown", "interrupted", "claimed by a run that stopped"),
            "in doubt since 2026-10-31 02:00 UTC: claimed by a run that stopped; never resent automatically",
        ),
        (
            decision("failed", "temporary", "451 try later"),
            "failed 2026-10-31 02:00 UTC, temporarily (451 try later); attempt 1 of 3, the next tick retries it",
        ),
        (decision("failed", "temporary", "451", attempts=3), "attempt 3 of 3, no more retries"),
        (
            decision("failed", "rejected", "550 no such user"),
            "failed 2026-10-31 02:00 UTC: refused by the email provider (550 no such user); never retried",
        ),
    ],
)
def test_every_other_status_in_words(decided, expected):
    explanation = explain_one(decided, of=automation(holdout_percent=10))
    assert expected in explanation.sentence


def test_due_later_is_not_decided_yet():
    due = BUILT + timedelta(hours=11)
    explanation = explain_one(qualification=Qualification("o_1", QUALIFIED, due), of=automation("post_purchase"))
    assert explanation.sentence == (
        "post_purchase: qualified 2026-10-30 14:02 UTC (trigger o_1), due 2026-11-01 09:00 UTC; "
        "not decided yet: the next tick after that will decide"
    )
    assert explanation.state == NOT_DECIDED and explanation.status is None


def test_not_decided_says_what_the_contact_row_already_tells():
    due = BUILT + timedelta(hours=1)
    unsubscribed = ContactRow("c1", "anna@example.com", "unsubscribed", "UTC")
    explanation = explain_one(qualification=Qualification("o_1", QUALIFIED, due), contact=unsubscribed)
    assert explanation.sentence.endswith(
        "it will be skipped: marketing mail goes only to subscribed contacts, this one is unsubscribed"
    )
    transactional = explain_one(
        qualification=Qualification("o_1", QUALIFIED, due), contact=unsubscribed, of=automation(category="transactional")
    )
    assert "skipped" not in transactional.sentence
    missing = explain_one(qualification=Qualification("o_1", QUALIFIED, due), contact=None)
    assert missing.sentence.endswith("it will be skipped: the contact is not in stg_contacts")


def test_due_but_not_decided_as_of_an_instant():
    explanation = explain_one(qualification=Qualification("e_1", QUALIFIED, QUALIFIED), as_of=TICK)
    assert explanation.sentence.endswith("not decided as of 2026-10-31 02:00 UTC: the next tick will decide")


def test_due_before_the_last_build_but_undecided_points_at_that_tick():
    explanation = explain_one(qualification=Qualification("e_1", QUALIFIED, QUALIFIED))
    assert "not decided by the tick at 2026-10-31 22:00 UTC (its send step did not run or failed" in explanation.sentence


def test_never_qualified_names_the_trigger_table_and_its_last_build():
    explanation = explain_one(of=automation("winback"))
    assert explanation.sentence == (
        "winback: never qualified (no row in trg_winback as of the last build at 2026-10-31 22:00 UTC)"
    )
    assert explanation.state == NEVER_QUALIFIED
    asked = explain_one(of=automation("winback"), as_of=TICK)
    assert asked.sentence.startswith("winback: never qualified at or before 2026-10-31 02:00 UTC (no row in trg_winback")


def test_a_trigger_table_never_built():
    explanation = explain_one(of=automation("winback"), built_as_of=None)
    assert explanation.state == NOT_BUILT
    assert explanation.sentence == "winback: trg_winback has not been built in this warehouse yet; run a tick"


def test_a_ledger_row_whose_trigger_row_is_gone_is_still_explained():
    # A cart bought after its reminder went out leaves the trigger table, not the ledger.
    explanation = explain_one(decision("sent"), qualification=None)
    assert explanation.sentence.startswith("cart_abandoned: qualified 2026-10-30 14:02 UTC (trigger e_1), due at once; sent")


def test_several_qualifications_in_the_order_they_happened():
    later = Qualification("e_2", QUALIFIED + timedelta(days=1), QUALIFIED + timedelta(days=1))
    explanations = explain_automation(
        automation(),
        "c1",
        contact=SUBSCRIBED,
        qualifications=[later, Qualification("e_1", QUALIFIED, QUALIFIED)],
        decisions=[decision("sent")],
        built_as_of=BUILT,
    )
    assert [e.trigger_key for e in explanations] == ["e_1", "e_2"]
    assert [e.state for e in explanations] == [DECIDED, NOT_DECIDED]


def test_json_has_iso_timestamps():
    document = explain_one(decision("sent")).to_json()
    assert document["decided_at"] == "2026-10-31T02:00:00"
    assert document["message_id"] == MESSAGE_ID and document["state"] == DECIDED


def test_contact_sentences():
    assert contact_sentence("c1", SUBSCRIBED) == "Contact c1 (anna@example.com): subscribed, timezone Europe/Berlin"
    assert contact_sentence("c2", ContactRow("c2", None, "cleaned", "")) == (
        "Contact c2 (no email address): cleaned, timezone UTC"
    )
    assert "not in stg_contacts" in contact_sentence("c3", None)
