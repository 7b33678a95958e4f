"""The spool's SQLite index (``spool.db``): series, their instances and expected counts.

Opened with :func:`ct_triage.models.sqlite_store.connect` (WAL journal, ``synchronous=FULL``):
a committed state change is on disk when the call returns. The row of a *new* instance is
committed without waiting for the disk (:meth:`SpoolIndex.record`): its file is durable before
the Storage SCP acknowledges it, and :func:`recover` records a file whose row a power cut lost. One
connection is shared by the threads of the owning process under :attr:`SpoolIndex.lock`;
every write that reads first is one ``BEGIN IMMEDIATE`` transaction (:meth:`SpoolIndex.tx`).
"""

from __future__ import annotations

import enum
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ct_triage.models.errors import TriageError
from ct_triage.models.sqlite_store import connect, ensure_columns, transaction

from .header import InstanceHeader

__all__ = ["SeriesState", "SpoolIndex"]

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

#: Columns that spools written before them lack (added on open).
_ADDED_COLUMNS = {"sender_done": "REAL", "aborted_at": "REAL"}


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


class SpoolIndex:
    """The index of one spool folder.

    Parameters
    ----------
    path
        The database file (``<root>/spool.db``); created with its schema if missing.

    Raises
    ------
    TriageError
        The file cannot be opened as the index.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        #: Serialises the threads that share the connection (re-entrant: reads inside a
        #: transaction of the same thread).
        self.lock = threading.RLock()
        try:
            self.db = connect(path, schema=_SCHEMA, busy_timeout_s=30.0, check_same_thread=False)
        except sqlite3.Error as exc:
            raise TriageError(f"spool index {path} cannot be opened: {exc}") from exc
        try:
            ensure_columns(self.db, "series", _ADDED_COLUMNS)
        except sqlite3.Error as exc:
            self.db.close()
            raise TriageError(f"spool index {path} cannot be opened: {exc}") from exc

    def close(self) -> None:
        """Close the connection."""
        with self.lock:
            self.db.close()

    @contextmanager
    def tx(self, *, sync: bool = True) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction under :attr:`lock`.

        ``sync=False`` commits without waiting for the disk (``synchronous=NORMAL`` for this
        one commit; see :meth:`record`). With WAL the commit is still atomic and in order, and
        the next synchronous commit makes it durable too.
        """
        with self.lock:
            if not sync:
                self.db.execute("PRAGMA synchronous=NORMAL")  # not allowed inside a transaction
            try:
                with transaction(self.db) as db:
                    yield db
            finally:
                if not sync:
                    self.db.execute("PRAGMA synchronous=FULL")

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """The connection under :attr:`lock`, for reads outside a transaction."""
        with self.lock:
            yield self.db

    # -- single rows -------------------------------------------------------------------------
    def instance_row(self, sop_uid: str) -> tuple[str, str] | None:
        """``(sha256, series_uid)`` of a recorded instance, ``None`` when unknown."""
        with self.read() as db:
            row = db.execute(
                "SELECT sha256, series_uid FROM instances WHERE sop_instance_uid = ?", (sop_uid,)
            ).fetchone()
        return None if row is None else (str(row[0]), str(row[1]))

    def series_row(self, series_uid: str) -> tuple[str, str, int] | None:
        """``(study_uid, state, generation)`` of a series, ``None`` when unknown."""
        with self.read() as db:
            row = db.execute(
                "SELECT study_uid, state, generation FROM series WHERE series_uid = ?",
                (series_uid,),
            ).fetchone()
        return None if row is None else (str(row[0]), str(row[1]), int(row[2]))

    @staticmethod
    def counts(db: sqlite3.Connection, series_uid: str) -> tuple[int, int | None]:
        """Instances present and expected (``None``: unknown) of a series, read with ``db``."""
        count = int(
            db.execute(
                "SELECT COUNT(*) FROM instances WHERE series_uid = ?", (series_uid,)
            ).fetchone()[0]
        )
        row = db.execute(
            "SELECT expected FROM expected_counts WHERE series_uid = ?", (series_uid,)
        ).fetchone()
        return count, (None if row is None else int(row[0]))

    # -- receive -----------------------------------------------------------------------------
    def record(
        self,
        hdr: InstanceHeader,
        digest: str,
        size: int,
        calling_ae: str,
        t: float,
        *,
        sync: bool = True,
    ) -> tuple[int, bool]:
        """Insert/replace the instance row and update its series; return (generation, late).

        ``sync=False`` is for an instance the index does not know yet, whose file is already
        durable: its commit does not wait for the disk (an fsync of the WAL, about 2-3 ms per
        instance here, the largest cost of the receive path after the file's own fsyncs). A
        power cut can lose the last such rows but never their files, and :func:`recover`
        records every file without a row at start-up, as a late instance where the series had
        completed. A *replaced* instance must commit with ``sync=True``: its file has a row, so
        recovery would not revisit it.

        Raises
        ------
        sqlite3.Error
            The index is not writable; nothing was recorded.
        """
        with self.tx(sync=sync) as db:
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

    # -- queries -----------------------------------------------------------------------------
    def study_series(self, study_uid: str) -> dict[str, SeriesState]:
        """Every series of a study, with its state."""
        with self.read() as db:
            rows = db.execute(
                "SELECT series_uid, state FROM series WHERE study_uid = ?", (study_uid,)
            ).fetchall()
        return {str(r[0]): SeriesState(r[1]) for r in rows}

    def instance_uids(self, series_uid: str) -> list[str]:
        """SOP Instance UIDs recorded for a series (sorted)."""
        with self.read() as db:
            rows = db.execute(
                "SELECT sop_instance_uid FROM instances WHERE series_uid = ? "
                "ORDER BY sop_instance_uid",
                (series_uid,),
            ).fetchall()
        return [str(r[0]) for r in rows]
