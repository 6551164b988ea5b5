"""`nudge backtest`: a replay of a day decides exactly what that day's real ticks decided.

One warehouse is ingested by a first tick at T0 and copied. On one copy the real
ticks of the next day run one by one (file backend); on the other, `nudge backtest`
replays the same ticks. Every decision of every automation must be the same, and
what the real ticks sent is what the backtest would have sent.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta

import duckdb
import polars as pl
import pytest
from typer.testing import CliRunner

from dagster_project.backends import backend_from_url
from dagster_project.backtest import BacktestError, rewind, tick_decisions, tick_times
from dagster_project.cli import app
from dagster_project.ledger import LEDGER_TABLE, ensure_ledger
from dagster_project.sample_data import DEFAULT_END, generate
from tests.nudge_env import NudgeEnv, make_env

pytestmark = pytest.mark.e2e

END = DEFAULT_END.replace(tzinfo=None)
T0 = END - timedelta(hours=24)
# Three ticks keep the test's cost down (each is a real dbt build) and still meet every planted rule:
# at +6 h the Berlin cart is held for quiet hours, by +15 h it has exited and the next one is sent.
EVERY = timedelta(hours=9)
TICKS = [T0 + timedelta(hours=hours) for hours in (6, 15, 24)]
AUTOMATION = "cart_abandoned"
# Every column a tick decides; updated_at is the wall clock of the write.
LEDGER_COLUMNS = (
    "automation, trigger_key, contact_id, email, message_id, status, reason, error, attempts, "
    "qualified_at, due_at, decided_at, sent_at, subject"
)


# Two contacts whose carts in the replayed day meet the policies: one unsubscribed, one whose first
# cart is due in the early morning of Berlin (quiet hours) and bought soon after, then a second cart.
PLANTED_CONTACTS = [
    {"contact_id": "c_bt_berlin", "email": "berlin@example.com", "status": "subscribed", "first_name": "Bea",
     "last_name": "Test", "timezone": "Europe/Berlin", "properties": {"plan": "free"}, "updated_at": "2026-10-01T00:00:00Z"},
    {"contact_id": "c_bt_unsub", "email": "unsub@example.com", "status": "unsubscribed", "first_name": "Uli",
     "last_name": "Test", "timezone": "UTC", "properties": {"plan": "free"}, "updated_at": "2026-10-01T00:00:00Z"},
]
ITEM = {"product_id": "p_001", "name": "Yoga Mat", "category": "yoga", "price": 29.0, "quantity": 1}
PLANTED_EVENTS = [
    ("e_bt_cart_1", "c_bt_berlin", "added_to_cart", 2, ITEM),
    ("e_bt_purchase", "c_bt_berlin", "purchased", 7,
     {"order_id": "o_bt", "total": 29.0, "currency": "EUR", "products": [ITEM]}),
    ("e_bt_cart_2", "c_bt_berlin", "added_to_cart", 8, ITEM),
    ("e_bt_cart_3", "c_bt_unsub", "added_to_cart", 2, ITEM),
]


def plant(landing_dir) -> None:
    (landing_dir / "contacts" / "planted.jsonl").write_text("".join(json.dumps(c) + "\n" for c in PLANTED_CONTACTS))
    events = [
        {"event_id": event_id, "contact_id": contact_id, "name": name,
         "occurred_at": iso(T0 + timedelta(hours=hours)), "properties": properties}
        for event_id, contact_id, name, hours, properties in PLANTED_EVENTS
    ]
    (landing_dir / "events" / "planted.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))


def iso(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def ledger(path) -> list[tuple]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute(f"select {LEDGER_COLUMNS} from {LEDGER_TABLE} order by automation, trigger_key").fetchall()
    finally:
        con.close()


@pytest.fixture(scope="module")
def envs(tmp_path_factory, dbt_manifest) -> tuple[NudgeEnv, NudgeEnv]:
    """(real, replay): two installations sharing one warehouse, ingested once by a tick at T0."""
    real = make_env(tmp_path_factory.mktemp("real"))
    generate(real.settings.landing_dir, contacts=300, seed=11)
    plant(real.settings.landing_dir)
    first = real.tick(T0)
    assert first.success, first.failures
    replay = make_env(tmp_path_factory.mktemp("replay"))
    shutil.copyfile(real.settings.warehouse, replay.settings.warehouse)
    return real, replay


@pytest.fixture(scope="module")
def real_decisions(envs) -> pl.DataFrame:
    """The real ticks of the day, one by one, and what each decided about AUTOMATION."""
    real, _ = envs
    rows = []
    for as_of in TICKS:
        began = datetime.now(UTC).replace(tzinfo=None)
        tick = real.tick(as_of)
        assert tick.success, tick.failures
        con = duckdb.connect(str(real.settings.warehouse), read_only=True)
        try:
            rows += tick_decisions(con, AUTOMATION, as_of, began)
        finally:
            con.close()
    return pl.DataFrame(rows)


@pytest.fixture(scope="module")
def backtest(envs, tmp_path_factory):
    """`nudge backtest` over the same day, configured by NUDGE_* like a user would."""
    _, replay = envs
    out = tmp_path_factory.mktemp("backtests") / "day"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NUDGE_WAREHOUSE", str(replay.settings.warehouse))
        patch.setenv("NUDGE_LANDING_DIR", str(replay.settings.landing_dir))
        patch.setenv("NUDGE_EMAIL_URL", f"file://{replay.outbox}")
        patch.setenv("NUDGE_UNSUBSCRIBE_SECRET", "test-secret")
        patch.delenv("DAGSTER_HOME", raising=False)
        result = CliRunner().invoke(
            app,
            ["backtest", AUTOMATION, "--from", iso(TICKS[0]), "--to", iso(TICKS[-1]), "--every", "9h",
             "--out", str(out), "--keep-warehouse"],
        )
    assert result.exit_code == 0, result.output
    return out, result.output


def comparable(frame: pl.DataFrame) -> list[tuple]:
    columns = ["tick", "trigger_key", "contact_id", "qualified_at", "due_at", "status", "reason", "detail"]
    return sorted(frame.select(columns).rows(), key=lambda row: (row[0], row[1]))


def test_the_backtest_decides_each_tick_what_the_real_tick_decided(real_decisions, backtest):
    out, _ = backtest
    replayed = pl.read_parquet(out / "decisions.parquet")
    assert comparable(replayed) == comparable(real_decisions)
    assert set(replayed["tick"].to_list()) <= set(TICKS)
    assert replayed.filter(pl.col("status") == "sent").height > 0, "the day should have carts to remind of"
    planted = replayed.filter(pl.col("contact_id").str.starts_with("c_bt_"))
    assert set(planted["trigger_key"]) == {"e_bt_cart_1", "e_bt_cart_2", "e_bt_cart_3"}
    assert planted.filter(pl.col("status") != "sent").height >= 2, "the planted carts meet the policies"


def test_every_automations_ledger_after_the_replay_equals_the_real_one(envs, real_decisions, backtest):
    """Sent in the real ticks is sent (would send) in the replay; every other decision, reason and
    detail, of every automation, at the same tick."""
    real, _ = envs
    out, _ = backtest
    real_ledger, replayed_ledger = ledger(real.settings.warehouse), ledger(out / real.settings.warehouse.name)
    assert replayed_ledger == real_ledger
    decided_in_the_day = [row for row in real_ledger if row[11] >= TICKS[0]]
    assert {row[0] for row in decided_in_the_day if row[5] == "sent"} >= {"welcome", AUTOMATION}
    assert {row[5] for row in decided_in_the_day} - {"sent"}, "the day should also stop some messages"


def test_the_backtest_delivers_nothing_and_leaves_its_source_alone(envs, backtest):
    real, replay = envs
    assert not list(replay.outbox.rglob("*.eml"))
    assert real.emails(), "the real ticks did deliver"
    decided = {row[11] for row in ledger(replay.settings.warehouse)}
    assert decided == {T0}, "the replay ran on a copy; the warehouse it copied still stops at T0"


def test_the_report_names_who_would_have_been_emailed_per_tick(backtest):
    out, output = backtest
    replayed = pl.read_parquet(out / "decisions.parquet")
    report = (out / "report.md").read_text()
    assert report.strip() in output.replace("\r", "")
    for as_of in TICKS:
        sent = replayed.filter((pl.col("tick") == as_of) & (pl.col("status") == "sent"))
        contacts = sorted(sent["contact_id"].to_list())
        row = next(line for line in report.splitlines() if line.startswith(f"| {as_of:%Y-%m-%d %H:%M} |"))
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert int(cells[1]) == len(contacts)
        assert cells[2] == (", ".join(contacts) or "-")
    final = replayed.sort("tick").group_by("trigger_key", maintain_order=True).last()
    for (status, reason), group in final.filter(pl.col("status") != "sent").group_by("status", "reason"):
        assert f"| {status} | {reason or '-'} | {group.height} |" in report
    assert pl.read_csv(out / "decisions.csv").height == replayed.height
    assert "Incremental histories cut back to the rows recorded before it: segment_membership_changes;" in report


def test_explain_reads_the_kept_replay(backtest, envs):
    out, _ = backtest
    real, _ = envs
    replayed = pl.read_parquet(out / "decisions.parquet").filter(pl.col("status") == "sent")
    contact_id, tick = replayed["contact_id"][0], replayed["tick"][0]
    result = CliRunner().invoke(
        app, ["explain", contact_id, AUTOMATION, "--json", "--warehouse", str(out / real.settings.warehouse.name)]
    )
    assert result.exit_code == 0, result.output
    sent = [e for e in json.loads(result.output)["explanations"] if e["status"] == "sent"]
    assert any(e["sent_at"] == tick.isoformat() for e in sent)


def test_bad_arguments_stop_before_anything_is_copied(envs, tmp_path):
    _, replay = envs
    runner = CliRunner(env={"NUDGE_WAREHOUSE": str(replay.settings.warehouse)})
    unknown = runner.invoke(app, ["backtest", "nope", "--from", iso(TICKS[0]), "--to", iso(TICKS[1]), "--out", str(tmp_path / "a")])
    assert unknown.exit_code == 1 and "no automation 'nope'" in unknown.output
    backwards = runner.invoke(app, ["backtest", AUTOMATION, "--from", iso(TICKS[1]), "--to", iso(TICKS[0]), "--out", str(tmp_path / "b")])
    assert backwards.exit_code == 1 and "is before --from" in backwards.output
    not_a_time = runner.invoke(app, ["backtest", AUTOMATION, "--from", "yesterday", "--to", iso(TICKS[0])])
    assert not_a_time.exit_code == 2 and "ISO 8601" in not_a_time.output
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    before = ledger(replay.settings.warehouse)
    onto_itself = runner.invoke(
        app, ["backtest", AUTOMATION, "--from", iso(TICKS[0]), "--to", iso(TICKS[0]), "--out", str(replay.root)]
    )
    assert onto_itself.exit_code == 1 and "holds the warehouse itself" in onto_itself.output
    assert ledger(replay.settings.warehouse) == before


def test_tick_times_include_both_ends():
    assert tick_times(TICKS[0], TICKS[-1], EVERY) == TICKS
    assert len(tick_times(T0, T0 + timedelta(hours=24), timedelta(hours=6))) == 5
    assert tick_times(T0, T0, timedelta(hours=1)) == [T0]
    assert tick_times(T0, T0 + timedelta(minutes=90), timedelta(hours=1)) == [T0, T0 + timedelta(hours=1)]
    with pytest.raises(BacktestError):
        tick_times(T0, T0 + timedelta(hours=1), timedelta(0))


def test_the_rewind_keeps_what_was_decided_before_the_first_tick(tmp_path):
    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    ensure_ledger(con)
    start = datetime(2026, 10, 31, 6)
    rows = [
        # key, status, decided_at, sent_at
        ("before", "sent", start - timedelta(hours=6), start - timedelta(hours=6)),
        ("skipped_before", "skipped", start - timedelta(hours=1), None),
        ("at_start", "sent", start, start),
        ("after", "skipped", start + timedelta(hours=1), None),
        ("held_then_sent", "sent", start - timedelta(hours=2), start + timedelta(hours=2)),
    ]
    for key, status, decided_at, sent_at in rows:
        con.execute(
            f"insert into {LEDGER_TABLE} (automation, trigger_key, contact_id, message_id, status, decided_at, "
            "sent_at, updated_at) values ('a', ?, 'c', 'm', ?, ?, ?, now())",
            [key, status, decided_at, sent_at],
        )
    con.execute(
        """
        create schema segments;
        create table segments.history (contact_id varchar, recorded_as_of timestamp);
        insert into segments.history values ('kept', '2026-10-31 05:00'), ('later', '2026-10-31 06:00');
        create table segments.counts (contact_id varchar, n int);
        create table segments.plain (x int);
        """
    )

    def model(name, materialized="incremental"):
        return {
            "resource_type": "model", "name": name, "schema": "segments",
            "original_file_path": f"models/segments/{name}.sql", "config": {"materialized": materialized},
        }

    names = ("history", "counts", "never_built")
    manifest = {"nodes": {f"model.nudge.{name}": model(name) for name in names} | {"model.nudge.plain": model("plain", "table")}}
    undone = rewind(con, start, manifest)
    kept = [key for (key,) in con.execute(f"select trigger_key from {LEDGER_TABLE} order by 1").fetchall()]
    tables = [name for (name,) in con.execute("select table_name from duckdb_tables() where schema_name = 'segments' order by 1").fetchall()]
    history = con.execute("select contact_id from segments.history").fetchall()
    con.close()
    assert kept == ["before", "skipped_before"]
    assert (undone.decided_later, undone.sent_later) == (2, 1)
    # A history stamped by tick is cut back to before the first replayed tick; another
    # incremental model is dropped, to be built from scratch; a table is left alone.
    assert (undone.rewound_models, undone.rebuilt_models) == (("history",), ("counts",))
    assert history == [("kept",)]
    assert tables == ["history", "plain"]


def test_null_backend_accepts_everything_and_dedupes():
    from dagster_project.messages import compose
    from dagster_project.rendering import RenderedEmail

    backend = backend_from_url("null://")
    assert backend.dedupes
    message = compose(
        rendered=RenderedEmail(subject="Hi", html="<p>Hi</p>", text="Hi"),
        sender="Nudge <hello@nudge.example>",
        recipient="anna@example.com",
        automation="welcome",
        message_id="<m1@nudge.example>",
        date=datetime(2026, 11, 1, tzinfo=UTC),
        unsubscribe=None,
    )
    with backend:
        first, again = backend.send(message), backend.send(message)
    assert first.ok and again.ok and first.message_id == "<m1@nudge.example>"
    with pytest.raises(ValueError, match="null:// takes no location"):
        backend_from_url("null://somewhere")
