"""Progress display of long commands: rich bars on a terminal, timed lines elsewhere.

Only the standard library at module level (rich loads when a bar is drawn).
"""

from __future__ import annotations

import contextlib
import functools
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.progress import ProgressColumn, Task
    from rich.text import Text

__all__ = [
    "PRIOR_BAR",
    "LineProgress",
    "ProgressPair",
    "StagedPair",
    "note_if_slow",
    "progress_bar",
    "progress_bars",
    "say",
    "staged_progress",
]


PRIOR_BAR = "measuring the encoder prior"
"""The bar of an encoder prior's measurement (short enough that its counts, rate and time
left show in an 80-column terminal; the note above it says what is measured and why)."""

ProgressPair = tuple[AbstractContextManager[object], Callable[[int, int], None] | None]
StagedPair = tuple[AbstractContextManager[object], Callable[[str, int, int], None] | None]


def _rate_column() -> ProgressColumn:
    """A rich column showing items per second (defined here: rich loads lazily)."""
    from rich.progress import ProgressColumn
    from rich.text import Text

    class RateColumn(ProgressColumn):
        """Items per second."""

        def render(self, task: Task) -> Text:
            speed = task.speed
            return Text(f"{speed:,.0f}/s" if speed else "?/s", style="progress.data.speed")

    return RateColumn()


class LineProgress:
    """``update(done, total)`` printing ``description: done/total (p%), rate/s, eta`` lines.

    At most one line every ``every_s`` seconds, the first after ``every_s`` seconds, and a
    last one at the end if any was printed.
    """

    def __init__(self, description: str, every_s: float = 10.0) -> None:
        self.description = description
        self.every_s = every_s
        self.start = self.last = time.monotonic()
        self.printed = False

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        finished = done >= total
        if now - self.last < self.every_s and not (finished and self.printed):
            return
        self.last, self.printed = now, True
        rate = done / max(now - self.start, 1e-9)
        eta = f"{(total - done) / rate:,.0f} s" if rate > 0 else "?"
        share = 100.0 * done / total if total else 100.0
        print(
            f"{self.description}: {done:,}/{total:,} ({share:.0f}%), {rate:,.0f}/s, eta {eta}",
            file=sys.stderr,
            flush=True,
        )


def staged_progress(enabled: bool, names: Mapping[str, str] | None = None) -> StagedPair:
    """A progress display on stderr and its ``update(stage, done, total)``: one bar a stage.

    Args:
        enabled: ``--progress``; bars are drawn only when stderr is a terminal.
        names: Bar titles by stage name (default: the stage name).

    Returns:
        The display to enter around the work, and the callback (``None`` when disabled).
    """
    if not enabled or not sys.stderr.isatty():
        return contextlib.nullcontext(), None
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskID,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        _rate_column(),
        TimeElapsedColumn(),
        "eta",
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    tasks: dict[str, TaskID] = {}
    titles = dict(names or {})

    def update(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = bar.add_task(titles.get(stage, stage), total=total)
        bar.update(tasks[stage], completed=done, total=total)

    return bar, update


def progress_bar(enabled: bool, description: str) -> ProgressPair:
    """One progress bar titled ``description`` and its ``update(done, total)``.

    Off a terminal (a log file, a pipe) a long job still reports: one line on stderr every
    10 seconds with the rate and the time left (nothing for a job done sooner).
    """
    if enabled and not sys.stderr.isatty():
        return contextlib.nullcontext(), LineProgress(description)
    bar, staged = staged_progress(enabled)
    if staged is None:
        return bar, None

    def update(done: int, total: int) -> None:
        staged(description, done, total)

    return bar, update


def progress_bars(
    enabled: bool, descriptions: Mapping[str, str]
) -> tuple[AbstractContextManager[object], dict[str, Callable[[int, int], None] | None]]:
    """One display and an ``update(done, total)`` for each of several jobs of one step (each
    job's bar titled by ``descriptions``; off a terminal, :class:`LineProgress` lines)."""
    if enabled and not sys.stderr.isatty():
        return contextlib.nullcontext(), {k: LineProgress(d) for k, d in descriptions.items()}
    bar, staged = staged_progress(enabled, descriptions)
    if staged is None:
        return bar, dict.fromkeys(descriptions)
    return bar, {k: functools.partial(staged, k) for k in descriptions}


def say(message: str) -> None:
    """One line on stderr: what a step that shows no progress of its own is doing (above a
    progress bar, which redirects stderr while it is drawn)."""
    print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def note_if_slow(message: str, after_s: float = 2.0) -> Iterator[None]:
    """Say ``message`` once if the step inside still runs after ``after_s`` seconds: a step
    without counts (a calibration over a big memory) is then not mistaken for a hang."""
    timer = threading.Timer(after_s, say, args=(message,))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
