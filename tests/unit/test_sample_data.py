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
    CLICKED_AUTOMATIONS,
    CONTACT_BAD_KINDS,
    DEFAULT_DAYS,
    DEFAULT_END,
    EVENT_BAD_KINDS,
    EVENT_COLUMNS,
    EVENT_FORMATS,
    generate,
    main,
)

END = DEFAULT_END
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


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
    """The demo's valid events; `who` is the contact, directly or through the identify of its anonymous_id."""
    out, _ = demo_size
    records, _ = jsonl_records(out / "events")
    # leave out the planted bad rows: missing fields, "yesterday", a timestamp without offset
    good = [
        r
        for r in records
        if {"event_id", "name", "occurred_at"} <= r.keys()
        and ("contact_id" in r or "anonymous_id" in r)
        and r["occurred_at"] != "yesterday"
        and len(r["occurred_at"]) > 19
        and isinstance(r.get("properties", {}), dict)
    ]
    events = pl.DataFrame(
        {
            "event_id": [r["event_id"] for r in good],
            "contact_id": [r.get("contact_id") for r in good],
            "anonymous_id": [r.get("anonymous_id") for r in good],
            "name": [r["name"] for r in good],
            "occurred_at_text": [r["occurred_at"] for r in good],
            "occurred_at": [datetime.fromisoformat(r["occurred_at"]).astimezone(UTC) for r in good],
            "properties": [orjson.dumps(r["properties"]).decode() if "properties" in r else None for r in good],
            "is_syncing": [bool(r.get("is_syncing", False)) for r in good],
        },
        schema_overrides={"contact_id": pl.String, "anonymous_id": pl.String, "properties": pl.String},
    ).unique("event_id", keep="first", maintain_order=True)
    links = (
        events.filter(pl.col("contact_id").is_not_null() & pl.col("anonymous_id").is_not_null())
        .group_by("anonymous_id")
        .agg(linked=pl.col("contact_id").first())
    )
    return events.join(links, on="anonymous_id", how="left").with_columns(
        who=pl.coalesce("contact_id", "linked"),
        product_id=pl.col("properties").str.json_path_match("$.product_id"),
    )


@pytest.fixture(scope="module")
def live_by_contact(demo_events) -> dict[str, list[tuple[datetime, str, str | None]]]:
    """Each known contact's live events in time order: (occurred_at, name, product_id)."""
    live = demo_events.filter(~pl.col("is_syncing") & pl.col("who").is_not_null()).sort("who", "occurred_at")
    timelines: dict[str, list[tuple[datetime, str, str | None]]] = {}
    for who, moment, name, product_id in live.select("who", "occurred_at", "name", "product_id").iter_rows():
        timelines.setdefault(who, []).append((moment, name, product_id))
    return timelines


def real_contacts(out: Path, summary) -> list[dict]:
    """One row per contact: not the planted bad rows, not the older versions a CRM export repeats."""
    contacts = [orjson.loads(line) for line in (out / "contacts" / "contacts.jsonl").read_text().splitlines()]
    real_ids = {f"c_{i:06d}" for i in range(1, summary.contacts + 1)}
    return [c for c in contacts if c.get("contact_id") in real_ids and c["properties"].get("city") != "Old Town"]


@pytest.mark.parametrize("fmt", EVENT_FORMATS)
def test_same_seed_writes_byte_identical_files(tmp_path, fmt):
    first = generate(tmp_path / "a", contacts=150, days=5, seed=11, fmt=fmt)
    second = generate(tmp_path / "b", contacts=150, days=5, seed=11, fmt=fmt)
    tree = read_tree(tmp_path / "a")
    assert tree == read_tree(tmp_path / "b")
    assert all(name.endswith(f".{fmt}") for name in tree if name.startswith("events/"))
    assert first.events == second.events and first.events_by_name == second.events_by_name
    # the new kinds of rows are part of what must repeat
    assert first.anonymous_events > 0 and first.events_by_name["identify"] > 0
    assert first.events_by_name["email_clicked"] > 0


