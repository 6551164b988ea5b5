"""Test-session set-up shared by every test folder."""

from __future__ import annotations

import fcntl
import shutil

import pytest

from dagster_project.settings import PROJECT_ROOT


@pytest.fixture(scope="session")
def dbt_manifest():
    """The dbt manifest, prepared once per session the way `make prepare` does it.

    Under pytest-xdist every worker runs this fixture: an OS lock keeps two `dbt parse`
    from writing the project's target folder at once."""
    from dagster_project.dbt_assets import prepare_manifest

    project_dir = PROJECT_ROOT / "dbt_project"
    manifest = project_dir / "target" / "manifest.json"
    manifest.parent.mkdir(exist_ok=True)
    with open(manifest.parent / ".prepare.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            # Parse only when a source is newer (as `make prepare` decides): rewriting the manifest
            # while another worker's tick reads it could hand that tick half a file.
            if not manifest.exists() or manifest.stat().st_mtime < _newest_source(project_dir):
                prepare_manifest(project_dir)
            return manifest
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _newest_source(project_dir) -> float:
    sources = [project_dir / "dbt_project.yml", project_dir / "profiles.yml"]
    for folder in ("models", "macros", "tests", "seeds"):
        sources += [path for path in (project_dir / folder).rglob("*") if path.is_file()]
    return max(path.stat().st_mtime for path in sources)


# The files that run whole ticks take minutes each; the rest take seconds. pytest-xdist hands
# out files in collection order, so the long ones go first and the short ones fill in around
# them; collected last, one long file would run alone on one core while the other sits idle.
LONG_FILES = (
    "tests/e2e/test_cli.py",
    "tests/e2e/test_backtest.py",
    "tests/integration/test_dbt_unit_tests.py",
    "tests/e2e/test_smtp_tick.py",
    "tests/e2e/test_tick_end_to_end.py",
    "tests/integration/test_policies_in_a_tick.py",
    "tests/security/test_secrets.py",
    "tests/integration/test_email_suppressions.py",
    "tests/e2e/test_overlapping_ticks.py",
    "tests/integration/test_incremental_models.py",
)


def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        path = item.nodeid.split("::", 1)[0]
        return LONG_FILES.index(path) if path in LONG_FILES else len(LONG_FILES)

    items.sort(key=rank)  # stable: within a file, and among the short files, the order is pytest's


# Every tick keeps dbt's state in dbt_project/target/tick_<warehouse digest> (dbt_assets.py),
# and the tests tick warehouses in temporary folders that are gone after the session: their
# target folders (about 12 MB each) would pile up in the working tree, run after run.
_TICK_TARGETS = PROJECT_ROOT / "dbt_project" / "target"


def _tick_target_folders() -> set:
    return set(_TICK_TARGETS.glob("tick_*"))


def pytest_sessionstart(session):
    session.config._tick_targets_before = _tick_target_folders()


def pytest_sessionfinish(session, exitstatus):
    if hasattr(session.config, "workerinput"):
        return  # an xdist worker: the controller cleans up once every worker is done
    for folder in _tick_target_folders() - session.config._tick_targets_before:
        shutil.rmtree(folder, ignore_errors=True)
