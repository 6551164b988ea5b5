"""One-click unsubscribe (RFC 8058) through `nudge serve` on 127.0.0.1, and the sends after it.

The server is the real command (`python -m dagster_project.cli serve`, uvicorn) in its own
process, configured by NUDGE_* variables; the sends are send_automation() on a DuckDB file
whose contact table still says everyone is subscribed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from pathlib import Path

import duckdb
import httpx
import pytest

from dagster_project.automations import Policy, automation_from_node
from dagster_project.backends import backend_from_url
from dagster_project.backends.base import Delivery, EmailBackend
from dagster_project.send import SendConfig, SendReport, send_automation
from dagster_project.settings import PROJECT_ROOT, journal_path_for
from dagster_project.suppressions import UnsubscribeJournal
from dagster_project.unsubscribe import make_token
from dagster_project.warehouse import WarehouseBusyError, connect, writer_lock
from tests.smtp_sink import free_port

SECRET = "test-secret"
AS_OF = datetime(2026, 11, 1, 12)
CONTACTS = [f"c_{i}" for i in range(6)]

# One client for the module: httpx.get() builds a client, and its TLS context, per call (~50 ms of
# CPU each). No keep-alive, so every request still comes on its own new connection, as before.
HTTP = httpx.Client(limits=httpx.Limits(max_keepalive_connections=0))


def _automation(name: str, category: str):
    return automation_from_node(
        {"unique_id": f"model.nudge.trg_{name}", "resource_type": "model", "name": f"trg_{name}",
         "schema": "triggers",
         "config": {"meta": {"nudge": {"category": category, "send_window": "48h", "reentry": "every_time"}}}}
    )


WELCOME = _automation("welcome", "marketing")
WORKOUT = _automation("workout_completed", "transactional")


@dataclass
class Server:
    url: str  # the unsubscribe URL, as the emails carry it
    base: str
    warehouse: Path

    @property
    def journal(self) -> UnsubscribeJournal:
        return UnsubscribeJournal(journal_path_for(self.warehouse))

    def journaled(self) -> dict[str, str]:
        """contact_id -> source, for the marketing list."""
        return {e.contact_id: e.source for e in self.journal.entries() if e.list == "marketing"}

    def in_warehouse_if_free(self) -> dict[str, str] | None:
        try:
            with writer_lock(self.warehouse, timeout_seconds=0):
                pass
        except WarehouseBusyError:
            return None
        return self.in_warehouse()

    def in_warehouse(self) -> dict[str, str]:
        with connect(self.warehouse) as con:
            con.execute("create schema if not exists nudge")
            exists = con.execute(
                "select count(*) from information_schema.tables where table_schema = 'nudge' and table_name = 'unsubscribes'"
            ).fetchone()[0]
            if not exists:
                return {}
            return dict(con.execute("select contact_id, source from nudge.unsubscribes").fetchall())

    def one_click(self, contact_id: str, token: str | None = None) -> httpx.Response:
        """What a mail provider's unsubscribe button sends (RFC 8058 section 3.2)."""
        token = token if token is not None else make_token(SECRET, contact_id, "marketing")
        return HTTP.post(self.url, params={"token": token}, data={"List-Unsubscribe": "One-Click"}, timeout=10)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("serve")
    warehouse = root / "warehouse.duckdb"
    port = free_port()
    url = f"http://127.0.0.1:{port}/unsubscribe"
    env = {**os.environ, "NUDGE_WAREHOUSE": str(warehouse), "NUDGE_UNSUBSCRIBE_SECRET": SECRET,
           "NUDGE_UNSUBSCRIBE_URL": url}
    process = subprocess.Popen(
        [sys.executable, "-m", "dagster_project.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if HTTP.get(f"{base}/healthz", timeout=2).json() == {"status": "ok"}:
                break
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"nudge serve did not come up: {process.communicate()[0]}")
        time.sleep(0.2)
    try:
        yield Server(url, base, warehouse)
    finally:
        process.terminate()
        process.wait(timeout=10)
        HTTP.close()


@pytest.fixture
def fresh(server: Server) -> Server:
    """Every test starts from a warehouse whose contacts are all subscribed, and an empty journal."""
    with connect(server.warehouse) as con:
        con.execute(
            """
            drop schema if exists nudge cascade;
            create schema if not exists staging; create schema if not exists triggers;
            create or replace table staging.stg_contacts as
                select 'c_' || i as contact_id, 'person' || i || '@example.com' as email, 'subscribed' as status,
                       'Person' as first_name, 'No' || i as last_name, 'UTC' as timezone, '{}' as properties,
                       timestamp '2026-10-01' as updated_at
                from range(6) t(i);
            create or replace table triggers.trg_welcome as
                select contact_id, contact_id as trigger_key, timestamp '2026-11-01 11:00' as qualified_at,
                       timestamp '2026-11-01 11:00' as due_at, '{}' as context
                from staging.stg_contacts;
            create or replace table triggers.trg_workout_completed as select * from triggers.trg_welcome;
            """
        )
    with server.journal.connect() as journal:
        journal.execute("delete from unsubscribes")
    return server


def send(server: Server, automation, backend: EmailBackend, tmp_path: Path) -> SendReport:
    config = SendConfig(
        templates_dir=PROJECT_ROOT / "templates", sender="Nudge Fitness <hello@nudge.example>",
        postal_address="1 Example Street", unsubscribe_url=server.url, unsubscribe_mailto="unsubscribe@nudge.example",
        unsubscribe_secret=SECRET, batch_size=100, unsubscribe_journal=journal_path_for(server.warehouse),
    )
    with connect(server.warehouse) as con:
        return send_automation(
            con, automation, contacts_relation="staging.stg_contacts", events_relation="staging.no_events",
            backend=backend, config=config, as_of=AS_OF, policy=Policy(cap_per_day=None, cap_per_week=None),
            marketing_automations=["welcome"],
        )


def ledger(server: Server, automation: str) -> dict[str, tuple[str, str | None, int]]:
    with connect(server.warehouse) as con:
        rows = con.execute(
            "select contact_id, status, reason, attempts from nudge.messages where automation = ?", [automation]
        ).fetchall()
    return {contact: (status, reason, attempts) for contact, status, reason, attempts in rows}


def recipients(outbox: Path) -> set[str]:
    import email
    import email.policy

    return {
        str(email.message_from_bytes(path.read_bytes(), policy=email.policy.default)["To"])
        for path in outbox.rglob("*.eml")
    }


def wait_for(condition, seconds: float = 60.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_get_shows_a_button_that_posts_and_records_nothing(fresh):
    token = make_token(SECRET, "c_0", "marketing")
    page = HTTP.get(fresh.url, params={"token": token}, timeout=10)
    assert page.status_code == 200
    assert '<form method="post"' in page.text and "<button" in page.text and "Unsubscribe" in page.text
    assert page.headers["cache-control"] == "no-store"
    # a link scanner that follows the link twice still unsubscribes nobody
    HTTP.get(fresh.url, params={"token": token}, timeout=10)
    time.sleep(0.5)
    assert fresh.journaled() == {} and fresh.in_warehouse() == {}


def test_a_one_click_post_is_recorded_at_once_in_the_journal_and_the_free_warehouse(fresh):
    response = fresh.one_click("c_1")
    assert response.status_code == 200 and "unsubscribed" in response.text
    assert fresh.journaled() == {"c_1": "one_click"}  # durable before the 200
    # the warehouse is free: the server moves it there right after answering
    assert wait_for(lambda: fresh.in_warehouse() == {"c_1": "one_click"})

    # the page's own button: a form POST carrying the token in the body
    form = HTTP.post(fresh.url, data={"token": make_token(SECRET, "c_2", "marketing")}, timeout=10)
    assert form.status_code == 200
    assert fresh.journaled() == {"c_1": "one_click", "c_2": "form"}
    # a second click changes nothing and still says yes
    assert fresh.one_click("c_1").status_code == 200
    assert len(fresh.journal.entries()) == 2


def test_a_busy_warehouse_never_delays_the_answer(fresh, tmp_path):
    with writer_lock(fresh.warehouse):  # what a running tick holds for tens of seconds
        started = time.monotonic()
        response = fresh.one_click("c_4")
        elapsed = time.monotonic() - started
        assert response.status_code == 200
        assert elapsed < 2.0
        assert fresh.journaled() == {"c_4": "one_click"}
        time.sleep(0.5)
        assert fresh.in_warehouse_if_free() is None  # still held: nothing moved behind the tick's back
    # Whichever comes first after the lock is free, the server's next try or the send's own
    # move at its start, the send honours the unsubscribe and the warehouse records it.
    with backend_from_url(f"file://{tmp_path / 'outbox'}") as backend:
        report = send(fresh, WELCOME, backend, tmp_path)
    assert report.skipped == {"unsubscribed": 1}
    assert fresh.in_warehouse() == {"c_4": "one_click"}


@pytest.mark.parametrize(
    "token",
    [
        make_token("another-secret", "c_0", "marketing"),  # forged: signed with a secret that is not ours
        make_token(SECRET, "c_1", "marketing").split(".")[0] + "." + make_token(SECRET, "c_0", "marketing").split(".")[1],
        make_token(SECRET, "c_0", "marketing")[:-3],  # cut short
        make_token(SECRET, "c_0", "marketing") + "A",
        "not-a-token",
        "",
    ],
    ids=["forged", "payload-swapped", "truncated", "extended", "garbage", "missing"],
)
def test_a_forged_or_tampered_token_is_400_and_records_nothing(fresh, token):
    for response in (
        HTTP.get(fresh.url, params={"token": token}, timeout=10),
        fresh.one_click("c_0", token=token),
        HTTP.post(fresh.url, data={"token": token}, timeout=10),
    ):
        assert response.status_code == 400
        assert "not valid" in response.text
    time.sleep(0.3)
    assert fresh.journal.entries() == [] and fresh.in_warehouse() == {}


# Minted with the test secret when this test was written. A token holds only contact and list
# (no time), so a link in a mail from months ago works as it did on the day it was sent.
OLD_TOKEN = "Y181fG1hcmtldGluZw._txp7vfKXiuzhgP5ZryWb-HHO8dov_FZzHexCIz_LF0"


def test_a_token_never_expires(fresh):
    import base64

    payload = OLD_TOKEN.split(".")[0]
    assert base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)) == b"c_5|marketing"
    assert make_token(SECRET, "c_5", "marketing") == OLD_TOKEN  # nothing time-dependent went into it
    assert HTTP.get(fresh.url, params={"token": OLD_TOKEN}, timeout=10).status_code == 200
    assert fresh.one_click("c_5", token=OLD_TOKEN).status_code == 200
    assert fresh.journaled() == {"c_5": "one_click"}