def test_different_seed_writes_different_files(tmp_path):
    generate(tmp_path / "a", contacts=150, days=5, seed=11)
    generate(tmp_path / "b", contacts=150, days=5, seed=12)
    a, b = read_tree(tmp_path / "a"), read_tree(tmp_path / "b")
    assert a.keys() == b.keys()
    assert a["contacts/contacts.jsonl"] != b["contacts/contacts.jsonl"]
    assert all(a[name] != b[name] for name in a if name.startswith("events/"))


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
    real = real_contacts(out, summary)
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
        "identify",
        "email_clicked",
    }
    assert summary.events_by_name["signed_up"] > 0.95 * summary.contacts
    assert demo_events["occurred_at"].max() < END
    # imported history: sign-ups before the window arrive as a sync, and only those are flagged
    window_start = END - timedelta(days=DEFAULT_DAYS)
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
    for view in by_name["product_viewed"]:
        assert view == catalogue[view["product_id"]]  # product_id, name, category, price
    for add in by_name["added_to_cart"]:
        assert set(add) == {"product_id", "name", "category", "price", "quantity"}
        assert {**catalogue[add["product_id"]], "quantity": add["quantity"]} == add
    for purchase in by_name["purchased"]:
        assert set(purchase) == {"order_id", "total", "currency", "products"}
        assert purchase["currency"] == "USD" and purchase["order_id"].startswith("o_")
        assert purchase["total"] == round(sum(p["price"] * p["quantity"] for p in purchase["products"]), 2)
        for line in purchase["products"]:
            assert set(line) == {"product_id", "name", "category", "price", "quantity"}
            assert {**catalogue[line["product_id"]], "quantity": line["quantity"]} == line
    assert {p["plan"] for p in by_name["plan_upgraded"]} == {"premium"}
    assert all(set(p) == {"limit"} for p in by_name["plan_limit_reached"])
    assert all(set(p) == {"feature"} for p in by_name["premium_feature_used"])
    assert all(set(p) == {"platform"} for p in by_name["app_installed"])
    assert all(set(p) == {"source"} for p in by_name["signed_up"])
    assert "identify" not in by_name  # no traits
    clicks = by_name["email_clicked"]
    assert all(set(p) == {"automation", "url"} for p in clicks)
    assert {p["automation"] for p in clicks} == set(CLICKED_AUTOMATIONS)
    assert all(p["url"].startswith("https://") and f"utm_campaign={p['automation']}" in p["url"] for p in clicks)
    assert sum("/products/p_" in p["url"] for p in clicks) > len(clicks) / 4


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
    local = demo_events.filter(
        text.str.contains(r"[+-]\d{2}:\d{2}$") & ~text.str.ends_with("+00:00") & pl.col("who").is_not_null()
    )
    assert local.height > 100
    offsets = set(local["occurred_at_text"].str.slice(-6).to_list())
    assert {"+01:00", "+09:00"} <= offsets and any(o.startswith("-") for o in offsets)
    for row in local.sample(200, seed=1).iter_rows(named=True):
        stamp = datetime.fromisoformat(row["occurred_at_text"])
        # the rendered offset is the zone's real one at that instant, so the UTC instant is unchanged
        assert stamp.utcoffset() == row["occurred_at"].astimezone(ZoneInfo(zones[row["who"]])).utcoffset()


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
    # a row with neither id belongs to nobody
    nobodys = sum(1 for r in records if "name" in r and "contact_id" not in r and "anonymous_id" not in r)
    assert nobodys == summary.bad_rows_by_kind["missing_contact_id"] > 0
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
    assert all({"event_id", "name", "occurred_at"} <= r.keys() for r in records)
    assert all("contact_id" in r or "anonymous_id" in r for r in records)


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
    assert frame.columns == [
        "event_id",
        "contact_id",
        "anonymous_id",
        "name",
        "occurred_at",
        "properties",
        "is_syncing",
    ]
    with_properties = frame.filter(pl.col("properties").is_not_null())
    assert with_properties.height > 0
    assert all(isinstance(orjson.loads(text), dict) for text in with_properties["properties"])


# --- identities ----------------------------------------------------------------------------------


