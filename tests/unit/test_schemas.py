"""The pandera schemas: good rows pass, each kind of bad row is rejected with a reason a person can act on."""

from __future__ import annotations

from datetime import datetime

import email_validator
import pandera.polars as pa
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dagster_project.schemas import (
    EVENT_CHECKS,
    ContactsFrame,
    EventsFrame,
    contact_checks,
    email_problem,
    failed_checks,
    invalid_emails,
    validate_contacts,
    validate_events,
)

EVENT_DTYPES = {
    "source_line": pl.Int64,
    "event_id": pl.String,
    "contact_id": pl.String,
    "anonymous_id": pl.String,
    "name": pl.String,
    "occurred_at": pl.Datetime("us"),
    "occurred_at_text": pl.String,
    "properties": pl.String,
    "properties_text": pl.String,
    "is_syncing": pl.Boolean,
    "is_syncing_text": pl.String,
    "field_errors": pl.String,
}
CONTACT_DTYPES = {
    "source_line": pl.Int64,
    "contact_id": pl.String,
    "email": pl.String,
    "status": pl.String,
    "first_name": pl.String,
    "last_name": pl.String,
    "timezone": pl.String,
    "properties": pl.String,
    "properties_text": pl.String,
    "updated_at": pl.Datetime("us"),
    "updated_at_text": pl.String,
    "field_errors": pl.String,
}


def good_event(**overrides) -> dict:
    row = {
        "source_line": 1,
        "event_id": "e_1",
        "contact_id": "c_000001",
        "anonymous_id": None,
        "name": "signed_up",
        "occurred_at": datetime(2026, 10, 31, 20, 14, 5),
        "occurred_at_text": "2026-10-31T21:14:05+01:00",
        "properties": '{"source":"organic"}',
        "properties_text": None,
        "is_syncing": False,
        "is_syncing_text": None,
        "field_errors": None,
    }
    return {**row, **overrides}


def good_contact(**overrides) -> dict:
    row = {
        "source_line": 1,
        "contact_id": "c_000001",
        "email": "zoe.li1@example.com",
        "status": "subscribed",
        "first_name": "Zoë",
        "last_name": "李",
        "timezone": "Asia/Tokyo",
        "properties": '{"plan":"free"}',
        "properties_text": None,
        "updated_at": datetime(2026, 10, 30, 12, 0),
        "updated_at_text": "2026-10-30T21:00:00+09:00",
        "field_errors": None,
    }
    return {**row, **overrides}


def events(*rows: dict) -> pl.DataFrame:
    return pl.DataFrame(list(rows), schema=EVENT_DTYPES)


def contacts(*rows: dict) -> pl.DataFrame:
    return pl.DataFrame(list(rows), schema=CONTACT_DTYPES)


def test_good_events_pass_untouched():
    frame = events(good_event(), good_event(event_id="e_2", properties="{}", is_syncing=True, source_line=2))
    valid, rejections = validate_events(frame)
    assert valid.equals(frame)
    assert rejections.is_empty()


@pytest.mark.parametrize(
    ("overrides", "kind", "reason"),
    [
        ({"event_id": None}, "missing_event_id", "event_id is missing or empty"),
        ({"event_id": "   "}, "missing_event_id", "event_id is missing or empty"),
        (
            {"contact_id": None},
            "missing_contact_id_and_anonymous_id",
            "neither contact_id nor anonymous_id is set: every event must say whose it is",
        ),
        (
            {"contact_id": " ", "anonymous_id": ""},
            "missing_contact_id_and_anonymous_id",
            "neither contact_id nor anonymous_id is set",
        ),
        ({"name": ""}, "missing_name", "name is missing or empty"),
        (
            {"occurred_at": None, "occurred_at_text": "yesterday"},
            "bad_occurred_at",
            "occurred_at 'yesterday' is not an ISO 8601 timestamp with offset, e.g. 2026-10-31T21:14:05+01:00",
        ),
        (
            {"occurred_at": None, "occurred_at_text": "2026-10-31T21:14:05"},
            "occurred_at_without_offset",
            "occurred_at '2026-10-31T21:14:05' has no UTC offset, so the moment is ambiguous: an offset is required, "
            "e.g. 2026-10-31T21:14:05Z or 2026-10-31T21:14:05+01:00",
        ),
        (
            {"occurred_at": None, "occurred_at_text": "2026-13-01T00:00:00Z"},
            "bad_occurred_at",
            "occurred_at '2026-13-01T00:00:00Z' is not an ISO 8601 timestamp with offset",
        ),
        ({"occurred_at": None, "occurred_at_text": None}, "missing_occurred_at", "occurred_at is missing"),
        (
            {"properties": None, "properties_text": "[1,2]"},
            "properties_not_object",
            "properties must be a JSON object like {\"plan\": \"free\"}, got '[1,2]'",
        ),
        ({"is_syncing": None, "is_syncing_text": "maybe"}, "bad_is_syncing", "is_syncing 'maybe' is not true or false"),
    ],
)
def test_each_bad_event_is_rejected_with_its_reason(overrides, kind, reason):
    frame = events(good_event(event_id="e_good"), good_event(source_line=2, **overrides))
    valid, rejections = validate_events(frame)
    assert valid["event_id"].to_list() == ["e_good"]
    assert rejections["index"].to_list() == [1]
    assert rejections["kinds"].to_list() == [[kind]]
    assert rejections["reason"][0].startswith(reason)


