"""A long send says how far it is: in the step's log and to `nudge run`'s spinner.

The clock is stepped by hand (20 s a reading), so every batch is "long enough" for a line.
"""

from __future__ import annotations

import dataclasses
import itertools
import re

from send_warehouse import AS_OF, CONFIG, WELCOME, welcome_warehouse

from dagster_project import send as send_module
from dagster_project.automations import Policy
from dagster_project.backends.file import FileBackend


class SteppedTime:
    def __init__(self) -> None:
        self._readings = itertools.count(0, 20)

    def monotonic(self) -> float:
        return float(next(self._readings))


def test_the_log_and_the_watchers_see_the_send_move(tmp_path, monkeypatch):
    con = welcome_warehouse(tmp_path / "warehouse.duckdb", [f"p{i}@example.com" for i in range(5)] + ["", ""])
    monkeypatch.setattr(send_module, "time", SteppedTime())
    logged, watched = [], []
    with FileBackend(tmp_path / "outbox") as backend, send_module.progress_shown_to(watched.append):
        report = send_module.send_automation(
            con, WELCOME, contacts_relation="staging.stg_contacts", events_relation="intermediate.int_events",
            backend=backend, config=dataclasses.replace(CONFIG, local_batch_size=2), as_of=AS_OF, policy=Policy(cap_per_day=None, cap_per_week=None),
            marketing_automations=["welcome"], log=logged.append,
        )
    assert (report.sent, report.decided_in_sql) == (5, 2)
    assert re.fullmatch(r"welcome: 2 skipped in one statement \(no_email 2\) in [\d.]+ s", logged[0])
    # one line a batch of two, then the closing line
    progress = logged[1:]
    assert [re.match(r"welcome: (\d) of 5 decided, (\d) sent", line).groups() for line in progress[:-1]] == [
        ("2", "2"), ("4", "4"), ("5", "5")]
    assert re.fullmatch(r"welcome: 5 decided, 5 sent in [\d.]+ s, [\d,]+ msg/s", progress[-1])
    assert watched == progress[:-1]
