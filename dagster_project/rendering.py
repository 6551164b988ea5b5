"""Sandboxed Jinja2 rendering of one automation's email: subject, HTML and text.

Two kinds of failure, two exceptions, because they call for different actions:
a `TemplateError` is the author's mistake (missing file, syntax error, no
unsubscribe link in marketing mail) and stops the automation before anything is
sent; a `RenderError` is one contact's data not fitting the template (a missing
field, a price that is not a number) and skips only that message.
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Mapping
from html import unescape
from html.parser import HTMLParser
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import css_inline
import jinja2
from jinja2 import meta
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

CATEGORIES = ("marketing", "transactional")
TEMPLATE_FILES = ("subject.txt", "body.html", "body.txt")

# Names become directory names: nothing that could climb out of templates/.
_TEMPLATE_NAME = re.compile(r"[a-z0-9_]+")

# Every character a mail client or a header parser might treat as a line break,
# plus the other control characters that have no business in a subject line.
_LINE_BREAKS_AND_CONTROLS = re.compile(r"[\s\x00-\x1f\x7f\x80-\x9f\u2028\u2029]+")

# Anti-spam law (CAN-SPAM, CASL, GDPR practice) wants both in every marketing email.
MARKETING_REQUIRED_VARIABLES = ("unsubscribe_url", "postal_address")
_SAMPLE_UNSUBSCRIBE_URL = "https://unsubscribe.invalid/nudge-template-check"
_SAMPLE_POSTAL_ADDRESS = "Nudge template check postal address"

_CURRENCY_SYMBOLS = {"USD": "$", "EUR": "€", "GBP": "£", "JPY": "¥", "CAD": "CA$", "AUD": "A$"}
_ZERO_DECIMAL_CURRENCIES = {"JPY"}


class TemplateError(Exception):
    """The template itself is broken: the automation must stop before sending anything."""


class RenderError(Exception):
    """This contact's data does not render: skip this one message."""


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    html: str
    text: str


def one_line(text: str) -> str:
    """Collapse line breaks, separators and runs of whitespace into single spaces."""
    return _LINE_BREAKS_AND_CONTROLS.sub(" ", text).strip()


def money(value: Any, currency: str = "USD") -> str:
    """12.5 -> "$12.50"; rounds half up on the decimal value, not the binary float."""
    if value is None or isinstance(value, bool):
        raise ValueError(f"money: {value!r} is not an amount")
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"money: {value!r} is not an amount") from None
    if not amount.is_finite():
        raise ValueError(f"money: {value!r} is not an amount")
    code = str(currency).upper()
    places = 0 if code in _ZERO_DECIMAL_CURRENCIES else 2
    rounded = amount.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    digits = f"{abs(rounded):,.{places}f}"
    sign = "-" if rounded < 0 else ""
    symbol = _CURRENCY_SYMBOLS.get(code)
    return f"{sign}{symbol}{digits}" if symbol else f"{sign}{digits} {code}"


def number(value: Any) -> int | Decimal:
    """A strict number for template arithmetic: "free" * 2 must fail, not repeat the string."""
    if value is None or isinstance(value, bool):
        raise ValueError(f"number: {value!r} is not a number")
    if isinstance(value, int):
        return value
    try:
        parsed = Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError(f"number: {value!r} is not a number") from None
    if not parsed.is_finite():
        raise ValueError(f"number: {value!r} is not a number")
    return int(parsed) if parsed == parsed.to_integral_value() else parsed


# Links in the HTML part may only lead to the web, a mail or a phone call, or be relative.
# javascript:, data:, vbscript:, file: ... are refused however they are spelled.
SAFE_URL_SCHEMES = frozenset({"http", "https", "mailto", "tel"})
# Every attribute a mail client or browser may follow, fetch or submit to.
_URL_ATTRIBUTES = frozenset(
    {
        "href", "src", "action", "formaction", "xlink:href", "background", "poster", "cite", "data",
        "longdesc", "lowsrc", "dynsrc", "ping", "manifest", "icon", "codebase", "usemap", "archive",
        "profile", "srcset", "imagesrcset",
    }
)
# What a browser's URL parser drops or ignores before it reads the scheme: leading and
# trailing C0 controls and spaces, and tabs and newlines anywhere (WHATWG URL standard).
# Any other whitespace or control character is dropped too, to err on the side of refusing.
_IGNORED_IN_URL = re.compile(r"[\x00-\x20\x7f-\x9f\s\u200b-\u200d\u2060\ufeff]+")
_META_REFRESH_URL = re.compile(r"url\s*=\s*['\"]?(.*)", re.IGNORECASE | re.DOTALL)


