from __future__ import annotations

import base64
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dagster_project.unsubscribe import make_token, read_token, unsubscribe_links

SECRET = "test-secret"


def test_a_token_reads_back_to_its_contact_and_list():
    token = make_token(SECRET, "contact_000123", "cart_abandoned")

    assert read_token(SECRET, token) == ("contact_000123", "cart_abandoned")


def test_a_token_is_url_safe_and_has_two_parts():
    token = make_token(SECRET, "ünïcode contact/with?odd&chars", "marketing")

    payload, signature = token.split(".")
    allowed = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert set(payload) <= allowed and set(signature) <= allowed
    assert read_token(SECRET, token) == ("ünïcode contact/with?odd&chars", "marketing")


def test_a_contact_id_may_contain_the_separator():
    token = make_token(SECRET, "a|b", "c")

    assert read_token(SECRET, token) == ("a|b", "c")
    # The list id may not, so "a|b"+"c" and "a"+"b|c" can never share a token.
    with pytest.raises(ValueError):
        make_token(SECRET, "a", "b|c")


def test_another_secret_does_not_verify():
    token = make_token(SECRET, "c1", "welcome")

    assert read_token("another-secret", token) is None


def _flip(text: str, index: int) -> str:
    replacement = "A" if text[index] != "A" else "B"
    return text[:index] + replacement + text[index + 1 :]


def test_any_changed_character_is_rejected():
    token = make_token(SECRET, "c1", "welcome")

    for index in range(len(token)):
        if token[index] == ".":
            continue
        assert read_token(SECRET, _flip(token, index)) is None, index


def test_a_signature_cannot_be_moved_to_another_payload():
    victim = make_token(SECRET, "victim", "welcome")
    mine = make_token(SECRET, "me", "welcome")

    forged = victim.split(".")[0] + "." + mine.split(".")[1]

    assert read_token(SECRET, forged) is None


@pytest.mark.parametrize(
    "garbled",
    ["", ".", "abc", "a.b.c", "!!!.???", "Yzk.", ".Yzk", None, 42, "x" * 10_000],
)
def test_garbled_tokens_are_rejected(garbled):
    assert read_token(SECRET, garbled) is None


def _same_bytes_spellings(encoded: str) -> list[str]:
    """Other base64url spellings of the same bytes: the unused low bits of the last character."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    original = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    variants = []
    for character in alphabet:
        candidate = encoded[:-1] + character
        if candidate != encoded and base64.urlsafe_b64decode(candidate + "=" * (-len(candidate) % 4)) == original:
            variants.append(candidate)
    return variants


def test_non_canonical_spellings_of_a_valid_token_are_rejected():
    token = make_token(SECRET, "c1", "welcome")
    payload, signature = token.split(".")
    variants = [f"{payload}.{other}" for other in _same_bytes_spellings(signature)]
    variants += [f"{other}.{signature}" for other in _same_bytes_spellings(payload)]
    variants += [f"{payload}=.{signature}", f"{payload}.{signature}=", f"{payload}.{signature[:20]}\n{signature[20:]}"]

    assert len(variants) > 3
    for variant in variants:
        assert read_token(SECRET, variant) is None, variant


def test_an_empty_secret_is_refused():
    with pytest.raises(ValueError):
        make_token("", "c1", "welcome")


@given(
    contact_id=st.text(min_size=1, max_size=60),
    list_id=st.text(min_size=1, max_size=30).filter(lambda text: "|" not in text),
)
def test_round_trip_for_any_ids(contact_id, list_id):
    token = make_token(SECRET, contact_id, list_id)

    assert read_token(SECRET, token) == (contact_id, list_id)
    assert read_token(SECRET + "x", token) is None


def test_links_carry_the_token_in_the_https_url_and_the_mailto_subject():
    token = make_token(SECRET, "c1", "welcome")

    links = unsubscribe_links("https://nudge.example/unsubscribe", "unsubscribe@nudge.example", token)

    assert links.https == f"https://nudge.example/unsubscribe?token={token}"
    assert links.mailto == f"mailto:unsubscribe@nudge.example?subject=unsubscribe%20{token}"
    assert read_token(SECRET, parse_qs(urlsplit(links.https).query)["token"][0]) == ("c1", "welcome")
    assert unquote(urlsplit(links.mailto).query) == f"subject=unsubscribe {token}"


def test_links_keep_an_existing_query_and_accept_a_mailto_prefix():
    links = unsubscribe_links("https://nudge.example/u?source=email", "mailto:unsubscribe@nudge.example", "t.k")

    assert links.https == "https://nudge.example/u?source=email&token=t.k"
    assert links.mailto == "mailto:unsubscribe@nudge.example?subject=unsubscribe%20t.k"


@pytest.mark.parametrize(
    ("base_url", "mailto"),
    [
        ("javascript:alert(1)", "unsubscribe@nudge.example"),
        ("https://nudge.example/u nsubscribe", "unsubscribe@nudge.example"),
        ("https://nudge.example/<u>", "unsubscribe@nudge.example"),
        ("nudge.example/unsubscribe", "unsubscribe@nudge.example"),
        ("https://nudge.example/unsubscribe", "unsubscribe@nudge.example?cc=boss@x.example"),
        ("https://nudge.example/unsubscribe", "a@b.example, c@d.example"),
        ("https://nudge.example/unsubscribe", ""),
    ],
)
def test_links_refuse_what_would_break_the_header(base_url, mailto):
    with pytest.raises(ValueError):
        unsubscribe_links(base_url, mailto, "t.k")
