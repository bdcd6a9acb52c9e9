"""Progress lines a person can follow in the Dagster UI while a long step runs.

A step that normalizes a large dataset, generates a partition or trains a stage logs count,
rate, percent and ETA every few seconds instead of one line at the end. Plain Python: the
caller passes any `log(str)` callable (`context.log.info`, `print`, a list's `append`).

    progress = Progress(context.log.info, total=len(rows), label="normalized/isic2018")
    for row in rows:
        ...
        progress.update()
    progress.done()
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """Counts work items and logs `label: done/total (pct) at rate/s, ETA` at most every `every_s` seconds."""

    def __init__(
        self,
        log: Callable[[str], None],
        total: int | None,
        label: str,
        every_s: float = 5.0,
        unit: str = "items",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log = log
        self.total = total
        self.label = label
        self.every_s = every_s
        self.unit = unit
        self._clock = clock
        self.count = 0
        self._start = clock()
        self._last_log = self._start
        self._finished = False

    def line(self) -> str:
        """The current progress line (also what `done()` logs)."""
        elapsed = self._clock() - self._start
        rate = self.count / elapsed if elapsed > 0 else 0.0
        text = f"{self.label}: {self.count:,}"
        if self.total:
            pct = 100.0 * self.count / self.total
            text += f"/{self.total:,} {self.unit} ({pct:.1f}%)"
        else:
            text += f" {self.unit}"
        text += f" at {rate:,.1f}/s, elapsed {_duration(elapsed)}"
        if self.total and rate > 0 and self.count < self.total:
            text += f", ETA {_duration((self.total - self.count) / rate)}"
        return text

    def update(self, n: int = 1) -> None:
        """Add `n` finished items; logs when `every_s` has passed since the last line."""
        self.count += n
        now = self._clock()
        if now - self._last_log >= self.every_s:
            self._last_log = now
            self.log(self.line())

    def done(self) -> None:
        """Log the final line once (count, rate, elapsed); later calls do nothing."""
        if not self._finished:
            self._finished = True
            self.log(self.line() + " - done")

    def iterate(self, items: Iterable[T]) -> Iterator[T]:
        """Yield `items`, counting each one, and log the final line when the iteration ends."""
        for item in items:
            yield item
            self.update()
        self.done()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.done()
