"""Sample landing files for a small fitness-and-shop app.

The data is a function of its arguments: one `random.Random(seed)` drives every
choice and `end` is the only clock, so the same call writes byte-identical
files. Contacts are simulated one at a time and their events streamed straight
into per-day files, so memory stays flat however many contacts are asked for.

What the demo needs is planted on purpose, so that each of the nine automations
has rows due in its send window before `end`: sign-ups and app installs one to
two days old with and without a login since, carts left between one and 24
hours before `end`, products viewed twice and not added, free users trying
premium features or hitting a plan limit, purchases a day old, email clicks
three to five days old with and without a purchase since, contacts who went
quiet thirty days ago, workouts in the last hours. Around them: imported
history flagged `is_syncing`, app installs made before signing up that carry
only an `anonymous_id` (linked by an `identify` event at signup, or never),
timestamps in local offsets, contacts with a missing or invalid time zone, and
a few realistic bad rows and exact duplicates that ingestion must reject or
dedupe.
"""

from __future__ import annotations

import argparse
import csv
import math
import random
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from operator import itemgetter
from pathlib import Path
from typing import IO, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson

DEFAULT_END = datetime(2026, 11, 1, tzinfo=UTC)
# Long enough for a contact to be active, then quiet for 30 days before the end (winback).
DEFAULT_DAYS = 40

EventFormat = Literal["jsonl", "csv", "parquet"]
EVENT_FORMATS: tuple[str, ...] = ("jsonl", "csv", "parquet")
EVENT_COLUMNS = ("event_id", "contact_id", "anonymous_id", "name", "occurred_at", "properties", "is_syncing")

# (display name, ascii form for the email address)
FIRST_NAMES = (
    ("Anna", "anna"), ("Ben", "ben"), ("Clara", "clara"), ("David", "david"), ("Emma", "emma"),
    ("Felix", "felix"), ("Grace", "grace"), ("Hannah", "hannah"), ("Ivan", "ivan"), ("Julia", "julia"),
    ("Kenji", "kenji"), ("Liam", "liam"), ("Mia", "mia"), ("Noah", "noah"), ("Olivia", "olivia"),
    ("Priya", "priya"), ("Sam", "sam"), ("Tom", "tom"), ("José", "jose"), ("Zoë", "zoe"),
    ("Chloé", "chloe"), ("Søren", "soren"), ("Wei", "wei"), ("Aiko", "aiko"),
)
LAST_NAMES = (
    ("Smith", "smith"), ("Johnson", "johnson"), ("Brown", "brown"), ("Garcia", "garcia"),
    ("Miller", "miller"), ("Davis", "davis"), ("Wilson", "wilson"), ("Taylor", "taylor"),
    ("Schmidt", "schmidt"), ("Tanaka", "tanaka"), ("Nguyen", "nguyen"), ("Kowalski", "kowalski"),
    ("Müller", "mueller"), ("Núñez", "nunez"), ("李", "li"), ("O'Neil", "oneil"),
)
# (IANA name, a city there, weight); the empty name is a contact whose app never sent one, and the
# last two are not IANA names at all (a joke and a typo): stg_contacts must fall back to UTC for both.
TIMEZONES = (
    ("Europe/Berlin", "Berlin", 20),
    ("America/New_York", "New York", 22),
    ("Asia/Tokyo", "Tokyo", 10),
    ("America/Los_Angeles", "Los Angeles", 16),
    ("Europe/London", "London", 17),
    ("Australia/Sydney", "Sydney", 10),
    ("", "Springfield", 5),
    ("Mars/Olympus_Mons", "Olympus Mons", 0.5),
    ("Europe/Berlim", "Berlin", 0.5),
)
WORKOUT_TYPES = ("run", "ride", "yoga", "strength", "swim")
# kcal per minute, roughly, so calories look plausible next to the duration
WORKOUT_BURN = {"run": 11, "ride": 9, "yoga": 4, "strength": 7, "swim": 10}
PLAN_LIMITS = ("workouts_per_week", "saved_routes", "training_plans")
PREMIUM_FEATURES = ("training_plans", "heart_rate_zones", "offline_maps", "coach_chat")
SIGNUP_SOURCES = ("organic", "referral", "instagram", "search")
PLATFORMS = ("ios", "android", "web")
# The automations whose emails link somewhere; a click comes back as an `email_clicked` event.
CLICKED_AUTOMATIONS = (
    "welcome", "first_login_nudge", "upgrade_moment", "cart_abandoned", "browse_abandoned",
    "post_purchase", "clicked_no_purchase", "winback",
)
PRODUCT_LINK_AUTOMATIONS = frozenset({"cart_abandoned", "browse_abandoned", "post_purchase", "clicked_no_purchase"})
SHOP_URL = "https://shop.nudge.example"
APP_URL = "https://app.nudge.example"

_PRODUCTS = (
    ("Trail Running Shoes", "footwear", 119.0), ("Road Running Shoes", "footwear", 99.0),
    ("Yoga Mat", "equipment", 39.5), ("Foam Roller", "equipment", 24.99),
    ("Resistance Bands", "equipment", 19.99), ("Kettlebell 12 kg", "equipment", 54.0),
    ("Adjustable Dumbbells", "equipment", 189.0), ("Jump Rope", "equipment", 12.5),
    ("Swim Goggles", "swim", 22.0), ("Swim Cap", "swim", 9.99),
    ("Cycling Gloves", "cycling", 29.0), ("Bike Bottle Cage", "cycling", 14.0),
    ("Heart Rate Strap", "electronics", 79.99), ("GPS Watch", "electronics", 249.0),
    ("Wireless Earbuds", "electronics", 129.0), ("Running Jacket", "apparel", 89.0),
    ("Compression Tights", "apparel", 59.0), ("Sports Bra", "apparel", 39.0),
    ("Training T-Shirt", "apparel", 25.0), ("Merino Socks", "apparel", 16.0),
    ("Whey Protein 1 kg", "nutrition", 34.9), ("Energy Gels (12)", "nutrition", 21.0),
    ("Electrolyte Tabs", "nutrition", 8.5), ("Protein Bars (10)", "nutrition", 19.0),
    ("Shaker Bottle", "accessories", 9.0), ("Gym Bag", "accessories", 45.0),
    ("Microfibre Towel", "accessories", 15.0), ("Phone Armband", "accessories", 17.5),
    ("Massage Gun", "recovery", 149.0), ("Recovery Slides", "recovery", 35.0),
)
CATALOGUE = tuple(
    {"product_id": f"p_{index:03d}", "name": name, "category": category, "price": price}
    for index, (name, category, price) in enumerate(_PRODUCTS, start=1)
)

