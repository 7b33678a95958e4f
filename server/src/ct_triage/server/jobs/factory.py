"""Build the configured :class:`~ct_triage.server.jobs.model.JobStore` from a URL."""

from __future__ import annotations

from pathlib import Path

from ct_triage.models.errors import TriageError
from ct_triage.server.jobs.model import JobStore, RetryPolicy
from ct_triage.server.jobs.store import SqlJobStore


class JobStoreConfigError(TriageError):
    """The job store URL names no supported store."""


def create_job_store(url: str, *, retry: RetryPolicy | None = None) -> JobStore:
    """Open the job store named by ``url``.

    Parameters
    ----------
    url
        ``sqlite:///relative/or/absolute/path.db`` (``sqlite:////abs/path`` also works), or
        ``postgresql://user:pass@host:port/db`` (also ``postgres://``).
    retry
        Attempts and backoff of failed jobs.

    Raises
    ------
    JobStoreConfigError
        Unsupported scheme or empty path.
    TriageError
        The database cannot be opened (PostgreSQL unreachable, psycopg missing, ...).
    """
    if url.startswith("sqlite://"):
        path = url[len("sqlite://") :]
        if path.startswith("/"):  # sqlite:///rel.db is relative, sqlite:////abs.db absolute
            path = path[1:]
        if not path:
            raise JobStoreConfigError(f"job store URL {url!r} names no file")
        return SqlJobStore.sqlite(Path(path), retry=retry)
    if url.startswith(("postgresql://", "postgres://")):
        return SqlJobStore.postgresql(url, retry=retry)
    scheme = url.partition("://")[0] if "://" in url else url[:20]
    raise JobStoreConfigError(
        f"job store URL scheme {scheme!r} not supported: use sqlite:///PATH or postgresql://..."
    )


__all__ = ["JobStoreConfigError", "create_job_store"]
