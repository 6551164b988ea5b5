"""The other side's crash: an SMTP server that takes a message and hangs up before its 250.

The server has the message (it may deliver it), the client never hears so. Resending it on a
fresh connection delivers it twice; the honest answer is "uncertain" (DeliveryUncertain,
which send_automation records as `unknown`).
"""

from __future__ import annotations

from datetime import datetime

import pytest
from aiosmtpd.controller import Controller
from smtp_sink import SmtpSink, _Handler

from dagster_project.backends import backend_from_url
from dagster_project.backends.base import DeliveryUncertain
from dagster_project.messages import compose
from dagster_project.rendering import RenderedEmail


class _HangUpAfterFirstData(_Handler):
    async def handle_DATA(self, server, session, envelope):
        answer = await super().handle_DATA(server, session, envelope)
        if len(self.sink.messages) == 1:
            server.transport.abort()  # recorded (taken), then gone without a reply
        return answer


@pytest.fixture
def hangup_sink():
    sink = SmtpSink()
    sink._controller = Controller(_HangUpAfterFirstData(sink), hostname=sink.host, port=sink.port)
    sink._controller.start()
    yield sink
    sink.stop()


def test_a_server_that_hangs_up_after_taking_data_gets_the_message_once(hangup_sink):
    message = compose(
        rendered=RenderedEmail(subject="Hi", html="<p>Hi</p>", text="Hi"),
        sender="Nudge <hello@nudge.example>", recipient="person@example.com", automation="welcome",
        message_id="<hangup@nudge.example>", date=datetime(2026, 11, 1, 12), unsubscribe=None,
    )
    with backend_from_url(hangup_sink.url) as backend:
        # The right answer: uncertain, which the ledger records as unknown and never resends.
        with pytest.raises(DeliveryUncertain, match="hung up after taking all"):
            backend.send(message)
    assert [m.message_id for m in hangup_sink.messages] == ["<hangup@nudge.example>"]