def test_anonymous_installs_are_identified_at_signup_and_some_never(demo_size, demo_events):
    out, summary = demo_size
    anonymous_only = demo_events.filter(pl.col("contact_id").is_null())
    assert anonymous_only.height == summary.anonymous_events > 100
    assert set(anonymous_only["name"]) == {"app_installed", "product_viewed"}
    # every anonymous id starts with an app install
    first = anonymous_only.sort("occurred_at").group_by("anonymous_id", maintain_order=True).first()
    assert set(first["name"]) == {"app_installed"}

    identifies = demo_events.filter(pl.col("name") == "identify")
    assert identifies["contact_id"].null_count() == 0 and identifies["anonymous_id"].null_count() == 0
    assert identifies["anonymous_id"].n_unique() == identifies.height  # one contact per anonymous id
    with_both = demo_events.filter(pl.col("contact_id").is_not_null() & pl.col("anonymous_id").is_not_null())
    assert with_both["name"].unique().to_list() == ["identify"]
    signups = demo_events.filter(pl.col("name") == "signed_up").select("contact_id", signed_up_at="occurred_at")
    at_signup = identifies.join(signups, on="contact_id", how="left")
    assert (at_signup["occurred_at"] == at_signup["signed_up_at"]).all()

    seen = anonymous_only.group_by("anonymous_id").agg(last_anonymous=pl.col("occurred_at").max())
    linked = seen.join(identifies.select("anonymous_id", identified_at="occurred_at"), on="anonymous_id", how="left")
    identified = linked.filter(pl.col("identified_at").is_not_null())
    never = linked.filter(pl.col("identified_at").is_null())
    assert (identified["identified_at"] >= identified["last_anonymous"]).all()  # anonymous until the signup
    assert identified.height > 200 and never.height > 50
    # the rare bad row may have damaged an install or an identify
    assert abs(identified.height - summary.anonymous_installs) <= 3
    assert abs(never.height - summary.anonymous_visitors) <= 3
    # a contact who installed anonymously has no second install under its own id
    installs = demo_events.filter(pl.col("name") == "app_installed")
    assert installs["who"].drop_nulls().n_unique() == installs["who"].drop_nulls().len()

    # in the file, an anonymous row has no contact_id key at all
    line = next(
        text
        for path in sorted((out / "events").glob("*.jsonl"))
        for text in path.read_text().splitlines()
        if '"name":"app_installed"' in text and '"anonymous_id"' in text
    )
    assert set(orjson.loads(line)) == {"event_id", "anonymous_id", "name", "occurred_at", "properties"}


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_csv_and_parquet_have_an_anonymous_id_column_null_where_there_is_none(tmp_path, fmt):
    summary = generate(tmp_path, contacts=150, days=5, fmt=fmt, bad_rows=False)
    paths = sorted((tmp_path / "events").iterdir())
    if fmt == "csv":
        frame = pl.concat([pl.read_csv(path, infer_schema=False) for path in paths])
    else:
        frame = pl.concat([pl.read_parquet(path) for path in paths])
    assert frame.columns == list(EVENT_COLUMNS)
    assert frame.height == summary.events
    anonymous = frame.filter(pl.col("contact_id").is_null())
    assert anonymous.height == summary.anonymous_events > 0
    assert anonymous["anonymous_id"].null_count() == 0
    identifies = frame.filter(pl.col("name") == "identify")
    assert identifies.height > 0
    assert identifies["contact_id"].null_count() == identifies["anonymous_id"].null_count() == 0
    others = frame.filter(pl.col("contact_id").is_not_null() & (pl.col("name") != "identify"))
    assert others["anonymous_id"].null_count() == others.height


