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
    # decided again an hour later, still inside quiet hours: still held, nothing sent twice
    with FileBackend(tmp_path / "outbox") as backend:
        again = send(con, backend, AS_OF + timedelta(hours=1))
    assert (again.sent, again.held) == (0, 3)
    assert sorted(key for key, row in ledger(con).items() if row[0] == "held") == ["c_0", "c_2", "c_4"]


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
