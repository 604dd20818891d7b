"""What a run prints: a rich progress bar per epoch on a terminal, plain lines otherwise.

Under a parallel launcher the lines of several runs interleave, so each line then starts with its run's
short id (``set_prefix``). Off a terminal (a SLURM log, a pipe) an epoch prints a plain progress line at
most every ``QUIET_S`` seconds, so a long epoch never looks like a hung job.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

def encodable_streams() -> None:
    """Let stdout and stderr replace a character their encoding cannot take (an ASCII locale and α, ±, ρ) rather
    than end a command, after its work, in a UnicodeEncodeError. Called by each command's entry point."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError):  # a stream that is not a TextIOWrapper
            stream.reconfigure(errors="replace")


class _Console(Console):
    def on_broken_pipe(self) -> None:
        """The reader has gone (``python -m runner … | head -1``). Rich's default exits the process, which a run
        would record as an interruption; here the output goes to /dev/null and the run goes on (its record and
        tables hold what it would have said)."""
        self.quiet = True
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), self.file.fileno())


console = _Console(soft_wrap=True, highlight=False)
err_console = _Console(stderr=True, soft_wrap=True, highlight=False)
QUIET_S = 30.0
_prefix = ""


def set_prefix(run_id: str | None) -> None:
    """Start every line with ``[run_id]`` (None: no prefix)."""
    global _prefix
    _prefix = f"[{run_id}] " if run_id else ""


def say(text: str) -> None:
    console.print(_prefix + text, markup=False)


def error(text: str) -> None:
    err_console.print(_prefix + text, markup=False)


@contextlib.contextmanager
def epoch_bar(description: str, total: int) -> Iterator[Callable[[], None]]:
    """Yield ``advance()``: a transient bar on a terminal; elsewhere a line at most every QUIET_S seconds."""
    if not console.is_terminal:
        start = last = time.monotonic()
        done = 0

        def advance() -> None:
            nonlocal last, done
            done += 1
            now = time.monotonic()
            if now - last >= QUIET_S:
                last = now
                say(f"{description}: {done}/{total} batches, {now - start:.0f}s")

        yield advance
        return
    columns = (TextColumn(_prefix + "{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("batches"),
               TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda: bar.advance(task)