def test_some_contacts_have_a_missing_or_an_invalid_time_zone(demo_size, demo_events):
    out, summary = demo_size
    real = real_contacts(out, summary)
    zones = pl.Series([c["timezone"] for c in real]).value_counts()
    counts = dict(zones.rows())

    def valid(name: str) -> bool:
        try:
            ZoneInfo(name)
        except Exception:
            return False
        return True

    invalid = {name: count for name, count in counts.items() if name and not valid(name)}
    assert "Mars/Olympus_Mons" in invalid
    assert sum(invalid.values()) == summary.invalid_timezones
    assert 5 <= summary.invalid_timezones <= 0.03 * len(real)
    assert counts[""] == summary.missing_timezones >= 20
    # an app that knows no valid zone writes its timestamps in UTC
    zoneless = {c["contact_id"] for c in real if c["timezone"] in invalid or not c["timezone"]}
    texts = demo_events.filter(pl.col("who").is_in(zoneless))["occurred_at_text"]
    assert texts.len() > 100
    assert texts.str.contains(r"(Z|\+00:00)$").all()


# --- what the demo's automations find ------------------------------------------------------------


def test_demo_plants_rows_due_for_every_automation(demo_size):
    _, summary = demo_size
    planted = {
        "welcome": summary.signups_last_48h,
        "first_login_nudge": summary.first_moments_24_48h_without_login,
        "cart_abandoned": summary.open_carts_1_to_24h,
        "browse_abandoned": summary.browse_abandons_2_to_26h,
        "upgrade_moment": summary.upgrade_moments_last_48h,
        "post_purchase": summary.purchases_24_48h,
        "clicked_no_purchase": summary.clicks_72_120h_without_purchase,
        "winback": summary.dormant_30d_last_48h,
        "workout_completed": summary.workouts_last_6h,
    }
    # enough to show each automation at work in one tick, few enough to be a sensible day's mail
    assert all(15 <= count <= 250 for count in planted.values()), planted
    # and the cases an exit or a condition must turn away
    assert summary.first_moments_24_48h_with_login >= 15
    assert summary.clicks_72_120h_with_purchase >= 3
    text = summary.describe()
    for count in planted.values():
        assert f": {count}" in text or f" {count} " in text
    assert "winback" in text and "clicked_no_purchase" in text


def test_sign_ups_and_installs_a_day_or_two_old_with_and_without_a_login(demo_size, live_by_contact):
    _, summary = demo_size
    with_login = without_login = 0
    for timeline in live_by_contact.values():
        firsts = [moment for moment, name, _ in timeline if name in ("signed_up", "app_installed")]
        if not firsts or not END - 48 * HOUR <= firsts[0] < END - 24 * HOUR:
            continue
        if any(name == "logged_in" and firsts[0] < m <= firsts[0] + 24 * HOUR for m, name, _ in timeline):
            with_login += 1
        else:
            without_login += 1
    assert with_login >= 15 and without_login >= 15
    assert without_login == summary.first_moments_24_48h_without_login
    assert with_login == summary.first_moments_24_48h_with_login


def test_email_clicks_three_to_five_days_old_some_followed_by_a_purchase(demo_size, demo_events):
    _, summary = demo_size
    clicks = demo_events.filter(pl.col("name") == "email_clicked")
    # a click on a product link shows that product next
    assert clicks.height > 300
    purchases = demo_events.filter(pl.col("name") == "purchased").select("who", purchased_at="occurred_at")
    window = clicks.filter(pl.col("occurred_at").is_between(END - 120 * HOUR, END - 72 * HOUR, closed="left"))
    bought = (
        window.join(purchases, on="who", how="left")
        .group_by("event_id")
        .agg(
            bought=(
                (pl.col("purchased_at") > pl.col("occurred_at"))
                & (pl.col("purchased_at") <= pl.col("occurred_at") + 72 * HOUR)
            ).any()
        )
    )
    without = bought.filter(~pl.col("bought")).height
    assert without >= 20 and bought.filter("bought").height >= 3
    assert without == summary.clicks_72_120h_without_purchase
    # clickers are subscribed contacts with an address: the ones a follow-up can reach
    clickers = set(clicks["who"])
    out, _ = demo_size
    reachable = {
        c["contact_id"] for c in real_contacts(out, summary) if c["status"] == "subscribed" and c.get("email")
    }
    assert clickers <= reachable


