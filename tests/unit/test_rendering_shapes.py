"""Inlining once per shape of a message (rendering._Shapes) gives exactly what inlining each
message whole gives: the same HTML, the same refused links, the same errors.

Each test renders the same values twice through one EmailTemplate: once as a tick does, once
with the marked template switched off, which inlines the whole message (the path every message
took before shapes).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dagster_project.rendering import _CSS_INLINER, EmailTemplate, RenderError, _Shapes, refuse_unsafe_urls
from tests.unit.test_rendering import TEMPLATES, YOGA_MAT, cart, template_tree, variables


def whole(template: EmailTemplate, values: dict):
    """What the template renders with every message inlined whole."""
    marked, template._marked_html = template._marked_html, None
    try:
        return outcome(template, values)
    finally:
        template._marked_html = marked


def outcome(template: EmailTemplate, values: dict):
    try:
        return template.render(values)
    except RenderError as error:
        return ("RenderError", str(error))


def same_both_ways(template: EmailTemplate, values: dict):
    assert template._marked_html is not None, "the template should be marked"
    shaped = outcome(template, values)
    assert shaped == whole(template, values)
    return shaped


# Values that must come out as the inliner writes them wherever they land: markup, quotes,
# escapes, whitespace the parser treats apart, controls, no-break spaces, the markers themselves.
NASTY = st.one_of(
    st.text(max_size=12),
    st.sampled_from([
        "", " ", "\n", "  lead", "\nlead", "trail  ", "a\tb", "a\rb", "a\x00b", "a\x0cb", "\xa0", "a\xa0b",
        "Tom & Jerry", "<b>bold</b>", '"quoted"', "it's", "a=b c/d", "&amp;", "&lt;", "5 > 3", "\ue000", "\ue001",
        "\ue0000\ue001", "x\ue000y\ue001z", "javascript:alert(1)", " javascript:alert(1)", "java\tscript:x",
        "https://shop.example/c?a=1&b=2", "mailto:a@b.c", "//evil.example", "data:text/html,x", "\u2028", "é",
        "--><script>x</script>", "]]>", "</title>", "</textarea>", "</style>",
    ]),
)

# Where a value lands: text of every kind of element, attributes that may and may not hold one,
# contexts the inliner does not treat as text at all.
BODY = (
    '{{% extends "_base.html" %}}{{% block content %}}'
    '<p>Hi {{{{ contact.first_name }}}}!</p>'
    '<a class="button" href="{{{{ context.url }}}}" title="{{{{ context.title }}}}">{{{{ context.label }}}}</a>'
    '<img src="https://img.example/{{{{ context.image }}}}.png" alt="{{{{ context.alt }}}}">'
    '<table class="items"><tr><td>{{{{ context.cell }}}}</td></tr>{{{{ context.stray }}}}</table>'
    '<pre>{{{{ context.pre }}}}</pre><td>{{{{ context.empty }}}}</td>'
    '{extra}'
    '{{% endblock %}}'
)
EXTRAS = {
    "plain": "",
    "class": '<span class="{{ context.cls }}">x</span>',
    "style": '<span style="color: {{ context.color }}">x</span>',
    "unquoted": "<a href={{ context.bare }}>x</a>",
    "single": "<a title='{{ context.single }}'>x</a>",
    "script": "<script>var x = '{{ context.script }}';</script>",
    "comment": "<!-- {{ context.comment }} -->",
    "raw": "{% autoescape false %}<div>{{ context.raw }}</div>{% endautoescape %}",
    "selected": '<style>a[title^="x"] { color: red; }</style><a title="{{ context.title }}">t</a>',
}
KEYS = ["url", "title", "label", "image", "alt", "cell", "stray", "pre", "empty", "cls", "color", "bare", "single",
        "script", "comment", "raw"]


def full(**values: str) -> dict:
    """A context with every key the probe templates print: "value", or as given."""
    return {key: values.get(key, "value") for key in KEYS}


@pytest.fixture(scope="module")
def templates(tmp_path_factory):
    made = {}
    for name, extra in EXTRAS.items():
        root = template_tree(tmp_path_factory.mktemp(name), "probe", html=BODY.format(extra=extra),
                             subject="Hi {{ contact.first_name }}")
        made[name] = EmailTemplate.load(root, "probe", category="marketing")
    return made


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(extra=st.sampled_from(sorted(EXTRAS)), first_name=NASTY,
       context=st.fixed_dictionaries({key: NASTY for key in KEYS}))
def test_a_shape_inlines_to_exactly_what_the_whole_message_inlines_to(templates, extra, first_name, context):
    template = templates[extra]
    if template._shapes._learnt >= 32:
        template._shapes = _Shapes()  # random values rarely share a shape: keep it from giving up
    same_both_ways(template, variables(first_name=first_name or "Ana", context=context))


def test_messages_of_one_shape_are_inlined_once(templates):
    template = templates["plain"]
    template._shapes._known.clear()
    for name in ("Ana", "Bo", "Chiara Maria", "Dmitri & Co", "Eve 'the' \"best\""):
        same_both_ways(template, variables(first_name=name, context=full(url=f"https://x.example/{name}")))
    assert len(template._shapes._known) == 1


def test_values_a_placeholder_cannot_stand_for_stay_in_the_shape(templates):
    template = templates["plain"]
    template._shapes._known.clear()
    for cell in ("no\xa0break", "other\xa0one"):  # a no-break space is written as &nbsp;: kept as it is
        rendered = same_both_ways(template, variables(context=full(cell=cell)))
        assert f"{cell.replace(chr(0xa0), '&nbsp;')}</td>" in rendered.html
    assert len(template._shapes._known) == 2


def test_leading_whitespace_stays_in_the_shape(templates):
    template = templates["plain"]
    template._shapes._known.clear()
    for pre in ("\nfirst line dropped by the parser", "\nanother"):  # a newline right after <pre> is
        rendered = same_both_ways(template, variables(context=full(pre=pre)))
        assert f">{pre[1:]}</pre>" in rendered.html
    assert len(template._shapes._known) == 1  # "\n" + placeholder, both times
    same_both_ways(template, variables(context=full(pre="no newline")))
    assert len(template._shapes._known) == 2


def test_a_script_link_from_the_data_is_refused_in_the_same_words(templates):
    for url in ("javascript:alert(1)", " JaVaScRiPt:alert(1)", "vbscript:x", "data:text/html;base64,x"):
        refused = same_both_ways(templates["plain"], variables(context=full(url=url)))
        assert refused[0] == "RenderError" and "not http, https, mailto, tel or relative" in refused[1]


def test_a_shape_that_cannot_be_filled_is_inlined_whole(templates):
    # Placeholders inside <script>, a comment, an unquoted or a selected attribute fail the
    # shape's checks: those messages are inlined whole (and come out the same).
    for extra, key in (("script", "script"), ("comment", "comment"), ("unquoted", "bare"), ("selected", "title"),
                       ("class", "cls"), ("style", "color")):
        template = templates[extra]
        template._shapes._known.clear()
        rendered = same_both_ways(template, variables(context=full(**{key: "some value"})))
        assert not isinstance(rendered, tuple), rendered
        assert None in template._shapes._known.values(), extra


@pytest.mark.parametrize("html", [
    '{% extends "_base.html" %}{% block content %}{% filter upper %}<p>{{ contact.first_name }}</p>{% endfilter %}'
    "{% endblock %}",
    '{% extends "_base.html" %}{% block content %}{% set shown %}{{ contact.first_name }}{% endset %}'
    "<p>{{ shown | length }}</p>{% endblock %}",
    '{% extends "_base.html" %}{% macro hi(name) %}<b>{{ name }}</b>{% endmacro %}{% block content %}'
    "<p>{{ hi(contact.first_name) | truncate(9) }}</p>{% endblock %}",
    '{% extends "_base.html" %}{% block preheader %}{{ super() | trim }}{% endblock %}'
    "{% block content %}<p>{{ contact.first_name }}</p>{% endblock %}",
])
def test_a_template_whose_output_becomes_a_value_is_never_marked(tmp_path, html):
    # The markers would be in that value (its length, a truncation): the marked output could differ.
    root = template_tree(tmp_path, "probe", html=html)
    template = EmailTemplate.load(root, "probe")
    assert template._marked_html is None
    rendered = template.render(variables(first_name="Annabelle"))
    assert rendered.html == _CSS_INLINER.inline(template._html.render({**variables(first_name="Annabelle"),
                                                                       "subject": rendered.subject}))


def test_a_marker_character_written_in_the_template_turns_marking_off(tmp_path):
    root = template_tree(tmp_path, "probe", html='{% extends "_base.html" %}{% block content %}'
                         "<p>\ue000{{ contact.first_name }}\ue001</p>{% endblock %}")
    template = EmailTemplate.load(root, "probe")
    assert template._marked_html is None
    assert "\ue000Ana\ue001</p>" in template.render(variables()).html


@pytest.mark.parametrize("name", sorted(path.name for path in TEMPLATES.iterdir() if (path / "body.html").exists()))
def test_the_shipped_templates_are_marked_and_render_the_same(name):
    template = EmailTemplate.load(TEMPLATES, name, category="marketing")
    context = {**cart(YOGA_MAT), "cart_url": "https://shop.nudge.example/c/1?a=1&b=2", "streak_days": 3,
               "workout": {"workout_type": "run", "duration_min": 30}, "product": YOGA_MAT,
               "products": [YOGA_MAT], "recommendations": [YOGA_MAT]}
    for first_name in ("Ana", "Zoë & \"Bo\"", None):
        rendered = same_both_ways(template, variables(first_name=first_name, context=context))
        if not isinstance(rendered, tuple):
            refuse_unsafe_urls(rendered.html)  # what went out reads as links a browser follows safely
    shapes = template._shapes._known
    assert shapes and None not in shapes.values()


def test_a_template_whose_messages_rarely_share_a_shape_stops_learning_them(templates):
    from dagster_project.rendering import _LEARN_LIMIT

    template = templates["plain"]
    template._shapes = _Shapes()
    for number in range(_LEARN_LIMIT + 10):  # a no-break space keeps each cell in the shape: a shape each
        same_both_ways(template, variables(context=full(cell=f"cell\xa0{number}")))
    assert len(template._shapes._known) == _LEARN_LIMIT
    same_both_ways(template, variables(context=full()))  # and the others are inlined whole
    assert len(template._shapes._known) == _LEARN_LIMIT
