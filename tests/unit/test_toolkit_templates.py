"""The templates of winback, upgrade_moment and clicked_no_purchase, rendered for real trigger rows.

The contexts are the JSON texts the trigger models produce (the same strings their dbt unit
tests expect), parsed the way the send step parses them.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from dagster_project.rendering import EmailTemplate, RenderedEmail

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"
UNSUBSCRIBE_URL = "https://nudge.example/unsubscribe?token=abc.def"
POSTAL_ADDRESS = "Nudge Fitness, 1 Example Street, Springfield, 12345"

WINBACK_CONTEXT = (
    '{"segment": "seg_dormant", "entered_at": "2026-10-29 08:00:00", "workouts_completed": 2, '
    '"last_workout": {"workout_type": "yoga", "duration_min": 20, "calories": 90}}'
)
WINBACK_CONTEXT_NOTHING_DONE = (
    '{"segment": "seg_dormant", "entered_at": "2026-08-31 08:00:00", "workouts_completed": 0, "last_workout": null}'
)
LIMIT_CONTEXT = '{"reason": "plan_limit_reached", "event_id": "l1", "properties": {"limit": "workouts_per_week"}}'
PREVIEW_CONTEXT = '{"reason": "premium_feature_used", "event_id": "i3", "properties": {"feature": "heart_rate_zones"}}'
CLICK_CONTEXT = (
    '{"automation": "cart_abandoned", "url": "https://nudge.example/cart", "clicked_at": "2026-10-28 12:00:00", '
    '"viewed_products": [{"product_id": "p4", "name": "Foam roller", "price": 19.5},'
    '{"product_id": "p3", "name": "Water bottle", "price": 12, "category": "equipment"},'
    '{"product_id": "p1", "name": "Yoga mat", "price": 24.99}]}'
)
CLICK_CONTEXT_BARE = '{"automation": null, "url": null, "clicked_at": "2026-10-27 12:00:00", "viewed_products": []}'


def render(name: str, context: str, *, first_name: str | None = "Ana") -> RenderedEmail:
    variables: dict[str, Any] = {
        "contact": {
            "contact_id": "c1",
            "email": "ana@example.com",
            "first_name": first_name,
            "last_name": "Lima",
            "timezone": "Europe/Lisbon",
            "properties": {"plan": "free", "city": "Lisbon"},
        },
        "context": json.loads(context),
        "automation": name,
        "unsubscribe_url": UNSUBSCRIBE_URL,
        "postal_address": POSTAL_ADDRESS,
        "sender_name": "Nudge Fitness",
        "as_of": datetime(2026, 10, 31, 12, 0, tzinfo=timezone.utc),
    }
    return EmailTemplate.load(TEMPLATES, name, category="marketing").render(variables)


def text_of(html: str) -> str:
    """The HTML's words on one line, tags dropped, for sentence assertions."""
    words = " ".join(re.sub(r"<[^>]+>", " ", html).split())
    return re.sub(r" ([.,:;?!])", r"\1", words)


@pytest.mark.parametrize(
    ("name", "context"),
    [
        ("winback", WINBACK_CONTEXT),
        ("winback", WINBACK_CONTEXT_NOTHING_DONE),
        ("winback", "{}"),
        ("upgrade_moment", LIMIT_CONTEXT),
        ("upgrade_moment", PREVIEW_CONTEXT),
        ("upgrade_moment", "{}"),
        ("clicked_no_purchase", CLICK_CONTEXT),
        ("clicked_no_purchase", CLICK_CONTEXT_BARE),
        ("clicked_no_purchase", "{}"),
    ],
)
def test_every_template_renders_with_the_marketing_footer(name, context):
    for first_name in ("Ana", None):
        rendered = render(name, context, first_name=first_name)
        assert rendered.subject and "None" not in rendered.subject
        for body in (rendered.html, rendered.text):
            assert UNSUBSCRIBE_URL.replace("&", "&amp;") in body or UNSUBSCRIBE_URL in body
            assert POSTAL_ADDRESS in body
            assert "None" not in body and "{{" not in body


