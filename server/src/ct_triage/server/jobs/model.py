"""The job model and the :class:`JobStore` protocol shared by the API, the workers and batches.

A *job* is one request to analyse one study: submitted over the API (by StudyInstanceUID or
accession number, pulled from the PACS), uploaded (a zip in the spool), or created by the
DICOM bridge when a pushed series completes. Jobs are keyed (``key``) by what they analyse and
the model version, so a study is analysed once per model version however often it is
submitted; a job whose worker died (lease expired) is taken up again; failures are retried
with backoff; nothing accepted is lost.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

from ct_triage.models.errors import TriageError


class JobKind(StrEnum):
    """Where the study of a job comes from."""

    PULL = "pull"  # retrieve from the PACS by study UID / accession, then analyse
    UPLOAD = "upload"  # a zip / files uploaded over the API, stored in the spool
    PUSH = "push"  # series pushed to our Storage SCP and completed in the spool


class JobState(StrEnum):
    """Life cycle: queued → running → done | declined | failed (queued again on retry)."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    DECLINED = "declined"  # not a usable chest CT: a final answer with a reason
    FAILED = "failed"  # gave up after the retries

    @property
    def final(self) -> bool:
        return self in (JobState.DONE, JobState.DECLINED, JobState.FAILED)


@dataclass(frozen=True, slots=True)
class Job:
    """One analysis request and its outcome.

    ``payload`` holds what the worker needs (e.g. ``{"study_uid": ...}``,
    ``{"accession": ...}``, ``{"path": <spool folder or zip>}``); ``result`` holds the key
    numbers of ``report.json`` for the worklist and the CSV (``triage``, ``priority``,
    ``percent_involvement``, ``lesion_volume_ml``, ``lung_volume_ml``, ``severity_score``,
    ``series_uid``, ``result_dir``) once done.
    """

    id: str
    key: str
    kind: JobKind
    state: JobState
    payload: dict[str, Any]
    batch_id: str | None = None
    study_uid: str | None = None
    accession: str | None = None
    attempts: int = 0
    max_attempts: int = 3
    not_before: datetime | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    worker_id: str | None = None
    lease_until: datetime | None = None
    priority: int | None = None  # triage priority once done (1 = read first)
    result: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Batch:
    """A named set of jobs submitted together (batch screening)."""

    id: str
    name: str
    created_at: datetime
    created_by: str
    job_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class BatchProgress:
    """Progress of a batch: counts, rate (studies per minute) and ETA (seconds)."""

    batch_id: str
    total: int
    done: int
    declined: int
    failed: int
    running: int
    queued: int
    rate_per_min: float | None
    eta_s: float | None

    @property
    def remaining(self) -> int:
        return self.running + self.queued


class LeaseLost(TriageError):
    """A worker reported on a job it no longer holds (its lease expired and it was re-queued)."""


class JobNotFound(TriageError):
    """No job or batch with the given id."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retry schedule of failed jobs: delay before retry *n* is ``min(max_s, base_s * 2**(n-1))``.

    ``max_attempts`` is the default for new jobs (each claim is one attempt).
    """

    max_attempts: int = 3
    backoff_base_s: float = 5.0
    backoff_max_s: float = 600.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if not 0 <= self.backoff_base_s <= self.backoff_max_s:
            raise ValueError("need 0 <= backoff_base_s <= backoff_max_s")

    def delay_s(self, attempts: int) -> float:
        """Delay after failed attempt number ``attempts`` (1-based)."""
        return min(self.backoff_max_s, self.backoff_base_s * 2.0 ** max(0, attempts - 1))


#: Order of the non-done states in the worklist (done jobs come first, by priority).
_WORKLIST_STATE_ORDER = {
    JobState.DONE: 0,
    JobState.RUNNING: 1,
    JobState.QUEUED: 2,
    JobState.DECLINED: 3,
    JobState.FAILED: 4,
}


