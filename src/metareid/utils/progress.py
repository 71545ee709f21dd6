"""Progress bars for long work outside the Lightning loop (generators, packing, extraction).

On a terminal the bar is live; elsewhere (a log file, CI) rich draws nothing while running and
prints the finished bar once. ``show=False`` prints nothing at all.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

ItemT = TypeVar("ItemT")


def progress_bar(show: bool = True) -> Progress:
    """A rich :class:`Progress` on stderr (use as a context manager; ``add_task``/``advance``)."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not show,
    )


def track(
    items: Iterable[ItemT], total: int | None, description: str, show: bool = True
) -> Iterator[ItemT]:
    """Iterate ``items`` behind a progress bar of ``total`` steps, one step per item."""
    with progress_bar(show) as progress:
        task = progress.add_task(description, total=total)
        for item in items:
            yield item
            progress.advance(task)