def test_products_viewed_twice_within_a_day_and_not_added(demo_size, live_by_contact):
    _, summary = demo_size
    browsing = 0
    for timeline in live_by_contact.values():
        views: dict[str, list[datetime]] = {}
        adds: dict[str, list[datetime]] = {}
        for moment, name, product_id in timeline:
            if name == "product_viewed":
                views.setdefault(product_id, []).append(moment)
            elif name == "added_to_cart":
                adds.setdefault(product_id, []).append(moment)
        browsing += any(
            END - 26 * HOUR <= second <= END - 2 * HOUR
            and second - first <= 24 * HOUR
            and not any(added >= first for added in adds.get(product_id, ()))
            for product_id, moments in views.items()
            for first, second in zip(moments, moments[1:])
        )
    assert browsing >= 20
    assert browsing == summary.browse_abandons_2_to_26h


def test_free_contacts_try_premium_features_and_some_upgrade(demo_size, demo_events):
    out, summary = demo_size
    plans = {c["contact_id"]: c["properties"]["plan"] for c in real_contacts(out, summary)}
    upgraded = set(demo_events.filter(pl.col("name") == "plan_upgraded")["who"])
    uses = demo_events.filter(pl.col("name") == "premium_feature_used").sort("who", "occurred_at")
    # free all along (never upgraded): every premium feature they used was a preview
    previews = uses.filter(pl.col("who").is_in([c for c, plan in plans.items() if plan == "free"]))
    assert previews.height > 100
    thirds = previews.with_columns(
        third_before=pl.col("occurred_at").shift(2).over("who"),
    ).filter(pl.col("occurred_at") - pl.col("third_before") <= 7 * DAY)
    assert thirds["who"].n_unique() >= 30
    assert thirds.filter(pl.col("occurred_at") >= END - 48 * HOUR)["who"].n_unique() >= 5
    # some upgrade after trying features as free users
    first_use = uses.group_by("who").agg(first_use=pl.col("occurred_at").min())
    upgrades = demo_events.filter(pl.col("name") == "plan_upgraded").join(first_use, on="who")
    assert upgrades.filter(pl.col("first_use") < pl.col("occurred_at")).height >= 5
    assert upgraded and all(plans[c] == "premium" for c in upgraded)
    assert demo_events.filter(pl.col("name") == "plan_limit_reached").height > 100
    assert summary.upgrade_moments_last_48h >= 15


def test_contacts_active_then_quiet_for_30_days(demo_size, live_by_contact):
    _, summary = demo_size
    last_seen = {who: timeline[-1][0] for who, timeline in live_by_contact.items()}
    dormant_due = [who for who, moment in last_seen.items() if END - 32 * DAY <= moment < END - 30 * DAY]
    assert 20 <= len(dormant_due) <= 100
    assert len(dormant_due) == summary.dormant_30d_last_48h
    # most were active for a while (some only signed up, or logged in once, and never came back),
    # and older lapses exist too (stale ones)
    assert sum(len(live_by_contact[who]) >= 3 for who in dormant_due) > len(dormant_due) / 2
    assert sum(1 for moment in last_seen.values() if moment < END - 32 * DAY) >= 20


def test_workouts_in_the_last_hours_and_purchases_a_day_old(demo_size, demo_events):
    _, summary = demo_size
    live = demo_events.filter(~pl.col("is_syncing"))
    workouts = live.filter((pl.col("name") == "workout_completed") & (pl.col("occurred_at") >= END - 6 * HOUR))
    assert workouts["who"].n_unique() == summary.workouts_last_6h >= 30  # counted as written
    purchases = live.filter(
        (pl.col("name") == "purchased") & pl.col("occurred_at").is_between(END - 48 * HOUR, END - 24 * HOUR, "left")
    )
    assert purchases.height >= 15
    assert purchases.height == summary.purchases_24_48h


def test_most_events_are_in_the_recent_weeks(demo_size, demo_events):
    _, summary = demo_size
    live = demo_events.filter(~pl.col("is_syncing"))
    recent = live.filter(pl.col("occurred_at") >= END - 21 * DAY).height
    assert recent > 0.6 * live.height
    assert summary.events < 25 * summary.contacts  # a reasonable number of events per contact
