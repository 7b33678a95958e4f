"""Supersede in the PACS: delete an earlier result's series once its successor is delivered.

A late instance re-runs a series; the new result supersedes the old one (``report.json``
``supersedes``, and the new SR's PredecessorDocumentsSequence). With ``retract_superseded``
configured, the old result's SEG, SR, summary, outline SR and overlay series are queued for
deletion (:mod:`ct_triage.dicom_bridge.retract`) and deleted once every delivery of the new
result is done. The queue lives in ``bridge.db`` (:class:`~ct_triage.server.bridge_state.
BridgeState`), so a restart goes on where it stopped.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from ct_triage.dicom_bridge.deliver import Outbox
from ct_triage.dicom_bridge.pacs_errors import PacsError
from ct_triage.dicom_bridge.retract import Retractor
from ct_triage.server.bridge_state import BridgeState
from ct_triage.server.outputs import REPORT_NAME

__all__ = ["RetractionQueue"]

logger = logging.getLogger(__name__)

#: The outputs of ``report.json`` whose series a retraction deletes.
_RESULT_SERIES = ("seg", "sr", "summary", "outlines_sr", "overlay")


class RetractionQueue:
    """Superseded results to delete from the PACS, after their successors are delivered.

    Parameters
    ----------
    state
        Where the queue is kept.
    retractors
        Where superseded results are deleted, by target (``settings.retract_superseded``);
        none: nothing is ever queued.
    outbox
        The deliveries a retraction waits for, and the backoff of its retries.
    max_attempts
        Attempts of a retraction that fails transiently (``delivery_max_attempts``).
    """

    def __init__(
        self,
        state: BridgeState,
        retractors: dict[str, Retractor],
        outbox: Outbox,
        max_attempts: int,
    ) -> None:
        self._state = state
        self.retractors = retractors
        self._outbox = outbox
        self._max_attempts = max_attempts

    def queue(self, report: dict[str, Any], job_ref: str, delivery_ids: list[str]) -> None:
        """Queue the retraction of what the result of ``report`` supersedes, once
        ``delivery_ids`` (its deliveries) are done; nothing when it supersedes nothing."""
        if not self.retractors:
            return
        previous = (report.get("supersedes") or {}).get("result")
        if not previous:
            return
        old_report = Path(str(previous)) / REPORT_NAME  # written by the earlier run
        if not old_report.is_file():
            logger.warning("superseded result %s has no report.json; not retracted", previous)
            return
        outputs = json.loads(old_report.read_text()).get("outputs", {})
        series = [
            str(uid)
            for key in _RESULT_SERIES
            if (uid := (outputs.get(key) or {}).get("series_instance_uid"))
        ]
        if not series:
            return
        self._state.add_retractions(
            job_ref,
            list(self.retractors),
            str(report["study_instance_uid"]),
            series,
            delivery_ids,
            time.time(),
        )
        logger.info(
            "result %s supersedes %d series; retracted once delivered", job_ref, len(series)
        )

    def run_due(self, now: float | None = None) -> int:
        """Delete superseded results whose successors were delivered; returns how many ran.

        A retraction waits while any delivery of the new result is pending (or dead: the
        old result then stays, better than none). Transient PACS errors are retried with the
        delivery backoff up to ``max_attempts``; a refusal ends it with an error.
        """
        if not self.retractors:
            return 0
        t = time.time() if now is None else now
        ran = 0
        for due in self._state.due_retractions(t):
            if {self._outbox.get(i).state.value for i in due.delivery_ids} - {"done"}:
                continue
            retractor = self.retractors.get(due.target)
            if retractor is None:  # target removed from the settings since
                continue
            ran += 1
            state, error, next_at = "done", "", t
            try:
                n = retractor.retract_series(due.study_uid, due.series_uids)
                logger.info("superseded result retracted from %r: %d series", retractor, n)
            except PacsError as exc:
                error = str(exc)
                if exc.transient and due.attempts + 1 < self._max_attempts:
                    state, next_at = "pending", t + self._outbox.backoff_s(due.attempts + 1)
                    logger.warning("retraction from %r failed, will retry: %s", retractor, exc)
                else:
                    state = "dead"
                    logger.error("retraction from %r failed: %s", retractor, exc)
            self._state.record_attempt(
                due.job_ref, due.target, state=state, next_attempt_at=next_at, error=error
            )
        return ran
