"""Messages rendered and composed in worker processes (dagster_project.composing), beside the send.

Real worker processes, real templates, a real DuckDB file and the file backend: the messages that
come back are the ones this process would make, byte for byte and in order; a contact's broken
data is that contact's template_error; a worker that fails or dies stops the send before the batch
it held is claimed, and the next send delivers the rest exactly once.
"""

from __future__ import annotations

import dataclasses
import io
import os
import signal
import time
from datetime import datetime
from pathlib import Path

import pytest
from send_warehouse import AS_OF, CONFIG, WELCOME, ledger, welcome_warehouse

import dagster_project.send as send_module
from dagster_project.automations import Policy
from dagster_project.backends.base import composed_bytes
from dagster_project.backends.file import FileBackend
from dagster_project.composing import ComposeFailed, ComposeJob, Composers, arrived, message_or_reason
from dagster_project.policies import Candidate
from dagster_project.rendering import EmailTemplate

NOW = datetime(2026, 11, 1, 12, 0, 5)


def candidate(number: int, **changes) -> Candidate:
    base = Candidate(
        contact_id=f"c_{number}", trigger_key=f"c_{number}", qualified_at=datetime(2026, 11, 1, 11),
        due_at=datetime(2026, 11, 1, 11), context="{}", has_contact=True, email=f"person{number}@example.com",
        contact_status="subscribed", first_name=f"Ané {number}", last_name="No", timezone="UTC", properties="{}",
        last_entered_at=None, ledger_status=None, attempts=0,
    )
    return dataclasses.replace(base, **changes)


CANDIDATES = [
    *(candidate(number) for number in range(6)),
    candidate(6, context="{not json"),  # a RenderError: this contact's template_error
    candidate(7, email="two@example.com, addresses@example.com"),  # a ValueError from compose
    *(candidate(number) for number in range(8, 12)),
]


def made_here(job: ComposeJob) -> list[bytes | str]:
    template = EmailTemplate.load(CONFIG.templates_dir, WELCOME.template, category=WELCOME.category)
    made = [message_or_reason(one, WELCOME, template, CONFIG, job.as_of, job.now) for one in CANDIDATES]
    return [message if isinstance(message, str) else composed_bytes(message) for message in made]


def test_a_job_crosses_to_a_worker_without_the_automations_or_policies_modules():
    # Unpickling an Automation or a Candidate would make the worker import what they are made in
    # (pydantic, yaml, DuckDB, pyarrow: most of its start). The job names composing's types alone.
    import pickle

    from dagster_project.composing import crossing_request

    named: set[str] = set()

    class Naming(pickle.Unpickler):
        def find_class(self, module, name):
            named.add(module)
            return super().find_class(module, name)

    data = pickle.dumps(crossing_request(ComposeJob(WELCOME, CONFIG, AS_OF, NOW), CANDIDATES),
                        protocol=pickle.HIGHEST_PROTOCOL)
    job, recipients = Naming(io.BytesIO(data)).load()
    assert {module for module in named if module.startswith("dagster_project")} == {"dagster_project.composing"}
    assert (job.automation.name, job.automation.is_marketing) == (WELCOME.name, WELCOME.is_marketing)
    assert [one.trigger_key for one in recipients] == [one.trigger_key for one in CANDIDATES]


@pytest.mark.parametrize("processes", [1, 2])
def test_workers_make_the_messages_this_process_would_in_order(processes):
    job = ComposeJob(WELCOME, CONFIG, AS_OF, NOW)
    expected = made_here(job)
    assert isinstance(expected[6], str) and "JSON" in expected[6]
    assert isinstance(expected[7], str) and "exactly one email address" in expected[7]

    with Composers(processes).wait_until_ready() as composers:
        composers.share = 1.0  # every candidate to the workers
        batch = composers.submit(job, CANDIDATES)
        assert batch.taken == len(CANDIDATES)
        arrived_messages = arrived(batch.answers())
        composers.share = 0.5  # half of the next batch; the caller makes the rest
        second = composers.submit(job, CANDIDATES)
        assert second.taken == len(CANDIDATES) // 2
        second_arrived = arrived(second.answers())

    got = [message if isinstance(message, str) else composed_bytes(message) for message in arrived_messages]
    assert got == expected
    assert [m if isinstance(m, str) else composed_bytes(m) for m in second_arrived] == expected[: second.taken]


