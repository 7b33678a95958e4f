"""The SQLite :class:`~ct_triage.server.jobs.model.JobStore` (one machine, several processes).

The database runs in WAL mode with ``synchronous=FULL`` (a job acknowledged by
:meth:`SqliteJobStore.submit` survives a power cut) and a busy timeout, so that the workers
of several processes on one machine share it. Every state change is one ``BEGIN IMMEDIATE``
transaction: SQLite takes the database's write lock at ``BEGIN``, so two claimants are
serialised and never take the same job. Connections come from a small pool of idle ones.

Times are stored as UNIX seconds (UTC, ``REAL``); payload and result as JSON text.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ct_triage.models.errors import TriageError
from ct_triage.server.jobs.model import (
    Batch,
    BatchProgress,
    Job,
    JobKind,
    JobNotFound,
    JobState,
    LeaseLost,
    RetryPolicy,
    progress_from,
    sort_worklist,
)

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    key TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    payload TEXT NOT NULL,
    batch_id TEXT,
    study_uid TEXT,
    accession TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    not_before REAL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    worker_id TEXT,
    lease_until REAL,
    priority INTEGER,
    result TEXT NOT NULL DEFAULT '{}',
    error TEXT
);
CREATE INDEX IF NOT EXISTS jobs_runnable ON jobs (state, not_before, created_at);
CREATE INDEX IF NOT EXISTS jobs_lease ON jobs (state, lease_until);
CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created_at REAL NOT NULL,
    created_by TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS batch_jobs (
    batch_id TEXT NOT NULL REFERENCES batches(id),
    job_id TEXT NOT NULL REFERENCES jobs(id),
    position INTEGER NOT NULL,
    PRIMARY KEY (batch_id, job_id)
);
CREATE INDEX IF NOT EXISTS batch_jobs_job ON batch_jobs (job_id);
"""

_COLUMNS = (
    "id, key, kind, state, payload, batch_id, study_uid, accession, attempts, max_attempts,"
    " not_before, created_at, updated_at, started_at, finished_at, worker_id, lease_until,"
    " priority, result, error"
)


