"""Stage timings of report.json."""

from __future__ import annotations

import threading
import time

from ct_triage.server.timing import StageTimer


def test_stage_timer_total_is_the_wall_clock_span_of_overlapping_stages() -> None:
    timer = StageTimer()

    def side() -> None:
        with timer.stage("b"):
            time.sleep(0.2)

    with timer.stage("a"):
        t = threading.Thread(target=side)
        t.start()
        time.sleep(0.2)
        t.join()
    out = timer.rounded()
    assert out["a"] >= 0.2
    assert out["b"] >= 0.2
    assert out["total"] < out["a"] + out["b"] - 0.1  # the stages overlapped
