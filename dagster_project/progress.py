"""Progress bars for long commands: drawn on a terminal, silent in CI logs and pipes.

A bar redrawn ten times a second is noise in a log file, so when the console is
not a terminal the bar does nothing and the command's own summary lines are all
that is printed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

Advance = Callable[..., None]


@contextmanager
def progress_bar(console: Console, description: str, total: int | None) -> Iterator[Advance]:
    """Yields `advance(steps=1, description=None)`; a no-op unless `console` is a terminal."""
    if not console.is_terminal:
        yield lambda steps=1, description=None: None
        return
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task(description, total=total)

        def advance(steps: int = 1, description: str | None = None) -> None:
            progress.update(task, advance=steps, **({"description": description} if description else {}))

        yield advance