def test_the_share_moves_toward_the_side_that_waited():
    with Composers(1) as composers:
        composers.share = 0.5
        composers._balance(size=500, sender_seconds=0.1, worker_seconds=0.4)  # the sender waited: less to the worker
        assert composers.share == pytest.approx(0.25)
        composers._balance(size=500, sender_seconds=0.4, worker_seconds=0.1)  # the worker waited: more
        assert composers.share == pytest.approx(0.5)
        composers._balance(size=10, sender_seconds=1.0, worker_seconds=0.01)  # too small a batch to tell
        assert composers.share == pytest.approx(0.5)
        for _ in range(20):
            composers._balance(size=500, sender_seconds=0.01, worker_seconds=1.0)
        assert composers.share == 0.05  # never nothing: the worker's pace stays known
        for _ in range(20):
            composers._balance(size=500, sender_seconds=1.0, worker_seconds=0.01)
        assert composers.share == 1.0


def test_the_share_is_balanced_by_the_batchs_size_not_the_workers_part_of_it():
    # A share of 0.1 of a 100-candidate batch is 10 for the worker: still a batch worth measuring.
    job = ComposeJob(WELCOME, CONFIG, AS_OF, NOW)
    many = [candidate(number) for number in range(100)]
    with Composers(1).wait_until_ready() as composers:
        composers.share = 0.5
        composers.submit(job, many).answers()  # the worker's first job loads the template: not measured
        assert composers.share == 0.5
        composers.share = 0.1
        batch = composers.submit(job, many)
        assert batch.taken == 10
        batch.answers()  # asked at once, so the sender waited: the worker gets less
        assert composers.share < 0.1


def test_a_worker_still_starting_gets_no_share_and_one_that_has_started_does():
    job = ComposeJob(WELCOME, CONFIG, AS_OF, NOW)
    with Composers(1) as composers:
        worker = composers._workers[0]
        os.kill(worker.process.pid, signal.SIGSTOP)  # held before its imports are done
        try:
            composers.share = 1.0
            assert not worker.ready()
            starting = composers.submit(job, CANDIDATES)
            assert starting.taken == 0  # the caller makes the whole batch
            assert starting.answers() == []
        finally:
            os.kill(worker.process.pid, signal.SIGCONT)
        composers.wait_until_ready()
        assert worker.ready()
        started = composers.submit(job, CANDIDATES)
        assert started.taken == len(CANDIDATES)
        made = [m if isinstance(m, str) else composed_bytes(m) for m in arrived(started.answers())]
    assert made == made_here(job)


def test_a_batch_with_nothing_to_make_goes_to_no_worker():
    # Every candidate of a batch decided without a message (skipped, held): nothing to share out.
    job = ComposeJob(WELCOME, CONFIG, AS_OF, NOW)
    with Composers(2).wait_until_ready() as composers:
        nothing = composers.submit(job, [])
        assert nothing.taken == 0 and nothing.answers() == []
        assert composers.submit(job, CANDIDATES[:1]).taken == 1  # and the workers still take the next


def ready_composers(processes: int) -> Composers:
    """Workers that take their share from a send's first batch (a send does not wait for them)."""
    return Composers(processes).wait_until_ready()


def test_a_worker_that_fails_says_why():
    job = ComposeJob(WELCOME, dataclasses.replace(CONFIG, templates_dir=Path("/nonexistent/templates")), AS_OF, NOW)
    with Composers(1).wait_until_ready() as composers:
        composers.share = 1.0
        with pytest.raises(ComposeFailed, match="(?s)the compose worker failed.*nonexistent"):
            composers.submit(job, CANDIDATES).answers()


def test_a_worker_that_dies_says_so():
    with Composers(1) as composers:
        composers.share = 1.0
        composers._workers[0].process.kill()
        composers.wait_until_ready()  # it never will be: gone, which its first job's answer says
        with pytest.raises(ComposeFailed, match="exited with code -9"):
            composers.submit(ComposeJob(WELCOME, CONFIG, AS_OF, NOW), CANDIDATES).answers()


EMAILS = [f"person{number}@example.com" for number in range(40)]


def send(con, outbox: Path, processes: int):
    config = dataclasses.replace(CONFIG, batch_size=5, local_batch_size=5, compose_processes=processes)
    with FileBackend(outbox) as backend:
        return send_module.send_automation(
            con, WELCOME, contacts_relation="staging.stg_contacts", events_relation="intermediate.int_events",
            backend=backend, config=config, as_of=AS_OF, policy=Policy(cap_per_day=None, cap_per_week=None),
            marketing_automations=["welcome"], clock=lambda: NOW,
        )


def outbox_files(outbox: Path) -> dict[str, bytes]:
    return {str(path.relative_to(outbox)): path.read_bytes() for path in sorted(outbox.rglob("*.eml"))}


