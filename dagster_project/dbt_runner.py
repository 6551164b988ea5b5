"""dbt inside the Dagster process, with its manifest parsed once until the project changes.

A `dbt build` subprocess pays for a Python start, dbt's imports and loading the project
(reading partial_parse.msgpack and checking every file) before its first model: 3 to 5 s on
this machine, twice a tick. In the Dagster process dbt's imports are already paid (dagster-dbt
loads most of dbt), and the parsed manifest is kept for the next build of the same project,
warehouse and target folder: the second build of a tick, and every tick of a long-lived
process, start at their first model.

Each result (a model, seed or test finished) is handed on as the dict dbt's JSON log writes
for it, which dagster-dbt turns into materializations and check results as it does for a
subprocess. dbt keeps global state (flags, adapters): one invocation at a time per process.

Across processes, the parsed manifest is kept as a pickle in the target folder, beside dbt's
partial-parse file, under a digest of what a parse reads (the project's files, its profiles, the
environment variables dbt and the project read, the versions). dbt's partial parse still took
1.35 to 2.0 s a process at 10M, most of it turning partial_parse.msgpack back into objects; the
kept parse loads in 0.15 to 0.2 s. A tick gains less, about 0.5 s with nothing new at 10M
(alternating), as part of the parse's time was the first use of dbt's classes, which the build
now pays. A digest that differs parses with dbt, as before, and keeps the new parse.

dbt formats every event for each of its loggers (a JSON document for the file, a line for the
console) before Python's logging drops the ones below the logger's level: about 2,700 events in
the models' step of a 10M tick, 188 of them written. Formatting the others took about 0.7 s of
that step (dbt's event handling 1.26 s, then 0.57 s). Each logger dbt sets up for an invocation
is given a filter that asks its level first (`_format_only_written_lines`); what reaches the
console and the file is unchanged, line for line.

dbt's own JSON artifacts are not written: every invocation, the parse included, rewrote the
whole manifest.json, three times a tick, which nothing reads here (the Dagster code loads the
prepared one, under target/); a tick with nothing new at 10M spent about 0.2 s less in dbt
without them. A build's run_results.json is still written, from the results the invocation
hands back.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import logging
import os
import pickle
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg

RESULT_EVENTS = frozenset({"LogSeedResult", "LogModelResult", "LogSnapshotResult", "LogTestResult"})
SAVED_PARSE = "nudge_parsed_manifest.pickle"
# Read only while dbt executes, never while it parses: the clock changes every tick, and the
# selection's indirect mode differs between the two dbt steps of one tick.
_RUN_TIME_ONLY = frozenset({"NUDGE_AS_OF", "DBT_INDIRECT_SELECTION"})
# Folders of the project that are dbt's output, not what it parses (dbt_packages is parsed).
_OUTPUT_FOLDERS = frozenset({"target", "logs"})

_lock = threading.Lock()
_manifests: dict[tuple[str, str, str, str], Any] = {}


@dataclass
class DbtRun:
    success: bool
    # one dict per finished node, as dbt's JSON log line (`info` and `data`)
    results: list[dict[str, Any]] = field(default_factory=list)
    # run_results.json's content; empty when dbt stopped before running anything (a compile error)
    run_results: dict[str, Any] = field(default_factory=dict)
    # what stopped dbt before or while it ran (a compile error), if anything
    error: str | None = None


class DbtProjectResource(dg.ConfigurableResource):
    """Where the dbt project and its profiles are, for the dbt assets (which run dbt here)."""

    project_dir: str
    # Unset: DBT_PROFILES_DIR, as dbt reads it, else the project's own folder.
    profiles_dir: str | None = None

    @property
    def profiles(self) -> Path:
        return Path(self.profiles_dir or os.environ.get("DBT_PROFILES_DIR") or self.project_dir)


def dbt_arguments(
    command: Sequence[str], project_dir: Path, profiles_dir: Path, target_path: Path,
    environ: Mapping[str, str] = os.environ,
) -> list[str]:
    """The command line dbt is invoked with: the project, its profile and the tick's target folder
    (partial-parse state and artifacts, one folder per warehouse), its log beside the
    artifacts as JSON lines (each node with its timing, as dagster-dbt kept it), and no
    manifest.json (see the module's docstring).

    The file log is at `info`, not dbt's `debug`: a line for every query (about 900 a tick)
    cost about 0.7 s of a 10M tick with nothing new (session 18, alternating). dbt's own
    DBT_LOG_LEVEL_FILE=debug brings every query back, with its SQL and time."""
    return [
        *command,
        "--project-dir", str(project_dir),
        "--profiles-dir", str(profiles_dir),
        "--target-path", str(target_path),
        "--log-path", str(target_path),
        "--log-format-file", "json",
        *([] if "DBT_LOG_LEVEL_FILE" in environ else ["--log-level-file", "info"]),
        "--no-write-json",
    ]


def _manifest_key(project_dir: Path, profiles_dir: Path, target_path: Path) -> tuple[str, str, str, str]:
    # The warehouse path is part of the parse: the relations' database is the file's name.
    return (str(project_dir), str(profiles_dir), str(target_path), os.environ.get("NUDGE_WAREHOUSE", ""))


def parse_digest(
    project_dir: Path, profiles_dir: Path, target_path: Path, environ: Mapping[str, str] = os.environ
) -> str:
    """What a parse of the project depends on, as one digest: every file of the project but dbt's
    output (target, logs and this target folder; the installed packages count), the profiles, the
    DBT_ and NUDGE_ environment variables but those read only at run time, and the versions of
    Python, dbt and the adapter."""
    from dbt.version import __version__ as dbt_version

    digest = hashlib.sha256()
    for part in (sys.version, dbt_version, _adapter_version(), str(project_dir), str(profiles_dir)):
        digest.update(part.encode() + b"\0")
    files = list(_files_a_parse_reads(project_dir, target_path))
    profiles = profiles_dir / "profiles.yml"
    if profiles.is_file() and profiles not in files:
        files.append(profiles)
    for path in files:
        digest.update(str(path).encode() + b"\0" + path.read_bytes() + b"\0")
    for name in sorted(environ):
        if name.startswith(("DBT_", "NUDGE_")) and name not in _RUN_TIME_ONLY:
            digest.update(f"{name}={environ[name]}".encode() + b"\0")
    return digest.hexdigest()


def _files_a_parse_reads(project_dir: Path, target_path: Path) -> Iterator[Path]:
    """Every file under the project but dbt's output, in a stable order. Symbolic links are
    followed: `dbt deps` links a local package into dbt_packages."""
    seen: set[Path] = set()
    for folder, subfolders, files in os.walk(project_dir, followlinks=True):
        here = Path(folder)
        real = here.resolve()
        if real in seen:  # a link back to a folder already read
            subfolders[:] = []
            continue
        seen.add(real)
        subfolders[:] = sorted(
            name for name in subfolders
            if not (here == project_dir and name in _OUTPUT_FOLDERS) and here / name != target_path
        )
        yield from (here / name for name in sorted(files) if (here / name).is_file())


def _adapter_version() -> str:
    try:
        from dbt.adapters.duckdb.__version__ import version
    except ImportError:  # another adapter
        return ""
    return str(version)


def _manifest_fields(manifest: Any) -> dict[str, Any]:
    """A manifest's own fields by name, without its caches (the lookups, the macros by name), which
    it builds again when first asked. Not dbt's pickling: Manifest.__reduce_ex__ hands its fields
    back by position, and in dbt-core 1.11 its list misses two of them, so after a full parse the
    lookups came back in each other's places (a build failed: "RefableLookup.find() missing 1
    required positional argument")."""
    return {
        attribute.name: getattr(manifest, attribute.name)
        for attribute in dataclasses.fields(manifest)
        if attribute.init and not attribute.name.startswith("_")
    }


def _saved_parse(saved: Path, digest: str) -> Any:
    """The manifest kept by the last parse with this digest, or None. The target folder is the
    project's own output: whoever can write it can already change what dbt runs."""
    from dbt.contracts.graph.manifest import Manifest

    try:
        with saved.open("rb") as file:
            kept_digest, fields = pickle.load(file)
        if kept_digest != digest:
            return None
        return Manifest(**fields)
    except Exception:  # none yet, written by other versions of the classes, or cut short: parse
        return None


def _keep_parse(saved: Path, digest: str, manifest: Any) -> None:
    """Keep a parse for the next process; one that cannot be kept is parsed again there."""
    # Aside, then renamed: another process loading it never reads half a file.
    aside = saved.with_name(f"{saved.name}.{os.getpid()}")
    try:
        aside.parent.mkdir(parents=True, exist_ok=True)
        with aside.open("wb") as file:
            pickle.dump((digest, _manifest_fields(manifest)), file, protocol=pickle.HIGHEST_PROTOCOL)
        aside.replace(saved)
    except (OSError, pickle.PicklingError):
        aside.unlink(missing_ok=True)


def _parsed_manifest(project_dir: Path, profiles_dir: Path, target_path: Path) -> Any:
    key = _manifest_key(project_dir, profiles_dir, target_path)
    manifest = _manifests.get(key)
    if manifest is not None:
        return manifest
    digest = parse_digest(project_dir, profiles_dir, target_path)
    saved = target_path / SAVED_PARSE
    manifest = _saved_parse(saved, digest)
    if manifest is None:
        manifest = _parse(project_dir, profiles_dir, target_path)
        if manifest is None:
            return None  # the build itself parses again and reports why
        # kept before any build: a build writes each node's compiled SQL into the manifest
        _keep_parse(saved, digest, manifest)
    _manifests[key] = manifest
    return manifest


def _parse(project_dir: Path, profiles_dir: Path, target_path: Path) -> Any:
    """dbt's own parse (partial, from the target folder's state), or None when it fails."""
    from dbt.cli.main import dbtRunner

    parsed = dbtRunner(callbacks=[_format_only_written_lines]).invoke(
        dbt_arguments(["parse", "--quiet"], project_dir, profiles_dir, target_path)
    )
    return parsed.result if parsed.success else None


def _let_go_of_the_warehouse() -> None:
    """Close dbt-duckdb's database. It keeps the file open after an invocation (its connection
    outlives the last handle), and DuckDB refuses a second open of a file in one process with
    other settings: the send step's, or another process's once this one lets go."""
    try:
        from dbt.adapters.duckdb.connections import DuckDBConnectionManager
    except ImportError:  # another adapter
        return
    environment = DuckDBConnectionManager._ENV
    path = environment.creds.path if environment is not None else None
    if environment is not None:
        environment.close()
    DuckDBConnectionManager.close_all_connections()
    if path is None or environment.creds.attach or still_open(path):
        # A cursor dbt handed out can hold the database too, in a reference cycle (a failed
        # build's traceback), until it is collected. After a clean build none is left, and
        # collecting the whole heap cost 0.1 s a build. (Attached files are not looked for.)
        gc.collect()


def still_open(path: str | Path) -> bool:
    """Whether this process holds the file open (Linux: /proc/self/fd); True where that cannot be told."""
    descriptors = Path("/proc/self/fd")
    if not descriptors.is_dir():
        return True
    wanted = os.path.realpath(path)
    for descriptor in descriptors.iterdir():
        try:
            if os.readlink(descriptor) == wanted:
                return True
        except OSError:  # closed since it was listed
            continue
    return False


def _run_results(executed: Any, target_path: Path) -> dict[str, Any]:
    """A build's run_results.json, written as dbt would have, and its content."""
    from dbt.artifacts.schemas.run import RunExecutionResult, RunResultsArtifact

    if not isinstance(executed, RunExecutionResult):
        return {}
    artifact = RunResultsArtifact.from_execution_results(
        results=executed.results, elapsed_time=executed.elapsed_time, generated_at=executed.generated_at,
        args=executed.args,
    )
    artifact.write(str(target_path / "run_results.json"))
    return artifact.to_dict(omit_none=False, context={"artifact": True})


def forget_manifests() -> None:
    """Parse again on the next build (the project's files changed in this process)."""
    with _lock:
        _manifests.clear()


# Python's logging levels of dbt's event levels, as dbt_common's loggers send them.
_PYTHON_LEVELS = {"debug": logging.DEBUG, "test": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
                  "error": logging.ERROR}


def _format_only_written_lines(event: Any) -> None:
    """A dbtRunner callback: each logger of the invocation gets a filter that lets an event
    through only if the logger will write it, so dbt formats only what it writes.

    dbt sets its loggers up afresh for each invocation, before the first event, and calls the
    loggers before the callbacks: from the first event on, the lines of the others are not made.
    A logger without an output keeps dbt's filter."""
    from dbt_common.events.functions import get_event_manager

    for logger in get_event_manager().loggers:
        if getattr(logger, "_nudge_level_filter", False):
            continue
        logger._nudge_level_filter = True
        python_logger = getattr(logger, "_python_logger", None)
        if python_logger is not None:
            logger.filter = _ask_the_level_first(logger.filter, python_logger)


def _ask_the_level_first(dbts_filter: Any, python_logger: logging.Logger) -> Any:
    from dbt_common.events.logger import _is_print_event

    def written(msg: Any) -> bool:
        # dbt sends a print event as an error, so that --quiet still shows it
        level = logging.ERROR if _is_print_event(msg) else _PYTHON_LEVELS.get(msg.info.level, logging.ERROR)
        return python_logger.isEnabledFor(level) and dbts_filter(msg)

    return written


def run_dbt(command: Sequence[str], *, project_dir: Path, profiles_dir: Path, target_path: Path) -> DbtRun:
    """Invoke dbt in this process and collect its node results."""
    from dbt.cli.main import dbtRunner
    from dbt_common.events.functions import msg_to_dict

    run = DbtRun(success=False)

    def collect(event: Any) -> None:
        if event.info.name in RESULT_EVENTS:
            run.results.append(msg_to_dict(event))

    with _lock:
        manifest = _parsed_manifest(project_dir, profiles_dir, target_path)
        try:
            result = dbtRunner(manifest=manifest, callbacks=[_format_only_written_lines, collect]).invoke(
                dbt_arguments(command, project_dir, profiles_dir, target_path)
            )
        finally:
            _let_go_of_the_warehouse()
    run.success = bool(result.success)
    run.run_results = _run_results(result.result, target_path)
    if result.exception is not None:
        run.error = f"{type(result.exception).__name__}: {result.exception}"
    return run
