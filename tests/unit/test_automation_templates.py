"""The templates of workout_completed, first_login_nudge, browse_abandoned and post_purchase.

Each context is the JSON text its trigger model writes (copied from a build on the sample
data), parsed the way the send step parses it, so the templates are tested against what
they will really get.
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

WORKOUT_CONTEXT = (
    '{"event_id": "e_7c0914ea8cf9fce3", "workout": {"workout_type":"swim","duration_min":83,"calories":829},'
    ' "workout_date": "2026-10-31", "streak_days": 3, "streak_started_on": "2026-10-29"}'
)
FIRST_LOGIN_INSTALL_CONTEXT = (
    '{"first_event": "app_installed", "event_id": "e_1", "properties": {"platform":"ios"}}'
)
FIRST_LOGIN_SIGNUP_CONTEXT = (
    '{"first_event": "signed_up", "event_id": "e_fa185ec4bd7ae642", "properties": {"source":"instagram"}}'
)
BROWSE_CONTEXT = (
    '{"product": {"product_id":"p_029","name":"Massage Gun","category":"recovery","price":149.0},'
    ' "view_count": 2, "first_viewed_at": "2026-10-31 21:14:48", "last_viewed_at": "2026-10-31 21:16:27"}'
)
POST_PURCHASE_CONTEXT = (
    '{"event_id": "e_caee29de4972ead4", "order": {"order_id":"o_f24866335e8bc82a","total":359.0,"currency":"USD",'
    '"products":[{"product_id":"p_022","name":"Energy Gels (12)","price":21.0,"quantity":1},'
    '{"product_id":"p_016","name":"Running Jacket","price":89.0,"quantity":1},'
    '{"product_id":"p_014","name":"GPS Watch","price":249.0,"quantity":1}]},'
    ' "recommendations": [{"product_id": "p_015", "name": "Wireless Earbuds", "category": "electronics",'
    ' "price": 129.000000}, {"product_id": "p_020", "name": "Merino Socks", "category": "apparel", "price": 16.000000},'
    ' {"product_id": "p_021", "name": "Whey Protein 1 kg", "category": "nutrition", "price": null}]}'
)


def variables(context: str | dict, *, automation: str, first_name: str | None = "Ana", marketing: bool = True) -> dict:
    return {
        "contact": {
            "contact_id": "c_000320",
            "email": "ana.lima320@example.com",
            "first_name": first_name,
            "last_name": "Lima",
            "timezone": "Europe/Lisbon",
            "properties": {"plan": "free", "city": "Lisbon"},
        },
        "context": json.loads(context) if isinstance(context, str) else context,
        "automation": automation,
        # the send step gives transactional mail no unsubscribe link
        "unsubscribe_url": UNSUBSCRIBE_URL if marketing else "",
        "postal_address": POSTAL_ADDRESS,
        "sender_name": "Nudge Fitness",
        "as_of": datetime(2026, 11, 1, tzinfo=timezone.utc),
    }


def render(name: str, context: str | dict, *, category: str = "marketing", **kwargs: Any) -> RenderedEmail:
    template = EmailTemplate.load(TEMPLATES, name, category=category)
    return template.render(variables(context, automation=name, marketing=category == "marketing", **kwargs))


def visible_text(html: str) -> str:
    """The HTML's words without tags, so assertions do not depend on markup."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)).replace("&#39;", "'")


def assert_marketing_footer(rendered: RenderedEmail) -> None:
    assert f'href="{UNSUBSCRIBE_URL}"' in rendered.html
    assert f"Unsubscribe: {UNSUBSCRIBE_URL}" in rendered.text
    for body in (rendered.html, rendered.text):
        assert POSTAL_ADDRESS in body


# --- workout_completed (transactional) ---------------------------------------------------------


def test_workout_completed_shows_the_workout_and_the_streak():
    rendered = render("workout_completed", WORKOUT_CONTEXT, category="transactional")

    assert rendered.subject == "Swim logged: 3 days in a row"
    html = visible_text(rendered.html)
    for body in (html, rendered.text):
        assert "Nice swim, Ana!" in body
        assert "83 min" in body
        assert "829 kcal" in body
        assert "every day since 2026-10-29" in body
        assert "it's 4" in body
    assert "3 days in a row" in rendered.text
    assert re.search(r">\s*3\s*</div>", rendered.html)  # the big streak number


def test_workout_completed_is_transactional_mail_without_an_unsubscribe_link():
    rendered = render("workout_completed", WORKOUT_CONTEXT, category="transactional")

    assert "Unsubscribe" not in rendered.html and "Unsubscribe" not in rendered.text
    assert "because you logged a workout" in rendered.text
    assert POSTAL_ADDRESS in rendered.text


def test_workout_completed_day_one_of_a_streak():
    context = json.loads(WORKOUT_CONTEXT) | {"streak_days": 1, "streak_started_on": "2026-10-31"}
    rendered = render("workout_completed", context, category="transactional")

    assert rendered.subject == "Swim logged, nice work"
    assert "Streak:   day one" in rendered.text
    assert "Every streak starts with day one" in rendered.text
    assert "1 days" not in rendered.text


def test_workout_completed_renders_a_workout_without_properties():
    context = {"event_id": "e_1", "workout": {}, "workout_date": "2026-10-31", "streak_days": 2,
               "streak_started_on": "2026-10-30"}
    rendered = render("workout_completed", context, category="transactional", first_name=None)

    assert rendered.subject == "Workout logged: 2 days in a row"
    assert "Nice workout!" in rendered.text
    assert "Duration: -" in rendered.text
    assert "None" not in rendered.text and "None" not in rendered.html


