"""Progress bars draw on a terminal and stay out of logs and pipes."""

from __future__ import annotations

import io

from rich.console import Console

from dagster_project.progress import progress_bar


def test_a_bar_on_a_terminal_counts_its_steps():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100)
    with progress_bar(console, "replaying", 3) as advance:
        for _ in range(3):
            advance()
        advance(0, description="replayed all")
    assert "3/3" in out.getvalue()
    assert "replayed all" in out.getvalue()


def test_no_bar_when_the_output_is_not_a_terminal():
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=100)
    with progress_bar(console, "replaying", 3) as advance:
        for _ in range(3):
            advance()
    assert out.getvalue() == ""
