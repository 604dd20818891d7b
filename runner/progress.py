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


def duration(seconds: float) -> str:
    """``42s``, ``3m07s``, ``2h05m``."""
    seconds = int(round(max(seconds, 0.0)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class _Rate:
    """What the bar shows beside the count: images/s, the running loss and the run's ETA."""

    def __init__(self, total: int, later_batches: int, later_seconds: float) -> None:
        self.total, self.later_batches, self.later_seconds = total, later_batches, later_seconds
        self.start = time.monotonic()
        self.done = self.images = 0
        self.loss: float | None = None

    def step(self, images: int, loss: float | None) -> float:
        self.done += 1
        self.images += images
        if loss is not None:
            self.loss = loss
        return time.monotonic()

    def fields(self, now: float) -> dict[str, str]:
        elapsed = max(now - self.start, 1e-9)
        per_batch = elapsed / self.done
        eta = per_batch * (self.total - self.done + self.later_batches) + self.later_seconds
        return {"speed": f"{self.images / elapsed:,.0f} img/s",
                "loss": "loss " + (f"{self.loss:.4g}" if self.loss is not None else "…"),
                "eta": f"run ETA {duration(eta)}"}


@contextlib.contextmanager
def epoch_bar(description: str, total: int, later_batches: int = 0,
              later_seconds: float = 0.0) -> Iterator[Callable[[int, float | None], None]]:
    """Yield ``advance(images, loss)``, called once per batch (``loss``: the epoch's running mean training loss
    when the caller has read it, else None). A transient bar on a terminal; elsewhere a line at most every
    QUIET_S seconds. Both show images/s, the running loss and the run's ETA: this epoch's time per batch over
    its batches left and the ``later_batches`` of later epochs, plus ``later_seconds`` (the evaluations to come).
    """
    rate = _Rate(total, later_batches, later_seconds)
    if not console.is_terminal:
        last = rate.start

        def advance(images: int = 0, loss: float | None = None) -> None:
            nonlocal last
            now = rate.step(images, loss)
            if now - last >= QUIET_S:
                last = now
                f = rate.fields(now)
                say(f"{description}: {rate.done}/{total} batches, {now - rate.start:.0f}s, {f['speed']}, "
                    f"{f['loss']}, {f['eta']}")

        yield advance
        return
    columns = (TextColumn(_prefix + "{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("batches"),
               TimeElapsedColumn(), TextColumn("{task.fields[speed]}"), TextColumn("{task.fields[loss]}"),
               TextColumn("{task.fields[eta]}"))
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(description, total=total, speed="", loss="", eta="")

        def advance_bar(images: int = 0, loss: float | None = None) -> None:
            bar.update(task, advance=1, **rate.fields(rate.step(images, loss)))

        yield advance_bar
