"""What recipients of the demo's emails do next, as landing events.

The sample data (sample_data.py) ends before any email exists, so nothing in it can
answer an email. Given the ledger's sent messages, this writes the events an email
provider and the product would report afterwards: `email_delivered`, a few
`email_bounced` (hard and soft) and `email_complained`, `email_opened` and
`email_clicked`, each carrying the ledger's `message_id` (with its angle brackets) the
way the shared event contract says; and for some clicks the automation's goal event
(a purchase with an order total, a login, a workout, an upgrade) a while after the
click, so the conversion report has something the email caused. Held-out contacts get
nothing here: their conversions are only what the sample app does by itself, which is
what a control group is for.

Every choice comes from one `random.Random` per message seeded with the seed and the
message id, so the same ledger and seed write the same file whatever the row order.
Nothing is dated after `until`: an email sent an hour before it has had an hour to be
opened.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import orjson

from dagster_project.warehouse import connect
from dagster_project.sample_data import APP_URL, CATALOGUE, SHOP_URL, WORKOUT_BURN, WORKOUT_TYPES

BOUNCE_RATE = 0.03
HARD_BOUNCE_SHARE = 0.6
COMPLAINT_RATE = 0.004
# Unique opens of delivered mail, by automation; the rest open at DEFAULT_OPEN_RATE.
OPEN_RATES = {"workout_completed": 0.62, "post_purchase": 0.55, "welcome": 0.52, "cart_abandoned": 0.47}
DEFAULT_OPEN_RATE = 0.4
CLICK_RATE_OF_OPENS = 0.32
# A click that goes on to the automation's goal within its window.
CONVERT_RATE_OF_CLICKS = 0.45
EVENTS_FILE = "email-engagement.jsonl"


@dataclass
class EngagementSummary:
    path: Path
    messages: int = 0
    events: Counter = field(default_factory=Counter)

    def describe(self) -> str:
        counts = ", ".join(f"{count} {name}" for name, count in sorted(self.events.items()))
        return f"{self.messages} sent messages answered with {sum(self.events.values())} events ({counts or 'none'})"


def _rng(seed: int, message_id: str) -> random.Random:
    digest = hashlib.sha256(f"{seed}\0{message_id}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _iso(moment: datetime) -> str:
    return moment.replace(microsecond=0).isoformat() + "Z"


def _goal_properties(goal: str, rng: random.Random, automation: str) -> dict:
    if goal == "purchased":
        product = rng.choice(CATALOGUE)
        quantity = 1 if rng.random() < 0.85 else 2
        line = {**product, "quantity": quantity}
        order_id = f"o_mail_{rng.getrandbits(40):010x}"
        return {"order_id": order_id, "total": round(product["price"] * quantity, 2), "currency": "USD", "products": [line]}
    if goal == "workout_completed":
        workout_type = rng.choice(WORKOUT_TYPES)
        minutes = rng.randint(15, 75)
        return {"workout_type": workout_type, "duration_min": minutes, "calories": minutes * WORKOUT_BURN[workout_type]}
    if goal == "logged_in":
        return {"platform": rng.choice(("ios", "android", "web")), "utm_campaign": automation}
    if goal == "plan_upgraded":
        return {"from": "free", "to": "premium"}
    return {"utm_campaign": automation}


def engagement_events(
    sent: list[dict], goals: dict[str, tuple[str, timedelta]], *, until: datetime, seed: int
) -> list[dict]:
    """Landing event rows for sent messages (dicts with automation, contact_id, email,
    message_id, sent_at); goals maps an automation to its (goal event, window)."""
    rows: list[dict] = []
    for message in sorted(sent, key=lambda row: row["message_id"]):
        rng = _rng(seed, message["message_id"])
        automation, sent_at = message["automation"], message["sent_at"]
        serial = 0

        def emit(name: str, moment: datetime, properties: dict, *, about_the_message: bool = True) -> bool:
            nonlocal serial
            if moment > until:
                return False
            serial += 1
            key = hashlib.sha256(f"{message['message_id']}\0{serial}".encode()).hexdigest()[:16]
            if about_the_message:
                properties = {"message_id": message["message_id"], "email": message["email"], **properties}
            rows.append({
                "event_id": f"e_mail_{key}",
                "contact_id": message["contact_id"],
                "name": name,
                "occurred_at": _iso(moment),
                "properties": properties,
            })
            return True

        if rng.random() < BOUNCE_RATE:
            kind = "hard" if rng.random() < HARD_BOUNCE_SHARE else "soft"
            emit("email_bounced", sent_at + timedelta(seconds=rng.randint(2, 90)), {"type": kind})
            continue
        if not emit("email_delivered", sent_at + timedelta(seconds=rng.randint(1, 40)), {}):
            continue
        if rng.random() < COMPLAINT_RATE:
            emit("email_complained", sent_at + timedelta(minutes=rng.randint(5, 600)), {})
            continue
        if rng.random() >= OPEN_RATES.get(automation, DEFAULT_OPEN_RATE):
            continue
        # most opens come in the first hours, a tail over the next day
        opened_at = sent_at + timedelta(seconds=int(60 + min(rng.expovariate(1 / 180), 36 * 60) * 60))
        if not emit("email_opened", opened_at, {}) or rng.random() >= CLICK_RATE_OF_OPENS:
            continue
        campaign = f"utm_source=nudge&utm_medium=email&utm_campaign={automation}"
        url = f"{SHOP_URL}/?{campaign}" if goals.get(automation, ("",))[0] == "purchased" else f"{APP_URL}/open?{campaign}"
        clicked_at = opened_at + timedelta(seconds=rng.randint(5, 300))
        if not emit("email_clicked", clicked_at, {"automation": automation, "url": url}):
            continue
        if automation in goals and rng.random() < CONVERT_RATE_OF_CLICKS:
            goal, window = goals[automation]
            converted_at = clicked_at + min(timedelta(minutes=rng.randint(2, 240)), window)
            # the goal is the product's own event: it carries no message_id (its properties draw
            # from the seeded generator, so only for a goal that happens before `until`)
            if converted_at <= until:
                emit(goal, converted_at, _goal_properties(goal, rng, automation), about_the_message=False)
    return rows


def write_engagement(
    warehouse: Path, landing_dir: Path, dbt_project_dir: Path, manifest: Path, *, until: datetime, seed: int = 7,
    lock_timeout_seconds: float = 600.0,
) -> EngagementSummary:
    """Read the sent messages from the warehouse and write the events file into the
    landing folder, where the next tick ingests it."""
    from dagster_project.automations import project_automations

    automations, _ = project_automations(dbt_project_dir, manifest)
    goals = {
        a.name: (a.conversion_event, a.conversion_window)
        for a in automations
        if a.conversion_event and a.conversion_window
    }
    # under the writer lock: the tick before may still be closing its connections
    with connect(warehouse, lock_timeout_seconds) as con:
        sent = con.sql(
            """
            select automation, contact_id, email, message_id, sent_at
            from nudge.messages
            where status = 'sent' and sent_at is not null and sent_at <= $until
            """,
            params={"until": until},
        ).to_arrow_table().to_pylist()
    rows = engagement_events(sent, goals, until=until, seed=seed)
    path = landing_dir / "events" / EVENTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in rows))
    return EngagementSummary(path, len(sent), Counter(row["name"] for row in rows))