def unsafe_url(value: str) -> bool:
    """True when a (HTML-unescaped) attribute value would lead anywhere but http(s), mailto, tel or
    a relative URL. Whatever precedes the first ':' that comes before any '/', '?' or '#' is a
    scheme to a browser (or nothing it can follow), so it must be one of the safe ones."""
    compact = _IGNORED_IN_URL.sub("", value)
    head = re.split(r"[/?#]", compact, maxsplit=1)[0]
    if ":" not in head:
        return False  # relative: a path, a query, a fragment or //host
    return head.split(":", 1)[0].lower() not in SAFE_URL_SCHEMES


def _refusals(tag: str, attrs: list[tuple[str, str | None]]) -> list[str]:
    """The URL-carrying attributes of one start tag whose scheme is not safe (values unescaped)."""
    refused = []
    for name, value in attrs:
        if value is None:
            continue
        if name in _URL_ATTRIBUTES:
            candidates = [part.strip().split(" ")[0] for part in value.split(",")] if name.endswith("srcset") else [value]
            if any(unsafe_url(candidate) for candidate in candidates):
                refused.append(f"<{tag} {name}={value!r}>")
        elif tag == "meta" and name == "content" and (dict(attrs).get("http-equiv") or "").lower() == "refresh":
            target = _META_REFRESH_URL.search(value)
            if target and unsafe_url(target.group(1).strip("'\" ")):
                refused.append(f"<meta http-equiv=refresh content={value!r}>")
    return refused


