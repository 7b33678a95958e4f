"""Per-stage wall-clock timings reported in ``report.json``."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


class StageTimer:
    """Collects named stage durations in seconds, in the order they ran.

    Stages may run in several threads at once (the image writers run beside the SEG and SR
    writers); ``total`` is then the wall-clock span from the first stage's start to the last
    stage's end, not the sum of the stages.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._lock = threading.Lock()
        self._first: float | None = None
        self._last: float | None = None

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            end = time.perf_counter()
            with self._lock:
                self.seconds[name] = self.seconds.get(name, 0.0) + end - start
                self._first = start if self._first is None else min(self._first, start)
                self._last = end if self._last is None else max(self._last, end)

    def rounded(self, digits: int = 3) -> dict[str, float]:
        with self._lock:
            out = {k: round(v, digits) for k, v in self.seconds.items()}
            span = 0.0 if self._first is None or self._last is None else self._last - self._first
        out["total"] = round(span, digits)
        return out
