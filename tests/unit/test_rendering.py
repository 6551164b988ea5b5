from __future__ import annotations

import re
import shutil
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import jinja2
import pytest

from dagster_project.rendering import EmailTemplate, RenderError, TemplateError, money, number, one_line

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"
UNSUBSCRIBE_URL = "https://nudge.example/unsubscribe?token=abc.def"
POSTAL_ADDRESS = "Nudge Fitness, 1 Example Street, Springfield, 12345"


def variables(*, first_name: str | None = "Ana", context: dict | None = None, **overrides: Any) -> dict:
    values = {
        "contact": {
            "contact_id": "c_001",
            "email": "ana@example.com",
            "first_name": first_name,
            "last_name": "Lima",
            "timezone": "Europe/Lisbon",
            "properties": {"plan": "free"},
        },
        "context": context if context is not None else {},
        "automation": "welcome",
        "unsubscribe_url": UNSUBSCRIBE_URL,
        "postal_address": POSTAL_ADDRESS,
        "sender_name": "Nudge Fitness",
        "as_of": datetime(2026, 10, 31, 21, 0, tzinfo=timezone.utc),
    }
    values.update(overrides)
    return values


def cart(*items: dict) -> dict:
    return {"items": list(items)}


YOGA_MAT = {"product_id": "p1", "name": "Yoga mat", "price": 29.99, "quantity": 2, "category": "gear"}
PROTEIN_BAR = {"product_id": "p2", "name": "Protein bar", "price": 2.5, "quantity": 4, "category": "food"}


def template_tree(
    root: Path,
    name: str,
    *,
    subject: str = "Hello {{ contact.first_name }}",
    html: str = '{% extends "_base.html" %}{% block content %}<p>Hi {{ contact.first_name }}</p>{% endblock %}',
    text: str = '{% extends "_base.txt" %}{% block content %}Hi {{ contact.first_name }}{% endblock %}',
    base_html: str | None = None,
    base_txt: str | None = None,
) -> Path:
    """A templates directory with the real layouts (or replacements) and one template."""
    root.mkdir(parents=True, exist_ok=True)
    for layout, replacement in (("_base.html", base_html), ("_base.txt", base_txt)):
        if replacement is None:
            shutil.copy(TEMPLATES / layout, root / layout)
        else:
            (root / layout).write_text(replacement)
    folder = root / name
    folder.mkdir(exist_ok=True)
    for file, content in (("subject.txt", subject), ("body.html", html), ("body.txt", text)):
        if content is not None:
            (folder / file).write_text(content)
    return root


# --- the shipped templates ---------------------------------------------------


def test_welcome_greets_the_contact_and_carries_the_marketing_footer():
    rendered = EmailTemplate.load(TEMPLATES, "welcome").render(variables())

    assert rendered.subject == "Welcome to Nudge Fitness, Ana"
    assert "Welcome, Ana!" in rendered.html
    assert "first workout" in rendered.text
    for body in (rendered.html, rendered.text):
        assert POSTAL_ADDRESS in body
    assert f'href="{UNSUBSCRIBE_URL}"' in rendered.html
    assert f"Unsubscribe: {UNSUBSCRIBE_URL}" in rendered.text


def test_welcome_falls_back_to_friend_without_a_first_name():
    for missing in (None, ""):
        rendered = EmailTemplate.load(TEMPLATES, "welcome").render(variables(first_name=missing))
        assert rendered.subject == "Welcome to Nudge Fitness, friend"
        assert "Welcome, friend!" in rendered.text
        assert "None" not in rendered.text


def test_transactional_mail_without_unsubscribe_url_has_no_unsubscribe_link():
    template = EmailTemplate.load(TEMPLATES, "welcome", category="transactional")
    rendered = template.render(variables(unsubscribe_url=""))

    assert "Unsubscribe" not in rendered.html
    assert "Unsubscribe" not in rendered.text
    assert POSTAL_ADDRESS in rendered.text


def test_cart_abandoned_lists_items_with_line_totals_and_total():
    template = EmailTemplate.load(TEMPLATES, "cart_abandoned")
    rendered = template.render(variables(context=cart(YOGA_MAT, PROTEIN_BAR), automation="cart_abandoned"))

    assert rendered.subject == "You left 2 items in your cart"
    assert "- Yoga mat: 2 x $29.99 = $59.98" in rendered.text
    assert "- Protein bar: 4 x $2.50 = $10.00" in rendered.text
    assert "Total: $69.98" in rendered.text
    for amount in ("$29.99", "$59.98", "$10.00", "$69.98"):
        assert amount in rendered.html
    assert "Back to your cart" in rendered.html
    assert 'href="https://nudge.example/cart"' in rendered.html