class _UrlAudit(HTMLParser):
    """Collects the URL-carrying attributes whose scheme is not safe (html.parser unescapes values)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.refused: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.refused.extend(_refusals(tag, attrs))

    handle_startendtag = handle_starttag


# html.parser takes about a millisecond for an email, most of the render. css_inline writes HTML
# back out in one canonical form (`<name attr="value" ...>`, every value double-quoted with `"`
# escaped, `<` escaped in text), where a regular expression reads each start tag as html.parser
# would. Every place html.parser could open a tag (`<` and a letter) must be such a tag, else the
# document goes to html.parser. Tags inside comments, scripts or styles are read as tags here,
# which can only refuse more.
_TAG_OPEN = re.compile(r"<[a-zA-Z]")
_CANONICAL_TAG = re.compile(r'<([a-zA-Z][^\s/>\x00"\'=]*)((?:\s+[^\s/>\x00"\'=]+(?:="[^"]*")?)*)\s*/?>')
_CANONICAL_ATTRIBUTE = re.compile(r'([^\s/>\x00"\'=]+)(?:="([^"]*)")?')


# The attributes _refusals reads: a tag without any of them is not parsed further.
_AUDITED_ATTRIBUTE = re.compile(
    r"\s(?:" + "|".join(re.escape(name) for name in sorted(_URL_ATTRIBUTES | {"content"})) + r')="', re.IGNORECASE
)


def _canonical_refusals(html: str) -> list[str] | None:
    """What html.parser would refuse in canonical HTML; None when `html` is not canonical."""
    tags = _CANONICAL_TAG.findall(html)
    # Each match starts at a `<` and a letter, and no two at the same one: as many matches as
    # such places means every place starts a canonical tag.
    if len(tags) != len(_TAG_OPEN.findall(html)):
        return None
    refused: list[str] = []
    for name, attributes in tags:
        if attributes and _AUDITED_ATTRIBUTE.search(attributes):
            attrs = [(key.lower(), unescape(value) if "&" in value else value)
                     for key, value in _CANONICAL_ATTRIBUTE.findall(attributes)]
            refused.extend(_refusals(name.lower(), attrs))
    return refused


def refuse_unsafe_urls(html: str) -> None:
    """Raise ValueError naming the first link, image or form target whose scheme is not safe."""
    refused = _canonical_refusals(html)
    if refused is None:
        audit = _UrlAudit()
        audit.feed(html)
        audit.close()
        refused = audit.refused
    if refused:
        shown = refused[0] if len(refused[0]) <= 200 else refused[0][:200] + "..."
        raise ValueError(
            f"the HTML links to a URL that is not http, https, mailto, tel or relative: {shown}"
            + (f" (and {len(refused) - 1} more)" if len(refused) > 1 else "")
        )


class _DataFirstSandbox(ImmutableSandboxedEnvironment):
    """For the contact's data, a key beats a method of the same name.

    Plain Jinja resolves `context['items']` to dict.items() when the key is
    missing and `context.items` to the method even when it is present; trigger
    contexts are full of such names (items, keys, values, copy). Here a present
    key wins and a missing key is undefined, which StrictUndefined reports.
    """

    def getitem(self, obj: Any, argument: Any) -> Any:
        if isinstance(obj, Mapping) and isinstance(argument, str):
            try:
                return obj[argument]
            except KeyError:
                if not self.is_safe_attribute(obj, argument, None):
                    # e.g. `map(attribute="__class__")`: refused like the attribute it names.
                    return self.unsafe_undefined(obj, argument)
                return self.undefined(obj=obj, name=argument)
        return super().getitem(obj, argument)

    def unsafe_undefined(self, obj: Any, attribute: str) -> jinja2.Undefined:
        # Jinja returns an Undefined that only fails when printed; `map(attribute=...)` and
        # `groupby` would show it as "Undefined" instead. Refuse at the point of access.
        raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe.")

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, Mapping):
            try:
                if attribute in obj:
                    return obj[attribute]
            except TypeError:
                pass
        return super().getattr(obj, attribute)


def _none_as_empty(value: Any) -> Any:
    # A contact without a last name should read as blank, not as "None".
    return "" if value is None else value


def _environment(templates_dir: Path, undefined: type[jinja2.Undefined]) -> jinja2.Environment:
    env = _DataFirstSandbox(
        loader=jinja2.FileSystemLoader(str(templates_dir)),
        undefined=undefined,
        autoescape=jinja2.select_autoescape(
            enabled_extensions=("html", "htm"), default_for_string=False, default=False
        ),
        trim_blocks=True,
        lstrip_blocks=True,
        finalize=_none_as_empty,
        # A tick renders what load() validated, even if someone edits the files meanwhile.
        auto_reload=False,
    )
    env.filters["money"] = money
    env.filters["number"] = number
    return env


def _sample_variables(name: str) -> dict[str, Any]:
    return {
        "contact": {
            "contact_id": "sample",
            "email": "sample@example.com",
            "first_name": "Sample",
            "last_name": "Contact",
            "timezone": "UTC",
            "properties": {},
        },
        "context": {},
        "automation": name,
        "unsubscribe_url": _SAMPLE_UNSUBSCRIBE_URL,
        "postal_address": _SAMPLE_POSTAL_ADDRESS,
        "sender_name": "Nudge Fitness",
        "as_of": datetime(2000, 1, 1, tzinfo=timezone.utc),
        "subject": "Sample subject",
    }


# Remote stylesheets stay unfetched: rendering must not depend on the network.
# @media rules cannot be inlined; they stay in a <style> for the clients that read it.
_CSS_INLINER = css_inline.CSSInliner(load_remote_stylesheets=False, keep_link_tags=False, keep_at_rules=True)


class EmailTemplate:
    """One automation's compiled templates. Build with `EmailTemplate.load`."""

    def __init__(
        self,
        *,
        name: str,
        category: str,
        templates_dir: Path,
        subject: jinja2.Template,
        html: jinja2.Template,
        text: jinja2.Template,
    ) -> None:
        self.name = name
        self.category = category
        self.templates_dir = templates_dir
        self._subject = subject
        self._html = html
        self._text = text

    def __repr__(self) -> str:
        return f"EmailTemplate(name={self.name!r}, category={self.category!r})"

    @classmethod
    def load(cls, templates_dir: Path, name: str, *, category: str = "marketing") -> "EmailTemplate":
        if not isinstance(name, str) or not _TEMPLATE_NAME.fullmatch(name):
            raise TemplateError(
                f"template name {name!r} is invalid: use lowercase letters, digits and underscores"
            )
        if category not in CATEGORIES:
            raise TemplateError(f"template {name!r}: category {category!r} is not one of {CATEGORIES}")
        templates_dir = Path(templates_dir).resolve()
        if not templates_dir.is_dir():
            raise TemplateError(f"template {name!r}: templates directory {templates_dir} does not exist")

        env = _environment(templates_dir, jinja2.StrictUndefined)
        chains = {file: _compile_chain(env, name, f"{name}/{file}") for file in TEMPLATE_FILES}
        template = cls(
            name=name,
            category=category,
            templates_dir=templates_dir,
            subject=env.get_template(f"{name}/subject.txt"),
            html=env.get_template(f"{name}/body.html"),
            text=env.get_template(f"{name}/body.txt"),
        )
        if category == "marketing":
            for file in ("body.html", "body.txt"):
                _require_marketing_footer(templates_dir, name, file, chains[file])
        _refuse_unsafe_urls_in_the_template(templates_dir, name)
        return template

    def render(self, variables: Mapping[str, Any]) -> RenderedEmail:
        """Subject (one line), HTML (CSS inlined) and text for one contact.

        `variables`: contact, context, automation, unsubscribe_url, postal_address,
        sender_name, as_of. The bodies also see `subject`, the rendered subject.
        Filters beyond Jinja's: `money` (12.5 -> "$12.50") and `number` (strict, for arithmetic).
        Raises RenderError for anything this contact's data makes fail.
        """
        values = dict(variables)
        subject = one_line(self._render(self._subject, values))
        if not subject:
            raise RenderError(f"template {self.name!r}: the subject rendered empty")
        # The layout may show the subject (e.g. as the HTML <title>).
        values.setdefault("subject", subject)
        html = self._render(self._html, values)
        text = self._render(self._text, values)
        try:
            html = _CSS_INLINER.inline(html)
        except Exception as error:  # css_inline raises its own error types
            raise RenderError(f"template {self.name!r}: inlining CSS failed: {error}") from error
        # After inlining: what is checked is exactly what the recipient's client gets. Autoescaping
        # keeps data inside its attribute, but `href="{{ context.url }}"` would still follow a
        # javascript: URL from the data; refusing it here protects every template that writes one.
        try:
            refuse_unsafe_urls(html)
        except ValueError as error:
            raise RenderError(f"template {self.name!r} (body.html): {error}") from None
        return RenderedEmail(subject=subject, html=html, text=text)

    def _render(self, template: jinja2.Template, values: dict[str, Any]) -> str:
        try:
            return template.render(values)
        except Exception as error:
            raise RenderError(self._describe(template, error)) from error

    def _describe(self, template: jinja2.Template, error: Exception) -> str:
        where = template.name or "?"
        # Jinja rewrites tracebacks so template frames carry the template's file and line.
        for frame in reversed(traceback.extract_tb(error.__traceback__)):
            try:
                relative = Path(frame.filename).resolve().relative_to(self.templates_dir)
            except (ValueError, OSError):
                continue
            where = f"{relative.as_posix()} line {frame.lineno}"
            break
        problem = str(error) if isinstance(error, jinja2.UndefinedError) else f"{type(error).__name__}: {error}"
        return f"template {self.name!r} ({where}): {problem}"


