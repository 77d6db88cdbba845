"""Progress bars for indexing runs, drawn with rich on stderr from the IndexProgress events
that `Collection.index(on_progress=...)` reports (the index package itself draws nothing)."""

from __future__ import annotations

import time

from imagetext.index.records import IndexProgress

STAGE_LABELS = {"scan": "scanning", "embed": "indexing", "caption": "captioning", "add": "adding",
                "turn": "turning"}


class IndexProgressBars:
    """An `on_progress` callback drawing one bar per stage, with images/s; use it as a
    context manager (or call close()) so that the display is left tidy."""

    def __init__(self) -> None:
        self._progress = None
        self._tasks: dict[str, tuple[int, float]] = {}  # stage -> (task id, start time)

    def __call__(self, event: IndexProgress) -> None:
        if self._progress is None:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                console=Console(stderr=True), transient=False,
            )
            self._progress.start()
        if event.stage not in self._tasks:
            task = self._progress.add_task(STAGE_LABELS.get(event.stage, event.stage),
                                           total=event.total, rate="")
            self._tasks[event.stage] = (task, time.perf_counter())
        task, start = self._tasks[event.stage]
        rate = ""
        if event.stage != "scan":
            rate = f"{event.done / max(time.perf_counter() - start, 1e-9):.1f} img/s"
        self._progress.update(task, completed=event.done, total=event.total, rate=rate)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