def test_closing_with_an_answer_unread_does_not_wait_for_it():
    # A send that stops mid-batch (its backend gone) closes the workers while one still makes the next
    # batch: its answer, megabytes, fills the pipe nobody reads. Closing must not wait for it (it had
    # waited out its 30 s timeout before killing the worker).
    job = ComposeJob(WELCOME, CONFIG, AS_OF, NOW)
    composers = Composers(1).wait_until_ready()
    worker = composers._workers[0]
    composers.submit(job, [candidate(number) for number in range(3000)])
    started = time.monotonic()
    composers.close()
    assert time.monotonic() - started < 15
    assert worker.process.returncode is not None  # gone, not left behind


def test_a_send_with_workers_writes_what_a_send_without_them_writes(tmp_path, monkeypatch):
    monkeypatch.setattr(send_module, "COMPOSE_IN_PROCESSES_FROM", 10)
    alone = welcome_warehouse(tmp_path / "alone.duckdb", EMAILS)
    helped = welcome_warehouse(tmp_path / "helped.duckdb", EMAILS)
    started = []
    monkeypatch.setattr(send_module, "Composers", lambda processes: started.append(processes) or ready_composers(processes))

    without = send(alone, tmp_path / "alone", processes=0)
    assert started == []
    with_workers = send(helped, tmp_path / "helped", processes=1)
    assert started == [1]

    assert without.sent == with_workers.sent == len(EMAILS)
    assert outbox_files(tmp_path / "helped") == outbox_files(tmp_path / "alone")
    assert len(outbox_files(tmp_path / "helped")) == len(EMAILS)
    assert ledger(helped) == ledger(alone)
    assert helped.sql("select count(*) from nudge.messages where status = 'sent' and subject like 'Welcome%'").fetchall() == [(len(EMAILS),)]


def test_a_worker_dying_mid_send_stops_it_before_the_batch_it_held_is_claimed(tmp_path, monkeypatch):
    monkeypatch.setattr(send_module, "COMPOSE_IN_PROCESSES_FROM", 10)
    con = welcome_warehouse(tmp_path / "warehouse.duckdb", EMAILS)
    monkeypatch.setattr(send_module, "Composers", ready_composers)
    submit = Composers.submit
    calls = []

    def die_before_the_second_batch(composers: Composers, job, candidates):
        calls.append(len(candidates))
        if len(calls) == 2:
            for worker in composers._workers:
                worker.process.kill()
                worker.process.wait()
        return submit(composers, job, candidates)

    monkeypatch.setattr(Composers, "submit", die_before_the_second_batch)
    with pytest.raises(ComposeFailed, match="exited with code -9"):
        send(con, tmp_path / "outbox", processes=1)

    rows = ledger(con)
    # The first batch, made partly by the worker, went out; the second never reached it: never
    # claimed, so nothing pending and nothing of it in the outbox.
    assert sorted(row[0] for row in rows.values()) == ["sent"] * 5
    assert len(outbox_files(tmp_path / "outbox")) == 5

    monkeypatch.setattr(Composers, "submit", submit)
    report = send(con, tmp_path / "outbox", processes=1)
    assert report.sent == len(EMAILS) - 5
    assert {row[:3] for row in ledger(con).values()} == {("sent", None, 1)}
    assert len(ledger(con)) == len(outbox_files(tmp_path / "outbox")) == len(EMAILS)


def test_a_killed_send_leaves_no_worker_behind(tmp_path):
    # The send's process is SIGKILLed (no cleanup at all): its workers read the end of their
    # input and exit, rather than wait forever for work.
    import os
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "holder.py"
    script.write_text(
        "import sys, time\n"
        "from dagster_project.composing import Composers\n"
        "composers = Composers(2)\n"
        "print(*(worker.process.pid for worker in composers._workers), flush=True)\n"
        "time.sleep(600)\n"
    )
    holder = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[2])
    pids = [int(pid) for pid in holder.stdout.readline().split()]
    assert len(pids) == 2
    holder.send_signal(signal.SIGKILL)
    holder.wait()

    deadline = time.monotonic() + 20
    alive = set(pids)
    while alive and time.monotonic() < deadline:
        for pid in list(alive):
            try:
                finished, _ = os.waitpid(pid, os.WNOHANG)  # not our child: raises ChildProcessError
            except ChildProcessError:
                finished = 0
            if finished or not Path(f"/proc/{pid}").exists() or _zombie(pid):
                alive.discard(pid)
        time.sleep(0.05)
    assert not alive, f"workers still running after their send was killed: {alive}"


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (OSError, IndexError):
        return True
