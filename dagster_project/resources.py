"""Dagster resources that are not the warehouse: the email backend and send settings."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from dagster_project.backends import backend_from_url, redact_url
from dagster_project.backends.base import EmailBackend
from dagster_project.send import SendConfig


class EmailBackendResource(dg.ConfigurableResource):
    """Where messages go, chosen by URL (file://, smtp://, smtps://, null://)."""

    url: str

    def open(self) -> EmailBackend:
        return backend_from_url(self.url)

    def __repr_args__(self):  # noqa: ANN204 - pydantic's hook behind repr() and str()
        # A resource ends up in tracebacks and debug output: never with the password in its URL.
        for name, value in super().__repr_args__():
            yield name, redact_url(value) if name == "url" and isinstance(value, str) else value

    @property
    def description(self) -> str:
        return redact_url(self.url)


class SendSettings(dg.ConfigurableResource):
    templates_dir: str
    sender: str
    postal_address: str
    unsubscribe_url: str
    unsubscribe_mailto: str
    unsubscribe_secret: str
    batch_size: int = 100
    unsubscribe_journal: str | None = None
    compose_processes: int = 0

    def __repr_args__(self):  # noqa: ANN204 - pydantic's hook behind repr() and str()
        for name, value in super().__repr_args__():
            yield name, "***" if name == "unsubscribe_secret" and isinstance(value, str) else value

    def config(self) -> SendConfig:
        return SendConfig(
            templates_dir=Path(self.templates_dir),
            sender=self.sender,
            postal_address=self.postal_address,
            unsubscribe_url=self.unsubscribe_url,
            unsubscribe_mailto=self.unsubscribe_mailto,
            unsubscribe_secret=self.unsubscribe_secret,
            batch_size=self.batch_size,
            unsubscribe_journal=Path(self.unsubscribe_journal) if self.unsubscribe_journal else None,
            compose_processes=self.compose_processes,
        )
