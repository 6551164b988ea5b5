"""Sandboxed Jinja2 rendering of one automation's email: subject, HTML and text.

Two kinds of failure, two exceptions, because they call for different actions:
a `TemplateError` is the author's mistake (missing file, syntax error, no
unsubscribe link in marketing mail) and stops the automation before anything is
sent; a `RenderError` is one contact's data not fitting the template (a missing
field, a price that is not a number) and skips only that message.
"""

from __future__ import annotations

import re
import threading
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
        raise ValueError(_refusal_text(refused))


def _refusal_text(refused: list[str]) -> str:
    shown = refused[0] if len(refused[0]) <= 200 else refused[0][:200] + "..."
    return (
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
        # type() first: the data is plain dicts, and isinstance against the Mapping ABC is slow.
        if (type(obj) is dict or isinstance(obj, Mapping)) and isinstance(argument, str):
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
        if type(obj) is dict:
            if attribute in obj:
                return obj[attribute]
        elif isinstance(obj, Mapping):
            try:
                if attribute in obj:
                    return obj[attribute]
            except TypeError:
                pass
        return super().getattr(obj, attribute)


def _none_as_empty(value: Any) -> Any:
    # A contact without a last name should read as blank, not as "None".
    return "" if value is None else value


class _CompiledOnce(jinja2.BytecodeCache):
    """A file's compiled code, kept for the life of the process and found again by its path and
    its text's checksum (an edited file compiles again). Loading a template builds four
    environments (the strict one that renders, the marked HTML, the lenient ones that check the
    footer and the links), and each compiled the shared layouts again: 104 compilations and 0.37 s
    for the nine automations a tick loads, where 54 of them were _base.html and _base.txt.

    The code depends on the environment's options, of which only `finalize` differs here: one
    cache per finalize function (_CODES)."""

    def __init__(self) -> None:
        self._codes: dict[str, tuple[str | None, Any]] = {}
        self._lock = threading.Lock()

    def load_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        with self._lock:
            found = self._codes.get(bucket.key)
        if found is not None and found[0] == bucket.checksum:
            bucket.code = found[1]

    def dump_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        with self._lock:
            self._codes[bucket.key] = (bucket.checksum, bucket.code)


_CODES: dict[Any, _CompiledOnce] = {}


def _environment(
    templates_dir: Path, undefined: type[jinja2.Undefined], finalize: Any = _none_as_empty
) -> jinja2.Environment:
    env = _DataFirstSandbox(
        loader=jinja2.FileSystemLoader(str(templates_dir)),
        bytecode_cache=_CODES.setdefault(finalize, _CompiledOnce()),
        undefined=undefined,
        autoescape=jinja2.select_autoescape(
            enabled_extensions=("html", "htm"), default_for_string=False, default=False
        ),
        trim_blocks=True,
        lstrip_blocks=True,
        finalize=finalize,
        # A tick renders what load() validated, even if someone edits the files meanwhile.
        auto_reload=False,
        # A plain dict: `{% extends %}` looks its layout up on every render, and the default LRU
        # cache takes a lock and reorders itself each time. An environment holds one template's files.
        cache_size=-1,
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


# --- Inlining once per shape of a message -------------------------------------------------------
#
# css_inline parses every message into a tree and writes it out again: about 0.1 ms, more than
# Jinja's own render, and the link check reads the result again. Yet a template's messages differ
# only in the values printed into them, and for most values where they sit (text, a link) the
# inliner's result is the same tree with the value written in its place. So body.html is also
# compiled to print each value between two markers (private-use characters); a message's *shape*
# is its HTML with each such value replaced by a numbered placeholder. The first message of a
# shape inlines the shape once (placeholders and all) and learns where each placeholder landed;
# every later message of that shape is that result with its own values written into the
# placeholders, escaped as the inliner's serializer escapes them there.
#
# That is exact only when a value cannot change the tree, the styles or the escaping, so a value
# becomes a placeholder only when it can't: it holds no markup or character reference of its own
# (only the five escapes autoescaping writes), no control character, no-break space or markers;
# it is not empty or only whitespace (the parser treats whitespace apart: foster-parenting in
# tables, `:empty`), and its leading whitespace stays in the shape (a newline after <pre> is
# dropped, whitespace before the body is not text). Any other value stays in the shape as it is,
# which is always exact (the shape then is the message). A placeholder must land in text or in
# the value of an attribute no stylesheet rule can select on (a link, alt, title), and a probe
# checks the shape once: the same shape with hostile placeholders (quotes, spaces, `=`, `/`,
# character references) must inline to exactly what the filling predicts, which it would not
# inside a comment, a <script> or <style>, an unquoted attribute or a tag name. A shape that
# fails any check (or a template whose output could not be marked, see _markable) is inlined
# whole, message by message, as before.

_OPEN, _CLOSE = "\ue000", "\ue001"
_MARKED_VALUE = re.compile("\ue000([^\ue000\ue001]*)\ue001")
_PLACEHOLDER = re.compile("\ue000([0-9]+)\ue001")
_BARE_PLACEHOLDER = _OPEN + _CLOSE
_BARE = re.compile(_BARE_PLACEHOLDER)
_UNKNOWN = object()
# A value that may become a placeholder: leading ASCII whitespace, then a first character that is
# none of whitespace, a control, a no-break space, markup or a marker, then more of the same or
# tabs, newlines and spaces. `&` only as one of the escapes markupsafe writes.
_ESCAPES = r"&(?:amp|lt|gt|#34|#39);"
_FILLABLE_VALUE_PATTERN = (
    r"(?:[^\x00-\x20\x7f-\xa0&<>\"\ue000\ue001]|" + _ESCAPES + r")"
    r"(?:[^\x00-\x08\x0b-\x1f\x7f-\xa0&<>\"\ue000\ue001]|" + _ESCAPES + r")*"
)
_FILLABLE = re.compile(r"([\t\n ]*)(" + _FILLABLE_VALUE_PATTERN + ")")
# A marked value that is fillable as it is (no leading whitespace): found and replaced in one pass
# each, the common case; any other marked value sends the message through _shape_of.
_FILLABLE_VALUE = re.compile("\ue000(" + _FILLABLE_VALUE_PATTERN + ")\ue001")
# Attributes whose values no selector of ours reads (class, id, style, lang, ... are not among
# them); a name the stylesheet mentions anywhere is left out as well.
_FILLABLE_ATTRIBUTES = _URL_ATTRIBUTES | {"alt", "title"}
# What the probe puts in every placeholder: each character that ends a token somewhere in HTML
# (quotes, whitespace, `=`, `/`) and the escapes, which only text and attribute values decode.
_PROBE = "x'\t\n =/&amp;&#39;&#34;&gt;\u00e9\u2028y"
_MAX_SHAPES = 256
# Shapes learnt before a template whose messages rarely share one stops learning them.
_LEARN_LIMIT = 64


# Set when a value printed during the current marked render holds a marker character itself:
# the markers no longer say where values begin and end, and the plain template renders instead.
_RENDERING = threading.local()


def _marked(value: Any) -> Any:
    """finalize of the marking environment: a value as the plain one prints it, between markers.
    Markup (and anything with __html__) is printed as it is, unmarked: it becomes part of the shape."""
    value = _none_as_empty(value)
    if hasattr(value, "__html__"):
        html = value.__html__()
        if _OPEN in html or _CLOSE in html:
            _RENDERING.ambiguous = True
        return value
    text = str(value)
    if _OPEN in text or _CLOSE in text:
        _RENDERING.ambiguous = True
    return _OPEN + text + _CLOSE


def _unmarked(marked: str) -> str:
    return _MARKED_VALUE.sub(r"\1", marked)


# Where a printed value can become a string the template works on (a macro's or a block's output
# taken as a value, `{% filter %}`, `{% set %}...{% endset %}`, super(), self.x(), caller()), the
# markers would be in that string (its length, a truncation, a comparison) and the marked output
# could differ from the plain one by more than the markers: such templates are never marked.
_CAPTURING_NODES = (
    jinja2.nodes.Macro, jinja2.nodes.CallBlock, jinja2.nodes.FilterBlock, jinja2.nodes.AssignBlock,
    jinja2.nodes.Import, jinja2.nodes.FromImport,
)
_CAPTURING_NAMES = frozenset({"self", "super", "caller", "varargs", "kwargs"})


def _markable(chain: list[tuple[str, jinja2.nodes.Template]]) -> bool:
    for _name, tree in chain:
        if any(True for _ in tree.find_all(_CAPTURING_NODES)):
            return False
        if any(node.name in _CAPTURING_NAMES for node in tree.find_all(jinja2.nodes.Name)):
            return False
        if any(ref is None for ref in meta.find_referenced_templates(tree)):
            return False  # a layout named by the data: not in the chain, not checked
        texts = [node.data for node in tree.find_all(jinja2.nodes.TemplateData)]
        texts += [node.value for node in tree.find_all(jinja2.nodes.Const) if isinstance(node.value, str)]
        if any(_OPEN in text or _CLOSE in text for text in texts):
            return False
    return True


def _in_text(source: str) -> str:
    """A value as autoescaping wrote it -> as the inliner writes it in text (`&`, `<`, `>` escaped)."""
    return source.replace("&#34;", '"').replace("&#39;", "'") if "&#" in source else source


def _in_attribute(source: str) -> str | None:
    """-> as the inliner writes it in a double-quoted attribute value (`&` and `"` escaped, `<` and
    `>` not); None when that puts a `<` in a tag, where the link check reads HTML another way."""
    if "&" not in source:
        return source
    if "&lt;" in source:
        return None
    return source.replace("&#34;", "&quot;").replace("&#39;", "'").replace("&gt;", ">")


class _Shape:
    """One shape inlined: the output cut at its placeholders, what each placeholder is (text or
    attribute value), and the link check: the refusals of the tags without placeholders, and the
    tags with placeholders to check again with each message's values."""

    __slots__ = ("pieces", "in_attribute", "links")

    def __init__(self, pieces: list[str], in_attribute: list[bool], links: list[list[str] | list[int | str]]) -> None:
        self.pieces = pieces  # output text, then placeholder number and text after it, alternately
        self.in_attribute = in_attribute  # by placeholder number
        # In document order: ("static", refusals) or ("tag", pieces of a tag as self.pieces).
        self.links = links

    def fill(self, values: list[str]) -> tuple[str, list[str]] | None:
        written: list[str | None] = [
            _in_attribute(value) if attribute else _in_text(value)
            for value, attribute in zip(values, self.in_attribute)
        ]
        if None in written:
            return None
        pieces = self.pieces
        out = [pieces[0]]
        for index in range(1, len(pieces), 2):
            out.append(written[pieces[index]])  # type: ignore[arg-type, call-overload]
            out.append(pieces[index + 1])
        refused: list[str] = []
        for kind, content in self.links:
            if kind == "static":
                refused.extend(content)
                continue
            tag = [content[0]]
            for index in range(1, len(content), 2):
                tag.append(written[content[index]])  # type: ignore[arg-type, call-overload]
                tag.append(content[index + 1])
            found = _canonical_refusals("".join(tag))
            if found is None:
                return None
            refused.extend(found)
        return "".join(out), refused


class _Shapes:
    """The shapes of one template's messages seen so far (a bounded number)."""

    def __init__(self) -> None:
        self._known: dict[str, _Shape | None] = {}
        self._hits = self._learnt = 0

    def inlined(self, marked: str) -> tuple[str, list[str]] | None:
        """(inlined HTML, link refusals) of a marked render; None: inline the plain render instead."""
        if self._learnt >= _LEARN_LIMIT and self._learnt > self._hits:
            # Nearly every message a shape of its own (values that stay in the shape, say): learning
            # one costs two inlinings, more than the one inlining of the whole message.
            return None
        # Placeholders are numbered by their order when a shape is learnt; the key leaves them bare.
        shape = _FILLABLE_VALUE.sub(_BARE_PLACEHOLDER, marked)
        values = _FILLABLE_VALUE.findall(marked)
        if shape.count(_OPEN) != len(values) or shape.count(_CLOSE) != len(values):
            # A value that stays in the shape as it is, or a marker the data held.
            shape, values = self._shape_of(marked)
            if shape is None:
                return None
        known = self._known.get(shape, _UNKNOWN)
        if known is _UNKNOWN:
            self._learnt += 1
            known = self._learn(shape, len(values))
            if len(self._known) >= _MAX_SHAPES:
                self._known.clear()
            self._known[shape] = known
        else:
            self._hits += 1
        return None if known is None else known.fill(values)  # type: ignore[union-attr]

    @staticmethod
    def _shape_of(marked: str) -> tuple[str | None, list[str]]:
        parts = _MARKED_VALUE.split(marked)
        # Each marker pairs up, none is left in the text between values (the data held one).
        if marked.count(_OPEN) * 2 != len(parts) - 1 or marked.count(_CLOSE) * 2 != len(parts) - 1:
            return None, []
        shape = [parts[0]]
        values: list[str] = []
        for index in range(1, len(parts), 2):
            value = parts[index]
            fillable = _FILLABLE.fullmatch(value)
            if fillable is None:
                shape.append(value)
            else:
                shape.append(f"{fillable.group(1)}{_BARE_PLACEHOLDER}")
                values.append(fillable.group(2))
            shape.append(parts[index + 1])
        return "".join(shape), values

    @staticmethod
    def _learn(bare: str, placeholders: int) -> _Shape | None:
        counter = iter(range(placeholders))
        shape = _BARE.sub(lambda _match: f"{_OPEN}{next(counter)}{_CLOSE}", bare)
        try:
            inlined = _CSS_INLINER.inline(shape)
            probed = _CSS_INLINER.inline(_PLACEHOLDER.sub(lambda _match: _PROBE, shape))
        except Exception:
            return None
        pieces: list[Any] = _PLACEHOLDER.split(inlined)
        numbers = [int(number) for number in pieces[1::2]]
        if sorted(numbers) != list(range(placeholders)) or inlined.count(_OPEN) != placeholders:
            return None  # a placeholder dropped, doubled or moved into a marker of the template
        pieces[1::2] = numbers
        tags = list(_CANONICAL_TAG.finditer(inlined))
        if len(tags) != len(_TAG_OPEN.findall(inlined)):
            return None  # not the canonical HTML the link check reads
        stylesheet = " ".join(re.findall(r"<style[^>]*>(.*?)</style", shape, re.IGNORECASE | re.DOTALL)).lower()
        if re.search(r"<link\b", shape, re.IGNORECASE):
            return None
        fillable_attributes = {name for name in _FILLABLE_ATTRIBUTES if name not in stylesheet}
        in_attribute = [False] * placeholders
        links: list[tuple[str, Any]] = []
        for tag in tags:
            name, attributes = tag.groups()
            inside = [int(number) for number in _PLACEHOLDER.findall(tag.group(0))]
            if not inside:
                static = _canonical_refusals(tag.group(0))
                if static is None:
                    return None
                if static:
                    links.append(("static", static))
                continue
            # Every placeholder of the tag inside the value of an attribute that may hold one.
            held = 0
            for attribute, value in _CANONICAL_ATTRIBUTE.findall(attributes):
                found = _PLACEHOLDER.findall(value)
                if found and attribute.lower() not in fillable_attributes:
                    return None
                held += len(found)
            if held != len(inside):
                return None
            for number in inside:
                in_attribute[number] = True
            tag_pieces: list[Any] = _PLACEHOLDER.split(tag.group(0))
            tag_pieces[1::2] = [int(number) for number in tag_pieces[1::2]]
            links.append(("tag", tag_pieces))
        known = _Shape(pieces, in_attribute, links)
        # The probe: what filling predicts for hostile values must be what the inliner makes of them,
        # and the link check must read it the same way.
        predicted = known.fill([_PROBE] * placeholders)
        if predicted is None or predicted != (probed, _canonical_refusals(probed)):
            return None
        return known


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
        marked_html: jinja2.Template | None = None,
    ) -> None:
        self.name = name
        self.category = category
        self.templates_dir = templates_dir
        self._subject = subject
        self._html = html
        self._text = text
        # body.html printing each value between markers, where that cannot change what it prints
        # (see _markable); None: every message is inlined whole.
        self._marked_html = marked_html
        self._shapes = _Shapes()

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
            marked_html=(
                _environment(templates_dir, jinja2.StrictUndefined, _marked).get_template(f"{name}/body.html")
                if _markable(chains["body.html"]) else None
            ),
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
        marked = self._render_marked(values)
        html = self._render(self._html, values) if marked is None else None
        text = self._render(self._text, values)
        if marked is not None:
            shaped = self._shapes.inlined(marked)
            if shaped is not None:
                html, refused = shaped
                if refused:
                    raise RenderError(f"template {self.name!r} (body.html): {_refusal_text(refused)}")
                return RenderedEmail(subject=subject, html=html, text=text)
            html = _unmarked(marked)
        return RenderedEmail(subject=subject, html=self._inline(html), text=text)

    def _render_marked(self, values: dict[str, Any]) -> str | None:
        """body.html with each printed value between markers; None when there is no such template
        or it failed (then the plain one raises the error as a contact's data made it)."""
        if self._marked_html is None:
            return None
        _RENDERING.ambiguous = False
        try:
            marked = _render(self._marked_html, values)
        except Exception:
            return None
        return None if _RENDERING.ambiguous else marked

    def _inline(self, html: str) -> str:
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
        return html

    def _render(self, template: jinja2.Template, values: dict[str, Any]) -> str:
        try:
            return _render(template, values)
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


def _render(template: jinja2.Template, values: dict[str, Any]) -> str:
    """template.render(values), without copying the template's globals out of their ChainMap key by
    key for every message (a few microseconds a render): they are taken once, as a dict."""
    globals_ = getattr(template, "_nudge_globals", None)
    if globals_ is None:
        globals_ = dict(template.globals)
        template._nudge_globals = globals_  # type: ignore[attr-defined]
    # What Template.render does, with the context's variables (globals, then the values) made here.
    context = template.new_context({**globals_, **values}, shared=True)
    try:
        return template.environment.concat(template.root_render_func(context))  # type: ignore[attr-defined]
    except Exception:
        return template.environment.handle_exception()


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