def test_cart_abandoned_subject_is_singular_for_one_item_and_uses_a_given_cart_url():
    context = {**cart(YOGA_MAT), "cart_url": "https://shop.nudge.example/cart/42"}
    rendered = EmailTemplate.load(TEMPLATES, "cart_abandoned").render(variables(context=context))

    assert rendered.subject == "You left 1 item in your cart"
    assert 'href="https://shop.nudge.example/cart/42"' in rendered.html


def test_cart_abandoned_without_items_is_a_render_error_naming_the_field():
    template = EmailTemplate.load(TEMPLATES, "cart_abandoned")

    with pytest.raises(RenderError) as raised:
        template.render(variables(context={}))

    assert "cart_abandoned" in str(raised.value)
    assert "items" in str(raised.value)


def test_a_price_that_is_not_a_number_is_a_render_error():
    template = EmailTemplate.load(TEMPLATES, "cart_abandoned")
    free_mat = {**YOGA_MAT, "price": "free"}

    with pytest.raises(RenderError, match="free"):
        template.render(variables(context=cart(free_mat)))


def test_data_keys_win_over_dict_methods_and_missing_keys_are_errors(tmp_path):
    html = (
        '{% extends "_base.html" %}{% block content %}'
        "[{% for item in context.items %}{{ item.name }};{% endfor %}]"
        "[{% for key, value in contact.properties.items() %}{{ key }}={{ value }}{% endfor %}]"
        "{% endblock %}"
    )
    root = template_tree(tmp_path, "probe", html=html)
    template = EmailTemplate.load(root, "probe")

    html = template.render(variables(context=cart(YOGA_MAT, PROTEIN_BAR))).html
    assert "[Yoga mat;Protein bar;]" in html
    assert "[plan=free]" in html
    # Without the key, `.items` is the dict method again (so `.items()` works); iterating it still fails loudly.
    with pytest.raises(RenderError):
        template.render(variables(context={"keys": []}))


def test_a_missing_key_never_resolves_to_a_dict_method(tmp_path):
    root = template_tree(tmp_path, "probe", subject="{{ context['items'] | length }} {{ context['keys'] }}")

    with pytest.raises(RenderError, match="items"):
        EmailTemplate.load(root, "probe").render(variables(context={}))


# --- escaping and the sandbox ------------------------------------------------


@pytest.mark.parametrize(
    "hostile",
    ["<script>alert(1)</script>", '"><img src=x onerror=alert(1)>', "</td></tr></table><a href='//evil'>x</a>"],
)
def test_html_escapes_names_from_the_data(hostile):
    item = {**YOGA_MAT, "name": hostile}
    rendered = EmailTemplate.load(TEMPLATES, "cart_abandoned").render(
        variables(first_name=hostile, context=cart(item))
    )

    assert hostile not in rendered.html
    assert "<script" not in rendered.html
    assert "<img" not in rendered.html
    assert "//evil" not in re.findall(r'href="([^"]*)"', rendered.html)
    assert "&lt;" in rendered.html
    # The text part is not HTML: the name appears as written.
    assert hostile in rendered.text


@pytest.mark.parametrize(
    "expression",
    [
        "''.__class__.__mro__",
        "contact.__class__.__subclasses__()",
        "cycler.__init__.__globals__",
        "as_of.__class__.__base__",
    ],
)
def test_the_sandbox_refuses_attribute_walks(tmp_path, expression):
    root = template_tree(
        tmp_path,
        "probe",
        html='{% extends "_base.html" %}{% block content %}{{ ' + expression + " }}{% endblock %}",
    )
    template = EmailTemplate.load(root, "probe")

    with pytest.raises(RenderError) as raised:
        template.render(variables())

    assert "probe" in str(raised.value)
    assert "unsafe" in str(raised.value)
    assert "<class" not in str(raised.value)


def test_the_sandbox_refuses_to_mutate_the_data(tmp_path):
    root = template_tree(
        tmp_path,
        "probe",
        html='{% extends "_base.html" %}{% block content %}{{ contact.properties.update({"plan": "x"}) }}{% endblock %}',
    )
    values = variables()

    with pytest.raises(RenderError):
        EmailTemplate.load(root, "probe").render(values)
    assert values["contact"]["properties"] == {"plan": "free"}


def test_a_missing_field_names_the_field_the_file_and_the_line(tmp_path):
    root = template_tree(
        tmp_path,
        "probe",
        html='{% extends "_base.html" %}\n{% block content %}\n<p>Hi</p>\n<p>{{ contact.nickname }}</p>\n{% endblock %}',
    )

    with pytest.raises(RenderError) as raised:
        EmailTemplate.load(root, "probe").render(variables())

    message = str(raised.value)
    assert "nickname" in message
    assert "probe/body.html line 4" in message


