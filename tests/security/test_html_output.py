"""HTML from data: every property is escaped, and no URL from data becomes a script.

Autoescaping keeps a value inside its attribute; it does not stop `href="{{ context.url }}"`
from following `javascript:alert(1)`. The rendered HTML is parsed and any link, image or
form target whose scheme is not http, https, mailto or tel (or a relative URL) refuses the
message: RenderError, which the send step records as a skip with the reason.
"""

from __future__ import annotations

import html
from html.parser import HTMLParser

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dagster_project.rendering import (
    _CSS_INLINER,
    EmailTemplate,
    RenderError,
    TemplateError,
    _canonical_refusals,
    _UrlAudit,
    unsafe_url,
)
from tests.unit.test_rendering import TEMPLATES, template_tree, variables

RAW_HOSTILE_URLS = [
    "javascript:alert(1)",
    "JaVaScRiPt:alert(1)",
    " javascript:alert(1)",
    "\t\n javascript:alert(1)",
    "java\tscript:alert(1)",
    "java\nscript:alert(1)",
    "java\rscript:alert(1)",
    "\x00javascript:alert(1)",
    "javascript\x00:alert(1)",
    "\u200bjavascript:alert(1)",
    "vbscript:msgbox(1)",
    "VBScript:msgbox(1)",
    "data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==",
    "DATA:text/html,<script>alert(1)</script>",
    "file:///etc/passwd",
    "jar:http://x/y!/z",
]
# Spelled with character references: harmless as data (autoescaping turns & into &amp;, so a
# browser reads them as relative URLs), dangerous when written into a template or marked safe.
ENCODED_HOSTILE_URLS = [
    "javascript&colon;alert(1)",
    "&#106;&#97;&#118;&#97;&#115;&#99;&#114;&#105;&#112;&#116;&#58;alert(1)",
    "&#x6A;avascript:alert(1)",
    "&#0000106avascript:alert(1)",
    "java&Tab;script:alert(1)",
    "java&NewLine;script:alert(1)",
    "&#32;&#9;javascript:alert(1)",
]
HOSTILE_URLS = RAW_HOSTILE_URLS + ENCODED_HOSTILE_URLS
SAFE_URLS = [
    "https://shop.nudge.example/cart/42?utm=x#top",
    "http://nudge.example",
    "HTTPS://NUDGE.EXAMPLE/",
    "mailto:help@nudge.example",
    "tel:+15551234567",
    "/cart/42",
    "cart/42?a=b:c",
    "?page=2",
    "#section",
    "//cdn.nudge.example/logo.png",
    "",
]


def link_template(tmp_path, element: str):
    html = '{% extends "_base.html" %}{% block content %}' + element + "{% endblock %}"
    return EmailTemplate.load(template_tree(tmp_path, "probe", html=html), "probe")


@pytest.mark.parametrize("url", HOSTILE_URLS)
def test_unsafe_url_sees_through_case_spaces_controls_and_entities(url):
    assert unsafe_url(html.unescape(url))  # html.parser hands attribute values over unescaped


@pytest.mark.parametrize("url", SAFE_URLS)
def test_unsafe_url_lets_web_mail_phone_and_relative_links_through(url):
    assert not unsafe_url(url)


@pytest.mark.parametrize("url", RAW_HOSTILE_URLS)
@pytest.mark.parametrize(
    "element",
    [
        '<a href="{{ context.url }}">Back to your cart</a>',
        "<a href='{{ context.url }}'>x</a>",
        '<img src="{{ context.url }}" alt="">',
        '<form action="{{ context.url }}"><button formaction="{{ context.url }}">go</button></form>',
        '<svg><a xlink:href="{{ context.url }}"><text>x</text></a></svg>',
        '<table background="{{ context.url }}"><tr><td>x</td></tr></table>',
        '<img srcset="https://nudge.example/a.png 1x, {{ context.url }} 2x" alt="">',
    ],
)
def test_a_url_from_the_data_never_becomes_a_script_link(tmp_path, url, element):
    template = link_template(tmp_path, element)

    with pytest.raises(RenderError) as raised:
        template.render(variables(context={"url": url}))

    message = str(raised.value)
    assert "template 'probe'" in message
    assert "not http, https, mailto, tel or relative" in message


