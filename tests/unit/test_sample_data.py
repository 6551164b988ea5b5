"""The sample-data generator: deterministic by seed, sized by its arguments, with the behaviours the demo needs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import orjson
import polars as pl
import pytest

from dagster_project.sample_data import (
    CATALOGUE,
    CONTACT_BAD_KINDS,
    DEFAULT_END,
    EVENT_BAD_KINDS,
    generate,
    main,
)

END = DEFAULT_END


def read_tree(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def jsonl_records(folder: Path) -> tuple[list[dict], list[str]]:
    """Every line of every file in `folder` that is a JSON object, and the lines that are not."""
    records, broken = [], []
    for path in sorted(folder.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                value = orjson.loads(line)
            except orjson.JSONDecodeError:
                broken.append(line)
                continue
            records.append(value)
    return records, broken


def jsonl_records_for(path: Path) -> tuple[list[dict], int]:
    records, broken = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            broken += 1
    return records, broken


@pytest.fixture(scope="module")
def demo_size(tmp_path_factory) -> tuple[Path, object]:
    """The default size, as the demo generates it."""
    out = tmp_path_factory.mktemp("demo")
    return out, generate(out)


@pytest.fixture(scope="module")
def demo_events(demo_size) -> pl.DataFrame:
    out, _ = demo_size
    records, _ = jsonl_records(out / "events")
    # leave out the planted bad rows: missing fields, "yesterday", a timestamp without offset
    good = [
        r
        for r in records
        if {"event_id", "contact_id", "name", "occurred_at"} <= r.keys()
        and r["occurred_at"] != "yesterday"
        and len(r["occurred_at"]) > 19
    ]
    return pl.DataFrame(
        {
            "event_id": [r["event_id"] for r in good],
            "contact_id": [r["contact_id"] for r in good],
            "name": [r["name"] for r in good],
            "occurred_at_text": [r["occurred_at"] for r in good],
            "occurred_at": [datetime.fromisoformat(r["occurred_at"]).astimezone(UTC) for r in good],
            "is_syncing": [bool(r.get("is_syncing", False)) for r in good],
        }
    ).unique("event_id", keep="first", maintain_order=True)


def test_same_seed_writes_byte_identical_files(tmp_path):
    first = generate(tmp_path / "a", contacts=150, days=5, seed=11)
    second = generate(tmp_path / "b", contacts=150, days=5, seed=11)
    assert read_tree(tmp_path / "a") == read_tree(tmp_path / "b")
    assert first.events == second.events and first.events_by_name == second.events_by_name


def test_different_seed_writes_different_files(tmp_path):
    generate(tmp_path / "a", contacts=150, days=5, seed=11)
    generate(tmp_path / "b", contacts=150, days=5, seed=12)
    a, b = read_tree(tmp_path / "a"), read_tree(tmp_path / "b")
    assert a.keys() == b.keys()
    assert a["contacts/contacts.jsonl"] != b["contacts/contacts.jsonl"]
    assert all(a[name] != b[name] for name in a if name.startswith("events/"))


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_other_formats_are_deterministic_too(tmp_path, fmt):
    generate(tmp_path / "a", contacts=80, days=3, seed=5, fmt=fmt)
    generate(tmp_path / "b", contacts=80, days=3, seed=5, fmt=fmt)
    tree = read_tree(tmp_path / "a")
    assert tree == read_tree(tmp_path / "b")
    assert all(name.endswith(f".{fmt}") for name in tree if name.startswith("events/"))


def test_sized_by_contacts_and_days(tmp_path):
    summary = generate(tmp_path, contacts=200, days=4, bad_rows=False)
    contacts = [orjson.loads(line) for line in (tmp_path / "contacts" / "contacts.jsonl").read_text().splitlines()]
    ids = {c["contact_id"] for c in contacts}
    assert ids == {f"c_{i:06d}" for i in range(1, 201)}
    assert summary.contacts == 200
    assert summary.contact_rows == len(contacts) == 200 + summary.superseded_contact_rows
    day_files = sorted(path.name for path in (tmp_path / "events").iterdir())
    assert day_files == [f"events-{(END - timedelta(days=d)).date():%Y-%m-%d}.jsonl" for d in range(4, 0, -1)]
    records, broken = jsonl_records(tmp_path / "events")
    assert not broken
    assert len(records) == summary.events  # no bad rows, no duplicates asked for
    assert len({r["event_id"] for r in records}) == summary.events
    assert summary.files == [tmp_path / "contacts" / "contacts.jsonl", *sorted((tmp_path / "events").iterdir())]


def test_one_events_file_per_day_holds_that_days_events(demo_size, demo_events):
    out, _ = demo_size
    for path in sorted((out / "events").glob("*.jsonl")):
        day = path.stem.removeprefix("events-")
        records, _ = jsonl_records_for(path)
        live_days = {
            datetime.fromisoformat(r["occurred_at"]).astimezone(UTC).strftime("%Y-%m-%d")
            for r in records
            if not r.get("is_syncing") and len(str(r.get("occurred_at", ""))) > 19
        }
        assert live_days <= {day}


def test_contacts_have_the_documented_mix(demo_size):
    out, summary = demo_size
    contacts = [orjson.loads(line) for line in (out / "contacts" / "contacts.jsonl").read_text().splitlines()]
    real_ids = {f"c_{i:06d}" for i in range(1, summary.contacts + 1)}
    # one row per contact: not the planted bad rows, not the older versions a CRM export repeats
    real = [c for c in contacts if c.get("contact_id") in real_ids and c["properties"].get("city") != "Old Town"]
    assert len(real) == summary.contacts
    statuses = pl.Series([c["status"] for c in real]).value_counts(normalize=True)
    share = dict(statuses.rows())
    assert 0.80 < share["subscribed"] < 0.92
    assert 0.04 < share["unsubscribed"] < 0.10
    assert 0.01 < share["cleaned"] < 0.06 and 0.01 < share["pending"] < 0.06
    without_email = [c for c in real if not c.get("email")]
    assert 0.005 < len(without_email) / len(real) < 0.04
    assert any("email" not in c for c in without_email) and any(c.get("email") == "" for c in without_email)
    names = {c["first_name"] for c in real} | {c["last_name"] for c in real}
    assert {"José", "Zoë", "李"} <= names
    timezones = {c["timezone"] for c in real}
    expected_zones = {"Europe/Berlin", "America/New_York", "Asia/Tokyo", "America/Los_Angeles", "Australia/Sydney", ""}
    assert expected_zones <= timezones
    assert {c["properties"]["plan"] for c in real} == {"free", "premium"}
    with_email = [c["email"] for c in real if c.get("email")]
    assert all(email.endswith("@example.com") and email.isascii() for email in with_email)
    assert len(set(with_email)) == len(with_email)


def test_events_cover_the_app(demo_size, demo_events):
    _, summary = demo_size
    assert set(summary.events_by_name) == {
        "signed_up",
        "app_installed",
        "logged_in",
        "workout_completed",
        "product_viewed",
        "added_to_cart",
        "purchased",
        "plan_limit_reached",
        "premium_feature_used",
        "plan_upgraded",
    }
    assert summary.events_by_name["signed_up"] > 0.95 * summary.contacts
    assert demo_events["occurred_at"].max() < END
    # imported history: sign-ups before the window arrive as a sync, and only those are flagged
    window_start = END - timedelta(days=21)
    synced = demo_events.filter("is_syncing")
    assert synced.height > 100
    assert synced["occurred_at"].max() < window_start
    assert demo_events.filter(~pl.col("is_syncing"))["occurred_at"].min() >= window_start


def test_properties_follow_the_contracts(demo_size):
    out, _ = demo_size
    records, _ = jsonl_records(out / "events")
    catalogue = {p["product_id"]: p for p in CATALOGUE}
    assert 25 <= len(catalogue) <= 35
    by_name: dict[str, list[dict]] = {}
    for record in records:
        if isinstance(record.get("properties"), dict):
            by_name.setdefault(record.get("name"), []).append(record["properties"])
    for workout in by_name["workout_completed"]:
        assert workout["workout_type"] in {"run", "ride", "yoga", "strength", "swim"}
        assert workout["duration_min"] > 0 and workout["calories"] > 0
    for add in by_name["added_to_cart"]:
        assert set(add) == {"product_id", "name", "category", "price", "quantity"}
        assert catalogue[add["product_id"]]["price"] == add["price"]
    for purchase in by_name["purchased"]:
        assert purchase["currency"] == "USD" and purchase["order_id"].startswith("o_")
        assert purchase["total"] == round(sum(p["price"] * p["quantity"] for p in purchase["products"]), 2)
    assert {p["plan"] for p in by_name["plan_upgraded"]} == {"premium"}
    assert all("limit" in p for p in by_name["plan_limit_reached"])
    assert all("feature" in p for p in by_name["premium_feature_used"])


def test_demo_has_fresh_signups_and_open_carts_at_the_end(demo_size, demo_events):
    _, summary = demo_size
    fresh_signups = demo_events.filter(
        (pl.col("name") == "signed_up") & ~pl.col("is_syncing") & (pl.col("occurred_at") >= END - timedelta(hours=48))
    )
    assert 10 <= fresh_signups.height <= 400

    last_add = demo_events.filter(pl.col("name") == "added_to_cart").group_by("contact_id").agg(
        last_add=pl.col("occurred_at").max()
    )
    last_purchase = demo_events.filter(pl.col("name") == "purchased").group_by("contact_id").agg(
        last_purchase=pl.col("occurred_at").max()
    )
    carts = last_add.join(last_purchase, on="contact_id", how="left").filter(
        pl.col("last_purchase").is_null() | (pl.col("last_purchase") < pl.col("last_add"))
    )
    open_recent = carts.filter(pl.col("last_add").is_between(END - timedelta(hours=24), END - timedelta(hours=1)))
    stale = carts.filter(pl.col("last_add") < END - timedelta(hours=48))
    assert open_recent.height >= 10
    assert stale.height >= 10
    assert summary.signups_last_48h >= 10 and summary.open_carts_1_to_24h >= 10
    # and carts do get bought: within the hour and later
    purchases = demo_events.filter(pl.col("name") == "purchased").height
    assert purchases > 50


def test_timestamps_carry_offsets_that_match_the_contacts_zone(demo_size, demo_events):
    out, _ = demo_size
    zones = {
        c["contact_id"]: c["timezone"]
        for c in map(orjson.loads, (out / "contacts" / "contacts.jsonl").read_text().splitlines())
        if c.get("contact_id")
    }
    texts = demo_events["occurred_at_text"]
    assert texts.str.ends_with("Z").sum() > texts.len() / 2
    assert texts.str.ends_with("+00:00").sum() > 0
    assert texts.str.contains(r"\.\d{3}Z$").sum() > 0
    text = pl.col("occurred_at_text")
    local = demo_events.filter(text.str.contains(r"[+-]\d{2}:\d{2}$") & ~text.str.ends_with("+00:00"))
    assert local.height > 100
    offsets = set(local["occurred_at_text"].str.slice(-6).to_list())
    assert {"+01:00", "+09:00"} <= offsets and any(o.startswith("-") for o in offsets)
    for row in local.sample(200, seed=1).iter_rows(named=True):
        stamp = datetime.fromisoformat(row["occurred_at_text"])
        # the rendered offset is the zone's real one at that instant, so the UTC instant is unchanged
        assert stamp.utcoffset() == row["occurred_at"].astimezone(ZoneInfo(zones[row["contact_id"]])).utcoffset()


def test_bad_rows_cover_every_kind_and_stay_rare(demo_size):
    out, summary = demo_size
    assert set(summary.bad_rows_by_kind) == set(EVENT_BAD_KINDS) | {f"contact_{k}" for k in CONTACT_BAD_KINDS}
    assert summary.bad_event_rows / summary.event_rows < 0.005
    assert summary.duplicate_event_rows > 0
    records, broken = jsonl_records(out / "events")
    assert len(broken) == summary.bad_rows_by_kind["not_json"] + summary.bad_rows_by_kind["truncated"]
    assert sum(1 for r in records if "event_id" not in r) == summary.bad_rows_by_kind["missing_event_id"]
    yesterdays = sum(1 for r in records if r.get("occurred_at") == "yesterday")
    assert yesterdays == summary.bad_rows_by_kind["occurred_at_yesterday"]
    ids = [r["event_id"] for r in records if "event_id" in r]
    assert len(ids) - len(set(ids)) == summary.duplicate_event_rows
    contact_lines = (out / "contacts" / "contacts.jsonl").read_text().splitlines()
    assert any('"email":"not-an-email"' in line for line in contact_lines)
    assert any('"status":"active"' in line for line in contact_lines)


def test_small_samples_still_get_every_kind_of_bad_row(tmp_path):
    summary = generate(tmp_path, contacts=20, days=2)
    assert set(EVENT_BAD_KINDS) <= set(summary.bad_rows_by_kind)


def test_no_bad_rows_when_asked(tmp_path):
    summary = generate(tmp_path, contacts=100, days=3, bad_rows=False)
    records, broken = jsonl_records(tmp_path / "events")
    assert summary.bad_rows == 0 and summary.duplicate_event_rows == 0 and not broken
    assert all({"event_id", "contact_id", "name", "occurred_at"} <= r.keys() for r in records)


def test_end_moves_the_window(tmp_path):
    end = datetime(2027, 3, 15, 12, 0, tzinfo=UTC)
    generate(tmp_path, contacts=50, days=2, end=end, bad_rows=False)
    records, _ = jsonl_records(tmp_path / "events")
    moments = [datetime.fromisoformat(r["occurred_at"]) for r in records if not r.get("is_syncing")]
    assert min(moments) >= end - timedelta(days=2) and max(moments) < end


def test_rejects_a_naive_end(tmp_path):
    with pytest.raises(ValueError, match="time zone"):
        generate(tmp_path, contacts=5, end=datetime(2026, 11, 1))


def test_command_line_prints_the_summary(tmp_path, capsys):
    summary = main(["--contacts", "30", "--days", "2", "--seed", "3", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert f"contacts: {summary.contacts}" in printed and f"events: {summary.events}" in printed
    assert (tmp_path / "contacts" / "contacts.jsonl").exists()
    assert len(list((tmp_path / "events").glob("events-*.jsonl"))) == 2


def test_csv_events_keep_properties_as_json_text(tmp_path):
    generate(tmp_path, contacts=40, days=2, fmt="csv", bad_rows=False)
    frame = pl.read_csv(sorted((tmp_path / "events").glob("*.csv"))[0], infer_schema=False)
    assert frame.columns == ["event_id", "contact_id", "name", "occurred_at", "properties", "is_syncing"]
    with_properties = frame.filter(pl.col("properties").is_not_null())
    assert with_properties.height > 0
    assert all(isinstance(orjson.loads(text), dict) for text in with_properties["properties"])