def _dt(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(float(value), UTC)


def _job(row: Sequence[Any]) -> Job:
    return Job(
        id=str(row[0]),
        key=str(row[1]),
        kind=JobKind(row[2]),
        state=JobState(row[3]),
        payload=json.loads(row[4]),
        batch_id=row[5],
        study_uid=row[6],
        accession=row[7],
        attempts=int(row[8]),
        max_attempts=int(row[9]),
        not_before=_dt(row[10]),
        created_at=_dt(row[11]),
        updated_at=_dt(row[12]),
        started_at=_dt(row[13]),
        finished_at=_dt(row[14]),
        worker_id=row[15],
        lease_until=_dt(row[16]),
        priority=None if row[17] is None else int(row[17]),
        result=json.loads(row[18]) if row[18] else {},
        error=row[19],
    )


class SqliteJobStore:
    """Durable job queue in one SQLite file, safe across threads and processes.

    Parameters
    ----------
    path
        Database file (its folder is created).
    retry
        Attempts and backoff of failed jobs.
    busy_timeout_s
        How long a writer waits for another process's write lock.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        retry: RetryPolicy | None = None,
        busy_timeout_s: float = 30.0,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.retry = retry or RetryPolicy()
        self._busy_timeout_s = busy_timeout_s
        self._max_idle = 8
        self._idle: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._closed = False
        with self._use() as db:
            db.execute("PRAGMA journal_mode=WAL")
        for stmt in _SCHEMA.split(";"):
            if stmt.strip():
                with self._tx() as tx:
                    tx.execute(stmt)

    def __repr__(self) -> str:
        return f"SqliteJobStore({str(self.path)!r})"

    # -- connections -----------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(
            self.path,
            timeout=self._busy_timeout_s,
            isolation_level=None,
            check_same_thread=False,
        )
        db.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_s * 1000)}")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        return db

    @contextmanager
    def _use(self) -> Iterator[sqlite3.Connection]:
        """A connection from the pool of idle ones (short-lived threads share them)."""
        with self._conns_lock:
            if self._closed:
                raise TriageError("job store is closed")
            db = self._idle.pop() if self._idle else None
        if db is None:
            db = self._connect()
        try:
            yield db
        finally:
            with self._conns_lock:
                keep = not self._closed and len(self._idle) < self._max_idle
                if keep:
                    self._idle.append(db)
            if not keep:
                db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction (the write lock is taken at the start)."""
        with self._use() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def close(self) -> None:
        """Close every connection (idempotent)."""
        with self._conns_lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for db in idle:
            with contextlib.suppress(sqlite3.Error):  # closing is best effort
                db.close()

    # -- jobs ------------------------------------------------------------------------------
    def _get(self, db: sqlite3.Connection, job_id: str) -> Job | None:
        row = db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else _job(row)

    def _link(self, db: sqlite3.Connection, batch_id: str, job_id: str) -> None:
        pos = db.execute(
            "SELECT COALESCE(MAX(position), -1) + 1 FROM batch_jobs WHERE batch_id = ?",
            (batch_id,),
        ).fetchone()[0]
        db.execute(
            "INSERT OR IGNORE INTO batch_jobs (batch_id, job_id, position) VALUES (?, ?, ?)",
            (batch_id, job_id, int(pos)),
        )

    def submit(
        self,
        *,
        key: str,
        kind: JobKind,
        payload: dict[str, Any],
        batch_id: str | None = None,
        study_uid: str | None = None,
        accession: str | None = None,
    ) -> tuple[Job, bool]:
        """Create a job, or return the existing job with the same ``key`` (``created`` False)."""
        now = time.time()
        job_id = uuid.uuid4().hex
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO jobs (id, key, kind, state, payload, batch_id, study_uid, accession,"
                " max_attempts, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(key) DO NOTHING",
                (
                    job_id,
                    key,
                    str(kind),
                    str(JobState.QUEUED),
                    json.dumps(payload),
                    batch_id,
                    study_uid,
                    accession,
                    self.retry.max_attempts,
                    now,
                    now,
                ),
            )
            created = cur.rowcount == 1
            row = db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE key = ?", (key,)).fetchone()
            job = _job(row)
            if (
                batch_id is not None
                and db.execute("SELECT 1 FROM batches WHERE id = ?", (batch_id,)).fetchone()
            ):
                self._link(db, batch_id, job.id)
        if created:
            logger.info("job %s queued (%s)", job.id, kind)
        return job, created

    def find_by_key(self, key: str) -> Job | None:
        """The job with this ``key``, or None."""
        with self._use() as db:
            row = db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE key = ?", (key,)).fetchone()
        return None if row is None else _job(row)

    def claim(self, worker_id: str, *, lease_s: float) -> Job | None:
        """Atomically take the oldest runnable queued job (``not_before`` passed), or None."""
        now = time.time()
        with self._tx() as db:
            row = db.execute(
                "SELECT id FROM jobs WHERE state = ? AND (not_before IS NULL OR not_before <= ?)"
                " ORDER BY created_at, seq LIMIT 1",
                (str(JobState.QUEUED), now),
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET state = ?, worker_id = ?, lease_until = ?,"
                " attempts = attempts + 1, started_at = COALESCE(started_at, ?),"
                " updated_at = ? WHERE id = ?",
                (str(JobState.RUNNING), worker_id, now + lease_s, now, now, row[0]),
            )
            job = self._get(db, str(row[0]))
        assert job is not None
        return job

    def _owned(self, db: sqlite3.Connection, job_id: str, worker_id: str) -> Job:
        job = self._get(db, job_id)
        if job is None:
            raise JobNotFound(f"job {job_id} not found")
        if job.state is not JobState.RUNNING or job.worker_id != worker_id:
            raise LeaseLost(
                f"job {job_id} is no longer held by worker {worker_id} (state {job.state})"
            )
        return job

    def heartbeat(self, job_id: str, worker_id: str, *, lease_s: float) -> None:
        """Extend the lease of a running job held by ``worker_id``."""
        now = time.time()
        with self._tx() as db:
            self._owned(db, job_id, worker_id)
            db.execute(
                "UPDATE jobs SET lease_until = ?, updated_at = ? WHERE id = ?",
                (now + lease_s, now, job_id),
            )

    def _finish(
        self,
        job_id: str,
        worker_id: str,
        state: JobState,
        *,
        result: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> Job:
        now = time.time()
        with self._tx() as db:
            self._owned(db, job_id, worker_id)
            priority = (result or {}).get("priority")
            db.execute(
                "UPDATE jobs SET state = ?, finished_at = ?, updated_at = ?, lease_until = NULL,"
                " result = ?, priority = ?, error = ? WHERE id = ?",
                (
                    str(state),
                    now,
                    now,
                    json.dumps(result or {}),
                    priority if isinstance(priority, int) else None,
                    error,
                    job_id,
                ),
            )
            job = self._get(db, job_id)
        assert job is not None
        return job

    def complete(self, job_id: str, worker_id: str, result: dict[str, Any]) -> Job:
        """Record the result of a job (final)."""
        return self._finish(job_id, worker_id, JobState.DONE, result=result)

    def decline(self, job_id: str, worker_id: str, reason: str) -> Job:
        """Record that the study is not a usable chest CT (final, never retried)."""
        return self._finish(job_id, worker_id, JobState.DECLINED, error=reason)

    def fail(self, job_id: str, worker_id: str, error: str, *, retry: bool) -> Job:
        """Record a failure; re-queue with backoff while attempts remain and ``retry``."""
        now = time.time()
        with self._tx() as db:
            job = self._owned(db, job_id, worker_id)
            if retry and job.attempts < job.max_attempts:
                db.execute(
                    "UPDATE jobs SET state = ?, not_before = ?, worker_id = NULL,"
                    " lease_until = NULL, updated_at = ?, error = ? WHERE id = ?",
                    (
                        str(JobState.QUEUED),
                        now + self.retry.delay_s(job.attempts),
                        now,
                        error,
                        job_id,
                    ),
                )
            else:
                db.execute(
                    "UPDATE jobs SET state = ?, finished_at = ?, lease_until = NULL,"
                    " updated_at = ?, error = ? WHERE id = ?",
                    (str(JobState.FAILED), now, now, error, job_id),
                )
            out = self._get(db, job_id)
        assert out is not None
        return out

    def requeue_expired(self) -> int:
        """Queue again the running jobs whose lease expired; fail those out of attempts."""
        now = time.time()
        with self._tx() as db:
            rows = db.execute(
                "SELECT id, attempts, max_attempts, worker_id FROM jobs"
                " WHERE state = ? AND lease_until < ?",
                (str(JobState.RUNNING), now),
            ).fetchall()
            for job_id, attempts, max_attempts, worker in rows:
                why = f"worker {worker} died (lease expired) during attempt {attempts}"
                if int(attempts) >= int(max_attempts):
                    db.execute(
                        "UPDATE jobs SET state = ?, finished_at = ?, lease_until = NULL,"
                        " updated_at = ?, error = ? WHERE id = ?",
                        (str(JobState.FAILED), now, now, why, job_id),
                    )
                else:
                    db.execute(
                        "UPDATE jobs SET state = ?, worker_id = NULL, lease_until = NULL,"
                        " not_before = NULL, updated_at = ?, error = ? WHERE id = ?",
                        (str(JobState.QUEUED), now, why, job_id),
                    )
        for job_id, attempts, _max, worker in rows:
            logger.warning(
                "job %s: lease of worker %s expired in attempt %d", job_id, worker, attempts
            )
        return len(rows)

    def get(self, job_id: str) -> Job | None:
        """One job by id, or None."""
        with self._use() as db:
            return self._get(db, job_id)

    def list_jobs(
        self,
        *,
        batch_id: str | None = None,
        states: Sequence[JobState] | None = None,
        since: datetime | None = None,
        limit: int = 500,
    ) -> list[Job]:
        """Jobs, newest first (in batch order when ``batch_id`` is given)."""
        where: list[str] = []
        args: list[Any] = []
        if batch_id is not None:
            sql = f"SELECT {', '.join('j.' + c.strip() for c in _COLUMNS.split(','))} FROM jobs j"
            sql += " JOIN batch_jobs b ON b.job_id = j.id"
            where.append("b.batch_id = ?")
            args.append(batch_id)
            order = "b.position"
        else:
            sql = f"SELECT {_COLUMNS} FROM jobs j"
            order = "j.created_at DESC, j.seq DESC"
        if states:
            where.append(f"j.state IN ({', '.join('?' for _ in states)})")
            args.extend(str(s) for s in states)
        if since is not None:
            where.append("j.updated_at >= ?")
            args.append(since.timestamp())
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY {order} LIMIT ?"
        args.append(int(limit))
        with self._use() as db:
            return [_job(r) for r in db.execute(sql, args).fetchall()]

    def worklist(self, *, batch_id: str | None = None, since: datetime | None = None) -> list[Job]:
        """Jobs sorted for reading: done by triage priority (then severity), then the rest."""
        return sort_worklist(self.list_jobs(batch_id=batch_id, since=since, limit=100_000))

    # -- batches ---------------------------------------------------------------------------
    def create_batch(self, *, name: str, created_by: str, job_ids: Sequence[str]) -> Batch:
        """Group jobs into a named batch (a job may belong to several batches)."""
        batch_id = uuid.uuid4().hex
        now = time.time()
        with self._tx() as db:
            db.execute(
                "INSERT INTO batches (id, name, created_at, created_by) VALUES (?, ?, ?, ?)",
                (batch_id, name, now, created_by),
            )
            for job_id in job_ids:
                if self._get(db, job_id) is None:
                    raise JobNotFound(f"job {job_id} not found")
                self._link(db, batch_id, job_id)
                db.execute(
                    "UPDATE jobs SET batch_id = ? WHERE id = ? AND batch_id IS NULL",
                    (batch_id, job_id),
                )
        logger.info("batch %s created with %d job(s)", batch_id, len(job_ids))
        batch = self.get_batch(batch_id)
        assert batch is not None
        return batch

    def get_batch(self, batch_id: str) -> Batch | None:
        """One batch by id, or None."""
        with self._use() as db:
            row = db.execute(
                "SELECT id, name, created_at, created_by FROM batches WHERE id = ?", (batch_id,)
            ).fetchone()
            if row is None:
                return None
            ids = db.execute(
                "SELECT job_id FROM batch_jobs WHERE batch_id = ? ORDER BY position", (batch_id,)
            ).fetchall()
        created = _dt(row[2])
        assert created is not None
        return Batch(
            id=str(row[0]),
            name=str(row[1]),
            created_at=created,
            created_by=str(row[3]),
            job_ids=tuple(str(r[0]) for r in ids),
        )

    def batch_progress(self, batch_id: str) -> BatchProgress:
        """Counts, rate (finished per minute since the first start) and ETA of a batch."""
        with self._use() as db:
            if db.execute("SELECT 1 FROM batches WHERE id = ?", (batch_id,)).fetchone() is None:
                raise JobNotFound(f"batch {batch_id} not found")
            rows = db.execute(
                "SELECT j.state, COUNT(*), MIN(j.started_at) FROM jobs j"
                " JOIN batch_jobs b ON b.job_id = j.id WHERE b.batch_id = ? GROUP BY j.state",
                (batch_id,),
            ).fetchall()
        counts = {JobState(r[0]): int(r[1]) for r in rows}
        starts = [float(r[2]) for r in rows if r[2] is not None]
        return progress_from(batch_id, counts, _dt(min(starts)) if starts else None)

    def counts_by_state(self) -> dict[JobState, int]:
        """How many jobs are in each state (every state present, zero included)."""
        with self._use() as db:
            rows = db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        out = dict.fromkeys(JobState, 0)
        out.update({JobState(r[0]): int(r[1]) for r in rows})
        return out


__all__ = ["SqliteJobStore"]