@pytest.mark.parametrize("url", ENCODED_HOSTILE_URLS)
def test_encoded_script_urls_are_refused_when_marked_safe_and_inert_as_data(tmp_path, url):
    trusting = link_template(tmp_path / "safe", '<a href="{{ context.url | safe }}">x</a>')
    with pytest.raises(RenderError, match="not http, https, mailto, tel or relative"):
        trusting.render(variables(context={"url": url}))

    escaping = link_template(tmp_path / "escaped", '<a href="{{ context.url }}">x</a>')
    try:
        rendered = escaping.render(variables(context={"url": url}))
    except RenderError:
        return  # "java&Tab;script:..." has a colon before any slash: refused, erring on the safe side
    parsed = Elements()
    parsed.feed(rendered.html)
    hrefs = [value for name, value in parsed.attributes if name == "href"]
    assert url in hrefs  # the browser's view: the characters as written, a relative URL


@pytest.mark.parametrize("url", ENCODED_HOSTILE_URLS + ["JaVaScRiPt:alert(1)", " \tjavascript:x"])
def test_a_script_url_written_into_the_template_fails_at_load(tmp_path, url):
    with pytest.raises(TemplateError, match="probe/body.html"):
        link_template(tmp_path, f'<a href="{url}">x</a>')


@pytest.mark.parametrize("url", SAFE_URLS)
def test_safe_urls_from_the_data_render(tmp_path, url):
    template = link_template(tmp_path, '<a href="{{ context.url }}">x</a><img src="{{ context.url }}" alt="">')
    html = template.render(variables(context={"url": url})).html
    assert "<a href=" in html


def test_the_shipped_templates_refuse_a_javascript_cart_url():
    # cart_abandoned writes href="{{ context.cart_url | default(...) }}" with no filter of its own.
    template = EmailTemplate.load(TEMPLATES, "cart_abandoned")
    item = {"product_id": "p1", "name": "Yoga mat", "price": 29.99, "quantity": 1, "category": "gear"}
    with pytest.raises(RenderError, match="ScRiPt"):
        template.render(variables(context={"items": [item], "cart_url": " JaVa\tScRiPt:alert(document.cookie)"}))
    ok = template.render(variables(context={"items": [item], "cart_url": "https://shop.nudge.example/c/1"}))
    assert 'href="https://shop.nudge.example/c/1"' in ok.html


def test_a_meta_refresh_to_a_script_is_refused(tmp_path):
    template = link_template(tmp_path, '<meta http-equiv="refresh" content="0; url={{ context.url }}">')
    with pytest.raises(RenderError):
        template.render(variables(context={"url": "javascript:alert(1)"}))
    assert template.render(variables(context={"url": "https://nudge.example"})).html


def test_a_script_link_written_in_the_template_itself_fails_at_load(tmp_path):
    for category in ("marketing", "transactional"):
        root = template_tree(
            tmp_path / category,
            "probe",
            html='{% extends "_base.html" %}{% block content %}<a href="javascript:void(0)">x</a>{% endblock %}',
        )
        with pytest.raises(TemplateError, match="probe/body.html"):
            EmailTemplate.load(root, "probe", category=category)


# --- escaping: every property that reaches HTML ------------------------------------

MARKUP = '<script>alert("x")</script><img src=x onerror=alert(1)>"\'&'