HOUR = 3600
DAY = 86400

# How often a contact opens the app on a given day, by engagement (share of contacts, probability).
ENGAGEMENT = ((0.25, 0.03), (0.45, 0.25), (0.25, 0.6), (0.05, 0.9))
IMPORTED_SHARE = 0.15  # contacts who signed up before the window: their history arrives as a sync
GROWTH_SHARE = 0.5  # of the sign-ups in the window, this share comes in a linearly growing stream
CHURN_SHARE = 0.3  # contacts who stop using the app at some point in the window
# Contacts who were active and went quiet exactly 30 to 32 days before the end (winback is due);
# a share of those who were signed up by then.
LAPSE_SHARE = 0.05
INSTALL_SHARE = 0.6  # contacts with an app_installed event
ANONYMOUS_INSTALL_SHARE = 0.45  # of the installs in the window: installed before signing up, anonymously
VISITOR_RATE = 0.1  # per contact, an anonymous visitor who installs the app and never signs up
FIRST_LOGIN = (0.45, 0.7)  # after signing up: a login within 24 h, a first login 1-3 days later, none
CLICK_RATE = 0.07  # per session of a subscribed contact with an email address: it began with a click
CLICK_PURCHASE_RATE = 0.35  # a click on a product link followed by buying it within 72 h
REVISIT_RATE = 0.4  # per shopping session: one product is looked at again within the day
REVISIT_ADD_RATE = 0.2  # ... and added to the cart the second time
CURIOUS_SHARE = 0.12  # free contacts who keep trying premium features (previews)
PREVIEW_RATE = (0.03, 0.45)  # per session: a free contact tries a premium feature (others, curious ones)
PARQUET_BUFFER_ROWS = 100_000  # event rows held for Parquet row groups, over all day files
BAD_ROW_RATE = 0.002
DUPLICATE_RATE = 0.001
SUPERSEDED_CONTACT_RATE = 0.01

EVENT_BAD_KINDS = (
    "not_json",
    "truncated",
    "missing_event_id",
    "missing_contact_id",
    "missing_name",
    "occurred_at_yesterday",
    "occurred_at_without_offset",
    "properties_not_object",
)
# Lines that only exist as text: Parquet cannot hold them.
TEXT_ONLY_BAD_KINDS = frozenset({"not_json", "truncated"})
CONTACT_BAD_KINDS = ("invalid_email", "unknown_status", "missing_contact_id", "updated_at_without_offset")

class _SampleRandom(random.Random):
    """random.Random with integer draws built on random(): several times cheaper than the stdlib's
    exact rejection sampling, still fully determined by the seed, and the bias is far below noise."""

    def randint(self, a: int, b: int) -> int:
        return a + int(self.random() * (b - a + 1))

    def randrange(self, start: int, stop: int | None = None) -> int:  # type: ignore[override]
        if stop is None:
            start, stop = 0, start
        return start + int(self.random() * (stop - start))

    def choice(self, seq):  # type: ignore[override]
        return seq[int(self.random() * len(seq))]


_MASK64 = (1 << 64) - 1
_ORDER_SALT = 0x5DEECE66D
_ANONYMOUS_SALT = 0x2545F4914F6CDD1D
_ANONYMOUS_TAIL_SALT = 0x9E3779B97F4A7C15


def _mix64(value: int) -> int:
    """splitmix64's finalizer: a bijection, so distinct counters give distinct, random-looking ids."""
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


@lru_cache(maxsize=4096)
def _date_text(epoch_day: int) -> str:
    return (datetime(1970, 1, 1) + timedelta(days=epoch_day)).strftime("%Y-%m-%d")


