"""The PostgreSQL :class:`~ct_triage.server.jobs.model.JobStore` (many workers, many machines).

psycopg 3, a small pool of connections (a broken one is replaced). A claim is one transaction:
``SELECT ... FOR UPDATE SKIP LOCKED`` picks the oldest runnable queued row that no other
transaction holds, and the same statement marks it running, so concurrent workers take
different jobs without waiting on each other. Times are ``timestamptz`` from the database's
clock (``clock_timestamp()``), so workers on machines with skewed clocks agree on leases.
The schema is created idempotently under a transaction-level advisory lock.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
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

try:  # optional dependency: only this backend needs it
    import psycopg
    from psycopg.rows import dict_row
    from psycopg.types.json import Jsonb
except ImportError:  # pragma: no cover - reported by is_available()
    psycopg = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

#: Arbitrary constant identifying the schema-creation advisory lock.
_SCHEMA_LOCK = 0x43545452

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ct_triage_jobs (
    seq BIGSERIAL UNIQUE,
    id TEXT PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    payload JSONB NOT NULL,
    batch_id TEXT,
    study_uid TEXT,
    accession TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    not_before TIMESTAMPTZ,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    started_at TIMESTAMPTZ,
    finished_at TIMESTAMPTZ,
    worker_id TEXT,
    lease_until TIMESTAMPTZ,
    priority INTEGER,
    result JSONB NOT NULL DEFAULT '{}'::jsonb,
    error TEXT
);
CREATE INDEX IF NOT EXISTS ct_triage_jobs_runnable
    ON ct_triage_jobs (state, not_before, created_at);
CREATE INDEX IF NOT EXISTS ct_triage_jobs_lease ON ct_triage_jobs (state, lease_until);
CREATE TABLE IF NOT EXISTS ct_triage_batches (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    created_by TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS ct_triage_batch_jobs (
    batch_id TEXT NOT NULL REFERENCES ct_triage_batches(id),
    job_id TEXT NOT NULL REFERENCES ct_triage_jobs(id),
    position INTEGER NOT NULL,
    PRIMARY KEY (batch_id, job_id)
);
CREATE INDEX IF NOT EXISTS ct_triage_batch_jobs_job ON ct_triage_batch_jobs (job_id)
"""

_COLUMNS = (
    "id, key, kind, state, payload, batch_id, study_uid, accession, attempts, max_attempts,"
    " not_before, created_at, updated_at, started_at, finished_at, worker_id, lease_until,"
    " priority, result, error"
)
_J_COLUMNS = ", ".join("j." + c.strip() for c in _COLUMNS.split(","))


def is_available() -> str | None:
    """``None`` when psycopg is installed, else what to install."""
    if psycopg is None:
        return "the PostgreSQL job store needs psycopg: pip install 'psycopg[binary]>=3.3,<3.4'"
    return None