def test_a_row_with_several_problems_is_one_rejection_naming_them_all():
    frame = events(good_event(contact_id=None, occurred_at=None, occurred_at_text="yesterday"))
    _, rejections = validate_events(frame)
    assert rejections.height == 1
    assert sorted(rejections["kinds"][0].to_list()) == ["bad_occurred_at", "missing_contact_id_and_anonymous_id"]
    reason = rejections["reason"][0]
    assert "neither contact_id nor anonymous_id" in reason and "occurred_at 'yesterday'" in reason and "; " in reason


def test_a_value_of_the_wrong_type_is_named_once_not_also_as_missing():
    frame = events(good_event(event_id=None, field_errors='event_id must be text, got {"id":1}'))
    _, rejections = validate_events(frame)
    assert rejections["kinds"].to_list() == [["wrong_type"]]
    assert rejections["reason"].to_list() == ['event_id must be text, got {"id":1}']


def test_an_event_needs_contact_id_or_anonymous_id_not_both():
    frame = events(
        good_event(event_id="known"),
        good_event(event_id="anonymous", contact_id=None, anonymous_id="a_device_1"),
        good_event(event_id="identify", name="identify", anonymous_id="a_device_1"),
    )
    valid, rejections = validate_events(frame)
    assert valid.equals(frame)
    assert rejections.is_empty()


def test_a_wrongly_typed_contact_id_is_not_also_reported_as_missing_owner():
    # the parse nulls a contact_id that was not text and says so in field_errors: that is the one reason
    frame = events(good_event(contact_id=None, field_errors='contact_id must be text, got {"id":1}'))
    _, rejections = validate_events(frame)
    assert rejections["kinds"].to_list() == [["wrong_type"]]


def test_rejection_indexes_point_at_the_failing_rows():
    frame = events(
        good_event(event_id="a"),
        good_event(event_id=None),
        good_event(event_id="c"),
        good_event(event_id="d", name=None),
        good_event(event_id="e"),
    )
    valid, rejections = validate_events(frame)
    assert rejections["index"].to_list() == [1, 3]
    assert valid["event_id"].to_list() == ["a", "c", "e"]


def test_a_frame_missing_a_column_is_a_bug_and_raises():
    with pytest.raises((pa.errors.SchemaErrors, pa.errors.SchemaError)):
        validate_events(events(good_event()).drop("occurred_at"))


def test_schema_validates_every_row_of_a_dataframe():
    # 10k good rows and one bad one at the end: a sample or a head would miss it
    frame = pl.concat([events(good_event())] * 10_000 + [events(good_event(name=None))])
    _, rejections = validate_events(frame)
    assert rejections["index"].to_list() == [10_000]
    assert issubclass(EventsFrame, pa.DataFrameModel)


# --- contacts --------------------------------------------------------------------------------------


def test_good_contacts_pass_including_one_without_email():
    frame = contacts(
        good_contact(),
        good_contact(contact_id="c_2", email=None, status="pending"),
        good_contact(contact_id="c_3", email="josé@example.com", status="cleaned"),
    )
    valid, rejections = validate_contacts(frame)
    assert valid.height == 3
    assert rejections.is_empty()


@pytest.mark.parametrize(
    ("overrides", "kind", "reason"),
    [
        (
            {"email": "not-an-email"},
            "invalid_email",
            "email 'not-an-email' is not a valid address: An email address must have an @-sign.",
        ),
        ({"email": "pat@localhost"}, "invalid_email", "email 'pat@localhost' is not a valid address: "),
        (
            {"status": "active"},
            "unknown_status",
            "status 'active' is not one of subscribed, unsubscribed, cleaned, pending",
        ),
        ({"status": None}, "missing_status", "status is missing: use one of subscribed"),
        ({"contact_id": ""}, "missing_contact_id", "contact_id is missing or empty"),
        (
            {"updated_at": None, "updated_at_text": "2026-10-31 22:00:00"},
            "updated_at_without_offset",
            "updated_at '2026-10-31 22:00:00' has no UTC offset",
        ),
        (
            {"properties": None, "properties_text": '"premium"'},
            "properties_not_object",
            "properties must be a JSON object",
        ),
    ],
)
def test_each_bad_contact_is_rejected_with_its_reason(overrides, kind, reason):
    frame = contacts(good_contact(contact_id="c_good"), good_contact(**overrides))
    valid, rejections = validate_contacts(frame)
    assert valid["contact_id"].to_list() == ["c_good"]
    assert rejections["kinds"].to_list() == [[kind]]
    assert rejections["reason"][0].startswith(reason)


