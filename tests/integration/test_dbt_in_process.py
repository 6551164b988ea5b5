"""dbt inside the Dagster process (dagster_project/dbt_runner.py): the project is parsed once per
process, and once for all processes until what a parse reads changes; each build hands back its node
results, and the warehouse file is let go afterwards.

Real components: the project's dbt, a DuckDB file in a temporary folder, dbtRunner.
"""

from __future__ import annotations

import gc
import json
import pickle
from pathlib import Path

import duckdb
import pytest

from dagster_project import dbt_runner
from dagster_project.dbt_runner import dbt_arguments, run_dbt
from dagster_project.settings import PROJECT_ROOT
from tests.nudge_env import copy_project

PROJECT = PROJECT_ROOT / "dbt_project"


def test_dbt_arguments_name_the_project_profiles_and_the_ticks_target_folder():
    assert dbt_arguments(["build", "--select", "fqn:*"], Path("/p"), Path("/q"), Path("/p/target/tick_1")) == [
        "build", "--select", "fqn:*",
        "--project-dir", "/p", "--profiles-dir", "/q",
        "--target-path", "/p/target/tick_1", "--log-path", "/p/target/tick_1", "--log-format-file", "json",
        "--log-level-file", "info", "--no-write-json",
    ]


def test_dbts_own_file_log_level_wins_over_the_ticks_info():
    arguments = dbt_arguments(["build"], Path("/p"), Path("/q"), Path("/t"), environ={"DBT_LOG_LEVEL_FILE": "debug"})
    assert "--log-level-file" not in arguments


