"""What a run prints: a rich progress bar per epoch on a terminal, plain lines otherwise."""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

console = Console(soft_wrap=True, highlight=False)
err_console = Console(stderr=True, soft_wrap=True, highlight=False)


def say(text: str) -> None:
    console.print(text, markup=False)


def error(text: str) -> None:
    err_console.print(text, markup=False)


@contextlib.contextmanager
def epoch_bar(description: str, total: int) -> Iterator[Callable[[], None]]:
    """Yield ``advance()``; draws a transient bar on a terminal and nothing elsewhere."""
    if not console.is_terminal:
        yield lambda: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("batches"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda: bar.advance(task)
