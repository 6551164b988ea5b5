"""The template sandbox: the known Jinja escapes are refused, clearly, and leak nothing.

Templates are written by the project's analytics engineers, but they print data the
product wrote (names, cart items, URLs), and a template mistake or a hostile edit must
never reach Python's internals, the process environment or the secrets in it.
"""

from __future__ import annotations

import os
from importlib.metadata import version

import jinja2
import pytest

from dagster_project.rendering import EmailTemplate, RenderError, TemplateError
from tests.unit.test_rendering import template_tree, variables

SECRET = "S3cretPassw0rd-never-rendered"

# Each walks (or tries to) from something a template can see to Python's internals.
ESCAPES = [
    # from strings, dicts and the contact's data
    "''.__class__.__mro__[1].__subclasses__()",
    "{}.__class__.__base__.__subclasses__()",
    "contact.__class__",
    "contact.properties.__class__.__init__.__globals__",
    "contact.items.__self__",
    "contact.get.__self__.__class__",
    "as_of.__class__.__base__",
    "contact.email.__class__",
    # from Jinja's own globals
    "cycler.__init__.__globals__",
    "joiner.__init__.__globals__",
    "namespace.__init__.__globals__",
    "range.__globals__",
    "lipsum.__globals__['os'].environ",
    "dict.__base__.__subclasses__()",
    "self.__init__.__globals__",
    "self._TemplateReference__context",
    "self._TemplateReference__context.environment",
    # the attr filter (CVE-2025-27516 used it to reach str.format unsandboxed)
    "''|attr('__class__')",
    "contact|attr('__class__')",
    "'{0.__class__}'|attr('format')(contact)",
    "'{x.__init__.__globals__}'|attr('format_map')({'x': cycler})",
    # str.format and format_map with attribute and index walks
    "'{0.__class__}'.format(contact)",
    "'{0.__class__.__mro__}'.format('')",
    "'{0.__init__.__globals__}'.format(cycler)",
    "'{0.__globals__[os]}'.format(lipsum)",
    "'{0[__class__]}'.format(contact)",
    "'{x.__class__}'.format_map({'x': contact})",
    "'{x.__globals__}'.format_map({'x': lipsum})",
    "''.format.__globals__",
    # filters that look attributes up by name
    "['a']|map(attribute='__class__')|list",
    "[contact]|map(attribute='__class__')|list",
    "['a']|map('attr', '__class__')|list",
    "['a', 'b']|sort(attribute='__class__')",
    "['a']|selectattr('__class__')|list",
    "['a']|groupby('__class__')",
    "['a']|sum(attribute='__class__')",
    "['a']|unique(attribute='__class__')|list",
]
# Objects that exist only inside a loop or a set.
LOOP_ESCAPES = [
    "{% for x in [1] %}{{ loop.__class__.__init__.__globals__ }}{% endfor %}",
    "{% for x in [1] %}{{ loop.cycle.__globals__ }}{% endfor %}",
    "{% set ns = namespace(a=1) %}{{ ns.__class__ }}",
    "{% set c = cycler('a') %}{{ c.next.__func__ }}",
]


def render_body(tmp_path, body: str, **overrides):
    html = '{% extends "_base.html" %}{% block content %}' + body + "{% endblock %}"
    root = template_tree(tmp_path, "probe", html=html)
    return EmailTemplate.load(root, "probe").render(variables(**overrides))


@pytest.fixture(autouse=True)
def secret_in_environment(monkeypatch):
    monkeypatch.setenv("NUDGE_EMAIL_URL", f"smtp://user:{SECRET}@127.0.0.1:25")
    monkeypatch.setenv("NUDGE_UNSUBSCRIBE_SECRET", SECRET)


def assert_refused(raised: pytest.ExceptionInfo) -> None:
    message = str(raised.value)
    assert "template 'probe'" in message and "probe/body.html line" in message, message
    assert "SecurityError" in message and "is unsafe" in message, message
    assert isinstance(raised.value.__cause__, jinja2.exceptions.SecurityError)
    assert SECRET not in message
    assert "<class" not in message and "<function" not in message and "<module" not in message


def test_the_installed_jinja2_has_the_sandbox_fixes():
    # 3.1.5 and 3.1.6 closed sandbox escapes through str.format via attr and |map (CVE-2024-56326, CVE-2025-27516).
    assert tuple(int(part) for part in version("jinja2").split(".")[:3]) >= (3, 1, 6)
    assert jinja2.__version__ == version("jinja2")


@pytest.mark.parametrize("expression", ESCAPES)
def test_attribute_walks_are_refused_with_a_clear_message(tmp_path, expression):
    with pytest.raises(RenderError) as raised:
        render_body(tmp_path, "{{ " + expression + " }}")
    assert_refused(raised)


@pytest.mark.parametrize("body", LOOP_ESCAPES)
def test_walks_from_loop_cycler_and_namespace_objects_are_refused(tmp_path, body):
    with pytest.raises(RenderError) as raised:
        render_body(tmp_path, body)
    assert_refused(raised)