def test_every_property_is_escaped_in_the_html_part(tmp_path):
    body = (
        "<p>{{ contact.first_name }} {{ contact.last_name }}</p>"
        "<p>{{ contact.properties.plan }}</p><p>{{ context.note }}</p>"
        '<p title="{{ context.note }}">{{ context.nested.deep }}</p>'
    )
    root = template_tree(
        tmp_path,
        "probe",
        subject="Hi {{ contact.first_name }}",
        html='{% extends "_base.html" %}{% block content %}' + body + "{% endblock %}",
    )
    values = variables(first_name=MARKUP, context={"note": MARKUP, "nested": {"deep": MARKUP}})
    values["contact"]["last_name"] = MARKUP
    values["contact"]["properties"] = {"plan": MARKUP}
    values["sender_name"] = MARKUP

    rendered = EmailTemplate.load(root, "probe").render(values)
    parsed = Elements()
    parsed.feed(rendered.html)

    # No element came from the data: the markup stayed text.
    assert "script" not in parsed.tags and "img" not in parsed.tags
    # As text, it reads as written: first and last name, plan, note, nested, sender name, <title>.
    assert sum(text.count('<script>alert("x")</script>') for text in parsed.texts) == 7
    # The subject reaches the HTML <title> as text.
    assert "&lt;script&gt;" in rendered.html.split("<title>", 1)[1].split("</title>", 1)[0]
    # An attribute value cannot be closed by the data: it holds the whole string, nothing more.
    assert ("title", MARKUP) in parsed.attributes
    # The subject itself is a header, not HTML: it keeps the characters as written.
    assert rendered.subject.startswith('Hi <script>alert("x")')


class Elements(HTMLParser):
    """Tags, attributes and text as a browser's parser sees them."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.attributes: list[tuple[str, str | None]] = []
        self.texts: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attributes.extend(attrs)

    def handle_data(self, data):
        self.texts.append(data)


def test_no_shipped_template_marks_data_safe():
    # `|safe` or `Markup` would switch autoescaping off for a value; no template may use them.
    for path in TEMPLATES.rglob("*.html"):
        source = path.read_text()
        assert "|safe" not in source.replace(" ", ""), path
        assert "autoescape false" not in source.replace("  ", " "), path


# --- the fast reading of inlined HTML ----------------------------------------------------------

# Pieces of HTML: URL attributes with every hostile and safe URL, quoted every way, and what could
# make a reader see a tag where there is none (or miss one): comments, scripts, styles, stray
# brackets, entities, SVG.
ATTRIBUTE_NAMES = ["href", "src", "action", "formaction", "xlink:href", "background", "srcset", "title", "style",
                   "data-x", "HREF"]
HTML_PIECES = st.one_of(
    st.builds(
        lambda tag, name, url, quote: f"<{tag} {name}={quote}{url}{quote}>",
        st.sampled_from(["a", "img", "form", "table", "td", "svg", "meta", "button", "A", "video"]),
        st.sampled_from(ATTRIBUTE_NAMES),
        st.sampled_from(HOSTILE_URLS + SAFE_URLS + ['x" href="javascript:y', "<a href=javascript:z>"]),
        st.sampled_from(['"', "'", ""]),
    ),
    st.sampled_from(["<!--", "-->", "<script>", "</script>", "<style>", "</style>", "<", ">", "</a>", "&", "&lt;a",
                     "<p>", "</p>", "<br/>", '<meta http-equiv="refresh" content="0; url=javascript:x">', "<svg>",
                     "</svg>", "<title>", "</title>", "<textarea>", "</textarea>", "\x00", "<a\x00 href='javascript:'>"]),
    st.text(max_size=8),
)


@settings(max_examples=400, deadline=None)
@given(pieces=st.lists(HTML_PIECES, max_size=12))
def test_the_fast_reading_of_inlined_html_refuses_all_that_html_parser_refuses(pieces):
    inlined = _CSS_INLINER.inline("".join(pieces))
    slow = _UrlAudit()
    slow.feed(inlined)
    slow.close()
    fast = _canonical_refusals(inlined)
    if fast is None:
        return  # not canonical: refuse_unsafe_urls hands it to html.parser itself
    assert set(slow.refused) <= set(fast)


def test_the_shipped_templates_inline_to_html_the_fast_reading_reads(tmp_path):
    # Otherwise every message would go through html.parser, a millisecond each.
    item = {"product_id": "p1", "name": "Yoga mat", "price": 29.99, "quantity": 1, "category": "gear"}
    for directory in sorted(path for path in TEMPLATES.iterdir() if (path / "body.html").exists()):
        template = EmailTemplate.load(TEMPLATES, directory.name, category="transactional")
        values = {**variables(context={"items": [item], "cart_url": "https://shop.nudge.example/c/1"}),
                  "subject": "Hello"}
        html = template._html.render(values)
        assert _canonical_refusals(_CSS_INLINER.inline(html)) == [], directory.name
