"""The bridge's own durable state: ``bridge.db`` under the data folder (SQLite).

* ``seen_studies``: the studies that pull mode retrieved (the poller never retrieves one
  twice);
* ``kv``: the poller's watermark (the date of its last poll);
* ``retractions``: superseded results to delete from the PACS once their successors are
  delivered (see :meth:`ct_triage.server.bridge.Bridge.retract_due`).

The spool (:mod:`ct_triage.dicom_bridge.spool`) and the outbox
(:mod:`ct_triage.dicom_bridge.deliver`) keep their own state.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from ct_triage.models import sqlite_store

__all__ = ["BridgeState", "PendingRetraction"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS seen_studies (study_uid TEXT PRIMARY KEY, seen REAL);
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS retractions (
    job_ref         TEXT NOT NULL,
    target          TEXT NOT NULL,
    study_uid       TEXT NOT NULL,
    series_uids     TEXT NOT NULL,
    delivery_ids    TEXT NOT NULL,
    state           TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error      TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (job_ref, target)
);
"""


@dataclass(frozen=True, slots=True)
class PendingRetraction:
    """A superseded result's series to delete from one target, once ``delivery_ids`` are
    delivered."""

    job_ref: str
    target: str
    study_uid: str
    series_uids: list[str]
    delivery_ids: list[str]
    attempts: int


class BridgeState:
    """``bridge.db``: seen studies, the poll watermark and the retraction queue.

    Opened with :func:`ct_triage.models.sqlite_store.connect` (WAL, ``synchronous=FULL``,
    autocommit); safe to share between threads (one connection, one lock).
    """

    def __init__(self, path: Path) -> None:
        self._db = sqlite_store.connect(path, schema=_SCHEMA, check_same_thread=False)
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    # -- pull mode -----------------------------------------------------------------------
    def seen(self, study_uid: str) -> bool:
        """Whether pull mode retrieved this study before."""
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM seen_studies WHERE study_uid = ?", (study_uid,)
            ).fetchone()
        return row is not None

    def mark_seen(self, study_uid: str) -> None:
        """Record that pull mode retrieved this study."""
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO seen_studies(study_uid, seen) VALUES(?, ?)",
                (study_uid, time.time()),
            )

    def watermark(self) -> date | None:
        """The date of the poller's last poll (``None`` before the first)."""
        with self._lock:
            row = self._db.execute("SELECT value FROM kv WHERE key = 'watermark'").fetchone()
        return date.fromisoformat(row[0]) if row else None

    def set_watermark(self, day: date) -> None:
        """Record the date of a poll."""
        with self._lock:
            self._db.execute(
                "INSERT INTO kv(key, value) VALUES('watermark', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (day.isoformat(),),
            )

    # -- retractions ---------------------------------------------------------------------
    def add_retractions(
        self,
        job_ref: str,
        targets: list[str],
        study_uid: str,
        series_uids: list[str],
        delivery_ids: list[str],
        now: float,
    ) -> None:
        """Queue one retraction per target (a second call for the same ``job_ref`` adds
        nothing)."""
        with self._lock, sqlite_store.transaction(self._db):
            for target in targets:
                self._db.execute(
                    "INSERT OR IGNORE INTO retractions (job_ref, target, study_uid, series_uids,"
                    " delivery_ids, state, next_attempt_at) VALUES (?, ?, ?, ?, ?, 'pending', ?)",
                    (
                        job_ref,
                        target,
                        study_uid,
                        json.dumps(series_uids),
                        json.dumps(delivery_ids),
                        now,
                    ),
                )

    def due_retractions(self, now: float) -> list[PendingRetraction]:
        """The pending retractions whose next attempt is due."""
        with self._lock:
            rows = self._db.execute(
                "SELECT job_ref, target, study_uid, series_uids, delivery_ids, attempts "
                "FROM retractions WHERE state = 'pending' AND next_attempt_at <= ?",
                (now,),
            ).fetchall()
        return [
            PendingRetraction(
                str(job_ref),
                str(target),
                str(study_uid),
                json.loads(series),
                json.loads(ids),
                int(attempts),
            )
            for job_ref, target, study_uid, series, ids, attempts in rows
        ]

    def record_attempt(
        self, job_ref: str, target: str, *, state: str, next_attempt_at: float, error: str
    ) -> None:
        """Record one attempt of a retraction: ``state`` is pending (retry), done or dead."""
        with self._lock:
            self._db.execute(
                "UPDATE retractions SET state = ?, attempts = attempts + 1, "
                "next_attempt_at = ?, last_error = ? WHERE job_ref = ? AND target = ?",
                (state, next_attempt_at, error, job_ref, target),
            )