def _job(row: dict[str, Any]) -> Job:
    return Job(
        id=row["id"],
        key=row["key"],
        kind=JobKind(row["kind"]),
        state=JobState(row["state"]),
        payload=dict(row["payload"]),
        batch_id=row["batch_id"],
        study_uid=row["study_uid"],
        accession=row["accession"],
        attempts=int(row["attempts"]),
        max_attempts=int(row["max_attempts"]),
        not_before=row["not_before"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        worker_id=row["worker_id"],
        lease_until=row["lease_until"],
        priority=row["priority"],
        result=dict(row["result"] or {}),
        error=row["error"],
    )


class PostgresJobStore:
    """Durable job queue in PostgreSQL (``SELECT ... FOR UPDATE SKIP LOCKED`` claims).

    Parameters
    ----------
    dsn
        libpq connection string or ``postgresql://`` URL.
    retry
        Attempts and backoff of failed jobs.
    connect_timeout_s
        Timeout of each connection attempt.
    max_idle
        Idle connections kept open for reuse.

    Raises
    ------
    TriageError
        psycopg is missing, or the database cannot be reached or its schema created.
    """

    def __init__(
        self,
        dsn: str,
        *,
        retry: RetryPolicy | None = None,
        connect_timeout_s: float = 10.0,
        max_idle: int = 8,
    ) -> None:
        missing = is_available()
        if missing:
            raise TriageError(missing)
        self._dsn = dsn
        self.retry = retry or RetryPolicy()
        self._connect_timeout_s = connect_timeout_s
        self._max_idle = max_idle
        self._idle: list[psycopg.Connection[dict[str, Any]]] = []
        self._conns_lock = threading.Lock()
        self._closed = False
        with self._tx() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    cur.execute(stmt)

    def __repr__(self) -> str:
        return "PostgresJobStore(<dsn>)"  # the DSN may hold a password

    # -- connections -----------------------------------------------------------------------
    def _connect(self) -> psycopg.Connection[dict[str, Any]]:
        try:
            return psycopg.connect(
                self._dsn,
                autocommit=True,
                row_factory=dict_row,
                connect_timeout=max(1, int(self._connect_timeout_s)),
                application_name="ct-triage",
            )
        except psycopg.OperationalError as exc:
            raise TriageError(f"PostgreSQL job store unreachable: {exc}") from exc

    @contextmanager
    def _tx(self) -> Iterator[psycopg.Cursor[dict[str, Any]]]:
        """One transaction on a pooled connection; database errors become TriageError.

        Connections are kept in a small pool of idle ones (at most ``max_idle``), so that
        short-lived threads (heartbeats) do not each leave a connection open.
        """
        with self._conns_lock:
            if self._closed:
                raise TriageError("job store is closed")
            conn = self._idle.pop() if self._idle else None
        if conn is None or conn.closed or conn.broken:
            conn = self._connect()
        try:
            with conn.transaction(), conn.cursor() as cur:
                yield cur
        except psycopg.Error as exc:
            raise TriageError(f"PostgreSQL job store error: {exc}") from exc
        finally:
            with self._conns_lock:
                keep = not self._closed and not conn.broken and len(self._idle) < self._max_idle
                if keep:
                    self._idle.append(conn)
            if not keep:
                conn.close()

    def close(self) -> None:
        """Close every connection (idempotent)."""
        with self._conns_lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    # -- jobs ------------------------------------------------------------------------------
    @staticmethod
    def _get(cur: psycopg.Cursor[dict[str, Any]], job_id: str, *, lock: bool = False) -> Job | None:
        cur.execute(
            f"SELECT {_COLUMNS} FROM ct_triage_jobs WHERE id = %s"
            + (" FOR UPDATE" if lock else ""),
            (job_id,),
        )
        row = cur.fetchone()
        return None if row is None else _job(row)

    @staticmethod
    def _link(cur: psycopg.Cursor[dict[str, Any]], batch_id: str, job_id: str) -> None:
        cur.execute(
            "INSERT INTO ct_triage_batch_jobs (batch_id, job_id, position)"
            " SELECT %s, %s, COALESCE(MAX(position), -1) + 1 FROM ct_triage_batch_jobs"
            " WHERE batch_id = %s ON CONFLICT DO NOTHING",
            (batch_id, job_id, batch_id),
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
        with self._tx() as cur:
            cur.execute(
                "INSERT INTO ct_triage_jobs (id, key, kind, state, payload, batch_id, study_uid,"
                " accession, max_attempts, created_at, updated_at)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, clock_timestamp(),"
                " clock_timestamp()) ON CONFLICT (key) DO NOTHING",
                (
                    uuid.uuid4().hex,
                    key,
                    str(kind),
                    str(JobState.QUEUED),
                    Jsonb(payload),
                    batch_id,
                    study_uid,
                    accession,
                    self.retry.max_attempts,
                ),
            )
            created = cur.rowcount == 1
            cur.execute(f"SELECT {_COLUMNS} FROM ct_triage_jobs WHERE key = %s", (key,))
            row = cur.fetchone()
            assert row is not None
            job = _job(row)
            if batch_id is not None:
                cur.execute("SELECT 1 FROM ct_triage_batches WHERE id = %s", (batch_id,))
                if cur.fetchone() is not None:
                    self._link(cur, batch_id, job.id)
        if created:
            logger.info("job %s queued (%s)", job.id, kind)
        return job, created

    def find_by_key(self, key: str) -> Job | None:
        """The job with this ``key``, or None."""
        with self._tx() as cur:
            cur.execute(f"SELECT {_COLUMNS} FROM ct_triage_jobs WHERE key = %s", (key,))
            row = cur.fetchone()
        return None if row is None else _job(row)

    def claim(self, worker_id: str, *, lease_s: float) -> Job | None:
        """Atomically take the oldest runnable queued job (``not_before`` passed), or None."""
        with self._tx() as cur:
            cur.execute(
                "UPDATE ct_triage_jobs SET state = %s, worker_id = %s,"
                " lease_until = clock_timestamp() + make_interval(secs => %s),"
                " attempts = attempts + 1, started_at = COALESCE(started_at, clock_timestamp()),"
                " updated_at = clock_timestamp()"
                " WHERE id = (SELECT id FROM ct_triage_jobs WHERE state = %s"
                " AND (not_before IS NULL OR not_before <= clock_timestamp())"
                " ORDER BY created_at, seq LIMIT 1 FOR UPDATE SKIP LOCKED)"
                f" RETURNING {_COLUMNS}",
                (str(JobState.RUNNING), worker_id, float(lease_s), str(JobState.QUEUED)),
            )
            row = cur.fetchone()
        return None if row is None else _job(row)

    def _owned(self, cur: psycopg.Cursor[dict[str, Any]], job_id: str, worker_id: str) -> Job:
        job = self._get(cur, job_id, lock=True)
        if job is None:
            raise JobNotFound(f"job {job_id} not found")
        if job.state is not JobState.RUNNING or job.worker_id != worker_id:
            raise LeaseLost(
                f"job {job_id} is no longer held by worker {worker_id} (state {job.state})"
            )
        return job

    def heartbeat(self, job_id: str, worker_id: str, *, lease_s: float) -> None:
        """Extend the lease of a running job held by ``worker_id``."""
        with self._tx() as cur:
            self._owned(cur, job_id, worker_id)
            cur.execute(
                "UPDATE ct_triage_jobs SET lease_until = clock_timestamp()"
                " + make_interval(secs => %s), updated_at = clock_timestamp() WHERE id = %s",
                (float(lease_s), job_id),
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
        priority = (result or {}).get("priority")
        with self._tx() as cur:
            self._owned(cur, job_id, worker_id)
            cur.execute(
                "UPDATE ct_triage_jobs SET state = %s, finished_at = clock_timestamp(),"
                " updated_at = clock_timestamp(), lease_until = NULL, result = %s,"
                f" priority = %s, error = %s WHERE id = %s RETURNING {_COLUMNS}",
                (
                    str(state),
                    Jsonb(result or {}),
                    priority if isinstance(priority, int) else None,
                    error,
                    job_id,
                ),
            )
            row = cur.fetchone()
        assert row is not None
        return _job(row)

    def complete(self, job_id: str, worker_id: str, result: dict[str, Any]) -> Job:
        """Record the result of a job (final)."""
        return self._finish(job_id, worker_id, JobState.DONE, result=result)

    def decline(self, job_id: str, worker_id: str, reason: str) -> Job:
        """Record that the study is not a usable chest CT (final, never retried)."""
        return self._finish(job_id, worker_id, JobState.DECLINED, error=reason)

    def fail(self, job_id: str, worker_id: str, error: str, *, retry: bool) -> Job:
        """Record a failure; re-queue with backoff while attempts remain and ``retry``."""
        with self._tx() as cur:
            job = self._owned(cur, job_id, worker_id)
            if retry and job.attempts < job.max_attempts:
                cur.execute(
                    "UPDATE ct_triage_jobs SET state = %s, not_before = clock_timestamp()"
                    " + make_interval(secs => %s), worker_id = NULL, lease_until = NULL,"
                    f" updated_at = clock_timestamp(), error = %s WHERE id = %s"
                    f" RETURNING {_COLUMNS}",
                    (str(JobState.QUEUED), self.retry.delay_s(job.attempts), error, job_id),
                )
            else:
                cur.execute(
                    "UPDATE ct_triage_jobs SET state = %s, finished_at = clock_timestamp(),"
                    " lease_until = NULL, updated_at = clock_timestamp(), error = %s"
                    f" WHERE id = %s RETURNING {_COLUMNS}",
                    (str(JobState.FAILED), error, job_id),
                )
            row = cur.fetchone()
        assert row is not None
        return _job(row)

    def requeue_expired(self) -> int:
        """Queue again the running jobs whose lease expired; fail those out of attempts."""
        with self._tx() as cur:
            cur.execute(
                "SELECT id, attempts, max_attempts, worker_id FROM ct_triage_jobs"
                " WHERE state = %s AND lease_until < clock_timestamp() FOR UPDATE SKIP LOCKED",
                (str(JobState.RUNNING),),
            )
            rows = cur.fetchall()
            for r in rows:
                why = f"worker {r['worker_id']} died (lease expired) during attempt {r['attempts']}"
                if int(r["attempts"]) >= int(r["max_attempts"]):
                    cur.execute(
                        "UPDATE ct_triage_jobs SET state = %s, finished_at = clock_timestamp(),"
                        " lease_until = NULL, updated_at = clock_timestamp(), error = %s"
                        " WHERE id = %s",
                        (str(JobState.FAILED), why, r["id"]),
                    )
                else:
                    cur.execute(
                        "UPDATE ct_triage_jobs SET state = %s, worker_id = NULL,"
                        " lease_until = NULL, not_before = NULL,"
                        " updated_at = clock_timestamp(), error = %s WHERE id = %s",
                        (str(JobState.QUEUED), why, r["id"]),
                    )
        for r in rows:
            logger.warning(
                "job %s: lease of worker %s expired in attempt %d",
                r["id"],
                r["worker_id"],
                r["attempts"],
            )
        return len(rows)

    def get(self, job_id: str) -> Job | None:
        """One job by id, or None."""
        with self._tx() as cur:
            return self._get(cur, job_id)

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
        sql = f"SELECT {_J_COLUMNS} FROM ct_triage_jobs j"
        if batch_id is not None:
            sql += " JOIN ct_triage_batch_jobs b ON b.job_id = j.id"
            where.append("b.batch_id = %s")
            args.append(batch_id)
            order = "b.position"
        else:
            order = "j.created_at DESC, j.seq DESC"
        if states:
            where.append("j.state = ANY(%s)")
            args.append([str(s) for s in states])
        if since is not None:
            where.append("j.updated_at >= %s")
            args.append(since)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY {order} LIMIT %s"
        args.append(int(limit))
        with self._tx() as cur:
            cur.execute(sql, args)
            return [_job(r) for r in cur.fetchall()]

    def worklist(self, *, batch_id: str | None = None, since: datetime | None = None) -> list[Job]:
        """Jobs sorted for reading: done by triage priority (then severity), then the rest."""
        return sort_worklist(self.list_jobs(batch_id=batch_id, since=since, limit=100_000))

    # -- batches ---------------------------------------------------------------------------
    def create_batch(self, *, name: str, created_by: str, job_ids: Sequence[str]) -> Batch:
        """Group jobs into a named batch (a job may belong to several batches)."""
        batch_id = uuid.uuid4().hex
        with self._tx() as cur:
            cur.execute(
                "INSERT INTO ct_triage_batches (id, name, created_at, created_by)"
                " VALUES (%s, %s, clock_timestamp(), %s)",
                (batch_id, name, created_by),
            )
            for job_id in job_ids:
                if self._get(cur, job_id) is None:
                    raise JobNotFound(f"job {job_id} not found")
                self._link(cur, batch_id, job_id)
                cur.execute(
                    "UPDATE ct_triage_jobs SET batch_id = %s WHERE id = %s AND batch_id IS NULL",
                    (batch_id, job_id),
                )
        logger.info("batch %s created with %d job(s)", batch_id, len(job_ids))
        batch = self.get_batch(batch_id)
        assert batch is not None
        return batch

    def get_batch(self, batch_id: str) -> Batch | None:
        """One batch by id, or None."""
        with self._tx() as cur:
            cur.execute(
                "SELECT id, name, created_at, created_by FROM ct_triage_batches WHERE id = %s",
                (batch_id,),
            )
            row = cur.fetchone()
            if row is None:
                return None
            cur.execute(
                "SELECT job_id FROM ct_triage_batch_jobs WHERE batch_id = %s ORDER BY position",
                (batch_id,),
            )
            ids = tuple(r["job_id"] for r in cur.fetchall())
        return Batch(
            id=row["id"],
            name=row["name"],
            created_at=row["created_at"],
            created_by=row["created_by"],
            job_ids=ids,
        )

    def batch_progress(self, batch_id: str) -> BatchProgress:
        """Counts, rate (finished per minute since the first start) and ETA of a batch."""
        with self._tx() as cur:
            cur.execute("SELECT clock_timestamp() AS now")
            now_row = cur.fetchone()
            assert now_row is not None
            cur.execute("SELECT 1 FROM ct_triage_batches WHERE id = %s", (batch_id,))
            if cur.fetchone() is None:
                raise JobNotFound(f"batch {batch_id} not found")
            cur.execute(
                "SELECT j.state, COUNT(*) AS n, MIN(j.started_at) AS first FROM ct_triage_jobs j"
                " JOIN ct_triage_batch_jobs b ON b.job_id = j.id WHERE b.batch_id = %s"
                " GROUP BY j.state",
                (batch_id,),
            )
            rows = cur.fetchall()
        counts = {JobState(r["state"]): int(r["n"]) for r in rows}
        starts = [r["first"] for r in rows if r["first"] is not None]
        return progress_from(batch_id, counts, min(starts) if starts else None, now_row["now"])

    def counts_by_state(self) -> dict[JobState, int]:
        """How many jobs are in each state (every state present, zero included)."""
        with self._tx() as cur:
            cur.execute("SELECT state, COUNT(*) AS n FROM ct_triage_jobs GROUP BY state")
            rows = cur.fetchall()
        out = dict.fromkeys(JobState, 0)
        out.update({JobState(r["state"]): int(r["n"]) for r in rows})
        return out


__all__ = ["PostgresJobStore", "is_available"]