def test_an_undefined_variable_is_a_render_error(tmp_path):
    root = template_tree(tmp_path, "probe", subject="Your code {{ coupon_code }}")

    with pytest.raises(RenderError, match="coupon_code"):
        EmailTemplate.load(root, "probe").render(variables())


# --- the subject ---------------------------------------------------------------


@pytest.mark.parametrize(
    "first_name",
    ["Ana\r\nBcc: x@y", "Ana\nBcc: x@y", "Ana\u2028Bcc: x@y", "Ana\u2029\x85\v\fBcc: x@y", "Ana\tBcc:   x@y"],
)
def test_the_subject_is_one_line(tmp_path, first_name):
    root = template_tree(tmp_path, "probe", subject="\n  Hello,\n{{ contact.first_name }}  \r\n and welcome  \n\n")

    subject = EmailTemplate.load(root, "probe").render(variables(first_name=first_name)).subject

    assert subject == "Hello, Ana Bcc: x@y and welcome"


def test_an_empty_subject_is_a_render_error(tmp_path):
    root = template_tree(tmp_path, "probe", subject="{{ contact.first_name }}\n")

    with pytest.raises(RenderError, match="subject"):
        EmailTemplate.load(root, "probe").render(variables(first_name=" \n "))


def test_one_line_collapses_every_kind_of_line_break():
    assert one_line(" a\r\nb\u2028c\u2029d\x85e\vf\fg\x00h  ") == "a b c d e f g h"


# --- CSS ---------------------------------------------------------------------


def test_the_layout_css_is_inlined_into_style_attributes():
    html = EmailTemplate.load(TEMPLATES, "welcome").render(variables()).html

    assert "<style" not in html
    assert re.search(r'<td[^>]*class="content"[^>]*style="[^"]*font-family', html)
    assert re.search(r'<a[^>]*class="button"[^>]*style="[^"]*background-color: #0f766e', html)


def test_remote_stylesheets_are_never_fetched(tmp_path):
    base_html = (TEMPLATES / "_base.html").read_text().replace(
        "<style>", '<link rel="stylesheet" href="https://stylesheets.invalid/theme.css">\n<style>'
    )
    root = template_tree(tmp_path, "probe", base_html=base_html)

    html = EmailTemplate.load(root, "probe").render(variables()).html

    assert "stylesheets.invalid" not in html
    assert "Hi Ana" in html


# --- load-time checks ----------------------------------------------------------


def test_a_layout_without_unsubscribe_link_fails_marketing_but_not_transactional(tmp_path):
    base_html = "<html><body>{% block content %}{% endblock %}<p>{{ postal_address }}</p></body></html>"
    root = template_tree(tmp_path, "probe", base_html=base_html)

    with pytest.raises(TemplateError, match="unsubscribe_url"):
        EmailTemplate.load(root, "probe", category="marketing")
    assert EmailTemplate.load(root, "probe", category="transactional").name == "probe"


def test_a_text_layout_without_postal_address_fails_marketing(tmp_path):
    root = template_tree(tmp_path, "probe", base_txt="{% block content %}{% endblock %}\n{{ unsubscribe_url }}\n")

    with pytest.raises(TemplateError, match="postal_address"):
        EmailTemplate.load(root, "probe")


def test_a_body_that_overrides_the_footer_away_fails_marketing(tmp_path):
    base_html = (
        "<html><body>{% block content %}{% endblock %}"
        '{% block footer %}<a href="{{ unsubscribe_url }}">Unsubscribe</a> {{ postal_address }}{% endblock %}'
        "</body></html>"
    )
    html = '{% extends "_base.html" %}{% block content %}Hi{% endblock %}{% block footer %}{% endblock %}'
    root = template_tree(tmp_path, "probe", base_html=base_html, html=html)

    with pytest.raises(TemplateError, match="unsubscribe_url and postal_address"):
        EmailTemplate.load(root, "probe")


def test_a_standalone_body_without_the_footer_fails_marketing(tmp_path):
    root = template_tree(tmp_path, "probe", html="<p>Hi {{ contact.first_name }}</p>")

    with pytest.raises(TemplateError, match="probe/body.html"):
        EmailTemplate.load(root, "probe")


