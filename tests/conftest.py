"""Shared fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from smtp_sink import SmtpSink


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    """A real SMTP server on 127.0.0.1 (aiosmtpd), started for one test."""
    with SmtpSink() as sink:
        yield sink
