"""One message from one candidate: its template's variables, rendered, composed; here or in
worker processes.

Rendering and composing take about a quarter of a millisecond a message, most of a send's
Python, and need neither the warehouse nor the backend. A send with many messages to decide
shares them with `Composers`: worker processes (`python -m dagster_project.composing`) that make
their share of a batch on another core while this process hands the batch before it over, writes
the ledger and makes the rest. The order that makes a send exactly once does not change: a batch
is rendered and composed before any of it is claimed. A worker loads the same template files the
send loaded and checked before it began, and its messages come back as the bytes compose() made
(messages.portable).
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import pickle
import select
import struct
import subprocess
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage
from email.utils import parseaddr
from functools import lru_cache
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO

from dagster_project.messages import Portable, compose, from_portable, message_id, portable, sender_domain
from dagster_project.rendering import EmailTemplate, RenderError
from dagster_project.unsubscribe import UnsubscribeLinks, make_token, unsubscribe_links

if TYPE_CHECKING:
    from dagster_project.automations import Automation
    from dagster_project.policies import Candidate

MARKETING_LIST = "marketing"


@dataclass(frozen=True)
class SendConfig:
    """How a send makes and hands over its messages. It lives here, beside what makes them, so that a
    compose worker reads it without importing the warehouse and Dagster."""

    templates_dir: Path
    sender: str
    postal_address: str
    unsubscribe_url: str
    unsubscribe_mailto: str
    unsubscribe_secret: str = field(repr=False)
    batch_size: int = 100
    # Rows per batch for a backend on this machine that dedupes by Message-ID (file://, null://): a
    # crash there leaves nothing `unknown`, only claims the next tick writes again under the same
    # Message-ID, and no server's pace or limits are outrun by a long batch. So its batches are
    # larger, and the ledger's statements (a few ms each, 30 to 40 ms on a big ledger, whatever
    # their size) are paid once per this many messages.
    local_batch_size: int = 1000
    # The journal `nudge serve` appends unsubscribes to; None where no endpoint runs (then
    # nudge.unsubscribes alone says who left).
    unsubscribe_journal: Path | None = None
    # Worker processes that render and compose while this one hands messages over and writes the
    # ledger (dagster_project.composing), for a send with COMPOSE_IN_PROCESSES_FROM candidates or
    # more; 0 renders every message here.
    compose_processes: int = 0


def unsubscribe_links_for(candidate: Candidate, automation: Automation, config: SendConfig) -> UnsubscribeLinks | None:
    """Marketing mail carries a signed one-click unsubscribe; transactional mail none."""
    if not automation.is_marketing:
        return None
    token = make_token(config.unsubscribe_secret, candidate.contact_id, MARKETING_LIST)
    return unsubscribe_links(config.unsubscribe_url, config.unsubscribe_mailto, token)


def template_variables(candidate: Candidate, automation: Automation, config: SendConfig, as_of: datetime) -> dict[str, Any]:
    return _variables(candidate, automation, config, as_of, unsubscribe_links_for(candidate, automation, config))


def _variables(
    candidate: Candidate, automation: Automation, config: SendConfig, as_of: datetime, links: UnsubscribeLinks | None
) -> dict[str, Any]:
    unsubscribe_url = links.https if links else ""
    sender = automation.sender or config.sender
    return {
        "contact": {
            "contact_id": candidate.contact_id,
            "email": candidate.email,
            "first_name": candidate.first_name,
            "last_name": candidate.last_name,
            "timezone": candidate.timezone,
            "properties": json.loads(candidate.properties or "{}"),
        },
        "context": json.loads(candidate.context or "{}"),
        "automation": automation.name,
        "unsubscribe_url": unsubscribe_url,
        "postal_address": config.postal_address,
        "sender_name": _sender_name(sender),
        "as_of": as_of,
    }


@lru_cache(maxsize=64)
def _sender_name(sender: str) -> str:
    return parseaddr(sender)[0] or sender


def message_for(
    candidate: Candidate,
    automation: Automation,
    template: EmailTemplate,
    config: SendConfig,
    as_of: datetime,
    now: datetime,
) -> EmailMessage:
    """Render and compose one message; RenderError or ValueError for this contact only."""
    sender = automation.sender or config.sender
    # The same signed links in the body and in the List-Unsubscribe headers, signed once.
    links = unsubscribe_links_for(candidate, automation, config)
    try:
        variables = _variables(candidate, automation, config, as_of, links)
    except json.JSONDecodeError as error:
        raise RenderError(f"the trigger's context or the contact's properties are not JSON: {error}") from None
    rendered = template.render(variables)
    return compose(
        rendered=rendered,
        sender=sender,
        recipient=candidate.email or "",
        automation=automation.name,
        message_id=message_id(automation.name, candidate.trigger_key, sender_domain(sender)),
        date=now,
        unsubscribe=links,
    )


def message_or_reason(
    candidate: Candidate, automation: Automation, template: EmailTemplate, config: SendConfig, as_of: datetime,
    now: datetime,
) -> EmailMessage | str:
    """The message, or why this contact's could not be made (the ledger's detail for a template_error)."""
    try:
        return message_for(candidate, automation, template, config, as_of, now)
    except (RenderError, ValueError) as error:
        return str(error)


@dataclass(frozen=True)
class ComposeJob:
    """What a worker needs besides the candidates: the same for every batch of one send."""

    automation: Automation
    config: SendConfig
    as_of: datetime
    now: datetime


# What crosses to a worker names no type of dagster_project.automations or .policies: unpickling a
# job's Automation and Candidates made a worker import those (pydantic, yaml, DuckDB, pyarrow), 0.35 s
# of its start against 0.15 s, while the send made its first batches alone. Making a message reads
# only these fields of them (message_for); tests/integration/test_compose_processes.py holds that
# nothing else crosses.
@dataclass(frozen=True)
class _AutomationFacts:
    name: str
    template: str
    category: str
    sender: str | None
    is_marketing: bool

    @classmethod
    def of(cls, automation: Automation) -> "_AutomationFacts":
        return cls(automation.name, automation.template, automation.category, automation.sender,
                   automation.is_marketing)


@dataclass(frozen=True)
class _Recipient:
    contact_id: str
    trigger_key: str
    email: str | None
    first_name: str | None
    last_name: str | None
    timezone: str | None
    properties: str | None
    context: str | None

    @classmethod
    def of(cls, candidate: Candidate) -> "_Recipient":
        return cls(candidate.contact_id, candidate.trigger_key, candidate.email, candidate.first_name,
                   candidate.last_name, candidate.timezone, candidate.properties, candidate.context)


def crossing_request(job: ComposeJob, candidates: Sequence[Candidate]) -> tuple[ComposeJob, list[_Recipient]]:
    """A job and its candidates as they cross to a worker."""
    crossing_job = dataclasses.replace(job, automation=_AutomationFacts.of(job.automation))  # type: ignore[arg-type]
    return crossing_job, [_Recipient.of(candidate) for candidate in candidates]


class ComposeFailed(RuntimeError):
    """A worker failed on something other than one contact's template (or died): the send stops
    before the batch is claimed."""


# A frame on the pipes: its length, then a pickle.
_LENGTH = struct.Struct("!Q")


def _write_frame(stream: BinaryIO, value: object) -> None:
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_LENGTH.pack(len(data)))
    stream.write(data)
    stream.flush()


def _read_frame(stream: BinaryIO) -> Any | None:
    """The next value, or None at the end of the stream."""
    head = stream.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        return None
    (size,) = _LENGTH.unpack(head)
    data = stream.read(size)
    if len(data) < size:
        return None
    return pickle.loads(data)  # noqa: S301 - from our own worker process, over its own pipe


def _widen(pipe: IO[bytes] | None) -> None:
    """A batch's messages are megabytes: through the default 64 KiB pipe that is a hundred turns of
    each process waiting for the other. Linux lets a pipe hold up to pipe-max-size (1 MiB by default)."""
    set_size = getattr(fcntl, "F_SETPIPE_SZ", None)
    if pipe is None or set_size is None:
        return
    try:
        fcntl.fcntl(pipe.fileno(), set_size, _PIPE_BYTES)
    except OSError:
        pass  # a smaller pipe is only slower


_PIPE_BYTES = 1 << 20

# A worker's first frame: its imports are done and it takes jobs.
_READY = "ready"


class _Worker:
    """One worker process, one job at a time, from when it says it is ready.

    Its answer is read on the thread that waits for it, not by a thread of its own: such a thread
    takes the interpreter's lock back after every read from the pipe, and the sending thread then
    waits for it. One job at a time keeps the pipes from filling both ways at once: the worker
    only writes an answer while this process is not writing to it."""

    def __init__(self) -> None:
        package_root = str(Path(__file__).resolve().parent.parent)
        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, environment.get("PYTHONPATH")]))
        # Its stderr is this process's: a worker's traceback lands in the run's logs.
        self.process = subprocess.Popen(
            [sys.executable, "-m", "dagster_project.composing"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=environment,
        )
        for pipe in (self.process.stdin, self.process.stdout):
            _widen(pipe)
        self._busy = False
        self._failed: ComposeFailed | None = None
        self._ready = False

    def ready(self) -> bool:
        """Whether it has started (a third of a second of imports) and can take a job: asked without
        waiting, so a send makes its first batches itself rather than wait for the worker to start."""
        return self.wait_until_ready(0.0)

    def wait_until_ready(self, timeout: float) -> bool:
        if not self._ready and select.select([self.process.stdout], [], [], timeout)[0]:
            greeting = _read_frame(self.process.stdout)  # type: ignore[arg-type]
            if greeting != _READY:
                # Gone before its first job: that job's answer says so (answer() raises this).
                self._failed = ComposeFailed(self._gone() if greeting is None else f"the compose worker said {greeting!r}")
            self._ready = True
        return self._ready

    def submit(self, job: ComposeJob, candidates: Sequence[Candidate]) -> None:
        if self._busy:
            raise RuntimeError("a compose worker takes one job at a time: read its answer first")
        self._busy = True
        try:
            _write_frame(self.process.stdin, crossing_request(job, candidates))  # type: ignore[arg-type]
        except OSError as error:
            # Raised where the answer is awaited, so the batch the sender holds still goes out first.
            self._failed = ComposeFailed(f"{self._gone()}: {error}")

    def answer(self) -> tuple[list[Portable | str], float]:
        """The job's messages as they crossed (or why each has none), and the seconds the worker
        spent on them."""
        self._busy = False
        if self._failed is not None:
            raise self._failed
        answer = _read_frame(self.process.stdout)  # type: ignore[arg-type]
        if answer is None:
            raise ComposeFailed(self._gone())
        ok, result, seconds = answer
        if not ok:
            raise ComposeFailed(f"the compose worker failed:\n{result}")
        return pickle.loads(result), seconds  # noqa: S301 - our own worker's

    def _gone(self) -> str:
        try:
            code = self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            return f"the compose worker (pid {self.process.pid}) stopped answering"
        return f"the compose worker (pid {self.process.pid}) exited with code {code}"

    def close(self) -> None:
        if self._busy:
            # Its answer will never be read (the send stopped first): a worker blocked writing it would
            # never see its input end, and closing would wait out the timeout below for nothing.
            self.process.kill()
        try:
            self.process.stdin.close()  # type: ignore[union-attr]  # the worker's signal to finish
        except OSError:
            pass
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process.stdout.close()  # type: ignore[union-attr]


class Composers:
    """`processes` workers that make a share of each batch's messages while the sending process
    makes the rest and hands the batch before over.

    The share is balanced batch by batch: when the workers answered before they were asked, they
    get more; when the sender waited for them, less. How much each side has to do depends on the
    backend (a file's creation, an SMTP server's answer) and on what else runs on the machine.
    A worker still starting gets no share: the sending process makes the batch itself. (Waiting for
    it held the first batch of a 10,000-message send to the file backend 0.43 s against 0.2 s;
    4,118 to 4,953 msg/s against 4,036 to 4,537 in four alternating pairs.)"""

    # Batches smaller than this say too little about the two sides' pace to move the share.
    _BALANCE_FROM = 50

    def __init__(self, processes: int) -> None:
        if processes < 1:
            raise ValueError("Composers needs at least one process")
        self._workers: list[_Worker] = []
        try:
            for _ in range(processes):
                self._workers.append(_Worker())
        except BaseException:
            self.close()
            raise
        # Each process an equal part to begin with.
        self.share = processes / (processes + 1)
        # A worker's first job also loads the template and the modules the job names: no measure of its pace.
        self._first = True

    def __enter__(self) -> "Composers":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait_until_ready(self, timeout: float = 30.0) -> "Composers":
        """Return once every worker can take a job (or `timeout` has passed)."""
        deadline = time.monotonic() + timeout
        for worker in self._workers:
            worker.wait_until_ready(max(0.0, deadline - time.monotonic()))
        return self

    def submit(self, job: ComposeJob, candidates: Sequence[Candidate]) -> "ComposedBatch":
        """Start the ready workers on the first `ComposedBatch.taken` of `candidates`; the caller makes
        the others meanwhile, then calls ComposedBatch.answers() (before the next submit)."""
        ready = [worker for worker in self._workers if worker.ready()]
        taken = 0
        if ready and candidates:
            share = self.share * len(ready) / len(self._workers)
            taken = min(len(candidates), max(1, round(len(candidates) * share)))
        working = []
        if taken:
            per_worker = -(-taken // len(ready))
            for start, worker in zip(range(0, taken, per_worker), ready):
                worker.submit(job, candidates[start:min(start + per_worker, taken)])
                working.append(worker)
        batch = ComposedBatch(self, working, taken, size=len(candidates), first=self._first)
        if working:
            self._first = False
        return batch

    def _balance(self, size: int, sender_seconds: float, worker_seconds: float) -> None:
        if size < self._BALANCE_FROM or sender_seconds <= 0 or worker_seconds <= 0:
            return
        # A square root: halfway (in ratio) to where the two would have taken as long.
        self.share = min(1.0, max(0.05, self.share * (sender_seconds / worker_seconds) ** 0.5))

    def close(self) -> None:
        for worker in self._workers:
            worker.close()


class ComposedBatch:
    def __init__(self, composers: Composers, workers: list[_Worker], taken: int, *, size: int, first: bool) -> None:
        self._composers, self._workers, self.taken = composers, workers, taken
        self._size, self._first = size, first
        self._started = time.perf_counter()

    def answers(self) -> list[Portable | str]:
        """The workers' answers for the candidates they took, in order, as they crossed: `arrived`
        makes them messages (or why each has none). ComposeFailed if a worker failed or died. Once
        read, the workers are free for the next submit, while the caller makes the messages."""
        sender_seconds = time.perf_counter() - self._started
        answers = [worker.answer() for worker in self._workers]
        if not self._first:
            self._composers._balance(self._size, sender_seconds, max((seconds for _, seconds in answers), default=0.0))
        return [outcome for messages, _ in answers for outcome in messages]


def arrived(answers: Sequence[Portable | str]) -> list[EmailMessage | str]:
    """Messages as the workers sent them across (ComposedBatch.answers), made messages again."""
    return [_arrived(answer) for answer in answers]


def _crossing(message: EmailMessage | str) -> Portable | str:
    return message if isinstance(message, str) else portable(message)


def _arrived(message: Portable | str) -> EmailMessage | str:
    return message if isinstance(message, str) else from_portable(*message)


def _serve(requests: BinaryIO, answers: BinaryIO) -> None:
    templates: dict[tuple[Path, str, str], EmailTemplate] = {}
    while (request := _read_frame(requests)) is not None:
        job, candidates = request
        started = time.perf_counter()
        try:
            automation, config = job.automation, job.config
            key = (config.templates_dir, automation.template, automation.category)
            if key not in templates:
                templates[key] = EmailTemplate.load(config.templates_dir, automation.template, category=automation.category)
            template = templates[key]
            result = [_crossing(message_or_reason(candidate, automation, template, config, job.as_of, job.now))
                      for candidate in candidates]
            # Pickled here so that its time counts in the worker's seconds (what Composers balances).
            answer = (True, pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL), time.perf_counter() - started)
        except BaseException:  # noqa: BLE001 - reported to the send, which stops
            answer = (False, traceback.format_exc(), 0.0)
        _write_frame(answers, answer)


def _main() -> None:
    # The answers get a descriptor of their own, and anything else written to stdout (a library's
    # print) goes to stderr instead of into the middle of a frame.
    answers: IO[bytes] = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    # The module a job's pickle names (this one, under its own name rather than __main__'s), imported
    # before it says it is ready: a job waits for none.
    import dagster_project.composing  # noqa: F401, PLC0415

    with answers:
        _write_frame(answers, _READY)
        _serve(sys.stdin.buffer, answers)
    # Every answer is written and flushed, and nothing else is left to do: leaving without the
    # interpreter's teardown spares the send waiting for it in close() (65 ms, 4 ms without).
    os._exit(0)


if __name__ == "__main__":
    _main()