def test_the_next_send_honours_an_unsubscribe_the_contact_source_does_not_know_yet(fresh, tmp_path):
    assert fresh.one_click("c_3").status_code == 200
    outbox = tmp_path / "outbox"
    with backend_from_url(f"file://{outbox}") as backend:
        marketing = send(fresh, WELCOME, backend, tmp_path)
        transactional = send(fresh, WORKOUT, backend, tmp_path)

    with connect(fresh.warehouse) as con:
        assert con.execute("select status from staging.stg_contacts where contact_id = 'c_3'").fetchone() == (
            "subscribed",
        )
    assert (marketing.sent, marketing.skipped) == (5, {"unsubscribed": 1})
    assert ledger(fresh, "welcome")["c_3"] == ("skipped", "unsubscribed", 0)
    # a marketing unsubscribe does not stop transactional mail
    assert transactional.sent == 6 and ledger(fresh, "workout_completed")["c_3"][0] == "sent"
    assert "person3@example.com" in recipients(outbox)  # the workout email
    assert sum(1 for p in outbox.rglob("*.eml") if b"person3@example.com" in p.read_bytes()) == 1


class UnsubscribesTheNextContact(EmailBackend):
    """Hands each message to a real file backend; after the first, the next contact clicks
    one-click unsubscribe, as if their mail provider's button were pressed mid-send."""

    def __init__(self, inner: EmailBackend, server: Server):
        self.inner, self.server = inner, server
        self.handed_over: list[str] = []

    def send(self, message: EmailMessage) -> Delivery:
        delivery = self.inner.send(message)
        self.handed_over.append(str(message["To"]))
        if len(self.handed_over) == 1:
            assert self.server.one_click("c_1").status_code == 200
        return delivery


def test_an_unsubscribe_landing_mid_send_stops_the_messages_not_yet_handed_over(fresh, tmp_path):
    outbox = tmp_path / "outbox"
    with backend_from_url(f"file://{outbox}") as inner:
        backend = UnsubscribesTheNextContact(inner, fresh)
        report = send(fresh, WELCOME, backend, tmp_path)  # one batch: decided before the click

    assert backend.handed_over[0] == "person0@example.com"
    assert "person1@example.com" not in backend.handed_over
    assert (report.sent, report.skipped) == (5, {"unsubscribed": 1})
    rows = ledger(fresh, "welcome")
    assert rows["c_1"] == ("skipped", "unsubscribed", 0)  # claimed, never an attempt
    assert all(rows[c][0] == "sent" for c in CONTACTS if c != "c_1")
    assert "person1@example.com" not in recipients(outbox)
    with connect(fresh.warehouse) as con:
        error = con.execute("select error from nudge.messages where contact_id = 'c_1'").fetchone()[0]
    assert "before it was handed over" in error
