"""When a series is complete, and its life after: ``due -> claim -> mark_done | mark_failed``.

DICOM has no "end of series" message, so the rules combine what the sender can tell us
(first rule that applies wins; the package docstring gives the reasons):

1. **The sender aborted** (A-ABORT or a dropped connection, PS3.8 7.3/7.4): the series is
   held until a later association that carries it is released, or ``aborted_wait_s`` pass
   without an arrival (``"aborted-timeout"``).
2. **Expected count known** (NumberOfSeriesRelatedInstances, PS3.4 C.6.1.1.5): complete
   ``settle_s`` after the last arrival once that many are present (``"expected-count"``);
   otherwise ``incomplete_after_s`` after it (``"incomplete-timeout"``).
3. **The sender released the association** (A-RELEASE, PS3.8 7.2) that carried two or more
   instances of the series, or all of them: complete ``settle_s`` after the last arrival
   (``"association-released"``).
4. **Quiet period**: nothing arrived for ``quiet_period_s`` (``"quiet-period"``).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ct_triage.models.errors import TriageError

from .index import SeriesState, SpoolIndex

__all__ = ["Completion", "CompletionRules", "ReadySeries"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ReadySeries:
    """A series that is complete and can be analysed.

    Parameters
    ----------
    study_uid, series_uid
        The series.
    folder
        Folder holding its instances (only complete ``.dcm`` files).
    instance_count
        Instances present.
    generation
        Pass it back to :meth:`Spool.mark_done` / :meth:`Spool.mark_failed`.
    expected_count
        Expected instances (from C-FIND), ``None`` when unknown.
    missing_count
        ``expected_count - instance_count`` when it completed without all of them, else 0.
    previous_result_ref
        The result of an earlier generation that the new result supersedes, or ``None``.
    last_received
        Wall-clock time (``time.time()``) of the last arrival.
    completed_by
        Which completion rule applied (see the module docstring): ``"expected-count"``,
        ``"incomplete-timeout"``, ``"association-released"``, ``"quiet-period"`` or
        ``"aborted-timeout"``.
    """

    study_uid: str
    series_uid: str
    folder: Path
    instance_count: int
    generation: int
    expected_count: int | None
    missing_count: int
    previous_result_ref: str | None
    last_received: float
    completed_by: str = "quiet-period"


@dataclass(frozen=True, slots=True)
class CompletionRules:
    """The waits of the completion rules (see the module docstring), in seconds."""

    quiet_period_s: float
    incomplete_after_s: float
    settle_s: float
    aborted_wait_s: float

    @property
    def settled_after_s(self) -> float:
        """Idle time after which every series is complete, whatever the sender did."""
        return max(self.quiet_period_s, self.settle_s, self.incomplete_after_s, self.aborted_wait_s)

    @property
    def shortest_wait_s(self) -> float:
        """No rule completes a series that received an instance more recently than this."""
        return min(self.quiet_period_s, self.settle_s)

    def rule(
        self,
        *,
        idle_s: float,
        sender_done: bool,
        aborted: bool,
        count: int,
        expected: int | None,
    ) -> str | None:
        """The rule that completes a series now, ``None`` while it is incomplete.

        Parameters
        ----------
        idle_s
            Time since the last arrival.
        sender_done
            The sender released an association that said the series ended (rule 3).
        aborted
            The last association that carried the series aborted (rule 1).
        count, expected
            Instances present, and expected (``None``: unknown; rule 2).
        """
        if aborted:
            return "aborted-timeout" if idle_s >= self.aborted_wait_s else None
        if expected is not None:
            if count >= expected and idle_s >= self.shortest_wait_s:
                return "expected-count"
            return "incomplete-timeout" if idle_s >= self.incomplete_after_s else None
        if sender_done and idle_s >= self.settle_s:
            return "association-released"
        return "quiet-period" if idle_s >= self.quiet_period_s else None


class Completion:
    """The series state machine of one spool (``due -> claim -> mark_done | mark_failed``).

    Parameters
    ----------
    index
        The spool's index.
    rules
        The waits.
    series_folder
        Folder of a series' instances, from ``(study_uid, series_uid)``.
    """

    def __init__(
        self,
        index: SpoolIndex,
        rules: CompletionRules,
        series_folder: Callable[[str, str], Path],
    ) -> None:
        self._index = index
        self.rules = rules
        self._series_folder = series_folder

    # -- what the senders tell us ------------------------------------------------------------
    def set_expected_count(self, series_uid: str, expected: int) -> None:
        """Record how many instances a series should have (see :meth:`Spool.set_expected_count`)."""
        if expected < 0:
            raise ValueError("expected must be >= 0")
        with self._index.tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO expected_counts (series_uid, expected) VALUES (?, ?)",
                (series_uid, int(expected)),
            )

    def association_ended(
        self, series_counts: Mapping[str, int], *, released: bool, now: float | None = None
    ) -> None:
        """Record how an association ended (see :meth:`Spool.association_ended`)."""
        t = time.time() if now is None else now
        with self._index.tx() as db:
            for series_uid, carried in series_counts.items():
                if carried <= 0:
                    continue
                if not released:
                    db.execute(
                        "UPDATE series SET aborted_at = ?, sender_done = NULL WHERE series_uid = ?",
                        (t, series_uid),
                    )
                    continue
                count, _ = SpoolIndex.counts(db, series_uid)
                # One instance of many per association says nothing about the series' end.
                done = t if carried >= 2 or carried >= count else None
                db.execute(
                    "UPDATE series SET aborted_at = NULL, sender_done = ? WHERE series_uid = ?",
                    (done, series_uid),
                )
        if not released and series_counts:
            logger.warning(
                "association aborted: %d series held until a re-send completes them or %.0f s pass",
                len(series_counts),
                self.rules.aborted_wait_s,
            )

    # -- completion --------------------------------------------------------------------------
    def _completion_locked(self, db: sqlite3.Connection, series_uid: str, now: float) -> str | None:
        """The completion rule that applies now, ``None`` if incomplete (or unknown)."""
        row = db.execute(
            "SELECT last_received, sender_done, aborted_at FROM series WHERE series_uid = ?",
            (series_uid,),
        ).fetchone()
        if row is None:
            return None
        count, expected = SpoolIndex.counts(db, series_uid)
        return self.rules.rule(
            idle_s=now - float(row[0]),
            sender_done=row[1] is not None,
            aborted=row[2] is not None,
            count=count,
            expected=expected,
        )

    def _ready(
        self, db: sqlite3.Connection, series_uid: str, completed_by: str = "quiet-period"
    ) -> ReadySeries:
        study_uid, generation, last_received, result_ref = db.execute(
            "SELECT study_uid, generation, last_received, result_ref FROM series "
            "WHERE series_uid = ?",
            (series_uid,),
        ).fetchone()
        count, expected = SpoolIndex.counts(db, series_uid)
        missing = max(0, expected - count) if expected is not None else 0
        return ReadySeries(
            study_uid=str(study_uid),
            series_uid=series_uid,
            folder=self._series_folder(str(study_uid), series_uid),
            instance_count=count,
            generation=int(generation),
            expected_count=expected,
            missing_count=missing,
            previous_result_ref=None if result_ref is None else str(result_ref),
            last_received=float(last_received),
            completed_by=completed_by,
        )

    def due(self, now: float | None = None) -> list[ReadySeries]:
        """Complete, unclaimed series, oldest last arrival first (see :meth:`Spool.due`)."""
        t = time.time() if now is None else now
        with self._index.read() as db:
            rows = db.execute(
                "SELECT series_uid FROM series WHERE state = ? AND last_received <= ? "
                "ORDER BY last_received",
                (SeriesState.RECEIVING, t - self.rules.shortest_wait_s),
            ).fetchall()
            ready = []
            for r in rows:
                rule = self._completion_locked(db, str(r[0]), t)
                if rule is not None:
                    ready.append(self._ready(db, str(r[0]), rule))
            return ready

    # -- analysis ----------------------------------------------------------------------------
    def claim(self, series_uid: str, now: float | None = None) -> ReadySeries:
        """Claim a due series for analysis (see :meth:`Spool.claim`)."""
        t = time.time() if now is None else now
        with self._index.tx() as db:
            row = db.execute(
                "SELECT state FROM series WHERE series_uid = ?", (series_uid,)
            ).fetchone()
            if row is None:
                raise TriageError(f"series {series_uid} is not in the spool")
            rule = self._completion_locked(db, series_uid, t)
            if str(row[0]) != SeriesState.RECEIVING or rule is None:
                raise TriageError(f"series {series_uid} is not due (state {row[0]})")
            ready = self._ready(db, series_uid, rule)
            db.execute(
                "UPDATE series SET state = ?, claimed_generation = ? WHERE series_uid = ?",
                (SeriesState.CLAIMED, ready.generation, series_uid),
            )
        if ready.missing_count:
            logger.warning(
                "series %s completed with %d of %d expected instances",
                series_uid,
                ready.instance_count,
                ready.expected_count,
            )
        logger.info(
            "claimed series %s generation %d (%d instances, complete by %s)",
            series_uid,
            ready.generation,
            ready.instance_count,
            ready.completed_by,
        )
        return ready

    def mark_done(self, series_uid: str, generation: int, result_ref: str) -> None:
        """Record the result of one generation (see :meth:`Spool.mark_done`)."""
        with self._index.tx() as db:
            row = db.execute(
                "SELECT state, generation FROM series WHERE series_uid = ?", (series_uid,)
            ).fetchone()
            if row is None:
                raise TriageError(f"series {series_uid} is not in the spool")
            current = int(row[1]) == generation and str(row[0]) == SeriesState.CLAIMED
            if current:
                db.execute(
                    "UPDATE series SET state = ?, result_ref = ? WHERE series_uid = ?",
                    (SeriesState.DONE, result_ref, series_uid),
                )
            else:
                db.execute(
                    "UPDATE series SET result_ref = ? WHERE series_uid = ?",
                    (result_ref, series_uid),
                )
        if not current:
            logger.info(
                "series %s generation %d done but superseded (now generation %d)",
                series_uid,
                generation,
                int(row[1]),
            )

    def mark_failed(self, series_uid: str, generation: int, reason: str) -> None:
        """Record that one generation's analysis failed (see :meth:`Spool.mark_failed`)."""
        with self._index.tx() as db:
            cur = db.execute(
                "UPDATE series SET state = ?, fail_reason = ? "
                "WHERE series_uid = ? AND generation = ? AND state = ?",
                (SeriesState.FAILED, reason, series_uid, generation, SeriesState.CLAIMED),
            )
        if cur.rowcount == 0:
            logger.info("stale failure of series %s generation %d ignored", series_uid, generation)
