"""Decisions that hand nothing over (quiet-hours holds, skips) are written many batches at a
time, not with each batch's claims: every one still reaches the ledger, also when the backend
goes away part-way through."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest
import send_warehouse
from send_warehouse import AS_OF, ledger, send, welcome_warehouse

from dagster_project.backends import FileBackend
from dagster_project.backends.base import BackendUnavailable

# 12:00 UTC is 01:00 in Auckland (inside quiet hours) and noon in UTC.
ZONES = ["Pacific/Auckland", "UTC", "Pacific/Auckland", "UTC", "Pacific/Auckland"]


@pytest.fixture(autouse=True)
def batches_of_two(monkeypatch):
    # The file backend dedupes, so its batches are larger by default; these follow batches of two.
    monkeypatch.setattr(send_warehouse, "CONFIG", dataclasses.replace(send_warehouse.CONFIG, local_batch_size=2))


@pytest.fixture
def con(tmp_path):
    connection = welcome_warehouse(tmp_path / "warehouse.duckdb", [f"person{i}@example.com" for i in range(5)])
    connection.execute("update staging.stg_contacts set timezone = $zones[cast(substr(contact_id, 3) as integer) + 1]",
                       {"zones": ZONES})
    yield connection
    connection.close()


class FailsOnSend(FileBackend):
    """The file backend, gone away from the `fail_at`-th message on."""

    def __init__(self, root, fail_at: int) -> None:
        super().__init__(root)
        self.fail_at, self.calls = fail_at, 0

    def send(self, message):
        self.calls += 1
        if self.calls >= self.fail_at:
            raise BackendUnavailable("the disk went away")
        return super().send(message)


def test_holds_decided_across_batches_all_reach_the_ledger(con, tmp_path):
    with FileBackend(tmp_path / "outbox") as backend:
        report = send(con, backend)
    assert (report.sent, report.held) == (2, 3)
    statuses = {key: row[:2] for key, row in ledger(con).items()}
    assert statuses == {
        "c_0": ("held", "quiet_hours"), "c_1": ("sent", None), "c_2": ("held", "quiet_hours"),
        "c_3": ("sent", None), "c_4": ("held", "quiet_hours"),
    }
    # Each hold ends at 08:00 in Auckland, 19:00 UTC (NZDT): no tick before then decides it again.
    release = AS_OF.replace(hour=19)
    held_until = dict(con.execute("select trigger_key, held_until from nudge.messages where status = 'held'").fetchall())
    assert held_until == {"c_0": release, "c_2": release, "c_4": release}
    with FileBackend(tmp_path / "outbox") as backend:
        again = send(con, backend, AS_OF + timedelta(hours=1))
    assert (again.due, again.sent, again.held) == (0, 0, 0)
    assert sorted(key for key, row in ledger(con).items() if row[0] == "held") == ["c_0", "c_2", "c_4"]
    # An hour before the release they are still left alone; at it, they go, nothing sent twice.
    with FileBackend(tmp_path / "outbox") as backend:
        assert send(con, backend, release - timedelta(hours=1)).due == 0
        released = send(con, backend, release)
    assert (released.due, released.sent, released.held) == (3, 3, 0)
    assert {row[0] for row in ledger(con).values()} == {"sent"}
    assert len(list((tmp_path / "outbox").rglob("*.eml"))) == 5


def test_holds_decided_before_the_backend_went_away_are_kept(con, tmp_path):
    # batches of two in due order: (c_0 held, c_1 sent), (c_2 held, c_3 fails); c_4 is never decided
    backend = FailsOnSend(tmp_path / "outbox", fail_at=2)
    with backend, pytest.raises(BackendUnavailable):
        send(con, backend)
    statuses = {key: row[:2] for key, row in ledger(con).items()}
    assert statuses == {
        "c_0": ("held", "quiet_hours"), "c_1": ("sent", None), "c_2": ("held", "quiet_hours"),
        "c_3": ("failed", "temporary"),
    }


def test_a_hold_that_goes_stale_before_its_release_is_skipped_when_it_does(con, tmp_path):
    with FileBackend(tmp_path / "outbox") as backend:
        assert send(con, backend).held == 3
    # As if quiet hours ended long after the send window (72 hours after due_at) closes.
    con.execute("update nudge.messages set held_until = held_until + interval 10 days where status = 'held'")
    ((stale_after,),) = con.execute("select max(due_at) + interval 72 hours from nudge.messages").fetchall()
    with FileBackend(tmp_path / "outbox") as backend:
        assert send(con, backend, stale_after - timedelta(hours=1)).due == 0
        late = send(con, backend, stale_after + timedelta(hours=1))
    assert (late.due, late.sent, late.skipped["stale"]) == (3, 0, 3)
    assert sorted(key for key, row in ledger(con).items() if row[:2] == ("skipped", "stale")) == ["c_0", "c_2", "c_4"]


def test_a_ledger_from_before_holds_had_an_end_gains_the_column_and_decides_its_holds_again(con, tmp_path):
    with FileBackend(tmp_path / "outbox") as backend:
        send(con, backend)
    # The ledger as it was made before held_until: its holds carry no end.
    con.execute("alter table nudge.messages drop column held_until")
    with FileBackend(tmp_path / "outbox") as backend:
        again = send(con, backend, AS_OF + timedelta(hours=1))
    assert (again.due, again.held) == (3, 3)
    assert con.execute("select count(*) from nudge.messages where held_until is not null").fetchall() == [(3,)]