def _num(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


def worklist_key(job: Job) -> tuple[int, int, float, float, float]:
    """Sort key of the reading worklist.

    Done jobs first by triage priority (1 = read first), then severity score and percent of
    lung involved (both descending); then running, queued, declined and failed jobs, oldest
    first.
    """
    state_rank = _WORKLIST_STATE_ORDER[job.state]
    created = job.created_at.timestamp() if job.created_at else 0.0
    if job.state is not JobState.DONE:
        return (state_rank, 0, 0.0, 0.0, created)
    prio = job.priority if job.priority is not None else 99
    severity = _num(job.result.get("severity_score"))
    pct = job.result.get("percent_involvement")
    total = _num(pct.get("total")) if isinstance(pct, dict) else 0.0
    return (state_rank, prio, -severity, -total, created)


def sort_worklist(jobs: Iterable[Job]) -> list[Job]:
    """Jobs in reading order (see :func:`worklist_key`)."""
    return sorted(jobs, key=worklist_key)


def progress_from(
    batch_id: str,
    counts: dict[JobState, int],
    first_start: datetime | None,
    now: datetime | None = None,
) -> BatchProgress:
    """Progress of a batch from its per-state counts and its first job start.

    The rate is finished jobs (done, declined, failed) per minute since the first start; the
    ETA is the remaining jobs at that rate (``None`` until one job has finished).
    """
    now = now or datetime.now(UTC)
    done = counts.get(JobState.DONE, 0)
    declined = counts.get(JobState.DECLINED, 0)
    failed = counts.get(JobState.FAILED, 0)
    running = counts.get(JobState.RUNNING, 0)
    queued = counts.get(JobState.QUEUED, 0)
    finished = done + declined + failed
    remaining = running + queued
    rate: float | None = None
    eta: float | None = None
    if first_start is not None and finished:
        elapsed_min = max((now - first_start).total_seconds(), 1e-3) / 60.0
        rate = finished / elapsed_min
        eta = 60.0 * remaining / rate
    return BatchProgress(
        batch_id=batch_id,
        total=finished + remaining,
        done=done,
        declined=declined,
        failed=failed,
        running=running,
        queued=queued,
        rate_per_min=rate,
        eta_s=eta,
    )


def settled_progress(store: JobStore, batch_id: str) -> BatchProgress:
    """``store.batch_progress``, with the rate frozen once the batch is finished.

    While jobs remain, the rate is finished jobs per minute since the first start. Once none
    remains it is measured up to the last job's finish (not up to now, which would make it
    fall for ever after completion), and the ETA is 0.
    """
    p = store.batch_progress(batch_id)
    if p.remaining or p.total == 0:
        return p
    jobs = store.list_jobs(batch_id=batch_id, limit=max(p.total, 1))
    starts = [j.started_at for j in jobs if j.started_at is not None]
    ends = [j.finished_at for j in jobs if j.finished_at is not None]
    if not starts or not ends:
        return p
    elapsed_min = max((max(ends) - min(starts)).total_seconds(), 1e-3) / 60.0
    finished = p.done + p.declined + p.failed
    return replace(p, rate_per_min=finished / elapsed_min, eta_s=0.0)


class JobStore(Protocol):
    """Durable job queue. Implementations: SQLite (default) and PostgreSQL."""

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
        ...

    def claim(self, worker_id: str, *, lease_s: float) -> Job | None:
        """Atomically take the next runnable job (queued, ``not_before`` passed), or None."""
        ...

    def heartbeat(self, job_id: str, worker_id: str, *, lease_s: float) -> None: ...

    def complete(self, job_id: str, worker_id: str, result: dict[str, Any]) -> Job: ...

    def decline(self, job_id: str, worker_id: str, reason: str) -> Job: ...

    def fail(self, job_id: str, worker_id: str, error: str, *, retry: bool) -> Job:
        """Record a failure; re-queue with backoff while attempts remain and ``retry``."""
        ...

    def requeue_expired(self) -> int:
        """Queue again the running jobs whose lease expired (their worker died)."""
        ...

    def release_dead_leases(self) -> int:
        """Queue again at once the running jobs whose process on this host is gone."""
        ...

    def get(self, job_id: str) -> Job | None: ...

    def list_jobs(
        self,
        *,
        batch_id: str | None = None,
        states: Sequence[JobState] | None = None,
        since: datetime | None = None,
        limit: int = 500,
    ) -> list[Job]: ...

    def worklist(self, *, batch_id: str | None = None, since: datetime | None = None) -> list[Job]:
        """Jobs sorted for reading: done by triage priority (then severity), then the rest."""
        ...

    def create_batch(self, *, name: str, created_by: str, job_ids: Sequence[str]) -> Batch: ...

    def get_batch(self, batch_id: str) -> Batch | None: ...

    def batch_progress(self, batch_id: str) -> BatchProgress: ...

    def counts_by_state(self) -> dict[JobState, int]: ...

    def find_by_key(self, key: str) -> Job | None:
        """The job with this ``key``, or None."""
        ...

    def close(self) -> None: ...
