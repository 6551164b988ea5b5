"""The collector left out of a tick process's shutdown, and out of a tick's full passes."""

import gc
import subprocess
import sys
import textwrap

from dagster_project.collector import objects_so_far_frozen

# Exit handlers run last-registered first: this one, registered before anything else, runs after
# every handler the code under test registers, and reports what the interpreter's shutdown meets.
_REPORT_AT_EXIT = """
import atexit, gc
atexit.register(lambda: print("frozen at exit:", gc.get_freeze_count() > 0, flush=True))
"""


def _exit_report(code: str, tmp_path) -> str:
    script = textwrap.dedent(_REPORT_AT_EXIT) + textwrap.dedent(code)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
        env={"NUDGE_WAREHOUSE": str(tmp_path / "w.duckdb"), "PATH": "/usr/bin:/bin"}, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_process_that_built_the_definitions_exits_with_its_heap_frozen(tmp_path):
    report = _exit_report("""
        from dagster_project.definitions import build_defs
        build_defs()
        build_defs()  # twice, as a process running many ticks may
    """, tmp_path)
    assert report == "frozen at exit: True"


def test_a_process_that_did_not_exits_as_python_does(tmp_path):
    assert _exit_report("import dagster_project.collector", tmp_path) == "frozen at exit: False"


def test_a_tick_freezes_what_came_before_it_and_unfreezes_after():
    before = gc.get_freeze_count()
    with objects_so_far_frozen():
        assert gc.get_freeze_count() > before
    assert gc.get_freeze_count() == 0