# --- first_login_nudge --------------------------------------------------------------------------


def test_first_login_nudge_after_an_install_names_the_platform():
    rendered = render("first_login_nudge", FIRST_LOGIN_INSTALL_CONTEXT)

    assert rendered.subject == "Your first workout is waiting, Ana"
    for body in (visible_text(rendered.html), rendered.text):
        assert "You installed Nudge Fitness on your iPhone yesterday" in body
        assert "haven't logged in yet" in body
    assert 'href="https://nudge.example/app/login"' in rendered.html
    assert "because you installed the Nudge Fitness app" in rendered.text
    assert_marketing_footer(rendered)


def test_first_login_nudge_after_a_signup():
    rendered = render("first_login_nudge", FIRST_LOGIN_SIGNUP_CONTEXT, first_name="")

    assert rendered.subject == "Your first workout is waiting, friend"
    assert "You created your Nudge Fitness account yesterday" in rendered.text
    assert "installed" not in rendered.text
    assert_marketing_footer(rendered)


def test_first_login_nudge_with_an_unknown_platform_leaves_it_out():
    context = {"first_event": "app_installed", "event_id": "e_2", "properties": {"platform": "fridge"}}
    rendered = render("first_login_nudge", context)

    assert "You installed Nudge Fitness yesterday" in rendered.text
    assert "fridge" not in rendered.text


# --- browse_abandoned ---------------------------------------------------------------------------


def test_browse_abandoned_shows_the_product_and_the_views():
    rendered = render("browse_abandoned", BROWSE_CONTEXT)

    assert rendered.subject == "Still thinking about the Massage Gun?"
    html = visible_text(rendered.html)
    for body in (html, rendered.text):
        assert "Massage Gun" in body
        assert "$149.00" in body
        assert "Recovery" in body
        assert "looked at this 2 times in the past day" in body
    assert 'href="https://nudge.example/shop/products/p_029"' in rendered.html
    assert "https://nudge.example/shop/products/p_029" in rendered.text
    assert_marketing_footer(rendered)


def test_browse_abandoned_without_a_price_or_category_still_renders():
    context = {"product": {"product_id": "p 1/x", "name": "Mystery Box"}, "view_count": 3}
    rendered = render("browse_abandoned", context)

    assert "Mystery Box" in rendered.text
    assert "$" not in rendered.text
    assert "https://nudge.example/shop/products/p%201/x" in rendered.text


# --- post_purchase ------------------------------------------------------------------------------


def test_post_purchase_thanks_for_the_order_with_items_and_total():
    rendered = render("post_purchase", POST_PURCHASE_CONTEXT)

    assert rendered.subject == "Thanks for your order, Ana"
    html = visible_text(rendered.html)
    for body in (html, rendered.text):
        assert "o_f24866335e8bc82a" in body
        for item, price in (("Energy Gels (12)", "$21.00"), ("Running Jacket", "$89.00"), ("GPS Watch", "$249.00")):
            assert item in body and price in body
    assert "Total: $359.00" in rendered.text
    assert re.search(r"Total\s*</td>\s*<td[^>]*>\s*\$359\.00", rendered.html)
    assert_marketing_footer(rendered)


def test_post_purchase_recommends_with_prices():
    rendered = render("post_purchase", POST_PURCHASE_CONTEXT)

    html = visible_text(rendered.html)
    for body in (html, rendered.text):
        assert "Goes well with your order" in body
        assert "Wireless Earbuds" in body and "$129.00" in body
        assert "Merino Socks" in body and "$16.00" in body
        assert "Whey Protein 1 kg" in body  # its price is unknown: shown without one
    assert "- Whey Protein 1 kg\n" in rendered.text
    assert rendered.text.index("Wireless Earbuds") < rendered.text.index("Merino Socks") < rendered.text.index("Whey")
    assert 'href="https://nudge.example/shop/products/p_015"' in rendered.html


def test_post_purchase_without_recommendations_leaves_the_section_out():
    context = json.loads(POST_PURCHASE_CONTEXT) | {"recommendations": []}
    rendered = render("post_purchase", context)

    assert "Goes well with your order" not in rendered.text
    assert "Goes well with your order" not in rendered.html
    assert "Total: $359.00" in rendered.text


def test_post_purchase_shows_at_most_three_recommendations():
    context = json.loads(POST_PURCHASE_CONTEXT)
    context["recommendations"] = [
        {"product_id": f"p_{i}", "name": f"Product {i}", "category": "gear", "price": 10 + i} for i in range(5)
    ]
    rendered = render("post_purchase", context)

    assert "Product 2" in rendered.text
    assert "Product 3" not in rendered.text and "Product 4" not in rendered.text


# --- all four -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "category"),
    [
        ("workout_completed", "transactional"),
        ("first_login_nudge", "marketing"),
        ("browse_abandoned", "marketing"),
        ("post_purchase", "marketing"),
    ],
)
def test_renders_with_an_empty_context(name, category):
    """A row whose context lost its fields still renders, with the defaults."""
    rendered = render(name, {}, category=category)

    assert rendered.subject
    assert "None" not in rendered.text and "None" not in rendered.html
    if category == "marketing":
        assert_marketing_footer(rendered)
