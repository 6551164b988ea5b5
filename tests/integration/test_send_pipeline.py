"""The next batch is decided (rendered, composed) while the current one is handed over, and yet
the ledger sees what it saw batch by batch: one batch claimed and not marked at any moment, the
next claimed only after the current one is marked. A backend on this machine that dedupes (file://,
null://) claims bigger batches."""

from __future__ import annotations

import dataclasses
import threading
import time

import duckdb
import pytest
from send_warehouse import AS_OF, CONFIG, WELCOME, ledger, welcome_warehouse
from smtp_sink import SmtpSink

from dagster_project import send as send_module
from dagster_project.automations import Policy
from dagster_project.backends import FileBackend, NullBackend, backend_from_url
from dagster_project.backends.base import BackendUnavailable
from dagster_project.ledger import DuplicateKeys
from dagster_project.rendering import EmailTemplate, TemplateError

EMAILS = [f"person{i}@example.com" for i in range(10)]


@pytest.fixture
def con(tmp_path):
    connection = welcome_warehouse(tmp_path / "warehouse.duckdb", EMAILS)
    yield connection
    connection.close()


def send(con, backend, **config):
    return send_module.send_automation(
        con, WELCOME, contacts_relation="staging.stg_contacts", events_relation="intermediate.int_events",
        backend=backend, config=dataclasses.replace(CONFIG, **config), as_of=AS_OF,
        policy=Policy(cap_per_day=None, cap_per_week=None), marketing_automations=["welcome"])


class Timeline:
    """What happened, in order, on any thread: renders (by contact) and sends (by recipient)."""

    def __init__(self, monkeypatch) -> None:
        self.events: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        render = EmailTemplate.render

        def noted_render(template, variables):
            self.note("render", variables["contact"]["email"])
            return render(template, variables)

        monkeypatch.setattr(EmailTemplate, "render", noted_render)

    def note(self, what: str, who: str) -> None:
        with self._lock:
            self.events.append((what, who))


class SlowWatchingFileBackend(FileBackend):
    """The file backend on two threads, slow, noting at every message which claims the ledger holds open."""

    concurrency = 2

    def __init__(self, root, con, timeline: Timeline) -> None:
        super().__init__(root)
        self.con, self.timeline, self.pending_at_send = con, timeline, []

    def send(self, message):
        recipient = str(message["To"])
        self.timeline.note("send", recipient)
        cursor = self.con.cursor()  # a connection of its own, to read the ledger from this thread
        try:
            pending = {row[0] for row in cursor.execute(
                "select email from nudge.messages where status = 'pending'").fetchall()}
        finally:
            cursor.close()
        self.pending_at_send.append((recipient, pending))
        time.sleep(0.05)  # the disk is slow: the next batch is decided meanwhile
        return super().send(message)


def test_the_next_batch_is_decided_during_the_hand_over_and_claimed_only_after_the_mark(con, tmp_path, monkeypatch):
    timeline = Timeline(monkeypatch)
    backend = SlowWatchingFileBackend(tmp_path / "outbox", con, timeline)
    with backend:
        report = send(con, backend, batch_size=4, local_batch_size=4)
    assert report.sent == len(EMAILS)
    assert {row[0] for row in ledger(con).values()} == {"sent"}

    batches = [EMAILS[0:4], EMAILS[4:8], EMAILS[8:10]]
    # At every send, the open claims are exactly this message's batch: never the next one too.
    for recipient, pending in backend.pending_at_send:
        batch = next(batch for batch in batches if recipient in batch)
        assert pending == set(batch), (recipient, pending)
    # The renders of batch 2 began before the last message of batch 1 went out.
    order = timeline.events
    first_render_of_2 = order.index(("render", batches[1][0]))
    last_send_of_1 = order.index(("send", batches[0][-1]))
    assert first_render_of_2 < last_send_of_1, order


def test_a_local_deduping_backend_claims_in_bigger_batches(con, tmp_path, monkeypatch):
    claims: list[int] = []
    record = send_module.record

    def counted(connection, entries, **kwargs):
        if entries and entries[0].status == "pending":
            claims.append(len(entries))
        return record(connection, entries, **kwargs)

    monkeypatch.setattr(send_module, "record", counted)
    with FileBackend(tmp_path / "outbox") as backend:
        assert send(con, backend, batch_size=3, local_batch_size=7).sent == 10
    assert claims == [7, 3]
    con.execute("delete from nudge.messages")
    claims.clear()
    with SmtpSink() as sink, backend_from_url(sink.url) as backend:  # SMTP: the window stays batch_size
        assert send(con, backend, batch_size=3, local_batch_size=7).sent == 10
    assert claims == [3, 3, 3, 1]
    assert send_module._batch_size(CONFIG, NullBackend()) == max(CONFIG.batch_size, CONFIG.local_batch_size)


