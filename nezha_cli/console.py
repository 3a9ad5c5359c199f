"""Shared rich consoles and the progress display used by every long-running step."""

from __future__ import annotations

import os

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

# The width of a console that is not a terminal (a log file, a pipe, a batch scheduler's output): lines are never
# wrapped there, where rich would otherwise cut them at a guessed 80 columns (paths split mid-hash, summaries
# ending in "…"). Rich pads nothing in the progress display, so its lines are as long as their content.
UNWRAPPED_WIDTH = 1 << 16


# `nezha --log-format json` sets it, so that processes started by --num-processes log the same way.
LOG_FORMAT_ENV = "NEZHA_LOG_FORMAT"


def json_logs() -> bool:
    """Whether every stderr line is a JSON record (``nezha --log-format json``)."""
    return os.environ.get(LOG_FORMAT_ENV) == "json"


def stderr_console() -> Console:
    """The console for progress and logs: stderr, so that stdout stays clean for results that scripts parse."""
    if json_logs():
        # Every stderr line a JSON record (`nezha --log-format json`): no progress display.
        return Console(stderr=True, quiet=True)
    console = Console(stderr=True)
    if not console.is_terminal:
        console = Console(stderr=True, width=UNWRAPPED_WIDTH)
    return console


class RateColumn(ProgressColumn):
    """Items per second, e.g. ``12.3 steps/s``."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task):
        from rich.text import Text

        speed = task.finished_speed or task.speed
        return Text("?" if speed is None else f"{speed:,.1f} {self.unit}/s", style="progress.data.speed")


class LazyProgress(Progress):
    """A progress display that appears with its first task.

    An error raised before any work starts then stays the only line on stderr (a started rich display that ends
    without tasks leaves a blank line behind).
    """

    _lazy_started = False

    def __enter__(self) -> LazyProgress:
        return self

    def __exit__(self, *exc) -> None:
        if self._lazy_started:
            self.stop()

    def add_task(self, *args, **kwargs):
        if not self._lazy_started:
            self._lazy_started = True
            self.start()
        return super().add_task(*args, **kwargs)


def make_progress(unit: str = "items", disable: bool = False, console: Console | None = None) -> LazyProgress:
    """A progress display showing what, how far, rate and ETA.

    ``unit="bytes"`` shows sizes and MB/s (corpus reading); anything else shows ``done/total`` and ``unit/s``.
    """
    if unit == "bytes":
        columns = [DownloadColumn(), TransferSpeedColumn()]
    else:
        columns = [MofNCompleteColumn(), RateColumn(unit)]
    return LazyProgress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        *columns,
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console or stderr_console(),
        disable=disable,
        transient=False,
    )
