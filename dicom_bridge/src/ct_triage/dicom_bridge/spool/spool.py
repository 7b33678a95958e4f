"""The :class:`Spool`: one spool folder, its lock and life cycle, and the public API.

It owns the pieces and passes each call to the one that does the work: :mod:`.store`
(durable instance writes), :mod:`.index` (the SQLite index), :mod:`.completion` (when a series
is complete, claim / done / failed), :mod:`.purge` (retention) and :mod:`.recover` (after a
crash). The package docstring describes the layout and the completion rules.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Mapping
from pathlib import Path

from pydicom.dataset import Dataset

from ct_triage.models.errors import TriageError

from .completion import Completion, CompletionRules, ReadySeries
from .header import InstanceHeader
from .index import SeriesState, SpoolIndex
from .purge import PurgeReport, purge
from .recover import recover
from .store import InstanceStore, StoreOutcome, ensure_dir

__all__ = ["Spool"]


class Spool:
    """The durable receive spool (see the package docstring).

    Parameters
    ----------
    root
        Spool folder (created if missing).
    quiet_period_s
        A series is complete when nothing arrived for this long (rule 4).
    incomplete_after_s
        With a known expected count, complete anyway after this long without arrivals;
        default ``10 * quiet_period_s``.
    settle_s
        After the expected count arrived or the sender released the association (rules 2
        and 3), wait this long without arrivals (a follow-up association in that time
        keeps the series open).
    aborted_wait_s
        A series whose sender aborted is analysed anyway after this long without arrivals.

    Raises
    ------
    TriageError
        Another process holds the spool, or the index cannot be opened.
    """

    def __init__(
        self,
        root: Path,
        *,
        quiet_period_s: float = 5.0,
        incomplete_after_s: float | None = None,
        settle_s: float = 1.0,
        aborted_wait_s: float = 300.0,
    ) -> None:
        if min(quiet_period_s, settle_s, aborted_wait_s) < 0:
            raise ValueError("quiet_period_s, settle_s and aborted_wait_s must be >= 0")
        self.root = root
        self.quiet_period_s = quiet_period_s
        self.incomplete_after_s = (
            incomplete_after_s if incomplete_after_s is not None else 10.0 * quiet_period_s
        )
        self.settle_s = settle_s
        self.aborted_wait_s = aborted_wait_s
        self.instances_dir = root / "instances"
        tmp_dir = root / "tmp"
        for folder in (root, self.instances_dir, tmp_dir):
            ensure_dir(folder)
        self._lock_fd = os.open(root / "spool.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self._lock_fd)
            raise TriageError(f"spool {root} is in use by another process") from exc
        try:
            self._index = SpoolIndex(root / "spool.db")
        except TriageError:
            os.close(self._lock_fd)
            raise
        self._files = InstanceStore(self.instances_dir, tmp_dir, self._index)
        self._completion = Completion(
            self._index,
            CompletionRules(
                quiet_period_s=self.quiet_period_s,
                incomplete_after_s=self.incomplete_after_s,
                settle_s=self.settle_s,
                aborted_wait_s=self.aborted_wait_s,
            ),
            self._files.series_folder,
        )
        self._closed = False
        self.recover()

    # -- life cycle --------------------------------------------------------------------------
    def close(self) -> None:
        """Close the index and release the spool lock (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._index.close()
        os.close(self._lock_fd)

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def settled_after_s(self) -> float:
        """Idle time after which every series is complete, whatever the sender did."""
        return self._completion.rules.settled_after_s

    def series_folder(self, study_uid: str, series_uid: str) -> Path:
        """Folder of one series' instances."""
        return self._files.series_folder(study_uid, series_uid)

    # -- receive -----------------------------------------------------------------------------
    def store(
        self,
        data: bytes | Dataset,
        *,
        calling_ae: str = "",
        header: InstanceHeader | None = None,
        now: float | None = None,
    ) -> StoreOutcome:
        """Make one instance durable, then record it (PS3.4 B.2.2 "the SCP shall store").

        Parameters
        ----------
        data
            Part 10 bytes (``event.encoded_dataset()``), or a data set with ``file_meta``
            (encoded here).
        calling_ae
            The peer's AE title (recorded, and logged; never patient data).
        header
            Already decoded header of ``data`` (saves decoding it twice).
        now
            Receive time (``time.time()`` by default); for tests.

        Returns
        -------
        StoreOutcome

        Raises
        ------
        InvalidInput
            The header does not decode, a UID is not a valid UID, or the series UID is
            already used by another study.
        OSError
            The instance could not be made durable (disk full, I/O error, index not
            writable); it was not recorded and must not be acknowledged with Success.
        """
        return self._files.store(data, calling_ae=calling_ae, header=header, now=now)

    # -- completion --------------------------------------------------------------------------
    def set_expected_count(self, series_uid: str, expected: int) -> None:
        """Record how many instances a series should have (C-FIND NumberOfSeriesRelatedInstances).

        May be called before any instance of the series arrived.
        """
        self._completion.set_expected_count(series_uid, expected)

    def association_ended(
        self, series_counts: Mapping[str, int], *, released: bool, now: float | None = None
    ) -> None:
        """Record how an association that carried instances ended (completion rules 1 and 3).

        Parameters
        ----------
        series_counts
            Instances of each series the association carried (stored or duplicate).
        released
            ``True`` for a normal A-RELEASE, ``False`` for an A-ABORT or a dropped
            connection.
        now
            Wall-clock time (``time.time()`` by default); for tests.
        """
        self._completion.association_ended(series_counts, released=released, now=now)

    def due(self, now: float | None = None) -> list[ReadySeries]:
        """Series that are complete and not claimed, oldest last arrival first.

        Parameters
        ----------
        now
            Wall-clock time (``time.time()`` by default).
        """
        return self._completion.due(now)

    def claim(self, series_uid: str, now: float | None = None) -> ReadySeries:
        """Claim a due series for analysis (atomic: one claimant wins).

        Returns
        -------
        ReadySeries
            With the generation to pass to :meth:`mark_done` / :meth:`mark_failed`.

        Raises
        ------
        TriageError
            The series is unknown, not complete yet, or already claimed.
        """
        return self._completion.claim(series_uid, now)

    def mark_done(self, series_uid: str, generation: int, result_ref: str) -> None:
        """Record the result of one generation.

        The newest result is kept as the reference that a later generation supersedes
        (:attr:`ReadySeries.previous_result_ref`), even when a late instance already
        re-opened the series; only the current generation moves the series to ``done``.
        """
        self._completion.mark_done(series_uid, generation, result_ref)

    def mark_failed(self, series_uid: str, generation: int, reason: str) -> None:
        """Record that the analysis of one generation failed (ignored for a stale one)."""
        self._completion.mark_failed(series_uid, generation, reason)

    def state(self, series_uid: str) -> SeriesState | None:
        """Current state of a series, ``None`` when unknown."""
        row = self._index.series_row(series_uid)
        return None if row is None else SeriesState(row[1])

    def study_series(self, study_uid: str) -> dict[str, SeriesState]:
        """Every series of a study in the spool, with its state."""
        return self._index.study_series(study_uid)

    def instance_uids(self, series_uid: str) -> list[str]:
        """SOP Instance UIDs recorded for a series (sorted)."""
        return self._index.instance_uids(series_uid)

    # -- retention ---------------------------------------------------------------------------
    def purge(self, max_age_s: float, now: float | None = None) -> PurgeReport:
        """Delete the instances of settled series that arrived more than ``max_age_s`` ago.

        Only series whose current generation is ``done`` or ``failed`` go; a series still
        receiving or claimed stays whatever its age. Their results (the SEG, SR and report
        under the data folder, and what was delivered to the PACS) are not touched. The
        files are first moved into ``tmp/`` while the index rows are deleted in the same
        transaction, then unlinked: a crash in between leaves only temporary files (deleted
        by :meth:`recover`) and never an orphan instance that would be adopted and analysed
        again. A late instance arriving after its series was purged starts a new series.
        """
        return purge(self._index, self._files, max_age_s, now)

    # -- crash recovery ----------------------------------------------------------------------
    def recover(self) -> None:
        """Reconcile the index with the files after a restart (called by ``__init__``).

        * leftover temporary files are deleted (never acknowledged);
        * a file without a row is recorded (crash between rename and commit);
        * a row without a file is dropped, with a warning;
        * a series left ``claimed`` (crash mid-analysis) becomes due again.
        """
        recover(self._index, self._files)
