"""Per-stage wall-clock timings reported in ``report.json``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


class StageTimer:
    """Collects named stage durations in seconds, in the order they ran."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def rounded(self, digits: int = 3) -> dict[str, float]:
        out = {k: round(v, digits) for k, v in self.seconds.items()}
        out["total"] = round(sum(self.seconds.values()), digits)
        return out
