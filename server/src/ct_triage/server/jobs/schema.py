"""The tables of the job store in SQLite and PostgreSQL, and their migration.

One definition serves both databases; the differences are in the column types
(:class:`UtcTime`, :class:`JsonObject`) and in :func:`tables` (names, keys). The layout is the
one the first version created, so its databases open as they are; what was added since is
added in place by :func:`create_or_migrate`.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    REAL,
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    inspect,
    text,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection, Dialect, RowMapping
from sqlalchemy.types import TypeDecorator, TypeEngine

from ct_triage.server.jobs.model import Job, JobKind, JobState

logger = logging.getLogger(__name__)


class UtcTime(TypeDecorator[datetime]):
    """A UTC instant. *Dialect*: ``timestamptz`` on PostgreSQL, UNIX seconds on SQLite."""

    impl = REAL
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(DateTime(timezone=True))
        return dialect.type_descriptor(REAL())

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None or dialect.name == "postgresql":
            return value
        return value.timestamp()

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None or dialect.name == "postgresql":
            return value  # type: ignore[no-any-return]
        return datetime.fromtimestamp(float(value), UTC)


class JsonObject(TypeDecorator[dict[str, Any]]):
    """A JSON object. *Dialect*: ``jsonb`` on PostgreSQL, JSON text on SQLite."""

    impl = Text
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(postgresql.JSONB())
        return dialect.type_descriptor(Text())

    def process_bind_param(self, value: dict[str, Any] | None, dialect: Dialect) -> Any:
        if value is None or dialect.name == "postgresql":
            return value
        return json.dumps(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> dict[str, Any] | None:
        if dialect.name == "postgresql" or not isinstance(value, str):
            return dict(value or {})
        return dict(json.loads(value)) if value else {}


def tables(*, pg: bool) -> tuple[MetaData, Table, Table, Table]:
    """The tables of either database, as the previous version created them.

    *Dialect*: PostgreSQL names are prefixed ``ct_triage_`` and ``id`` is the key of a job
    (``seq`` a unique serial); SQLite's key is ``seq INTEGER PRIMARY KEY AUTOINCREMENT``.
    """
    p = "ct_triage_" if pg else ""
    md = MetaData()
    jobs = Table(
        f"{p}jobs",
        md,
        Column("seq", BigInteger, Identity(), unique=True, nullable=False)
        if pg
        else Column("seq", Integer, primary_key=True),
        Column("id", Text, primary_key=True)
        if pg
        else Column("id", Text, nullable=False, unique=True),
        Column("key", Text, nullable=False, unique=True),
        Column("kind", Text, nullable=False),
        Column("state", Text, nullable=False),
        Column("payload", JsonObject(), nullable=False),
        Column("batch_id", Text),
        Column("study_uid", Text),
        Column("accession", Text),
        Column("attempts", Integer, nullable=False, server_default=text("0")),
        Column("max_attempts", Integer, nullable=False),
        Column("not_before", UtcTime()),
        Column("created_at", UtcTime(), nullable=False),
        Column("updated_at", UtcTime(), nullable=False),
        Column("started_at", UtcTime()),
        Column("finished_at", UtcTime()),
        Column("worker_id", Text),
        Column("lease_until", UtcTime()),
        Column("priority", Integer),
        Column("result", JsonObject(), nullable=False, server_default=text("'{}'")),
        Column("error", Text),
        Column("lease_owner", Text),  # added after the first version: see _ADDED
        sqlite_autoincrement=True,
    )
    Index(f"{p}jobs_runnable", jobs.c.state, jobs.c.not_before, jobs.c.created_at)
    Index(f"{p}jobs_lease", jobs.c.state, jobs.c.lease_until)
    batches = Table(
        f"{p}batches",
        md,
        Column("id", Text, primary_key=True),
        Column("name", Text, nullable=False),
        Column("created_at", UtcTime(), nullable=False),
        Column("created_by", Text, nullable=False),
    )
    batch_jobs = Table(
        f"{p}batch_jobs",
        md,
        Column("batch_id", Text, ForeignKey(batches.c.id), primary_key=True),
        Column("job_id", Text, ForeignKey(jobs.c.id), primary_key=True),
        Column("position", Integer, nullable=False),
    )
    Index(f"{p}batch_jobs_job", batch_jobs.c.job_id)
    return md, jobs, batches, batch_jobs


def job_from_row(row: RowMapping) -> Job:
    return Job(
        id=row["id"],
        key=row["key"],
        kind=JobKind(row["kind"]),
        state=JobState(row["state"]),
        payload=row["payload"],
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
        result=row["result"] or {},
        error=row["error"],
    )


#: Columns added after the first version: name → type, added in place to older databases.
_ADDED = {"lease_owner": "TEXT"}


def create_or_migrate(db: Connection, meta: MetaData) -> None:
    """Create the missing tables, and add the columns older databases lack (in ``db``'s
    transaction; concurrent start-ups must be serialised by the caller)."""
    meta.create_all(db)
    for table in meta.sorted_tables:
        have = {c["name"] for c in inspect(db).get_columns(table.name)}
        for name, sql_type in _ADDED.items():
            if name in table.c and name not in have:
                db.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {name} {sql_type}")
                logger.info("job store: column %s.%s added", table.name, name)


__all__ = ["JsonObject", "UtcTime", "create_or_migrate", "job_from_row", "tables"]