@pytest.fixture
def warehouse(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "warehouse.duckdb"
    monkeypatch.setenv("NUDGE_WAREHOUSE", str(path))
    monkeypatch.setenv("NUDGE_AS_OF", "2026-11-01T00:00:00+00:00")
    dbt_runner.forget_manifests()
    return path


def test_two_builds_parse_the_project_once_and_let_go_of_the_file(warehouse, tmp_path):
    target = tmp_path / "target"
    # cautious: not the tests that also read models this build does not make
    builds = [run_dbt(["build", "--select", "iana_timezones", "--indirect-selection", "cautious"], project_dir=PROJECT, profiles_dir=PROJECT,
                      target_path=target) for _ in range(2)]

    assert [build.success for build in builds] == [True, True]
    # each build reports its own results: the seed and its test, as dbt's JSON log lines
    for build in builds:
        finished = {(result["info"]["name"], result["data"]["node_info"]["unique_id"]) for result in build.results}
        assert ("LogSeedResult", "seed.nudge.iana_timezones") in finished
        assert any(name == "LogTestResult" and "iana_timezones" in unique_id for name, unique_id in finished)
    assert len([key for key in dbt_runner._manifests if key[2] == str(target)]) == 1
    # no manifest.json rewritten per invocation; each build's run results, handed back and written
    assert not (target / "manifest.json").exists()
    written = json.loads((target / "run_results.json").read_text())
    assert [result["unique_id"] for result in written["results"]] == [
        result["unique_id"] for result in builds[-1].run_results["results"]
    ]
    assert "seed.nudge.iana_timezones" in {result["unique_id"] for result in written["results"]}
    # the log beside them: a line per node, none per query (DBT_LOG_LEVEL_FILE=debug brings those back)
    logged = [json.loads(line)["info"]["name"] for line in (target / "dbt.log").read_text().splitlines()]
    assert "LogSeedResult" in logged and "LogTestResult" in logged
    assert "SQLQuery" not in logged
    # the file is free for a connection with other settings (the send step's) in this process
    with duckdb.connect(str(warehouse), config={"memory_limit": "64MB"}) as con:
        assert con.sql("select count(*) > 400 from seeds.iana_timezones").fetchall() == [(True,)]


def _count_json_lines_made(monkeypatch) -> list[str]:
    """The names of the events dbt's file logger formats from here on (the real formatting runs)."""
    from dbt_common.events.logger import _JsonLogger

    made: list[str] = []
    create_line = _JsonLogger.create_line

    def counted(self, msg):
        made.append(msg.info.name)
        return create_line(self, msg)

    monkeypatch.setattr(_JsonLogger, "create_line", counted)
    return made


def _logged(target: Path) -> list[str]:
    return [json.loads(line)["info"]["name"] for line in (target / "dbt.log").read_text().splitlines()]


def test_dbt_formats_only_the_log_lines_it_writes(warehouse, tmp_path, monkeypatch):
    made = _count_json_lines_made(monkeypatch)
    target = tmp_path / "target"
    run = run_dbt(["build", "--select", "iana_timezones", "--indirect-selection", "cautious"], project_dir=PROJECT,
                  profiles_dir=PROJECT, target_path=target)
    assert run.success
    logged = _logged(target)
    assert "LogSeedResult" in logged and "SQLQuery" not in logged
    # the parse and the build: each invocation's first event (written) comes before its filters
    assert made == logged


def test_dbts_debug_file_log_still_has_every_query(warehouse, tmp_path, monkeypatch):
    monkeypatch.setenv("DBT_LOG_LEVEL_FILE", "debug")
    target = tmp_path / "target"
    run = run_dbt(["build", "--select", "iana_timezones", "--indirect-selection", "cautious"], project_dir=PROJECT,
                  profiles_dir=PROJECT, target_path=target)
    assert run.success
    logged = _logged(target)
    assert "SQLQuery" in logged and "LogSeedResult" in logged


def test_a_build_that_fails_says_so(warehouse, tmp_path):
    run = run_dbt(["build", "--select", "iana_timezones", "--vars", "{not yaml"], project_dir=PROJECT,
                  profiles_dir=PROJECT, target_path=tmp_path / "target")
    assert not run.success
    assert run.results == []
    assert run.run_results == {}
    assert run.error


def test_the_profiles_folder_is_the_resources_else_dbts_variable_else_the_project(monkeypatch):
    monkeypatch.delenv("DBT_PROFILES_DIR", raising=False)
    assert dbt_runner.DbtProjectResource(project_dir="/p").profiles == Path("/p")
    monkeypatch.setenv("DBT_PROFILES_DIR", "/profiles")
    assert dbt_runner.DbtProjectResource(project_dir="/p").profiles == Path("/profiles")
    assert dbt_runner.DbtProjectResource(project_dir="/p", profiles_dir="/mine").profiles == Path("/mine")


def _count_parses(monkeypatch) -> list[Path]:
    """dbt's own parses from here on, by target folder (the real parse still runs)."""
    parses: list[Path] = []
    parse = dbt_runner._parse

    def counted(project_dir: Path, profiles_dir: Path, target_path: Path):
        parses.append(target_path)
        return parse(project_dir, profiles_dir, target_path)

    monkeypatch.setattr(dbt_runner, "_parse", counted)
    return parses


def test_a_new_process_builds_from_the_kept_parse_and_a_changed_model_is_parsed_again(
    warehouse, tmp_path, monkeypatch
):
    project, _ = copy_project(tmp_path / "copy")
    target = tmp_path / "target"
    parses = _count_parses(monkeypatch)

    def build(selection: str):
        dbt_runner.forget_manifests()  # as a new process starts with no manifest in memory
        run = run_dbt(["build", "--select", selection], project_dir=project, profiles_dir=project, target_path=target)
        assert run.success, run.error or [result["info"]["msg"] for result in run.results]
        with duckdb.connect(str(warehouse), read_only=True) as con:
            return con.sql("select answer from main.probe_answer").fetchall() if selection == "probe_answer" else None

    with duckdb.connect(str(warehouse)) as con:
        con.execute("create schema raw; create table raw.events (event_id varchar)")
    (project / "models" / "probe_answer.sql").write_text("select 1 as answer\n")
    # a ref and a source: what a build looks up in the manifest (a kept parse once brought them back
    # in each other's places)
    (project / "models" / "probe_chain.sql").write_text(
        "select answer + 1 as answer from {{ ref('probe_answer') }}\n"
        "union all\nselect count(*) from {{ source('raw', 'events') }}\n"
    )
    assert build("probe_answer") == [(1,)]
    # a full parse (a new target folder): what the next process loads
    assert parses == [target] and (target / dbt_runner.SAVED_PARSE).is_file()

    # the next process, a new clock: the kept parse, no dbt parse
    monkeypatch.setenv("NUDGE_AS_OF", "2026-11-01T01:00:00+00:00")
    assert build("probe_answer") == [(1,)]
    build("probe_chain")
    with duckdb.connect(str(warehouse), read_only=True) as con:
        assert sorted(con.sql("select answer from main.probe_chain").fetchall()) == [(0,), (2,)]
    assert parses == [target]

    # a model edited since: parsed again, and built as it now reads
    (project / "models" / "probe_answer.sql").write_text("select 2 as answer\n")
    assert build("probe_answer") == [(2,)]
    assert parses == [target, target]

    # a model added: parsed again, and there to build
    (project / "models" / "probe_added.sql").write_text("select 3 as added\n")
    build("probe_added")
    assert parses == [target, target, target]
    with duckdb.connect(str(warehouse), read_only=True) as con:
        assert con.sql("select added from main.probe_added").fetchall() == [(3,)]


def test_the_parse_digest_follows_what_a_parse_reads(tmp_path):
    project, _ = copy_project(tmp_path / "copy")
    target = project / "target" / "tick_1"
    environ = {"NUDGE_WAREHOUSE": "/w/warehouse.duckdb", "NUDGE_AS_OF": "2026-11-01T00:00:00+00:00", "HOME": "/root"}
    digest = dbt_runner.parse_digest(project, project, target, environ)

    # what dbt writes, and what it reads only while it runs, leave it as it is
    target.mkdir(parents=True)
    (target / "partial_parse.msgpack").write_bytes(b"state")
    (project / "logs").mkdir(exist_ok=True)
    (project / "logs" / "dbt.log").write_text("a line")
    assert dbt_runner.parse_digest(project, project, target, {
        **environ, "NUDGE_AS_OF": "2026-11-01T01:00:00+00:00", "DBT_INDIRECT_SELECTION": "cautious", "HOME": "/home",
    }) == digest

    # another warehouse (the relations' database), a dbt flag, a profile, a macro: parsed again
    assert dbt_runner.parse_digest(project, project, target, {**environ, "NUDGE_WAREHOUSE": "/x/w.duckdb"}) != digest
    assert dbt_runner.parse_digest(project, project, target, {**environ, "DBT_STATIC_PARSER": "false"}) != digest
    profiles = project / "profiles.yml"
    profiles.write_text(profiles.read_text() + "\n# changed\n")
    changed_profile = dbt_runner.parse_digest(project, project, target, environ)
    assert changed_profile != digest
    macro = next((project / "macros").glob("*.sql"))
    macro.write_text(macro.read_text() + "\n")
    changed_macro = dbt_runner.parse_digest(project, project, target, environ)
    assert changed_macro not in {digest, changed_profile}

    # a local package, which `dbt deps` links into dbt_packages: its macros are parsed too
    package = tmp_path / "shared_macros"
    (package / "macros").mkdir(parents=True)
    (package / "macros" / "shared.sql").write_text("{% macro shared() %}1{% endmacro %}\n")
    (project / "dbt_packages").mkdir()
    (project / "dbt_packages" / "shared_macros").symlink_to(package, target_is_directory=True)
    with_package = dbt_runner.parse_digest(project, project, target, environ)
    assert with_package != changed_macro
    (package / "macros" / "shared.sql").write_text("{% macro shared() %}2{% endmacro %}\n")
    assert dbt_runner.parse_digest(project, project, target, environ) != with_package


def test_a_kept_parse_that_cannot_be_read_is_parsed_again(warehouse, tmp_path, monkeypatch):
    target = tmp_path / "target"
    target.mkdir()
    (target / dbt_runner.SAVED_PARSE).write_bytes(b"not a pickle")
    parses = _count_parses(monkeypatch)
    run = run_dbt(["build", "--select", "iana_timezones", "--indirect-selection", "cautious"], project_dir=PROJECT,
                  profiles_dir=PROJECT, target_path=target)
    assert run.success and parses == [target]
    digest, _ = pickle.loads((target / dbt_runner.SAVED_PARSE).read_bytes())
    assert digest == dbt_runner.parse_digest(PROJECT, PROJECT, target)


def test_letting_go_collects_the_garbage_only_while_it_holds_the_file(warehouse, tmp_path, monkeypatch):
    collections: list[int] = []
    collect = gc.collect
    monkeypatch.setattr(gc, "collect", lambda *args: collections.append(1) or collect(*args))
    target = tmp_path / "target"
    run = run_dbt(["build", "--select", "iana_timezones", "--indirect-selection", "cautious"], project_dir=PROJECT,
                  profiles_dir=PROJECT, target_path=target)
    # a clean build leaves nothing holding the file: the whole heap is not walked for it
    assert run.success and not dbt_runner.still_open(warehouse)
    assert collections == []

    # a connection left in a reference cycle (as a failed build's traceback can leave one) holds it
    # until the garbage is collected: letting go collects it
    gc.disable()
    try:
        held = [duckdb.connect(str(warehouse))]
        held.append(held)
        del held
        assert dbt_runner.still_open(warehouse)
        dbt_runner._let_go_of_the_warehouse()
        assert not dbt_runner.still_open(warehouse) and collections
    finally:
        gc.enable()