def test_invalid_email_reason_quotes_the_validators_words():
    _, rejections = validate_contacts(contacts(good_contact(email="a..b@example.com")))
    expected = email_problem("a..b@example.com")
    assert expected
    assert rejections["reason"].to_list() == [f"email 'a..b@example.com' is not a valid address: {expected}"]


TRICKY_EMAILS = [
    "plain@example.com",
    "first.last+tag@sub.example.co.uk",
    "a..b@example.com",
    ".a@example.com",
    "a.@example.com",
    "a@b",
    "a@localhost",
    "a@example.test",
    "a@printer.local",
    "a@ab--cd.com",
    "a@-ab.com",
    "a@ab-.com",
    "a@example.c0m",
    "a@123.com",
    "josé@example.com",
    "a@bücher.example",
    "x" * 65 + "@example.com",
    "a@" + "b" * 64 + ".com",
    "a@" + ".".join(["b" * 60] * 5) + ".com",
    "not-an-email",
    "a b@example.com",
    '"quoted"@example.com',
    "a@[127.0.0.1]",
    "UPPER@EXAMPLE.COM",
    "",
]


def _validator_says_invalid(emails: list[str]) -> set[str]:
    invalid = set()
    for email in emails:
        try:
            email_validator.validate_email(email, check_deliverability=False)
        except email_validator.EmailNotValidError:
            invalid.add(email)
    return invalid


def test_invalid_emails_agrees_with_email_validator_on_tricky_addresses():
    assert set(invalid_emails(pl.Series(TRICKY_EMAILS)).to_list()) == _validator_says_invalid(TRICKY_EMAILS)


ADDRESS_LIKE = st.from_regex(r"[a-z.]{1,8}@[a-z-]{1,8}(\.[a-z0-9-]{1,5}){1,2}", fullmatch=True)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.emails() | st.text(max_size=30) | ADDRESS_LIKE, max_size=20))
def test_invalid_emails_fast_path_never_accepts_what_email_validator_rejects(emails):
    assert set(invalid_emails(pl.Series(emails, dtype=pl.String)).to_list()) == _validator_says_invalid(emails)


# --- the vectorised checks are the pandera model's checks ------------------------------------------
# split_valid runs the check expressions itself (one pass, no failure-case frames); pandera, given
# the same frame, must fail exactly the same rows on exactly the same checks.

maybe_text = st.sampled_from([None, "", "  ", "\u3000", "x", " y ", "subscribed", "Cleaned", "pending"])
maybe_email = st.sampled_from([None, "", "zoe@example.com", "not-an-email", "a@localhost", "josé@example.com"])
maybe_moment = st.sampled_from([None, datetime(2026, 10, 31, 12, 0)])
maybe_flag = st.sampled_from([None, True, False])
maybe_errors = st.sampled_from([None, "event_id must be text, got 1.5"])
maybe_properties = st.sampled_from([None, "{}"])


def _pandera_failures(model: type[pa.DataFrameModel], frame: pl.DataFrame) -> set[tuple[int, str]]:
    try:
        model.validate(frame, lazy=True)
    except pa.errors.SchemaErrors as errors:
        return {(int(i), check) for i, check in errors.failure_cases.select("index", "check").iter_rows()}
    return set()


def _expression_failures(frame: pl.DataFrame, checks) -> set[tuple[int, str]]:
    failures = failed_checks(frame, checks)
    return {(index, name) for name in failures.columns for index in failures.get_column(name).arg_true().to_list()}


def frames_of(values: dict) -> st.SearchStrategy[list[dict]]:
    """Up to 12 rows whose fields take the given values."""
    return st.lists(st.fixed_dictionaries(values), min_size=1, max_size=12)


@settings(max_examples=60, deadline=None)
@given(
    frames_of(
        {
            "event_id": maybe_text,
            "contact_id": maybe_text,
            "anonymous_id": maybe_text,
            "name": maybe_text,
            "occurred_at": maybe_moment,
            "properties": maybe_properties,
            "is_syncing": maybe_flag,
            "field_errors": maybe_errors,
        }
    )
)
def test_event_checks_fail_the_rows_pandera_fails(rows):
    frame = events(*(good_event(**row) for row in rows))
    assert _expression_failures(frame, EVENT_CHECKS) == _pandera_failures(EventsFrame, frame)


@settings(max_examples=60, deadline=None)
@given(
    frames_of(
        {
            "contact_id": maybe_text,
            "email": maybe_email,
            "status": maybe_text,
            "properties": maybe_properties,
            "updated_at": maybe_moment,
            "field_errors": maybe_errors,
        }
    )
)
def test_contact_checks_fail_the_rows_pandera_fails(rows):
    frame = contacts(*(good_contact(**row) for row in rows))
    checks = contact_checks(frame.get_column("email"))
    assert _expression_failures(frame, checks) == _pandera_failures(ContactsFrame, frame)


def test_a_column_of_the_wrong_dtype_is_a_bug_and_raises():
    frame = events(good_event()).with_columns(pl.col("occurred_at").dt.to_string())
    with pytest.raises((pa.errors.SchemaErrors, pa.errors.SchemaError)):
        validate_events(frame)