@pytest.mark.parametrize(
    "expression",
    ["contact.__class__", "''.__class__.__mro__", "'{0.__class__}'.format(contact)"],
)
@pytest.mark.parametrize("file", ["subject.txt", "body.txt"])
def test_the_subject_and_text_part_are_sandboxed_too(tmp_path, expression, file):
    kwargs = {"subject": "{{ " + expression + " }}"} if file == "subject.txt" else {
        "text": '{% extends "_base.txt" %}{% block content %}{{ ' + expression + " }}{% endblock %}"
    }
    root = template_tree(tmp_path, "probe", **kwargs)
    with pytest.raises(RenderError) as raised:
        EmailTemplate.load(root, "probe").render(variables())
    assert f"probe/{file} line" in str(raised.value)
    assert "is unsafe" in str(raised.value)


@pytest.mark.parametrize(
    "body",
    [
        "{{ '%s' % contact }}",
        "{{ '%r' | format(cycler) }}",
        "{{ '%(email)s' % contact }}",
        "{{ '%s %s' | format(lipsum, namespace) }}",
    ],
)
def test_percent_formatting_reaches_no_attribute(tmp_path, body):
    # %-formatting has no attribute or index syntax: at most it prints a value's repr.
    html = render_body(tmp_path, body).html
    assert SECRET not in html
    assert "__globals__" not in html and "environ" not in html


def test_an_attribute_walk_from_the_data_is_refused_whatever_the_data_says(tmp_path):
    # A key named like a dunder is data: it prints as data and opens nothing.
    html = render_body(tmp_path, "{{ context.__class__ }}|{{ context['__globals__'] }}",
                       context={"__class__": "just-data", "__globals__": "more-data"}).html
    assert "just-data|more-data" in html
    with pytest.raises(RenderError) as raised:
        render_body(tmp_path, "{{ context.__class__ }}", context={})
    assert_refused(raised)


@pytest.mark.parametrize(
    "body",
    [
        "{{ contact.properties.update({'plan': 'pro'}) }}",
        "{{ contact.properties.__setitem__('plan', 'pro') }}",
        "{{ context['items'].append(1) }}",
        "{{ context['items'].pop() }}",
        "{{ context.setdefault('x', 1) }}",
        "{{ contact.clear() }}",
        "{% set p = contact.properties %}{{ p.popitem() }}",
        "{{ ''.__class__.__mro__[1].__setattr__ }}",
    ],
)
def test_templates_cannot_change_the_data(tmp_path, body):
    values = variables(context={"items": [1, 2]})
    html = '{% extends "_base.html" %}{% block content %}' + body + "{% endblock %}"
    root = template_tree(tmp_path, "probe", html=html)
    with pytest.raises(RenderError) as raised:
        EmailTemplate.load(root, "probe").render(values)
    assert "is unsafe" in str(raised.value)
    assert values["contact"]["properties"] == {"plan": "free"}
    assert values["context"] == {"items": [1, 2]}


def test_ranges_are_bounded(tmp_path):
    with pytest.raises(RenderError, match="MAX_RANGE"):
        render_body(tmp_path, "{{ range(10 ** 9) | length }}")


def test_nothing_a_template_can_reach_holds_the_environment_or_the_secrets(tmp_path):
    # Everything a template is given, printed: none of it is (or leads to) a secret.
    body = (
        "{{ contact }}{{ context }}{{ automation }}{{ unsubscribe_url }}{{ postal_address }}{{ sender_name }}"
        "{{ as_of }}{{ subject }}{{ self }}{{ cycler }}{{ joiner }}{{ namespace }}{{ lipsum(1) }}{{ dict }}{{ range }}"
    )
    rendered = render_body(tmp_path, body)
    for output in (rendered.html, rendered.text, rendered.subject):
        assert SECRET not in output
    assert os.environ["NUDGE_UNSUBSCRIBE_SECRET"] == SECRET  # it was there to be found


def test_an_unsafe_layout_still_loads_but_never_renders(tmp_path):
    # Attribute access is decided at render time; load succeeds, every message is refused.
    root = template_tree(
        tmp_path,
        "probe",
        base_html="<title>{{ subject }}</title>{% block content %}{% endblock %}"
        "{{ unsubscribe_url }}{{ postal_address }}{{ cycler.__init__.__globals__ }}",
    )
    template = EmailTemplate.load(root, "probe")
    with pytest.raises(RenderError) as raised:
        template.render(variables())
    assert "_base.html line 1" in str(raised.value)
    assert "is unsafe" in str(raised.value)


def test_a_template_that_reads_files_by_include_is_confined_to_the_templates_folder(tmp_path):
    (tmp_path / "outside.txt").write_text(SECRET)
    root = template_tree(
        tmp_path / "templates",
        "probe",
        html='{% extends "_base.html" %}{% block content %}{% include "../outside.txt" %}{% endblock %}',
    )
    with pytest.raises(TemplateError, match="outside.txt"):
        EmailTemplate.load(root, "probe")