def test_a_send_that_fails_while_the_next_batch_is_decided_leaves_that_batch_out_of_the_ledger(con, tmp_path):
    class GoneAtSix(FileBackend):
        calls = 0

        def send(self, message):
            self.calls += 1
            if self.calls == 6:
                raise BackendUnavailable("the disk went away")
            time.sleep(0.01)
            return super().send(message)

    with GoneAtSix(tmp_path / "outbox") as backend, pytest.raises(BackendUnavailable, match="went away"):
        send(con, backend, batch_size=4, local_batch_size=4)
    rows = ledger(con)
    # Batch 1 sent; batch 2: one sent, the failed one and the two never handed over free for a later tick;
    # batch 3 (decided meanwhile) was never claimed.
    assert sorted(rows) == [f"c_{i}" for i in range(8)]
    assert [rows[f"c_{i}"][0] for i in range(8)] == ["sent"] * 5 + ["failed"] * 3


def test_one_at_a_time_is_sent_on_the_sending_thread(con, tmp_path):
    threads = set()

    class Watched(FileBackend):
        def send(self, message):
            threads.add(threading.get_ident())
            return super().send(message)

    with Watched(tmp_path / "outbox") as backend:
        assert send(con, backend).sent == 10
    assert threads == {threading.get_ident()}


@pytest.mark.parametrize("repeated", ["triggers.trg_welcome", "staging.stg_contacts"])
def test_candidates_that_repeat_a_key_stop_the_send_before_anything_is_written(con, tmp_path, repeated):
    # The ledger has no index to refuse a second row for a key: a trigger row twice (its unique
    # test failed, yet the send ran) or a contact twice would decide, claim and send it twice.
    con.execute(f"insert into {repeated} select * from {repeated} where contact_id = 'c_3'")
    outbox = tmp_path / "outbox"

    with FileBackend(outbox) as backend, pytest.raises(
        DuplicateKeys, match=r"welcome: 1 candidate rows repeat a trigger_key \('c_3' 2 times\)"
    ):
        send(con, backend)

    assert ledger(con) == {}
    assert not list(outbox.rglob("*.eml"))
    # Mended, the next tick sends each once.
    con.execute(f"create or replace table {repeated} as select distinct * from {repeated}")
    with FileBackend(outbox) as backend:
        assert send(con, backend).sent == len(EMAILS)
    assert len(list(outbox.rglob("*.eml"))) == len(EMAILS)


def test_with_nothing_due_the_contacts_are_not_read_and_the_template_is_still_checked(con, tmp_path):
    # The hour after a send: every welcome is in the ledger. The candidates' joins (the contacts, the
    # ledger's history) are skipped, so a contacts relation that does not exist goes unnoticed...
    with FileBackend(tmp_path / "outbox") as backend:
        assert send(con, backend).sent == len(EMAILS)
    decided = ledger(con)

    def send_nothing(backend, automation=WELCOME):
        return send_module.send_automation(
            con, automation, contacts_relation="staging.no_such_contacts", events_relation="intermediate.no_such_events",
            backend=backend, config=CONFIG, as_of=AS_OF, policy=Policy(cap_per_day=None, cap_per_week=None),
            marketing_automations=["welcome"])

    with FileBackend(tmp_path / "outbox") as backend:
        report = send_nothing(backend)
    assert (report.due, report.sent, sum(report.skipped.values())) == (0, 0, 0)
    assert ledger(con) == decided
    # ...while a template that does not compile still stops the automation, with nothing due.
    with FileBackend(tmp_path / "outbox") as backend, pytest.raises(TemplateError, match="no_such_template"):
        send_nothing(backend, dataclasses.replace(WELCOME, template="no_such_template"))
    # With something due again (a new sign-up), the contacts are read.
    con.execute("insert into triggers.trg_welcome select 'c_new', 'c_new', timestamp '2026-11-01 11:30', "
                "timestamp '2026-11-01 11:30', '{}'")
    with FileBackend(tmp_path / "outbox") as backend, pytest.raises(duckdb.CatalogException, match="no_such_contacts"):
        send_nothing(backend)
