"""The demo's engagement events: what recipients do after an email, in the order they can do it."""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import datetime, timedelta

from dagster_project.sample_engagement import engagement_events

UNTIL = datetime(2026, 11, 1)
GOALS = {"cart_abandoned": ("purchased", timedelta(hours=72)), "welcome": ("workout_completed", timedelta(days=7))}


def sent_messages(count: int = 2000) -> list[dict]:
    rng = random.Random(1)
    automations = ("cart_abandoned", "welcome", "workout_completed")
    return [
        {
            "automation": automations[index % 3], "contact_id": f"c{index}", "email": f"c{index}@example.com",
            "message_id": f"<{index}.m@nudge.example>",
            "sent_at": UNTIL - timedelta(hours=rng.choice((1, 12, 24, 30))),
        }
        for index in range(count)
    ]


def parse(moment: str) -> datetime:
    return datetime.fromisoformat(moment.removesuffix("Z"))


def test_the_same_ledger_gives_the_same_events_in_any_row_order():
    messages = sent_messages(300)
    shuffled = list(messages)
    random.Random(2).shuffle(shuffled)
    assert engagement_events(messages, GOALS, until=UNTIL, seed=7) == engagement_events(shuffled, GOALS, until=UNTIL, seed=7)
    assert engagement_events(messages, GOALS, until=UNTIL, seed=7) != engagement_events(messages, GOALS, until=UNTIL, seed=8)


def test_events_follow_the_email_in_a_possible_order_and_never_after_until():
    messages = {m["message_id"]: m for m in sent_messages()}
    rows = engagement_events(list(messages.values()), GOALS, until=UNTIL, seed=7)
    assert len({row["event_id"] for row in rows}) == len(rows)
    by_message: dict[str, list[dict]] = defaultdict(list)
    by_contact = {m["contact_id"]: m for m in messages.values()}
    for row in rows:
        moment = parse(row["occurred_at"])
        assert moment <= UNTIL
        if row["name"].startswith("email_"):
            message = messages[row["properties"]["message_id"]]
            assert row["contact_id"] == message["contact_id"]
            assert row["properties"]["email"] == message["email"]
            assert moment > message["sent_at"]
            by_message[message["message_id"]].append(row)
        else:  # a goal event: the contact's own, after a click on an email of an automation with that goal
            message = by_contact[row["contact_id"]]
            goal, window = GOALS[message["automation"]]
            assert row["name"] == goal
            clicks = [e for e in by_message[message["message_id"]] if e["name"] == "email_clicked"]
            assert clicks and parse(clicks[0]["occurred_at"]) < moment <= message["sent_at"] + window
            if goal == "purchased":
                assert row["properties"]["total"] > 0
    for message_id, events in by_message.items():
        names = [e["name"] for e in events]
        if "email_bounced" in names:
            assert names == ["email_bounced"]
            assert events[0]["properties"]["type"] in ("hard", "soft")
            continue
        assert names[0] == "email_delivered"
        times = [parse(e["occurred_at"]) for e in events]
        assert times == sorted(times)
        if "email_clicked" in names:
            assert names.index("email_opened") < names.index("email_clicked")


def test_rates_look_like_an_email_program():
    messages = sent_messages()
    rows = engagement_events(messages, GOALS, until=UNTIL, seed=7)
    counts = defaultdict(int)
    for row in rows:
        counts[row["name"]] += 1
    assert 0.01 < counts["email_bounced"] / len(messages) < 0.06
    assert 0.25 < counts["email_opened"] / counts["email_delivered"] < 0.6
    assert 0.05 < counts["email_clicked"] / counts["email_opened"] < 0.5
    assert counts["purchased"] > 0 and counts["workout_completed"] > 0
    assert counts["email_complained"] < 0.02 * len(messages)
