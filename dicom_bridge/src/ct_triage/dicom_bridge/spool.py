"""The durable receive spool: instances on disk first, then series completion.

What the Storage SCP acknowledges with Success (PS3.4 B.2.3, status ``0x0000``) is on disk
first: :meth:`Spool.store` writes each instance to a temporary file, ``fsync``\\ s it, renames
it into place with :func:`os.replace`, ``fsync``\\ s the folder and only then records it in
a SQLite index (WAL journal, ``synchronous=FULL``) in one transaction. Layout under
``root``::

    spool.db                                         the index (series, instances, counts)
    spool.lock                                       held (POSIX lock) by the owning process
    tmp/                                             partial writes, same file system
    instances/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm

Files keep the peer's encoding: the Part 10 bytes (PS3.10 section 7) with the transfer
syntax and File Meta Information the instance arrived in.

When is a series *complete*? DICOM has no "end of series" message, so the spool combines
what the sender can tell us (first rule that applies wins):

1. **The sender aborted.** An association that carried instances of the series ended in
   A-ABORT (or the connection dropped, PS3.8 7.3/7.4): the series is held -- *not* analysed
   as a partial -- until a later association that carries it is released normally (then
   the rules below apply), or ``aborted_wait_s`` pass without an arrival.
2. **Expected count known** (NumberOfSeriesRelatedInstances from C-FIND / QIDO-RS, PS3.4
   C.6.1.1.5, recorded with :meth:`Spool.set_expected_count`): complete ``settle_s`` after
   the last arrival once that many are present; otherwise ``incomplete_after_s`` after the
   last arrival, with the shortfall recorded.
3. **The sender released the association** (A-RELEASE, PS3.8 7.2) that carried two or more
   instances of the series (or all of them): complete ``settle_s`` after the last arrival. A
   PACS that routes a *stable* series or study (Orthanc ``OnStableSeries``/``OnStableStudy``,
   dcm4chee-arc export rules) sends it in one association, so its release means "this is
   what I have". A sender using one association per image (one instance each) does not
   count: its series falls back to rule 4.
4. **Quiet period**: nothing arrived for ``quiet_period_s``.

The CT Image IOD carries no instance count of its series: ImagesInAcquisition (0020,1002)
is optional and counts an *acquisition* (several reconstructions share one), and
NumberOfSlices (0054,0081) belongs to NM/PET. The spool does not guess from them.

A series then goes through ``due -> claim -> mark_done | mark_failed``; an instance arriving
after a series completed (a *late* instance, or a changed re-send) bumps its ``generation``
and makes it due again, and the caller's new result supersedes ``previous_result_ref``
(the bridge then retracts the old result from the PACS where configured).

Our own outputs coming back from the PACS (SEG, Comprehensive 3D SR, Secondary Capture with
Manufacturer ``chest-ct-triage``) are acknowledged but never spooled, so results never loop
back into analysis; other non-image objects of those classes are ignored the same way.

Instances of series that were analysed (or failed) are deleted ``max_age_s`` after their last
arrival by :meth:`Spool.purge` (the bridge runs it hourly, ``CT_TRIAGE_SPOOL_RETENTION_DAYS``);
the results stay.

The spool survives a crash: on start-up :meth:`Spool.recover` reconciles the index with the
files, and a series claimed but never marked done becomes due again. One process owns a
spool folder at a time (a POSIX lock on ``spool.lock``); threads of that process may share
one :class:`Spool`.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import fcntl
import hashlib
import io
import logging
import os
import re
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import (
    Comprehensive3DSRStorage,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
)

from ct_triage.dicom_bridge.part10 import dataset_offset
from ct_triage.models.errors import InvalidInput, TriageError
from ct_triage.models.identity import PRODUCT_NAME

__all__ = [
    "IGNORED_SOP_CLASSES",
    "InstanceHeader",
    "PurgeReport",
    "ReadySeries",
    "SeriesState",
    "Spool",
    "StoreAction",
    "StoreOutcome",
    "read_instance_header",
]

logger = logging.getLogger(__name__)

#: A DICOM UID as we accept it in file names (PS3.5 section 9.1: digits and dots, <= 64).
_UID_RE = re.compile(r"^[0-9.]{1,64}$")

#: SOP Classes of the objects we write (PS3.4 B.5): acknowledged, never analysed.
IGNORED_SOP_CLASSES: frozenset[str] = frozenset(
    {str(SegmentationStorage), str(Comprehensive3DSRStorage), str(SecondaryCaptureImageStorage)}
)

_STRIPES = 64

_SCHEMA = """
CREATE TABLE IF NOT EXISTS series (
    series_uid          TEXT PRIMARY KEY,
    study_uid           TEXT NOT NULL,
    state               TEXT NOT NULL,
    generation          INTEGER NOT NULL DEFAULT 1,
    first_received      REAL NOT NULL,
    last_received       REAL NOT NULL,
    claimed_generation  INTEGER,
    result_ref          TEXT,
    fail_reason         TEXT,
    calling_ae          TEXT NOT NULL DEFAULT '',
    sender_done         REAL,
    aborted_at          REAL
);
CREATE TABLE IF NOT EXISTS instances (
    sop_instance_uid    TEXT PRIMARY KEY,
    series_uid          TEXT NOT NULL REFERENCES series(series_uid),
    sop_class_uid       TEXT NOT NULL,
    transfer_syntax     TEXT NOT NULL DEFAULT '',
    size                INTEGER NOT NULL,
    sha256              TEXT NOT NULL,
    received            REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_by_series ON instances(series_uid);
CREATE TABLE IF NOT EXISTS expected_counts (
    series_uid          TEXT PRIMARY KEY,
    expected            INTEGER NOT NULL
);
"""


class SeriesState(enum.StrEnum):
    """Where a series stands in the spool."""

    #: Instances arriving (or arrived; complete once quiet, see :meth:`Spool.due`).
    RECEIVING = "receiving"
    #: A worker claimed the current generation and is analysing it.
    CLAIMED = "claimed"
    #: The current generation was analysed; ``result_ref`` names the result.
    DONE = "done"
    #: The current generation failed; only a late instance makes it due again.
    FAILED = "failed"


class StoreAction(enum.StrEnum):
    """What :meth:`Spool.store` did with one instance."""

    STORED = "stored"
    DUPLICATE = "duplicate"
    REPLACED = "replaced"
    IGNORED = "ignored"


@dataclass(frozen=True, slots=True)
class InstanceHeader:
    """The attributes of a received instance the spool needs (no patient data).

    Parameters
    ----------
    sop_class_uid, sop_instance_uid, study_uid, series_uid
        From the data set (PS3.3 C.12.1 SOP Common, C.7.2.1, C.7.3.1).
    transfer_syntax
        From the File Meta Information (PS3.10 7.1), ``""`` if absent.
    manufacturer
        Manufacturer (0008,0070), ``""`` if absent.
    """

    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    transfer_syntax: str
    manufacturer: str

    @property
    def is_own_output(self) -> bool:
        """``True`` for a SEG / SR / SC that chest-ct-triage itself wrote."""
        return self.sop_class_uid in IGNORED_SOP_CLASSES and self.manufacturer == PRODUCT_NAME


@dataclass(frozen=True, slots=True)
class StoreOutcome:
    """The result of :meth:`Spool.store`.

    Parameters
    ----------
    action
        Stored anew, duplicate (identical re-send, nothing changed), replaced (changed
        content) or ignored (our own output or another non-image object; not written).
    sop_instance_uid, series_uid, study_uid
        The instance.
    generation
        The series generation after this store; ``None`` when ignored.
    late
        ``True`` when this instance re-opened a completed series (generation bumped).
    path
        The file, ``None`` when ignored.
    """

    action: StoreAction
    sop_instance_uid: str
    series_uid: str
    study_uid: str
    generation: int | None
    late: bool
    path: Path | None


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
class PurgeReport:
    """What :meth:`Spool.purge` deleted."""

    series: int
    instances: int
    bytes: int


def read_instance_header(data: bytes) -> InstanceHeader:
    """Decode the header of a Part 10 encoded instance (PS3.10 section 7).

    Parameters
    ----------
    data
        The instance with preamble, ``DICM`` prefix and File Meta Information, as
        pynetdicom's ``event.encoded_dataset()`` returns it.

    Returns
    -------
    InstanceHeader

    Raises
    ------
    InvalidInput
        The header does not decode, or a required UID is missing or not a valid UID.
    """
    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        meta = getattr(ds, "file_meta", None)
        header = InstanceHeader(
            sop_class_uid=str(ds.get("SOPClassUID", "") or ""),
            sop_instance_uid=str(ds.get("SOPInstanceUID", "") or ""),
            study_uid=str(ds.get("StudyInstanceUID", "") or ""),
            series_uid=str(ds.get("SeriesInstanceUID", "") or ""),
            transfer_syntax=str(meta.get("TransferSyntaxUID", "") or "") if meta else "",
            manufacturer=str(ds.get("Manufacturer", "") or ""),
        )
    except Exception as exc:  # pydicom raises many types on a corrupt header
        raise InvalidInput(f"data set header does not decode ({type(exc).__name__})") from exc
    for name in ("sop_class_uid", "sop_instance_uid", "study_uid", "series_uid"):
        value = getattr(header, name)
        if not _UID_RE.fullmatch(value):
            raise InvalidInput(f"{name} is missing or not a valid DICOM UID")
    return header


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _ensure_dir(path: Path) -> None:
    """Create ``path`` and missing parents, fsyncing each parent that gained an entry."""
    if path.is_dir():
        return
    _ensure_dir(path.parent)
    try:
        path.mkdir()
    except FileExistsError:
        return
    _fsync_dir(path.parent)


class Spool:
    """The durable receive spool (see the module docstring).

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
        self._tmp_dir = root / "tmp"
        for folder in (root, self.instances_dir, self._tmp_dir):
            _ensure_dir(folder)
        self._lock_fd = os.open(root / "spool.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self._lock_fd)
            raise TriageError(f"spool {root} is in use by another process") from exc
        self._db_lock = threading.RLock()
        self._stripes = [threading.Lock() for _ in range(_STRIPES)]
        try:
            self._db = sqlite3.connect(
                root / "spool.db", check_same_thread=False, isolation_level=None, timeout=30.0
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            columns = {str(r[1]) for r in self._db.execute("PRAGMA table_info(series)")}
            for column in ("sender_done", "aborted_at"):  # spools written before they existed
                if column not in columns:
                    self._db.execute(f"ALTER TABLE series ADD COLUMN {column} REAL")
        except sqlite3.Error as exc:
            os.close(self._lock_fd)
            raise TriageError(f"spool index {root / 'spool.db'} cannot be opened: {exc}") from exc
        self._closed = False
        self.recover()

    # -- life cycle --------------------------------------------------------------------------
    def close(self) -> None:
        """Close the index and release the spool lock (idempotent)."""
        if self._closed:
            return
        self._closed = True
        with self._db_lock:
            self._db.close()
        os.close(self._lock_fd)

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction under the in-process lock."""
        with self._db_lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    @property
    def settled_after_s(self) -> float:
        """Idle time after which every series is complete, whatever the sender did."""
        return max(self.quiet_period_s, self.settle_s, self.incomplete_after_s, self.aborted_wait_s)

    def series_folder(self, study_uid: str, series_uid: str) -> Path:
        """Folder of one series' instances."""
        return self.instances_dir / study_uid / series_uid

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
        raw = self._encode(data) if isinstance(data, Dataset) else data
        hdr = header or read_instance_header(raw)
        if hdr.sop_class_uid in IGNORED_SOP_CLASSES:
            if hdr.is_own_output:
                logger.info("ignored own output %s (from %s)", hdr.sop_instance_uid, calling_ae)
            else:
                logger.info(
                    "ignored non-image object %s of class %s (from %s)",
                    hdr.sop_instance_uid,
                    hdr.sop_class_uid,
                    calling_ae,
                )
            return StoreOutcome(
                StoreAction.IGNORED,
                hdr.sop_instance_uid,
                hdr.series_uid,
                hdr.study_uid,
                None,
                False,
                None,
            )
        digest = hashlib.sha256(memoryview(raw)[dataset_offset(raw) :]).hexdigest()
        t = time.time() if now is None else now
        stripe = self._stripes[hash(hdr.sop_instance_uid) % _STRIPES]
        with stripe:
            existing = self._instance_row(hdr.sop_instance_uid)
            if existing is not None and existing[1] != hdr.series_uid:
                raise InvalidInput(
                    f"SOP Instance {hdr.sop_instance_uid} was received before in another series"
                )
            series_row = self._series_row(hdr.series_uid)
            if series_row is not None and series_row[0] != hdr.study_uid:
                raise InvalidInput(f"series {hdr.series_uid} already belongs to another study")
            folder = self.series_folder(hdr.study_uid, hdr.series_uid)
            path = folder / f"{hdr.sop_instance_uid}.dcm"
            if existing is not None and existing[0] == digest and path.is_file():
                logger.debug("duplicate %s ignored", hdr.sop_instance_uid)
                gen = int(series_row[2]) if series_row is not None else None
                return StoreOutcome(
                    StoreAction.DUPLICATE,
                    hdr.sop_instance_uid,
                    hdr.series_uid,
                    hdr.study_uid,
                    gen,
                    False,
                    path,
                )
            self._write_durably(folder, path, raw)
            try:
                generation, late = self._record(hdr, digest, len(raw), calling_ae, t)
            except sqlite3.Error as exc:
                if existing is None:
                    path.unlink(missing_ok=True)
                raise OSError(errno.EIO, f"spool index not writable: {exc}") from exc
        action = StoreAction.REPLACED if existing is not None else StoreAction.STORED
        if late:
            logger.info(
                "late instance %s re-opens series %s (generation %d)",
                hdr.sop_instance_uid,
                hdr.series_uid,
                generation,
            )
        return StoreOutcome(
            action,
            hdr.sop_instance_uid,
            hdr.series_uid,
            hdr.study_uid,
            generation,
            late,
            path,
        )

    @staticmethod
    def _encode(ds: Dataset) -> bytes:
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        return buf.getvalue()

    def _instance_row(self, sop_uid: str) -> tuple[str, str] | None:
        with self._db_lock:
            row = self._db.execute(
                "SELECT sha256, series_uid FROM instances WHERE sop_instance_uid = ?", (sop_uid,)
            ).fetchone()
        return None if row is None else (str(row[0]), str(row[1]))

    def _series_row(self, series_uid: str) -> tuple[str, str, int] | None:
        with self._db_lock:
            row = self._db.execute(
                "SELECT study_uid, state, generation FROM series WHERE series_uid = ?",
                (series_uid,),
            ).fetchone()
        return None if row is None else (str(row[0]), str(row[1]), int(row[2]))

    def _write_durably(self, folder: Path, path: Path, raw: bytes) -> None:
        """temp file + fsync + rename + fsync of the folder (PS3.4 B.2.2 durability)."""
        _ensure_dir(folder)
        fd, tmp_name = tempfile.mkstemp(dir=self._tmp_dir, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(raw)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp_name, path)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        _fsync_dir(folder)

    def _record(
        self, hdr: InstanceHeader, digest: str, size: int, calling_ae: str, t: float
    ) -> tuple[int, bool]:
        """Insert/replace the instance row and update its series; return (generation, late)."""
        with self._tx() as db:
            row = db.execute(
                "SELECT state, generation FROM series WHERE series_uid = ?", (hdr.series_uid,)
            ).fetchone()
            late = False
            if row is None:
                generation = 1
                db.execute(
                    "INSERT INTO series (series_uid, study_uid, state, generation, "
                    "first_received, last_received, calling_ae) VALUES (?, ?, ?, 1, ?, ?, ?)",
                    (hdr.series_uid, hdr.study_uid, SeriesState.RECEIVING, t, t, calling_ae),
                )
            else:
                state, generation = str(row[0]), int(row[1])
                if state != SeriesState.RECEIVING:
                    # A claimed, done or failed series gets a new generation; a complete but
                    # unclaimed one just waits for a new quiet period.
                    late = True
                    generation += 1
                db.execute(
                    "UPDATE series SET state = ?, generation = ?, last_received = ?, "
                    "claimed_generation = NULL, fail_reason = NULL, sender_done = NULL "
                    "WHERE series_uid = ?",
                    (SeriesState.RECEIVING, generation, t, hdr.series_uid),
                )
            db.execute(
                "INSERT OR REPLACE INTO instances (sop_instance_uid, series_uid, sop_class_uid, "
                "transfer_syntax, size, sha256, received) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    hdr.sop_instance_uid,
                    hdr.series_uid,
                    hdr.sop_class_uid,
                    hdr.transfer_syntax,
                    size,
                    digest,
                    t,
                ),
            )
        return generation, late

    # -- completion --------------------------------------------------------------------------
    def set_expected_count(self, series_uid: str, expected: int) -> None:
        """Record how many instances a series should have (C-FIND NumberOfSeriesRelatedInstances).

        May be called before any instance of the series arrived.
        """
        if expected < 0:
            raise ValueError("expected must be >= 0")
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO expected_counts (series_uid, expected) VALUES (?, ?)",
                (series_uid, int(expected)),
            )

    def _counts(self, db: sqlite3.Connection, series_uid: str) -> tuple[int, int | None]:
        count = int(
            db.execute(
                "SELECT COUNT(*) FROM instances WHERE series_uid = ?", (series_uid,)
            ).fetchone()[0]
        )
        row = db.execute(
            "SELECT expected FROM expected_counts WHERE series_uid = ?", (series_uid,)
        ).fetchone()
        return count, (None if row is None else int(row[0]))

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
        t = time.time() if now is None else now
        with self._tx() as db:
            for series_uid, carried in series_counts.items():
                if carried <= 0:
                    continue
                if not released:
                    db.execute(
                        "UPDATE series SET aborted_at = ?, sender_done = NULL WHERE series_uid = ?",
                        (t, series_uid),
                    )
                    continue
                count, _ = self._counts(db, series_uid)
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
                self.aborted_wait_s,
            )

    def _completion_locked(self, db: sqlite3.Connection, series_uid: str, now: float) -> str | None:
        """The completion rule that applies now (module docstring), ``None`` if incomplete."""
        row = db.execute(
            "SELECT last_received, sender_done, aborted_at FROM series WHERE series_uid = ?",
            (series_uid,),
        ).fetchone()
        if row is None:
            return None
        idle = now - float(row[0])
        if row[2] is not None:
            return "aborted-timeout" if idle >= self.aborted_wait_s else None
        count, expected = self._counts(db, series_uid)
        if expected is not None:
            if count >= expected and idle >= min(self.settle_s, self.quiet_period_s):
                return "expected-count"
            return "incomplete-timeout" if idle >= self.incomplete_after_s else None
        if row[1] is not None and idle >= self.settle_s:
            return "association-released"
        return "quiet-period" if idle >= self.quiet_period_s else None

    def _ready(
        self, db: sqlite3.Connection, series_uid: str, completed_by: str = "quiet-period"
    ) -> ReadySeries:
        study_uid, generation, last_received, result_ref = db.execute(
            "SELECT study_uid, generation, last_received, result_ref FROM series "
            "WHERE series_uid = ?",
            (series_uid,),
        ).fetchone()
        count, expected = self._counts(db, series_uid)
        missing = max(0, expected - count) if expected is not None else 0
        return ReadySeries(
            study_uid=str(study_uid),
            series_uid=series_uid,
            folder=self.series_folder(str(study_uid), series_uid),
            instance_count=count,
            generation=int(generation),
            expected_count=expected,
            missing_count=missing,
            previous_result_ref=None if result_ref is None else str(result_ref),
            last_received=float(last_received),
            completed_by=completed_by,
        )

    def due(self, now: float | None = None) -> list[ReadySeries]:
        """Series that are complete and not claimed, oldest last arrival first.

        Parameters
        ----------
        now
            Wall-clock time (``time.time()`` by default).
        """
        t = time.time() if now is None else now
        with self._db_lock:
            rows = self._db.execute(
                "SELECT series_uid FROM series WHERE state = ? AND last_received <= ? "
                "ORDER BY last_received",
                (SeriesState.RECEIVING, t - min(self.quiet_period_s, self.settle_s)),
            ).fetchall()
            ready = []
            for r in rows:
                rule = self._completion_locked(self._db, str(r[0]), t)
                if rule is not None:
                    ready.append(self._ready(self._db, str(r[0]), rule))
            return ready

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
        t = time.time() if now is None else now
        with self._tx() as db:
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
        """Record the result of one generation.

        The newest result is kept as the reference that a later generation supersedes
        (:attr:`ReadySeries.previous_result_ref`), even when a late instance already
        re-opened the series; only the current generation moves the series to ``done``.
        """
        with self._tx() as db:
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
        """Record that the analysis of one generation failed (ignored for a stale one)."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE series SET state = ?, fail_reason = ? "
                "WHERE series_uid = ? AND generation = ? AND state = ?",
                (SeriesState.FAILED, reason, series_uid, generation, SeriesState.CLAIMED),
            )
        if cur.rowcount == 0:
            logger.info("stale failure of series %s generation %d ignored", series_uid, generation)

    def state(self, series_uid: str) -> SeriesState | None:
        """Current state of a series, ``None`` when unknown."""
        row = self._series_row(series_uid)
        return None if row is None else SeriesState(row[1])

    def study_series(self, study_uid: str) -> dict[str, SeriesState]:
        """Every series of a study in the spool, with its state."""
        with self._db_lock:
            rows = self._db.execute(
                "SELECT series_uid, state FROM series WHERE study_uid = ?", (study_uid,)
            ).fetchall()
        return {str(r[0]): SeriesState(r[1]) for r in rows}

    def instance_uids(self, series_uid: str) -> list[str]:
        """SOP Instance UIDs recorded for a series (sorted)."""
        with self._db_lock:
            rows = self._db.execute(
                "SELECT sop_instance_uid FROM instances WHERE series_uid = ? "
                "ORDER BY sop_instance_uid",
                (series_uid,),
            ).fetchall()
        return [str(r[0]) for r in rows]

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
        if max_age_s < 0:
            raise ValueError("max_age_s must be >= 0")
        cutoff = (time.time() if now is None else now) - max_age_s
        with self._db_lock:
            rows = self._db.execute(
                "SELECT series_uid, study_uid FROM series "
                "WHERE state IN (?, ?) AND last_received < ?",
                (SeriesState.DONE, SeriesState.FAILED, cutoff),
            ).fetchall()
        purged_series = instances = freed = 0
        for series_uid, study_uid in rows:
            # one transaction per series: the receive path waits for one series at most
            moved = self._purge_series(str(series_uid), str(study_uid), cutoff)
            if moved is None:
                continue
            purged_series += 1
            instances += len(moved)
            for path in moved:
                try:
                    freed += path.stat().st_size
                    path.unlink()
                except OSError as exc:  # left for recover()
                    logger.warning("spool purge could not delete a file: %s", exc)
            for folder in (
                self.series_folder(str(study_uid), str(series_uid)),
                self.instances_dir / str(study_uid),
            ):
                with contextlib.suppress(OSError):  # only when empty: a late arrival's stays
                    folder.rmdir()
        report = PurgeReport(series=purged_series, instances=instances, bytes=freed)
        if purged_series:
            logger.info(
                "spool purge: %d series, %d instances, %.1f MB older than %.1f days",
                report.series,
                report.instances,
                freed / 1e6,
                max_age_s / 86400,
            )
        return report

    def _purge_series(self, series_uid: str, study_uid: str, cutoff: float) -> list[Path] | None:
        """Move one settled series' files into ``tmp/`` and drop its rows (one transaction).

        Returns the moved files, or ``None`` when the series changed meanwhile (a late
        instance re-opened it) or a file could not be moved (the moved ones are put back).
        """
        with self._tx() as db:
            still = db.execute(
                "SELECT 1 FROM series WHERE series_uid = ? AND state IN (?, ?) "
                "AND last_received < ?",
                (series_uid, SeriesState.DONE, SeriesState.FAILED, cutoff),
            ).fetchone()
            if still is None:
                return None
            folder = self.series_folder(study_uid, series_uid)
            uids = [
                str(r[0])
                for r in db.execute(
                    "SELECT sop_instance_uid FROM instances WHERE series_uid = ?", (series_uid,)
                )
            ]
            staged: list[tuple[Path, Path]] = []
            try:
                for uid in uids:
                    src = folder / f"{uid}.dcm"
                    if src.exists():
                        dst = self._tmp_dir / f"purge-{uid}.dcm"
                        os.replace(src, dst)
                        staged.append((src, dst))
            except OSError as exc:
                for src, dst in reversed(staged):  # put back what moved; keep the series
                    os.replace(dst, src)
                logger.warning("spool purge skipped a series: %s", exc)
                return None
            db.execute("DELETE FROM instances WHERE series_uid = ?", (series_uid,))
            db.execute("DELETE FROM expected_counts WHERE series_uid = ?", (series_uid,))
            db.execute("DELETE FROM series WHERE series_uid = ?", (series_uid,))
        return [dst for _, dst in staged]

    # -- crash recovery ----------------------------------------------------------------------
    def recover(self) -> None:
        """Reconcile the index with the files after a restart (called by ``__init__``).

        * leftover temporary files are deleted (never acknowledged);
        * a file without a row is recorded (crash between rename and commit);
        * a row without a file is dropped, with a warning;
        * a series left ``claimed`` (crash mid-analysis) becomes due again.
        """
        for tmp in self._tmp_dir.iterdir():
            tmp.unlink(missing_ok=True)
        on_disk: dict[str, Path] = {}
        for study_dir in self.instances_dir.iterdir():
            if not study_dir.is_dir():
                continue
            for series_dir in study_dir.iterdir():
                if not series_dir.is_dir():
                    continue
                for f in series_dir.iterdir():
                    if f.suffix == ".dcm":
                        on_disk[f.stem] = f
        with self._db_lock:
            rows = self._db.execute(
                "SELECT i.sop_instance_uid, s.study_uid, s.series_uid FROM instances i "
                "JOIN series s ON s.series_uid = i.series_uid"
            ).fetchall()
        known: set[str] = set()
        lost: list[str] = []
        for sop_uid, study_uid, series_uid in rows:
            path = self.series_folder(str(study_uid), str(series_uid)) / f"{sop_uid}.dcm"
            if on_disk.get(str(sop_uid)) == path:
                known.add(str(sop_uid))
            else:
                lost.append(str(sop_uid))
        with self._tx() as db:
            for sop_uid in lost:
                logger.warning("spool index lists %s but its file is missing; dropped", sop_uid)
                db.execute("DELETE FROM instances WHERE sop_instance_uid = ?", (sop_uid,))
            db.execute(
                "DELETE FROM series WHERE series_uid NOT IN (SELECT series_uid FROM instances)"
            )
            reset = db.execute(
                "UPDATE series SET state = ?, claimed_generation = NULL WHERE state = ?",
                (SeriesState.RECEIVING, SeriesState.CLAIMED),
            ).rowcount
        if reset:
            logger.warning("%d series claimed before a restart are due again", reset)
        adopted = 0
        for sop_uid, path in on_disk.items():
            if sop_uid in known:
                continue
            try:
                raw = path.read_bytes()
                hdr = read_instance_header(raw)
            except (OSError, InvalidInput) as exc:
                logger.warning("unreadable spool file %s left in place: %s", path.name, exc)
                continue
            if path.parent != self.series_folder(hdr.study_uid, hdr.series_uid):
                logger.warning("spool file %s is in the wrong folder; ignored", path.name)
                continue
            digest = hashlib.sha256(memoryview(raw)[dataset_offset(raw) :]).hexdigest()
            self._record(hdr, digest, len(raw), "", path.stat().st_mtime)
            adopted += 1
        if adopted:
            logger.warning("recorded %d spool file(s) missing from the index", adopted)