@lru_cache(maxsize=256)
def _offset_suffix(offset_seconds: int) -> str:
    if offset_seconds == 0:
        return "Z"
    sign = "+" if offset_seconds > 0 else "-"
    hours, minutes = divmod(abs(offset_seconds) // 60, 60)
    return f"{sign}{hours:02d}:{minutes:02d}"


@lru_cache(maxsize=64)
def is_valid_timezone(timezone_name: str) -> bool:
    try:
        ZoneInfo(timezone_name)
    except (ValueError, ZoneInfoNotFoundError):
        return False
    return bool(timezone_name)


@lru_cache(maxsize=1 << 18)
def _utc_offset_at_hour(timezone_name: str, epoch_hour: int) -> int:
    if not is_valid_timezone(timezone_name):
        return 0  # an app without a (valid) zone writes UTC
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(hours=epoch_hour)
    offset = moment.astimezone(ZoneInfo(timezone_name)).utcoffset()
    return int(offset.total_seconds()) if offset is not None else 0


def utc_offset(timezone_name: str, epoch_seconds: int) -> int:
    """The zone's real offset at that instant (DST included); zones change offset on the hour."""
    return _utc_offset_at_hour(timezone_name, epoch_seconds // 3600)


def format_timestamp(epoch_seconds: int, offset_seconds: int = 0, *, millis: int | None = None, z: bool = True) -> str:
    """ISO 8601 with an explicit offset, the way a client in that offset would write it."""
    local = epoch_seconds + offset_seconds
    epoch_day, seconds = divmod(local, 86400)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    fraction = f".{millis:03d}" if millis is not None else ""
    suffix = _offset_suffix(offset_seconds) if (z or offset_seconds) else "+00:00"
    return f"{_date_text(epoch_day)}T{hours:02d}:{minutes:02d}:{seconds:02d}{fraction}{suffix}"


@dataclass
class GenerationSummary:
    """What was written, and how much of each behaviour the demo's automations look for was planted.

    The planted counts are taken from each contact's events as written (a bad row is not an event),
    with the window each automation's message is due in at `end`."""

    out_dir: Path
    contacts: int = 0
    contact_rows: int = 0  # lines in the contacts file: one per contact, plus superseded versions and bad rows
    superseded_contact_rows: int = 0
    events: int = 0  # distinct, valid events written
    events_by_name: Counter[str] = field(default_factory=Counter)
    anonymous_events: int = 0  # of `events`: rows with an anonymous_id and no contact_id
    bad_event_rows: int = 0
    bad_contact_rows: int = 0
    bad_rows_by_kind: Counter[str] = field(default_factory=Counter)
    duplicate_event_rows: int = 0
    missing_timezones: int = 0  # contacts with timezone ''
    invalid_timezones: int = 0  # contacts whose timezone is not an IANA name
    anonymous_installs: int = 0  # contacts who installed the app anonymously before signing up
    anonymous_visitors: int = 0  # anonymous ids that never sign up, so are never identified
    # planted for the automations (contacts, unless it says events)
    signups_last_48h: int = 0  # welcome
    first_moments_24_48h_with_login: int = 0  # first_login_nudge: signed up / installed 24-48h ago, logged in
    first_moments_24_48h_without_login: int = 0  # ... and did not log in within 24 h (due)
    open_carts_1_to_24h: int = 0  # cart_abandoned
    browse_abandons_2_to_26h: int = 0  # browse_abandoned: a product viewed twice in 24 h, not added
    upgrade_moments_last_48h: int = 0  # upgrade_moment: free, and a plan limit or a third preview in 7 days
    purchases_24_48h: int = 0  # post_purchase (events)
    clicks_72_120h_without_purchase: int = 0  # clicked_no_purchase (events)
    clicks_72_120h_with_purchase: int = 0  # ... the ones a purchase within 72 h exits
    dormant_30d_last_48h: int = 0  # winback: last live activity 30-32 days before the end
    workouts_last_6h: int = 0  # workout_completed
    files: list[Path] = field(default_factory=list)

    @property
    def bad_rows(self) -> int:
        return self.bad_event_rows + self.bad_contact_rows

    @property
    def event_rows(self) -> int:
        """Every row written to the event files."""
        return self.events + self.bad_event_rows + self.duplicate_event_rows

    def describe(self) -> str:
        by_name = ", ".join(f"{name} {count}" for name, count in sorted(self.events_by_name.items()))
        return "\n".join(
            [
                f"Sample data in {self.out_dir}",
                f"  contacts: {self.contacts} "
                f"({self.contact_rows} rows, {self.superseded_contact_rows} older versions; "
                f"time zone missing {self.missing_timezones}, invalid {self.invalid_timezones})",
                f"  events: {self.events} ({by_name})",
                f"  anonymous: {self.anonymous_events} events without a contact_id; "
                f"{self.anonymous_installs} contacts installed before signing up (identified at signup), "
                f"{self.anonymous_visitors} visitors never identified",
                f"  bad rows: {self.bad_rows} ({self.bad_event_rows} events, {self.bad_contact_rows} contacts), "
                f"duplicate event rows: {self.duplicate_event_rows}",
                "  planted, as of the end (due in each automation's send window):",
                f"    welcome: sign-ups in the last 48h: {self.signups_last_48h}",
                f"    first_login_nudge: signed up or installed 24-48h before the end: "
                f"{self.first_moments_24_48h_without_login} without a login within 24h, "
                f"{self.first_moments_24_48h_with_login} with one",
                f"    cart_abandoned: open carts last touched 1-24h before the end: {self.open_carts_1_to_24h}",
                f"    browse_abandoned: a product viewed twice within 24h and not added, "
                f"last view 2-26h before the end: {self.browse_abandons_2_to_26h}",
                f"    upgrade_moment: free contacts with a plan limit or a third premium preview in 7 days, "
                f"in the last 48h: {self.upgrade_moments_last_48h}",
                f"    post_purchase: purchases 24-48h before the end: {self.purchases_24_48h}",
                f"    clicked_no_purchase: email clicks 72-120h before the end: "
                f"{self.clicks_72_120h_without_purchase} without a purchase within 72h, "
                f"{self.clicks_72_120h_with_purchase} with one",
                f"    winback: last activity 30-32 days before the end: {self.dormant_30d_last_48h}",
                f"    workout_completed: contacts with a workout in the last 6h: {self.workouts_last_6h}",
                f"  files written: {len(self.files)}",
            ]
        )


# An event on its way to a file:
# (event_id, contact_id | None, anonymous_id | None, name, occurred_at, properties JSON text | None, is_syncing)
EventRow = tuple[str, str | None, str | None, str, str, str | None, bool]

# Who an event in a contact's timeline is attributed to in the file.
BY_CONTACT, BY_ANONYMOUS, BY_BOTH = 0, 1, 2
# One event of a simulated timeline: (moment in epoch seconds, name, properties | None, who)
TimelineEvent = tuple[int, str, dict | None, int]
_moment = itemgetter(0)


class _EventSink:
    """One day's events file in one format; rows arrive in simulation order."""

    def __init__(self, path: Path, fmt: str) -> None:
        self.path = path
        self.fmt = fmt
        self._handle: IO[str] | None = None
        self._csv = None
        self._columns: list[list] | None = None
        self._parquet_writer = None
        if fmt == "jsonl":
            self._handle = path.open("w", encoding="utf-8", newline="\n", buffering=1 << 20)
        elif fmt == "csv":
            self._handle = path.open("w", encoding="utf-8", newline="", buffering=1 << 20)
            self._csv = csv.writer(self._handle, lineterminator="\n")
            self._csv.writerow(EVENT_COLUMNS)
        else:
            self._columns = [[] for _ in EVENT_COLUMNS]

    def write(self, row: EventRow) -> None:
        if self._columns is not None:
            for column, value in zip(self._columns, row):
                column.append(value)
        elif self._csv is not None:
            event_id, contact_id, anonymous_id, name, occurred_at, properties, is_syncing = row
            flag = "true" if is_syncing else ""
            ids = (contact_id or "", anonymous_id or "")
            self._csv.writerow((event_id, *ids, name, occurred_at, properties or "", flag))
        else:
            assert self._handle is not None
            self._handle.write(jsonl_line(row))

    def write_fields(self, fields: dict) -> None:
        """A row with fields missing or of the wrong kind (a bad row)."""
        if self._columns is not None:
            row = tuple(fields.get(name) for name in EVENT_COLUMNS[:5]) + (
                orjson.dumps(fields["properties"]).decode() if "properties" in fields else None,
                bool(fields.get("is_syncing", False)),
            )
            self.write(row)  # type: ignore[arg-type]
        elif self._csv is not None:
            properties = orjson.dumps(fields["properties"]).decode() if "properties" in fields else ""
            flag = "true" if fields.get("is_syncing") else ""
            self._csv.writerow((*(fields.get(name, "") for name in EVENT_COLUMNS[:5]), properties, flag))
        else:
            assert self._handle is not None
            self._handle.write(orjson.dumps(fields).decode() + "\n")

    def write_text(self, text: str) -> bool:
        """A raw line (not JSON, cut short); formats without lines cannot hold one."""
        if self._columns is not None:
            return False
        assert self._handle is not None
        self._handle.write(text + "\n")
        return True

    @property
    def buffered_rows(self) -> int:
        return len(self._columns[0]) if self._columns is not None else 0

    def flush(self) -> None:
        """Write the buffered rows as a row group (Parquet); text formats write as they go."""
        if self.buffered_rows:
            self._flush_parquet()

    def _flush_parquet(self) -> None:
        import polars as pl
        import pyarrow.parquet as pq

        assert self._columns is not None
        frame = pl.DataFrame(
            dict(zip(EVENT_COLUMNS, self._columns)),
            schema={name: (pl.Boolean if name == "is_syncing" else pl.String) for name in EVENT_COLUMNS},
        )
        table = frame.to_arrow()
        if self._parquet_writer is None:
            self._parquet_writer = pq.ParquetWriter(self.path, table.schema, compression="zstd")
        self._parquet_writer.write_table(table)
        self._columns = [[] for _ in EVENT_COLUMNS]

    def close(self) -> None:
        if self._columns is not None:
            if self._columns[0] or self._parquet_writer is None:
                self._flush_parquet()
            self._parquet_writer.close()
        elif self._handle is not None:
            self._handle.close()


def jsonl_line(row: EventRow) -> str:
    event_id, contact_id, anonymous_id, name, occurred_at, properties, is_syncing = row
    # Ids, names and timestamps are plain ASCII we made ourselves: no escaping needed, and orjson
    # already wrote the properties, so this is much faster than dumping a dict per event.
    # An id the event does not carry is left out, as an SDK leaves it out.
    line = f'{{"event_id":"{event_id}"'
    if contact_id is not None:
        line += f',"contact_id":"{contact_id}"'
    if anonymous_id is not None:
        line += f',"anonymous_id":"{anonymous_id}"'
    line += f',"name":"{name}","occurred_at":"{occurred_at}"'
    if properties is not None:
        line += f',"properties":{properties}'
    if is_syncing:
        line += ',"is_syncing":true'
    return line + "}\n"


class _Simulation:
    def __init__(self, out_dir: Path, *, contacts: int, days: int, end: datetime, seed: int, bad_rows: bool, fmt: str):
        self.rng = _SampleRandom(seed)
        self.seed = seed
        self.out_dir = out_dir
        self.contacts = contacts
        self.end_ts = int(end.timestamp())
        self.start_ts = self.end_ts - days * 86400
        self.bad_rows = bad_rows
        self.fmt = fmt
        self.summary = GenerationSummary(out_dir=out_dir)
        self.sinks: dict[str, _EventSink] = {}
        self.event_seq = 0
        self.order_seq = 0
        self.anonymous_seq = 0
        self.bad_kind_turn = 0
        self.id_width = max(6, len(str(contacts + len(CONTACT_BAD_KINDS))))
        self.timezone_names = [name for name, _, _ in TIMEZONES]
        self.timezone_weights = [weight for _, _, weight in TIMEZONES]
        self.cities = {name: city for name, city, _ in TIMEZONES}

    # ids -------------------------------------------------------------------------------------
    def next_event_id(self) -> str:
        self.event_seq += 1
        return f"e_{_mix64(((self.seed & 0xFFFFFF) << 40) | self.event_seq):016x}"

    def next_order_id(self) -> str:
        self.order_seq += 1
        return f"o_{_mix64((((self.seed & 0xFFFFFF) << 40) | self.order_seq) ^ _ORDER_SALT):016x}"

    def next_anonymous_id(self) -> str:
        """UUID-shaped, as client SDKs make them; the first 64 bits are a bijection of the counter."""
        self.anonymous_seq += 1
        counter = ((self.seed & 0xFFFFFF) << 40) | self.anonymous_seq
        a = f"{_mix64(counter ^ _ANONYMOUS_SALT):016x}"
        b = f"{_mix64(counter ^ _ANONYMOUS_TAIL_SALT):016x}"
        return f"{a[:8]}-{a[8:12]}-4{a[12:15]}-{'89ab'[int(b[0], 16) & 3]}{a[15]}{b[1:3]}-{b[3:15]}"

    def contact_id(self, index: int) -> str:
        return f"c_{index:0{self.id_width}d}"

    # files -----------------------------------------------------------------------------------
    def bound_buffers(self) -> None:
        """Parquet rows wait in memory for a row group; past a budget, the fullest day files write
        theirs, so memory stays flat however many contacts (and deterministic: the data decides)."""
        if self.fmt != "parquet":
            return
        total = sum(sink.buffered_rows for sink in self.sinks.values())
        if total <= PARQUET_BUFFER_ROWS:
            return
        for sink in sorted(self.sinks.values(), key=lambda sink: (-sink.buffered_rows, sink.path)):
            total -= sink.buffered_rows
            sink.flush()
            if total <= PARQUET_BUFFER_ROWS // 2:
                break

    def sink_for(self, epoch_seconds: int) -> _EventSink:
        day = _date_text(epoch_seconds // 86400)
        sink = self.sinks.get(day)
        if sink is None:
            path = self.out_dir / "events" / f"events-{day}.{self.fmt}"
            sink = self.sinks[day] = _EventSink(path, self.fmt)
        return sink

    # one contact -----------------------------------------------------------------------------
    def signup_moment(self) -> int:
        """A moment in the live window: half uniform, half a stream that grows towards the end (an app
        gaining users), so the recent weeks hold most of the activity."""
        rng = self.rng
        share = rng.random()
        if rng.random() < GROWTH_SHARE:
            share = math.sqrt(share)
        return self.start_ts + int(share * (self.end_ts - self.start_ts))

    def simulate_contact(self, index: int, contacts_out: IO[str]) -> None:
        rng = self.rng
        end_ts = self.end_ts
        contact_id = self.contact_id(index)
        first, first_ascii = rng.choice(FIRST_NAMES)
        last, last_ascii = rng.choice(LAST_NAMES)
        timezone_name = rng.choices(self.timezone_names, self.timezone_weights)[0]
        valid_zone = is_valid_timezone(timezone_name)
        if not timezone_name:
            self.summary.missing_timezones += 1
        elif not valid_zone:
            self.summary.invalid_timezones += 1
        draw = rng.random()
        has_email = draw >= 0.02
        status = (
            "subscribed" if draw < 0.87 else "unsubscribed" if draw < 0.94 else "cleaned" if draw < 0.97 else "pending"
        )
        plan = initial_plan = "premium" if rng.random() < 0.2 else "free"
        draw = rng.random()
        # A client SDK formats every timestamp the same way: most in UTC, some in the user's offset.
        style = "z" if draw < 0.6 else "utc" if draw < 0.7 else "millis" if draw < 0.8 else "local"
        if style == "local" and not valid_zone:
            style = "z"

        imported = rng.random() < IMPORTED_SHARE
        if imported:
            signup_ts = self.start_ts - rng.randint(1, 180) * DAY - rng.randrange(DAY)
        else:
            signup_ts = self.signup_moment()
        draw = rng.random()
        daily_probability = ENGAGEMENT[-1][1]
        for share, probability in ENGAGEMENT:
            if draw < share:
                daily_probability = probability
                break
            draw -= share
        live_from = max(signup_ts, self.start_ts)
        active_until = end_ts
        if rng.random() < CHURN_SHARE:
            active_until = live_from + rng.randrange(max(1, end_ts - live_from))
        # Winback: some who were signed up by then are last seen 30-32 days before the end, so their
        # 30 quiet days end within the last 48 hours (at least an hour inside, either side).
        last_seen = end_ts - 30 * DAY - 2 * HOUR - rng.randrange(44 * HOUR)
        lapses = rng.random() < LAPSE_SHARE and live_from <= last_seen - DAY
        if lapses:
            active_until = last_seen
        # The hour people open a fitness app, in their own day (7:00-22:00), moved to UTC.
        local_offset_hours = utc_offset(timezone_name, end_ts) // 3600

        events: list[TimelineEvent] = []
        history: list[TimelineEvent] = []
        anonymous_id = None
        if imported:
            history.append((signup_ts, "signed_up", {"source": rng.choice(SIGNUP_SOURCES)}, BY_CONTACT))
            if rng.random() < INSTALL_SHARE:
                installed = signup_ts + rng.randint(60, 2 * HOUR)
                history.append((installed, "app_installed", {"platform": rng.choice(PLATFORMS)}, BY_CONTACT))
            for _ in range(rng.randint(0, 3)):
                moment = signup_ts + rng.randrange(max(1, self.start_ts - signup_ts))
                if rng.random() < 0.5:
                    history.append((moment, "logged_in", None, BY_CONTACT))
                else:
                    history.append((moment, "workout_completed", self.workout(), BY_CONTACT))
        else:
            anonymous_id = self.sign_up(signup_ts, events)

        clicks_email = has_email and status == "subscribed"
        curious = plan == "free" and rng.random() < CURIOUS_SHARE
        preview_rate = PREVIEW_RATE[1] if curious else PREVIEW_RATE[0]
        previews: list[int] = []
        plan_changed_ts = signup_ts
        first_day = live_from // DAY
        last_day = (end_ts - 1) // DAY
        for epoch_day in range(first_day, last_day + 1):
            if rng.random() >= daily_probability:
                continue
            local_hour = rng.randint(7, 22)
            session = epoch_day * DAY + ((local_hour - local_offset_hours) % 24) * HOUR + rng.randrange(HOUR)
            if session < live_from or session >= active_until:
                continue
            moment = session
            if clicks_email and rng.random() < CLICK_RATE:
                moment = self.click(moment, events)  # the session began with a click in an email
            events.append(
                (moment, "logged_in", {"platform": rng.choice(PLATFORMS)} if rng.random() < 0.5 else None, BY_CONTACT)
            )
            if rng.random() < 0.6:
                moment += rng.randint(600, 4800)
                events.append((moment, "workout_completed", self.workout(), BY_CONTACT))
            if plan == "free" and rng.random() < 0.08:
                moment += rng.randint(30, 600)
                events.append((moment, "plan_limit_reached", {"limit": rng.choice(PLAN_LIMITS)}, BY_CONTACT))
                if rng.random() < 0.15:
                    moment += rng.randint(60, 900)
                    plan, plan_changed_ts = "premium", moment
                    events.append((moment, "plan_upgraded", {"plan": "premium"}, BY_CONTACT))
            elif plan == "free" and rng.random() < preview_rate:
                # A free user trying a premium feature's preview, once or twice a session.
                for _ in range(1 if rng.random() < 0.7 else 2):
                    moment += rng.randint(30, 900)
                    previews.append(moment)
                    feature = {"feature": rng.choice(PREMIUM_FEATURES)}
                    events.append((moment, "premium_feature_used", feature, BY_CONTACT))
                if sum(1 for used in previews if used > moment - 7 * DAY) >= 3 and rng.random() < 0.2:
                    moment += rng.randint(60, 900)
                    plan, plan_changed_ts = "premium", moment
                    events.append((moment, "plan_upgraded", {"plan": "premium"}, BY_CONTACT))
            elif plan == "premium" and rng.random() < 0.4:
                moment += rng.randint(30, 900)
                events.append((moment, "premium_feature_used", {"feature": rng.choice(PREMIUM_FEATURES)}, BY_CONTACT))
            if rng.random() < 0.25:
                moment = self.shop(moment, events)
        if lapses:
            # Nothing after the last visit (a purchase or a second look the sessions scheduled later
            # would be activity too), and the last visit itself is planted.
            events = [event for event in events if event[0] < last_seen]
            events.append((last_seen, "logged_in", None, BY_CONTACT))
            if rng.random() < 0.6:
                events.append((last_seen + rng.randint(600, 3000), "workout_completed", self.workout(), BY_CONTACT))

        self.write_events(contact_id, None, timezone_name, style, history, syncing=True)
        written = self.write_events(contact_id, anonymous_id, timezone_name, style, events, syncing=False)
        self.tally(written, imported=imported, plan=initial_plan)

        updated_ts = max(plan_changed_ts, signup_ts) + rng.randint(0, 3600)
        updated_ts = min(updated_ts, end_ts - 1)
        record = {
            "contact_id": contact_id,
            "email": f"{first_ascii}.{last_ascii}{index}@example.com" if has_email else ("" if index % 2 else None),
            "status": status,
            "first_name": first,
            "last_name": last,
            "timezone": timezone_name,
            "properties": {"plan": plan, "city": self.cities[timezone_name]},
            "updated_at": self.timestamp(updated_ts, timezone_name, style),
        }
        if record["email"] is None:
            del record["email"]
        contacts_out.write(orjson.dumps(record).decode() + "\n")
        self.summary.contacts += 1
        self.summary.contact_rows += 1
        if rng.random() < SUPERSEDED_CONTACT_RATE:
            # A CRM export that also lists an older version, after the newer one: newest must win, not last.
            older = dict(record, properties={"plan": "free", "city": "Old Town"})
            older["updated_at"] = self.timestamp(updated_ts - rng.randint(3600, 30 * 86400), timezone_name, "z")
            contacts_out.write(orjson.dumps(older).decode() + "\n")
            self.summary.contact_rows += 1
            self.summary.superseded_contact_rows += 1
        if rng.random() < VISITOR_RATE:
            self.simulate_visitor()

    def sign_up(self, signup_ts: int, events: list[TimelineEvent]) -> str | None:
        """A live sign-up, the app install around it and the first login; the anonymous id of an install
        made before signing up (its events carry only that id until `identify` links it), else None."""
        rng = self.rng
        anonymous_id = None
        if rng.random() < INSTALL_SHARE:
            platform = rng.choice(PLATFORMS)
            installed = signup_ts + rng.randint(60, 2 * HOUR)
            if rng.random() < ANONYMOUS_INSTALL_SHARE:
                draw = rng.random()
                if draw < 0.6:
                    before = rng.randint(300, 3 * HOUR)  # installed, looked around, signed up
                elif draw < 0.9:
                    before = rng.randint(3 * HOUR, 2 * DAY)
                else:
                    before = rng.randint(2 * DAY, 6 * DAY)
                if signup_ts - before >= self.start_ts:  # live events stay inside the window
                    installed = signup_ts - before
                    anonymous_id = self.next_anonymous_id()
            if anonymous_id is None:
                events.append((installed, "app_installed", {"platform": platform}, BY_CONTACT))
            else:
                self.summary.anonymous_installs += 1
                events.append((installed, "app_installed", {"platform": platform}, BY_ANONYMOUS))
                moment = installed
                for _ in range(rng.randint(1, 2) if rng.random() < 0.4 else 0):
                    moment += rng.randint(60, max(60, (signup_ts - moment) // 2))
                    events.append((moment, "product_viewed", dict(rng.choice(CATALOGUE)), BY_ANONYMOUS))
                events.append((signup_ts, "identify", None, BY_BOTH))
        events.append((signup_ts, "signed_up", {"source": rng.choice(SIGNUP_SOURCES)}, BY_CONTACT))
        draw = rng.random()
        if draw < FIRST_LOGIN[0]:
            events.append((signup_ts + rng.randint(120, 23 * HOUR), "logged_in", None, BY_CONTACT))
        elif draw < FIRST_LOGIN[1]:
            events.append((signup_ts + rng.randint(25 * HOUR, 72 * HOUR), "logged_in", None, BY_CONTACT))
        return anonymous_id

    def simulate_visitor(self) -> None:
        """Someone who installs the app and looks around but never signs up: never identified."""
        rng = self.rng
        anonymous_id = self.next_anonymous_id()
        installed = self.signup_moment()
        platform = {"platform": rng.choice(PLATFORMS)}
        timeline: list[TimelineEvent] = [(installed, "app_installed", platform, BY_ANONYMOUS)]
        moment = installed
        for _ in range(rng.randint(0, 3)):
            moment += rng.randint(60, 3 * HOUR)
            timeline.append((moment, "product_viewed", dict(rng.choice(CATALOGUE)), BY_ANONYMOUS))
        self.summary.anonymous_visitors += 1
        self.write_events(None, anonymous_id, "", "z" if rng.random() < 0.8 else "millis", timeline, syncing=False)

    def workout(self) -> dict:
        rng = self.rng
        workout_type = rng.choice(WORKOUT_TYPES)
        duration = rng.randint(15, 90)
        calories = duration * WORKOUT_BURN[workout_type] + rng.randint(-40, 40)
        return {"workout_type": workout_type, "duration_min": duration, "calories": max(calories, 30)}

    def click(self, moment: int, events: list[TimelineEvent]) -> int:
        """A click in one of our emails opens the app or the shop; some product clicks end in a purchase
        of that product within 72 hours. Returns when the session goes on."""
        rng = self.rng
        automation = rng.choice(CLICKED_AUTOMATIONS)
        campaign = f"utm_source=nudge&utm_medium=email&utm_campaign={automation}"
        product = rng.choice(CATALOGUE) if automation in PRODUCT_LINK_AUTOMATIONS else None
        if product is not None:
            url = f"{SHOP_URL}/products/{product['product_id']}?{campaign}"
        elif automation == "upgrade_moment":
            url = f"{APP_URL}/upgrade?{campaign}"
        else:
            url = f"{APP_URL}/open?{campaign}"
        events.append((moment, "email_clicked", {"automation": automation, "url": url}, BY_CONTACT))
        if product is not None:
            events.append((moment + rng.randint(5, 60), "product_viewed", dict(product), BY_CONTACT))
            if rng.random() < CLICK_PURCHASE_RATE:
                later = rng.randint(2 * HOUR, 70 * HOUR) if rng.random() < 0.4 else rng.randint(90, 1800)
                added = moment + later
                events.append((added, "added_to_cart", {**product, "quantity": 1}, BY_CONTACT))
                self.purchase(added + rng.randint(60, 900), [{**product, "quantity": 1}], events)
        return moment + rng.randint(5, 120)

    def shop(self, moment: int, events: list[TimelineEvent]) -> int:
        rng = self.rng
        for _ in range(rng.randint(1, 3)):
            moment += rng.randint(20, 400)
            events.append((moment, "product_viewed", dict(rng.choice(CATALOGUE)), BY_CONTACT))
        if rng.random() < REVISIT_RATE:
            # Looked at closely, and again later that day: mostly not added (browse_abandoned).
            product = rng.choice(CATALOGUE)
            moment += rng.randint(20, 400)
            events.append((moment, "product_viewed", dict(product), BY_CONTACT))
            again = moment + rng.randint(HOUR, 22 * HOUR)
            events.append((again, "product_viewed", dict(product), BY_CONTACT))
            if rng.random() < REVISIT_ADD_RATE:
                events.append((again + rng.randint(30, 600), "added_to_cart", {**product, "quantity": 1}, BY_CONTACT))
        if rng.random() >= 0.45:
            return moment
        lines: dict[str, dict] = {}
        for _ in range(rng.randint(1, 3)):
            moment += rng.randint(20, 600)
            product = rng.choice(CATALOGUE)
            quantity = 1 if rng.random() < 0.8 else 2
            events.append((moment, "added_to_cart", {**product, "quantity": quantity}, BY_CONTACT))
            line = lines.setdefault(product["product_id"], {**product, "quantity": 0})
            line["quantity"] += quantity
        draw = rng.random()
        if draw < 0.35:
            self.purchase(moment + rng.randint(120, 3300), list(lines.values()), events)
        elif draw < 0.5:
            self.purchase(moment + rng.randint(3 * HOUR, 30 * HOUR), list(lines.values()), events)
        return moment

    def purchase(self, moment: int, lines: list[dict], events: list[TimelineEvent]) -> None:
        products = [
            {
                "product_id": p["product_id"],
                "name": p["name"],
                "category": p["category"],
                "price": p["price"],
                "quantity": p["quantity"],
            }
            for p in lines
        ]
        total = round(sum(p["price"] * p["quantity"] for p in products), 2)
        order = {"order_id": self.next_order_id(), "total": total, "currency": "USD", "products": products}
        events.append((moment, "purchased", order, BY_CONTACT))

    def tally(self, live: list[TimelineEvent], *, imported: bool, plan: str) -> None:
        """Count what this contact's live events as written (valid, in time order, before the end) plant
        for the automations."""
        summary = self.summary
        end = self.end_ts
        first_moment = None
        logins: list[int] = []
        purchases: list[int] = []
        clicks: list[int] = []
        views: dict[str, list[int]] = {}
        adds: dict[str, list[int]] = {}
        previews: list[int] = []
        open_cart_last_add = None
        upgrade_moment = workout_recent = signed_up_recent = False
        for moment, name, properties, _ in live:
            if name == "signed_up" or name == "app_installed":
                first_moment = moment if first_moment is None else first_moment
                signed_up_recent |= name == "signed_up" and moment >= end - 48 * HOUR
            elif name == "logged_in":
                logins.append(moment)
            elif name == "product_viewed":
                views.setdefault(properties["product_id"], []).append(moment)
            elif name == "added_to_cart":
                adds.setdefault(properties["product_id"], []).append(moment)
                open_cart_last_add = moment
            elif name == "purchased":
                purchases.append(moment)
                open_cart_last_add = None  # a purchase closes the cart
            elif name == "email_clicked":
                clicks.append(moment)
            elif name == "workout_completed":
                workout_recent |= moment >= end - 6 * HOUR
            elif name == "plan_upgraded":
                plan = properties["plan"]
            elif name == "plan_limit_reached":
                upgrade_moment |= plan == "free" and moment >= end - 48 * HOUR
            elif name == "premium_feature_used" and plan == "free":
                previews.append(moment)
                third = sum(1 for used in previews if used > moment - 7 * DAY) >= 3
                upgrade_moment |= third and moment >= end - 48 * HOUR
        summary.signups_last_48h += signed_up_recent and not imported
        if not imported and first_moment is not None and end - 48 * HOUR <= first_moment < end - 24 * HOUR:
            if any(first_moment < login <= first_moment + 24 * HOUR for login in logins):
                summary.first_moments_24_48h_with_login += 1
            else:
                summary.first_moments_24_48h_without_login += 1
        if open_cart_last_add is not None and end - 24 * HOUR <= open_cart_last_add <= end - HOUR:
            summary.open_carts_1_to_24h += 1
        summary.purchases_24_48h += sum(1 for moment in purchases if end - 48 * HOUR <= moment < end - 24 * HOUR)
        for clicked in clicks:
            if end - 120 * HOUR <= clicked < end - 72 * HOUR:
                if any(clicked < moment <= clicked + 72 * HOUR for moment in purchases):
                    summary.clicks_72_120h_with_purchase += 1
                else:
                    summary.clicks_72_120h_without_purchase += 1
        summary.browse_abandons_2_to_26h += any(
            end - 26 * HOUR <= second <= end - 2 * HOUR
            and second - first <= 24 * HOUR
            and not any(added >= first for added in adds.get(product_id, ()))
            for product_id, moments in views.items()
            for first, second in zip(moments, moments[1:])
        )
        summary.upgrade_moments_last_48h += upgrade_moment
        summary.workouts_last_6h += workout_recent
        if live and end - 32 * DAY <= live[-1][0] < end - 30 * DAY:
            summary.dormant_30d_last_48h += 1

    def timestamp(self, epoch_seconds: int, timezone_name: str, style: str) -> str:
        if style == "local":
            return format_timestamp(epoch_seconds, utc_offset(timezone_name, epoch_seconds))
        if style == "millis":
            return format_timestamp(epoch_seconds, millis=(epoch_seconds * 7919) % 1000)
        return format_timestamp(epoch_seconds, z=style == "z")

    def write_events(
        self,
        contact_id: str | None,
        anonymous_id: str | None,
        timezone_name: str,
        style: str,
        timeline: list[TimelineEvent],
        *,
        syncing: bool,
    ) -> list[TimelineEvent]:
        """Write the timeline's events that happened before the end; returns those written as valid rows."""
        rng = self.rng
        summary = self.summary
        end_ts = self.end_ts
        # A sync lands all at once: imported history goes into the window's first file.
        sync_sink = self.sink_for(self.start_ts) if syncing else None
        written: list[TimelineEvent] = []
        for event in sorted(timeline, key=_moment):
            moment, name, properties, who = event
            if moment >= end_ts:
                continue  # has not happened yet at `end`
            row: EventRow = (
                self.next_event_id(),
                None if who == BY_ANONYMOUS else contact_id,
                None if who == BY_CONTACT else anonymous_id,
                name,
                self.timestamp(moment, timezone_name, style),
                orjson.dumps(properties).decode() if properties is not None else None,
                syncing,
            )
            sink = sync_sink or self.sink_for(moment)
            if self.bad_rows and rng.random() < BAD_ROW_RATE:
                kind = EVENT_BAD_KINDS[self.bad_kind_turn % len(EVENT_BAD_KINDS)]
                self.bad_kind_turn += 1
                if self.write_bad_event(sink, row, kind):
                    continue
            sink.write(row)
            written.append(event)
            summary.events += 1
            summary.events_by_name[name] += 1
            summary.anonymous_events += row[1] is None
            if self.bad_rows and rng.random() < DUPLICATE_RATE:
                sink.write(row)  # a client retry: same event, same id, same bytes
                summary.duplicate_event_rows += 1
        return written

    def write_bad_event(self, sink: _EventSink, row: EventRow, kind: str) -> bool:
        """Write `row` damaged as `kind`; False when the format cannot hold that damage."""
        event_id, contact_id, anonymous_id, name, occurred_at, properties, is_syncing = row
        fields: dict = {"event_id": event_id}
        if contact_id is not None:
            fields["contact_id"] = contact_id
        if anonymous_id is not None:
            fields["anonymous_id"] = anonymous_id
        fields.update(name=name, occurred_at=occurred_at)
        if properties is not None:
            fields["properties"] = orjson.loads(properties)
        if is_syncing:
            fields["is_syncing"] = True
        if kind == "not_json":
            who = contact_id or anonymous_id
            written = sink.write_text(f"event_id={event_id} contact_id={who} name={name} at {occurred_at}")
        elif kind == "truncated":
            if sink.fmt == "jsonl":
                line = jsonl_line(row).rstrip("\n")
            else:
                line = ",".join((event_id, contact_id or "", anonymous_id or "", name))
            written = sink.write_text(line[: max(10, len(line) * 3 // 5)])
        else:
            if kind == "missing_event_id":
                del fields["event_id"]
            elif kind == "missing_contact_id":
                # neither id: an event nobody can be attributed to
                fields.pop("contact_id", None)
                fields.pop("anonymous_id", None)
            elif kind == "missing_name":
                del fields["name"]
            elif kind == "occurred_at_yesterday":
                fields["occurred_at"] = "yesterday"
            elif kind == "occurred_at_without_offset":
                fields["occurred_at"] = occurred_at[:19]
            elif kind == "properties_not_object":
                fields["properties"] = [name, "oops"]
            sink.write_fields(fields)
            written = True
        if written:
            self.summary.bad_event_rows += 1
            self.summary.bad_rows_by_kind[kind] += 1
        return written

    def plant_missing_bad_events(self) -> None:
        """Every kind of bad row at least once, however small the sample."""
        sink = self.sink_for(self.end_ts - 1)
        for kind in EVENT_BAD_KINDS:
            if self.summary.bad_rows_by_kind[kind] or (self.fmt == "parquet" and kind in TEXT_ONLY_BAD_KINDS):
                continue
            moment = self.end_ts - 1800 - self.rng.randrange(3600)
            event_id = self.next_event_id()
            row: EventRow = (event_id, self.contact_id(1), None, "logged_in", format_timestamp(moment), None, False)
            self.write_bad_event(sink, row, kind)

    def write_bad_contacts(self, contacts_out: IO[str]) -> None:
        updated_at = format_timestamp(self.end_ts - 7200)
        base = {"first_name": "Pat", "last_name": "Doe", "timezone": "Europe/Berlin", "properties": {"plan": "free"}}
        rows = {
            "invalid_email": {
                "contact_id": self.contact_id(self.contacts + 1),
                "email": "not-an-email",
                "status": "subscribed",
            },
            "unknown_status": {
                "contact_id": self.contact_id(self.contacts + 2),
                "email": "pat.doe@example.com",
                "status": "active",
            },
            "missing_contact_id": {"email": "nobody@example.com", "status": "subscribed"},
            "updated_at_without_offset": {
                "contact_id": self.contact_id(self.contacts + 3),
                "email": "pat.roe@example.com",
                "status": "subscribed",
                "updated_at": updated_at[:19],
            },
        }
        for kind in CONTACT_BAD_KINDS:
            record = {**rows[kind], **base}
            record.setdefault("updated_at", updated_at)
            contacts_out.write(orjson.dumps(record).decode() + "\n")
            self.summary.contact_rows += 1
            self.summary.bad_contact_rows += 1
            self.summary.bad_rows_by_kind[f"contact_{kind}"] += 1


def generate(
    out_dir: Path,
    *,
    contacts: int = 2000,
    days: int = DEFAULT_DAYS,
    end: datetime = DEFAULT_END,
    seed: int = 7,
    bad_rows: bool = True,
    fmt: EventFormat = "jsonl",
) -> GenerationSummary:
    """Write `out_dir/contacts/contacts.jsonl` and `out_dir/events/events-YYYY-MM-DD.<fmt>` (one file a day)."""
    if end.tzinfo is None:
        raise ValueError("end must carry a time zone, e.g. 2026-11-01T00:00:00+00:00")
    if fmt not in EVENT_FORMATS:
        raise ValueError(f"fmt must be one of {', '.join(EVENT_FORMATS)}, not {fmt!r}")
    if contacts < 1 or days < 1:
        raise ValueError("contacts and days must be at least 1")
    out_dir = Path(out_dir)
    (out_dir / "contacts").mkdir(parents=True, exist_ok=True)
    (out_dir / "events").mkdir(parents=True, exist_ok=True)
    simulation = _Simulation(out_dir, contacts=contacts, days=days, end=end, seed=seed, bad_rows=bad_rows, fmt=fmt)
    contacts_path = out_dir / "contacts" / "contacts.jsonl"
    try:
        with contacts_path.open("w", encoding="utf-8", newline="\n", buffering=1 << 20) as contacts_out:
            for index in range(1, contacts + 1):
                simulation.simulate_contact(index, contacts_out)
                simulation.bound_buffers()
            if bad_rows:
                simulation.plant_missing_bad_events()
                simulation.write_bad_contacts(contacts_out)
    finally:
        for sink in simulation.sinks.values():
            sink.close()
    summary = simulation.summary
    summary.files = [contacts_path, *sorted(sink.path for sink in simulation.sinks.values())]
    return summary


def _parse_end(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"--end {text!r} needs an offset, e.g. {text}+00:00")
    return moment


def main(argv: list[str] | None = None) -> GenerationSummary:
    parser = argparse.ArgumentParser(prog="python -m dagster_project.sample_data", description=__doc__.split("\n\n")[0])
    parser.add_argument("--contacts", type=int, default=2000)
    parser.add_argument("--days", type=int, default=DEFAULT_DAYS)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--end", type=_parse_end, default=DEFAULT_END, help="ISO 8601 with offset")
    parser.add_argument("--out", type=Path, default=Path("data/landing"))
    parser.add_argument("--format", dest="fmt", choices=EVENT_FORMATS, default="jsonl", help="events file format")
    parser.add_argument("--no-bad-rows", dest="bad_rows", action="store_false", help="only valid rows")
    args = parser.parse_args(argv)
    summary = generate(
        args.out,
        contacts=args.contacts,
        days=args.days,
        end=args.end,
        seed=args.seed,
        bad_rows=args.bad_rows,
        fmt=args.fmt,
    )
    print(summary.describe())
    return summary


if __name__ == "__main__":
    main()
