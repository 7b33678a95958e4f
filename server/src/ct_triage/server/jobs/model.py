"""The job model and the :class:`JobStore` protocol shared by the API, the workers and batches.

A *job* is one request to analyse one study: submitted over the API (by StudyInstanceUID or
accession number, pulled from the PACS), uploaded (a zip in the spool), or created by the
DICOM bridge when a pushed series completes. Jobs are keyed (``key``) by what they analyse and
the model version, so a study is analysed once per model version however often it is
submitted; a job whose worker died (lease expired) is taken up again; failures are retried
with backoff; nothing accepted is lost.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol


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

    def close(self) -> None: ...