def test_when_samples_cannot_render_the_chain_must_still_reference_the_footer(tmp_path):
    # `money` refuses the sample's undefined total, so load falls back to reading the templates.
    html = '{% extends "_base.html" %}{% block content %}{{ context.total | money }}{% endblock %}'
    good = template_tree(tmp_path / "good", "probe", html=html)
    bad = template_tree(
        tmp_path / "bad", "probe", html=html, base_html="{% block content %}{% endblock %}{{ postal_address }}"
    )

    assert EmailTemplate.load(good, "probe").render(variables(context={"total": 5})).html.count("$5.00") == 1
    with pytest.raises(TemplateError, match="unsubscribe_url"):
        EmailTemplate.load(bad, "probe")


def test_a_syntax_error_names_the_file_and_line(tmp_path):
    html = '{% extends "_base.html" %}\n{% block content %}\n{% if contact.first_name %}\n<p>Hi</p>\n{% endblock %}'
    root = template_tree(tmp_path, "probe", html=html)

    with pytest.raises(TemplateError) as raised:
        EmailTemplate.load(root, "probe")

    assert "probe/body.html" in str(raised.value)
    assert re.search(r"line [35]\b", str(raised.value))


def test_a_syntax_error_in_the_layout_fails_at_load(tmp_path):
    base_txt = "{% block content %}{% endblock %}\n{{ unsubscribe_url }\n{{ postal_address }}\n"
    root = template_tree(tmp_path, "probe", base_txt=base_txt)

    with pytest.raises(TemplateError) as raised:
        EmailTemplate.load(root, "probe", category="transactional")

    assert "_base.txt line 2" in str(raised.value)


def test_a_layout_compiles_once_for_every_template_and_again_once_edited(tmp_path, monkeypatch):
    root = template_tree(tmp_path, "first")
    template_tree(root, "second", text='{% extends "_base.txt" %}{% block content %}Bye{% endblock %}')
    compiled: list[str | None] = []
    compile_source = jinja2.Environment.compile

    def counting(self, source, name=None, *args, **kwargs):  # noqa: ANN001
        compiled.append(name)
        return compile_source(self, source, name, *args, **kwargs)

    monkeypatch.setattr(jinja2.Environment, "compile", counting)
    EmailTemplate.load(root, "first")
    assert compiled.count("_base.html") >= 1 and compiled.count("_base.txt") >= 1

    compiled.clear()
    second = EmailTemplate.load(root, "second")
    assert "second/body.txt" in compiled
    assert "_base.html" not in compiled and "_base.txt" not in compiled
    assert "Bye" in second.render(variables()).text

    layout = root / "_base.txt"
    layout.write_text(layout.read_text() + "\nSent with care\n")
    compiled.clear()
    edited = EmailTemplate.load(root, "second")
    assert "_base.txt" in compiled
    assert "Sent with care" in edited.render(variables()).text


@pytest.mark.parametrize("missing", ["subject.txt", "body.html", "body.txt"])
def test_a_missing_file_is_a_template_error(tmp_path, missing):
    root = template_tree(tmp_path, "probe")
    (root / "probe" / missing).unlink()

    with pytest.raises(TemplateError, match=re.escape(f"probe/{missing}")):
        EmailTemplate.load(root, "probe")


def test_a_missing_template_folder_is_a_template_error():
    with pytest.raises(TemplateError, match="no_such_automation"):
        EmailTemplate.load(TEMPLATES, "no_such_automation")


@pytest.mark.parametrize("name", ["../etc", "welcome/../welcome", "Welcome", "", "wel come", "/tmp", "welcome.html"])
def test_template_names_cannot_leave_the_templates_directory(name):
    with pytest.raises(TemplateError, match="invalid"):
        EmailTemplate.load(TEMPLATES, name)


# --- money -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "currency", "expected"),
    [
        (12.5, "USD", "$12.50"),
        (0, "USD", "$0.00"),
        (1234.5, "USD", "$1,234.50"),
        (0.125, "USD", "$0.13"),
        (29.99 * 3, "USD", "$89.97"),
        ("19.9", "usd", "$19.90"),
        (-3, "EUR", "-€3.00"),
        (1500, "JPY", "¥1,500"),
        (7, "CHF", "7.00 CHF"),
    ],
)
def test_money_formats_amounts(value, currency, expected):
    assert money(value, currency) == expected


@pytest.mark.parametrize("value", [None, "abc", float("nan"), float("inf"), True])
def test_money_and_number_refuse_what_is_not_an_amount(value):
    with pytest.raises(ValueError):
        money(value)
    with pytest.raises(ValueError):
        number(value)


@pytest.mark.parametrize(("value", "expected"), [(2, 2), (2.0, 2), ("3", 3), (29.99, Decimal("29.99")), (" 1.5 ", Decimal("1.5"))])
def test_number_keeps_integers_integral_and_decimals_exact(value, expected):
    result = number(value)
    assert result == expected
    assert type(result) is type(expected)
