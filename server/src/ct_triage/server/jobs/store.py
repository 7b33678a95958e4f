"""The :class:`~ct_triage.server.jobs.model.JobStore`: one implementation, SQLite or PostgreSQL.

SQLAlchemy Core writes every query once; what differs between the two databases is said in
a few places, each marked *dialect*:

- **SQLite** (one machine, several processes): WAL mode, ``synchronous=FULL`` (a job
  acknowledged by :meth:`SqlJobStore.submit` survives a power cut) and a busy timeout. Every
  state change is one ``BEGIN IMMEDIATE`` transaction: SQLite takes the write lock at
  ``BEGIN``, so two claimants are serialised and never take the same job. Times are UNIX
  seconds (``REAL``) from this machine's clock, payload and result JSON text; the tables are
  ``jobs``, ``batches`` and ``batch_jobs``.
- **PostgreSQL** (many workers, many machines; psycopg 3): a claim is one statement whose
  ``SELECT ... FOR UPDATE SKIP LOCKED`` picks the oldest runnable row that no other
  transaction holds, so concurrent workers take different jobs without waiting on each other.
  Times are ``timestamptz`` from the database's clock (``clock_timestamp()``), so workers on
  machines with skewed clocks agree on leases; payload and result are ``jsonb``; the tables
  are prefixed ``ct_triage_`` and the schema is created under an advisory lock.

A claim also records the claiming process as the job's *lease owner*
(:mod:`~ct_triage.server.jobs.owner`): :meth:`SqlJobStore.release_dead_leases`, called when a
worker starts, queues again at once the jobs of this host's processes that are gone, instead
of waiting for their leases to expire. Databases of the previous version (no
``lease_owner`` column) gain the column when opened.
"""

from __future__ import annotations

import importlib.util
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

