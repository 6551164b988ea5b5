"""A local SMTP server (aiosmtpd) in its own process, so it has a core of its own.

It accepts every message and counts them; the benchmark reads the count back to check
that every message sent arrived exactly once.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from contextlib import contextmanager
from collections.abc import Iterator


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def smtp_sink() -> Iterator["Sink"]:
    port = _free_port()
    process = subprocess.Popen([sys.executable, "-m", "bench.smtp_sink", str(port)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        if process.stdout.readline().strip() != "ready":
            raise RuntimeError("the benchmark's SMTP server did not start")
        yield Sink(process, port)
    finally:
        process.stdin.close()
        process.wait(timeout=30)


class Sink:
    def __init__(self, process: subprocess.Popen, port: int):
        self.process, self.port = process, port

    def received(self) -> int:
        """Messages accepted so far."""
        self.process.stdin.write("count\n")
        self.process.stdin.flush()
        return int(self.process.stdout.readline())


def _serve(port: int) -> None:
    from aiosmtpd.controller import Controller

    class Counting:
        received = 0

        async def handle_DATA(self, server, session, envelope) -> str:  # noqa: ANN001
            Counting.received += 1
            return "250 OK"

    controller = Controller(Counting(), hostname="127.0.0.1", port=port)
    controller.start()
    print("ready", flush=True)
    try:
        for line in sys.stdin:
            if line.strip() == "count":
                print(Counting.received, flush=True)
    finally:
        controller.stop()


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
