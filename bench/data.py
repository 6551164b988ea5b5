"""Benchmark data: the sample generator at a chosen size, written once and reused.

A size's folder holds the history (every event up to an hour before the data's end)
and, apart from it, the hour that follows, which the incremental tick ingests.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import duckdb

from dagster_project.sample_data import DEFAULT_DAYS, DEFAULT_END, generate

# The sample app's contacts make about 18.6 events each over its 40 days: the contacts a
# size needs, capped at a million contacts, past which the history grows longer instead.
EVENTS_PER_CONTACT_DAY = 18.6 / DEFAULT_DAYS
MAX_CONTACTS = 1_000_000
# Over a longer history they make fewer a day, as more of them have gone quiet: measured,
# 89,950,733 events from a million contacts over 216 days.
LONG_HISTORY_EVENTS_PER_CONTACT_DAY = 89_950_733 / (MAX_CONTACTS * 216)
NEXT_HOUR = timedelta(hours=1)


@dataclass(frozen=True)
class Size:
    label: str
    events: int

    @property
    def contacts(self) -> int:
        return min(MAX_CONTACTS, math.ceil(self.events / (EVENTS_PER_CONTACT_DAY * DEFAULT_DAYS)))

    @property
    def days(self) -> int:
        if self.contacts < MAX_CONTACTS:
            return DEFAULT_DAYS
        return max(DEFAULT_DAYS, math.ceil(self.events / (self.contacts * LONG_HISTORY_EVENTS_PER_CONTACT_DAY)))


SIZES = {"100k": Size("100k", 100_000), "1m": Size("1m", 1_000_000), "10m": Size("10m", 10_000_000), "100m": Size("100m", 100_000_000)}


@dataclass(frozen=True)
class Dataset:
    size: Size
    root: Path
    end: datetime

    @property
    def history(self) -> Path:
        """A landing folder: contacts and every event before the last hour."""
        return self.root / "parquet"

    @property
    def next_hour(self) -> Path:
        """The last hour's events, one Parquet file, for the incremental tick."""
        return self.root / "next-hour" / "events-next-hour.parquet"

    @property
    def jsonl(self) -> Path:
        """The same app as JSON Lines (contacts and events), for the JSON Lines ingest rate."""
        return self.root / "jsonl"

    @property
    def cold_as_of(self) -> datetime:
        return self.end - NEXT_HOUR

    def counts(self) -> dict[str, int]:
        return json.loads((self.root / "counts.json").read_text())


def dataset(size: Size, cache: Path, *, seed: int = 7, log=print) -> Dataset:
    """The size's dataset under `cache`, generated on first use."""
    root = cache / f"{size.label}-seed{seed}"
    data = Dataset(size=size, root=root, end=DEFAULT_END)
    if (root / "counts.json").exists() and data.counts()["days"] == size.days:
        return data
    shutil.rmtree(root, ignore_errors=True)
    log(f"generating {size.label}: {size.contacts:,} contacts over {size.days} days (Parquet, then JSON Lines)")
    generate(data.history, contacts=size.contacts, days=size.days, seed=seed, fmt="parquet")
    generate(data.jsonl, contacts=size.contacts, days=size.days, seed=seed, fmt="jsonl")
    held_back = _hold_back_last_hour(data)
    con = duckdb.connect()
    ((history,),) = con.sql(f"select count(*) from read_parquet('{data.history}/events/*.parquet')").fetchall()
    con.close()
    (root / "counts.json").write_text(json.dumps({"history_events": history, "next_hour_events": held_back,
                                                  "contacts": size.contacts, "days": size.days}))
    return data


def _hold_back_last_hour(data: Dataset) -> int:
    """Move the events of the data's last hour out of the history into their own file."""
    data.next_hour.parent.mkdir(parents=True, exist_ok=True)
    start = data.cold_as_of.replace(tzinfo=None)
    day_files = sorted((data.history / "events").glob("events-*.parquet"))[-2:]
    con = duckdb.connect()
    # Unparseable timestamps (the generator's bad rows) stay in the history, where ingest rejects them.
    late = f"coalesce(try_cast(occurred_at as timestamptz) at time zone 'UTC' > timestamp '{start}', false)"
    sources = ", ".join(f"'{path}'" for path in day_files)
    con.sql(f"create table day as select * from read_parquet([{sources}], filename = true)")
    con.sql(f"copy (select * exclude (filename) from day where {late}) to '{data.next_hour}' (format parquet)")
    ((moved,),) = con.sql(f"select count(*) from day where {late}").fetchall()
    for path in day_files:
        kept = f"select * exclude (filename) from day where filename = '{path}' and not ({late})"
        tmp = path.with_suffix(".tmp")
        con.sql(f"copy ({kept}) to '{tmp}' (format parquet, compression zstd)")
        tmp.replace(path)
    con.close()
    return int(moved)