from sqlalchemy import (
    DateTime,
    Engine,
    Interval,
    create_engine,
    event,
    func,
    literal,
    or_,
    select,
    type_coerce,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.sql import ColumnElement, Executable

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
from ct_triage.server.jobs.owner import LeaseOwner, current_owner
from ct_triage.server.jobs.schema import UtcTime, create_or_migrate, job_from_row, tables

logger = logging.getLogger(__name__)

#: Arbitrary constant identifying PostgreSQL's schema-creation advisory lock.
_SCHEMA_LOCK = 0x43545452
#: Execution option of a read-only transaction (SQLite: ``BEGIN``, not ``BEGIN IMMEDIATE``).
_READ = "ct_triage_read"


def is_available() -> str | None:
    """``None`` when psycopg (the PostgreSQL driver) is installed, else what to install."""
    if importlib.util.find_spec("psycopg") is None:
        return "the PostgreSQL job store needs psycopg: pip install 'psycopg[binary]>=3.3,<3.4'"
    return None


class _Held(NamedTuple):
    """A running job's lease, as :meth:`SqlJobStore._release` judges it."""

    id: str
    attempts: int
    max_attempts: int
    worker_id: str | None
    lease_owner: str | None


class SqlJobStore:
    """Durable job queue in SQLite or PostgreSQL, safe across threads, processes, machines.

    Open one with :meth:`sqlite` or :meth:`postgresql` (or
    :func:`~ct_triage.server.jobs.factory.create_job_store` from a URL).

    Parameters
    ----------
    engine
        The database; its dialect decides the few differences (see the module).
    retry
        Attempts and backoff of failed jobs.
    """

    def __init__(self, engine: Engine, *, retry: RetryPolicy | None = None) -> None:
        self._engine = engine
        self.dialect = engine.dialect.name
        self._pg = self.dialect == "postgresql"
        self._what = "PostgreSQL" if self._pg else "SQLite"
        self.retry = retry or RetryPolicy()
        self._closed = False
        self._meta, self._jobs, self._batches, self._batch_jobs = tables(pg=self._pg)
        self._insert = postgresql.insert if self._pg else sqlite.insert  # dialect: upserts
        with self._tx() as db:
            if self._pg:  # dialect: concurrent start-ups create the schema one at a time
                db.execute(select(func.pg_advisory_xact_lock(_SCHEMA_LOCK)))
            create_or_migrate(db, self._meta)

    @classmethod
    def sqlite(
        cls, path: Path | str, *, retry: RetryPolicy | None = None, busy_timeout_s: float = 30.0
    ) -> SqlJobStore:
        """The store in one SQLite file (its folder is created).

        ``busy_timeout_s`` is how long a writer waits for another process's write lock.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            f"sqlite:///{path}",
            connect_args={"timeout": busy_timeout_s, "check_same_thread": False},
            pool_size=8,  # idle connections kept; short-lived threads (heartbeats) share them
            max_overflow=-1,
        )

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # transactions begin as _on_begin says
            dbapi_conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
            dbapi_conn.execute("PRAGMA synchronous=FULL")
            dbapi_conn.execute("PRAGMA foreign_keys=ON")

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            read = conn.get_execution_options().get(_READ, False)
            conn.exec_driver_sql("BEGIN" if read else "BEGIN IMMEDIATE")

        raw = engine.raw_connection()  # outside any transaction, where the mode can change
        try:
            raw.driver_connection.execute("PRAGMA journal_mode=WAL")  # type: ignore[union-attr]
        finally:
            raw.close()
        return cls(engine, retry=retry)

    @classmethod
    def postgresql(
        cls,
        dsn: str,
        *,
        retry: RetryPolicy | None = None,
        connect_timeout_s: float = 10.0,
        max_idle: int = 8,
    ) -> SqlJobStore:
        """The store in a PostgreSQL database (``dsn``: libpq string or ``postgresql://`` URL).

        Raises
        ------
        TriageError
            psycopg is missing, or the database cannot be reached or its schema created.
        """
        missing = is_available()
        if missing:
            raise TriageError(missing)
        import psycopg  # the optional extra [postgres]: imported only for a PostgreSQL URL

        def connect() -> Any:
            try:
                return psycopg.connect(
                    dsn,
                    connect_timeout=max(1, int(connect_timeout_s)),
                    application_name="ct-triage",
                )
            except psycopg.OperationalError as exc:
                raise TriageError(f"PostgreSQL job store unreachable: {exc}") from exc

        # the DSN goes to libpq as given (it may hold a password: never in a URL we log)
        engine = create_engine(
            "postgresql+psycopg://", creator=connect, pool_size=max_idle, max_overflow=-1
        )
        return cls(engine, retry=retry)

    def __repr__(self) -> str:
        if self._pg:
            return "SqlJobStore(postgresql, <dsn>)"  # the DSN may hold a password
        return f"SqlJobStore(sqlite, {self._engine.url.database!r})"

    # -- transactions and time -------------------------------------------------------------
    @contextmanager
    def _tx(self, *, read: bool = False) -> Iterator[Connection]:
        """One transaction on a pooled connection; database errors become TriageError."""
        if self._closed:
            raise TriageError("job store is closed")
        try:
            with self._engine.connect() as db:
                if read:
                    db.execution_options(**{_READ: True})
                with db.begin():
                    yield db
        except SQLAlchemyError as exc:
            reason = getattr(exc, "orig", None) or exc
            raise TriageError(f"{self._what} job store error: {reason}") from exc

    def _now(self, plus_s: float = 0.0) -> ColumnElement[datetime]:
        """The instant ``plus_s`` seconds from now.

        *Dialect*: the database's clock on PostgreSQL (machines agree on leases), this
        machine's on SQLite (one machine).
        """
        if self._pg:
            now: ColumnElement[Any] = func.clock_timestamp(type_=DateTime(timezone=True))
            if plus_s:
                now = now + literal(timedelta(seconds=plus_s), Interval())
            return type_coerce(now, UtcTime())
        return literal(datetime.fromtimestamp(time.time() + plus_s, UTC), UtcTime())

    def close(self) -> None:
        """Close every connection (idempotent)."""
        self._closed = True
        self._engine.dispose()

    # -- jobs ------------------------------------------------------------------------------
    @staticmethod
    def _job(db: Connection, statement: Executable) -> Job | None:
        """The job that ``statement`` selects or returns, or None."""
        row = db.execute(statement).mappings().first()
        return None if row is None else job_from_row(row)

    def _get(self, db: Connection, job_id: str, *, lock: bool = False) -> Job | None:
        q = select(self._jobs).where(self._jobs.c.id == job_id)
        return self._job(db, q.with_for_update() if lock else q)

    def _link(self, db: Connection, batch_id: str, job_id: str) -> None:
        bj = self._batch_jobs
        position = select(
            literal(batch_id), literal(job_id), func.coalesce(func.max(bj.c.position), -1) + 1
        ).where(bj.c.batch_id == batch_id)
        db.execute(
            self._insert(bj)
            .from_select(["batch_id", "job_id", "position"], position)
            .on_conflict_do_nothing()
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
        j = self._jobs
        with self._tx() as db:
            now = self._now()
            insert = self._insert(j).values(
                id=uuid.uuid4().hex,
                key=key,
                kind=str(kind),
                state=str(JobState.QUEUED),
                payload=payload,
                batch_id=batch_id,
                study_uid=study_uid,
                accession=accession,
                max_attempts=self.retry.max_attempts,
                created_at=now,
                updated_at=now,
            )
            new = self._job(db, insert.on_conflict_do_nothing(index_elements=["key"]).returning(j))
            job = new or self._job(db, select(j).where(j.c.key == key))
            assert job is not None
            if batch_id is not None and db.scalar(
                select(literal(1)).where(self._batches.c.id == batch_id)
            ):
                self._link(db, batch_id, job.id)
        if new is not None:
            logger.info("job %s queued (%s)", job.id, kind)
        return job, new is not None

    def find_by_key(self, key: str) -> Job | None:
        """The job with this ``key``, or None."""
        with self._tx(read=True) as db:
            return self._job(db, select(self._jobs).where(self._jobs.c.key == key))

    def claim(self, worker_id: str, *, lease_s: float) -> Job | None:
        """Atomically take the oldest runnable queued job (``not_before`` passed), or None."""
        j = self._jobs
        owner = current_owner()
        with self._tx() as db:
            runnable = (
                select(j.c.id)
                .where(
                    j.c.state == str(JobState.QUEUED),
                    or_(j.c.not_before.is_(None), j.c.not_before <= self._now()),
                )
                .order_by(j.c.created_at, j.c.seq)
                .limit(1)
                .with_for_update(skip_locked=True)  # dialect: SQLite has BEGIN IMMEDIATE
                .scalar_subquery()
            )
            return self._update(
                db,
                j.c.id == runnable,
                state=str(JobState.RUNNING),
                worker_id=worker_id,
                lease_owner=owner.token if owner else None,
                lease_until=self._now(lease_s),
                attempts=j.c.attempts + 1,
                started_at=func.coalesce(j.c.started_at, self._now()),
            )

    def _owned(self, db: Connection, job_id: str, worker_id: str) -> Job:
        job = self._get(db, job_id, lock=True)
        if job is None:
            raise JobNotFound(f"job {job_id} not found")
        if job.state is not JobState.RUNNING or job.worker_id != worker_id:
            raise LeaseLost(
                f"job {job_id} is no longer held by worker {worker_id} (state {job.state})"
            )
        return job

    def _update(self, db: Connection, where: ColumnElement[bool], **values: Any) -> Job | None:
        """Update the job matching ``where`` (``updated_at`` now) and return it, or None."""
        j = self._jobs
        return self._job(
            db, update(j).where(where).values(updated_at=self._now(), **values).returning(j)
        )

    def _set(self, db: Connection, job_id: str, **values: Any) -> Job:
        """Update one job (``updated_at`` now) and return it."""
        job = self._update(db, self._jobs.c.id == job_id, **values)
        assert job is not None
        return job

    def heartbeat(self, job_id: str, worker_id: str, *, lease_s: float) -> None:
        """Extend the lease of a running job held by ``worker_id``."""
        with self._tx() as db:
            self._owned(db, job_id, worker_id)
            self._set(db, job_id, lease_until=self._now(lease_s))

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
        with self._tx() as db:
            self._owned(db, job_id, worker_id)
            return self._set(
                db,
                job_id,
                state=str(state),
                finished_at=self._now(),
                lease_until=None,
                result=result or {},
                priority=priority if isinstance(priority, int) else None,
                error=error,
            )

    def complete(self, job_id: str, worker_id: str, result: dict[str, Any]) -> Job:
        """Record the result of a job (final)."""
        return self._finish(job_id, worker_id, JobState.DONE, result=result)

    def decline(self, job_id: str, worker_id: str, reason: str) -> Job:
        """Record that the study is not a usable chest CT (final, never retried)."""
        return self._finish(job_id, worker_id, JobState.DECLINED, error=reason)

    def _requeue(self, db: Connection, job_id: str, error: str, *, after_s: float | None) -> Job:
        """Queue a job again (runnable ``after_s`` seconds from now, or at once)."""
        return self._set(
            db,
            job_id,
            state=str(JobState.QUEUED),
            not_before=None if after_s is None else self._now(after_s),
            worker_id=None,
            lease_until=None,
            error=error,
        )

    def _fail(self, db: Connection, job_id: str, error: str) -> Job:
        """Give up on a job (final)."""
        return self._set(
            db,
            job_id,
            state=str(JobState.FAILED),
            finished_at=self._now(),
            lease_until=None,
            error=error,
        )

    def fail(self, job_id: str, worker_id: str, error: str, *, retry: bool) -> Job:
        """Record a failure; re-queue with backoff while attempts remain and ``retry``."""
        with self._tx() as db:
            job = self._owned(db, job_id, worker_id)
            if retry and job.attempts < job.max_attempts:
                return self._requeue(db, job_id, error, after_s=self.retry.delay_s(job.attempts))
            return self._fail(db, job_id, error)

    def _release(self, where: Any, why: Callable[[_Held], str | None]) -> list[_Held]:
        """Queue again (or fail, when out of attempts) the running jobs matching ``where``.

        ``why`` gives the reason of each candidate row, or None to leave it running.
        """
        j = self._jobs
        candidates = (
            select(j.c.id, j.c.attempts, j.c.max_attempts, j.c.worker_id, j.c.lease_owner)
            .where(j.c.state == str(JobState.RUNNING), where)
            .with_for_update(skip_locked=True)  # dialect: SQLite has BEGIN IMMEDIATE
        )
        released = []
        with self._tx() as db:
            for row in (_Held(*r) for r in db.execute(candidates).all()):
                reason = why(row)
                if reason is None:
                    continue
                if row.attempts >= row.max_attempts:
                    self._fail(db, row.id, reason)
                else:
                    self._requeue(db, row.id, reason, after_s=None)
                released.append(row)
        return released

    def requeue_expired(self) -> int:
        """Queue again the running jobs whose lease expired; fail those out of attempts."""
        rows = self._release(
            self._jobs.c.lease_until < self._now(),
            lambda r: f"worker {r.worker_id} died (lease expired) during attempt {r.attempts}",
        )
        for r in rows:
            logger.warning(
                "job %s: lease of worker %s expired in attempt %d", r.id, r.worker_id, r.attempts
            )
        return len(rows)

    def release_dead_leases(self) -> int:
        """Queue again at once the running jobs whose process on this host is gone.

        Only leases of this host's processes (same host name, boot and PID namespace) are
        judged; other hosts' leases are left to expire. Called when a worker starts.
        """
        me = current_owner()
        if me is None:
            return 0

        def why(r: _Held) -> str | None:
            owner = LeaseOwner.parse(r.lease_owner)
            if owner is None or owner.scope != me.scope or not owner.is_gone():
                return None
            return (
                f"worker {r.worker_id} died (its process {owner.pid} is gone)"
                f" during attempt {r.attempts}"
            )

        rows = self._release(
            self._jobs.c.lease_owner.startswith(f"{me.scope}|", autoescape=True), why
        )
        for r in rows:
            logger.warning(
                "job %s: worker %s (process %s) is gone; released in attempt %d",
                r.id,
                r.worker_id,
                (r.lease_owner or "").rsplit("|", 2)[1],
                r.attempts,
            )
        return len(rows)

    def get(self, job_id: str) -> Job | None:
        """One job by id, or None."""
        with self._tx(read=True) as db:
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
        j, b = self._jobs, self._batch_jobs
        q = select(j)
        if batch_id is not None:
            q = q.join(b, b.c.job_id == j.c.id).where(b.c.batch_id == batch_id)
            q = q.order_by(b.c.position)
        else:
            q = q.order_by(j.c.created_at.desc(), j.c.seq.desc())
        if states:
            q = q.where(j.c.state.in_([str(s) for s in states]))
        if since is not None:
            q = q.where(j.c.updated_at >= since)
        with self._tx(read=True) as db:
            return [job_from_row(r) for r in db.execute(q.limit(int(limit))).mappings()]

    def worklist(self, *, batch_id: str | None = None, since: datetime | None = None) -> list[Job]:
        """Jobs sorted for reading: done by triage priority (then severity), then the rest."""
        return sort_worklist(self.list_jobs(batch_id=batch_id, since=since, limit=100_000))

    # -- batches ---------------------------------------------------------------------------
    def create_batch(self, *, name: str, created_by: str, job_ids: Sequence[str]) -> Batch:
        """Group jobs into a named batch (a job may belong to several batches)."""
        batch_id = uuid.uuid4().hex
        j = self._jobs
        with self._tx() as db:
            db.execute(
                self._batches.insert().values(
                    id=batch_id, name=name, created_at=self._now(), created_by=created_by
                )
            )
            for job_id in job_ids:
                if self._get(db, job_id) is None:
                    raise JobNotFound(f"job {job_id} not found")
                self._link(db, batch_id, job_id)
                db.execute(
                    update(j)
                    .where(j.c.id == job_id, j.c.batch_id.is_(None))
                    .values(batch_id=batch_id)
                )
        logger.info("batch %s created with %d job(s)", batch_id, len(job_ids))
        batch = self.get_batch(batch_id)
        assert batch is not None
        return batch

    def get_batch(self, batch_id: str) -> Batch | None:
        """One batch by id, or None."""
        bt, bj = self._batches, self._batch_jobs
        with self._tx(read=True) as db:
            row = db.execute(select(bt).where(bt.c.id == batch_id)).mappings().first()
            if row is None:
                return None
            ids = db.scalars(
                select(bj.c.job_id).where(bj.c.batch_id == batch_id).order_by(bj.c.position)
            ).all()
        return Batch(
            id=row["id"],
            name=row["name"],
            created_at=row["created_at"],
            created_by=row["created_by"],
            job_ids=tuple(ids),
        )

    def batch_progress(self, batch_id: str) -> BatchProgress:
        """Counts, rate (finished per minute since the first start) and ETA of a batch."""
        j, bj = self._jobs, self._batch_jobs
        with self._tx(read=True) as db:
            now = db.scalar(select(self._now()))
            if db.scalar(select(literal(1)).where(self._batches.c.id == batch_id)) is None:
                raise JobNotFound(f"batch {batch_id} not found")
            rows = db.execute(
                select(j.c.state, func.count(), func.min(j.c.started_at))
                .join(bj, bj.c.job_id == j.c.id)
                .where(bj.c.batch_id == batch_id)
                .group_by(j.c.state)
            ).all()
        counts = {JobState(r[0]): int(r[1]) for r in rows}
        starts = [r[2] for r in rows if r[2] is not None]
        return progress_from(batch_id, counts, min(starts) if starts else None, now)

    def counts_by_state(self) -> dict[JobState, int]:
        """How many jobs are in each state (every state present, zero included)."""
        j = self._jobs
        with self._tx(read=True) as db:
            rows = db.execute(select(j.c.state, func.count()).group_by(j.c.state)).all()
        out = dict.fromkeys(JobState, 0)
        out.update({JobState(r[0]): int(r[1]) for r in rows})
        return out


__all__ = ["SqlJobStore", "is_available"]
