"""Test-session set-up shared by every test folder."""

from __future__ import annotations

import pytest

from dagster_project.settings import PROJECT_ROOT


@pytest.fixture(scope="session")
def dbt_manifest():
    """The dbt manifest, prepared once per session the way `make prepare` does it."""
    from dagster_project.dbt_assets import prepare_manifest

    return prepare_manifest(PROJECT_ROOT / "dbt_project")