def _compile_chain(env: jinja2.Environment, name: str, root: str) -> list[tuple[str, jinja2.nodes.Template]]:
    """Parse and compile a template and everything it extends, includes or imports.

    Jinja only loads a parent layout at render time; doing it here turns a typo
    in _base.html into a load failure instead of a skip for every contact.
    """
    chain: list[tuple[str, jinja2.nodes.Template]] = []
    pending, seen = [root], set()
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        try:
            source, _filename, _uptodate = env.loader.get_source(env, current)
            tree = env.parse(source, current)
            env.get_template(current)
        except jinja2.TemplateNotFound as error:
            missing = error.name or current
            raise TemplateError(
                f"template {name!r}: missing file {missing} in {env.loader.searchpath[0]}"
            ) from error
        except jinja2.TemplateSyntaxError as error:
            raise TemplateError(
                f"template {name!r}: syntax error in {error.name or current} line {error.lineno}: {error.message}"
            ) from error
        chain.append((current, tree))
        pending.extend(ref for ref in meta.find_referenced_templates(tree) if ref is not None)
    return chain


def _refuse_unsafe_urls_in_the_template(templates_dir: Path, name: str) -> None:
    """A javascript: link written into the template itself is the author's mistake: stop at load
    rather than skip every contact. (Links built from data are checked for each message.)"""
    lenient = _environment(templates_dir, jinja2.ChainableUndefined)
    try:
        output = lenient.get_template(f"{name}/body.html").render(_sample_variables(name))
    except Exception:
        return  # the sample cannot render; each real message is still checked
    try:
        refuse_unsafe_urls(output)
    except ValueError as error:
        raise TemplateError(f"template {name!r}: {name}/body.html (with its layout): {error}") from None


def _require_marketing_footer(
    templates_dir: Path, name: str, file: str, chain: list[tuple[str, jinja2.nodes.Template]]
) -> None:
    """Marketing mail must show an unsubscribe link and the postal address.

    The strong check renders sample values and looks for them in the output (a
    child overriding the footer block away is caught). When a sample cannot
    render (a filter needs real data), fall back to the chain referencing both.
    """
    lenient = _environment(templates_dir, jinja2.ChainableUndefined)
    try:
        output = lenient.get_template(f"{name}/{file}").render(_sample_variables(name))
    except Exception:
        output = None
    if output is not None:
        missing = [
            variable
            for variable, sample in (
                ("unsubscribe_url", _SAMPLE_UNSUBSCRIBE_URL),
                ("postal_address", _SAMPLE_POSTAL_ADDRESS),
            )
            if sample not in output
        ]
    else:
        referenced: set[str] = set()
        for _template_name, tree in chain:
            referenced |= meta.find_undeclared_variables(tree)
        missing = [variable for variable in MARKETING_REQUIRED_VARIABLES if variable not in referenced]
    if missing:
        raise TemplateError(
            f"template {name!r}: {name}/{file} (with its layout) does not show "
            f"{' and '.join(missing)}; marketing email must carry an unsubscribe link and the postal address"
        )