def test_winback_recalls_the_workouts_before_the_contact_went_quiet():
    rendered = render("winback", WINBACK_CONTEXT)

    assert rendered.subject == "We miss you, Ana: your 10-minute comeback workout is ready"
    html = text_of(rendered.html)
    assert "You've already completed 2 workouts with us, the last one 20 minutes of yoga." in html
    assert "You've already completed 2 workouts with us, the last one 20 minutes of yoga." in rendered.text
    assert 'href="https://nudge.example/app/workouts/comeback"' in rendered.html
    assert "haven't been active for a while" in rendered.text


def test_winback_without_workouts_or_a_name_skips_what_it_does_not_know():
    rendered = render("winback", WINBACK_CONTEXT_NOTHING_DONE, first_name=None)

    assert rendered.subject == "We miss you: your 10-minute comeback workout is ready"
    assert "already completed" not in rendered.html
    assert "already completed" not in rendered.text
    assert "We miss you</h1>" in rendered.html


def test_winback_names_an_unknown_workout_type_readably():
    context = json.dumps({"workouts_completed": 1, "last_workout": {"workout_type": "trail_run"}})
    rendered = render("winback", context)

    assert "You've already completed 1 workout with us, the last one trail run." in rendered.text


def test_upgrade_moment_speaks_to_the_limit_reached():
    rendered = render("upgrade_moment", LIMIT_CONTEXT)

    assert rendered.subject == "You've reached your weekly workout limit: go further with Premium"
    html = text_of(rendered.html)
    assert "You're outgrowing the free plan, Ana" in html
    assert "You just reached your weekly workout limit." in html
    assert 'href="https://nudge.example/app/upgrade?from=upgrade_moment"' in rendered.html
    assert "Unlimited workouts and saved routes" in rendered.text


def test_upgrade_moment_speaks_to_the_feature_tried():
    rendered = render("upgrade_moment", PREVIEW_CONTEXT)

    assert rendered.subject == "Enjoying heart rate zones? Keep it with Premium"
    assert "Looks like heart rate zones is working for you, Ana" in rendered.text
    assert "You've tried heart rate zones a few times this week." in text_of(rendered.html)


def test_upgrade_moment_falls_back_for_a_limit_it_has_no_words_for():
    context = '{"reason": "plan_limit_reached", "properties": {"limit": "custom_exports"}}'
    assert render("upgrade_moment", context).subject == "You've reached your custom exports limit: go further with Premium"
    assert render("upgrade_moment", "{}").subject == "Ready for more? Go further with Nudge Premium"


def test_clicked_no_purchase_lists_the_products_viewed_after_the_click():
    rendered = render("clicked_no_purchase", CLICK_CONTEXT)

    assert rendered.subject == "Still deciding, Ana? The Foam roller is waiting for you"
    html = text_of(rendered.html)
    assert html.index("Foam roller $19.50") < html.index("Water bottle Equipment $12.00") < html.index("Yoga mat $24.99")
    assert "- Foam roller: $19.50" in rendered.text
    assert 'href="https://nudge.example/cart"' in rendered.html
    assert "Pick up where you left off: https://nudge.example/cart" in rendered.text


def test_clicked_no_purchase_without_products_or_a_safe_link_goes_to_the_shop():
    bare = render("clicked_no_purchase", CLICK_CONTEXT_BARE)
    assert bare.subject == "Found what you were looking for, Ana?"
    assert "you looked at" not in bare.html
    assert 'href="https://nudge.example/shop"' in bare.html

    # a link that is not https (say javascript:) never becomes the button
    risky = render("clicked_no_purchase", json.dumps({"url": "javascript:alert(1)", "viewed_products": []}))
    assert "javascript" not in risky.html and "javascript" not in risky.text
    assert "Pick up where you left off: https://nudge.example/shop" in risky.text
