"""Request (``*Create``) and response (``*Public``) types of the HTTP API.

``models`` means machine-learning models in this project, so the API's types are *schemas*.
Responses never carry server paths (``result_dir``) or tokens other than at creation.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ct_triage.models.identity import DISCLAIMER
from ct_triage.server.api.auth import Role, TokenInfo
from ct_triage.server.jobs.model import Batch, BatchProgress, Job, JobKind, JobState
from ct_triage.server.worklist import StudyRow

API_PREFIX = "/api/v1"

#: A UID (PS3.5 section 9.1): digits and dots, no leading zeros in a component, at most 64.
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
#: AccessionNumber is SH (PS3.5 table 6.2-1): at most 16 characters, no backslash or control.
_ACCESSION = re.compile(r"^[^\\\x00-\x1f]{1,16}$")


def check_uid(value: str) -> str:
    """Validate a StudyInstanceUID (PS3.5 9.1)."""
    value = value.strip()
    if len(value) > 64 or not _UID.match(value):
        raise ValueError(f"{value!r} is not a DICOM UID (digits and dots, at most 64)")
    return value


def check_accession(value: str) -> str:
    """Validate an AccessionNumber (VR SH, PS3.5 6.2)."""
    value = value.strip()
    if not _ACCESSION.match(value):
        raise ValueError("an accession number has 1 to 16 characters, no backslash")
    return value


class _Schema(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- errors ----------------------------------------------------------------------------------
class ErrorPublic(_Schema):
    """Body of every error answer."""

    error: str = Field(description="Error class, e.g. 'NotFound'.")
    detail: str = Field(description="What went wrong, for a person to read.")


# -- studies and jobs -----------------------------------------------------------------------
class StudyCreate(_Schema):
    """Analyse a study held by the PACS: give its StudyInstanceUID or its accession number."""

    study_uid: str | None = Field(default=None, examples=["1.2.826.0.1.3680043.8.498.1"])
    accession: str | None = Field(default=None, examples=["ACC000123"])

    @field_validator("study_uid")
    @classmethod
    def _uid(cls, v: str | None) -> str | None:
        return None if v is None else check_uid(v)

    @field_validator("accession")
    @classmethod
    def _acc(cls, v: str | None) -> str | None:
        return None if v is None else check_accession(v)

    @model_validator(mode="after")
    def _exactly_one(self) -> StudyCreate:
        if (self.study_uid is None) == (self.accession is None):
            raise ValueError("give exactly one of study_uid and accession")
        return self


class ResultSummaryPublic(_Schema):
    """The key numbers of a done job (``report.json`` has them all)."""

    triage: str | None = Field(
        default=None,
        description="normal, mild, moderate, severe, or indeterminate (the quality gate found "
        "the lung segmentation unreliable: needs a human; see quality_flags)",
    )
    priority: int | None = Field(default=None, description="1 = read first")
    severity_score: int | None = None
    percent_involvement: dict[str, float] = Field(default_factory=dict)
    lesion_volume_ml: dict[str, float] = Field(default_factory=dict)
    lung_volume_ml: dict[str, float] = Field(default_factory=dict)
    series_uid: str | None = None
    model_version: str | None = None
    quality_flags: list[str] = Field(
        default_factory=list, description="Why the lung segmentation is unreliable (if it is)."
    )

    @classmethod
    def from_result(cls, result: dict[str, Any]) -> ResultSummaryPublic:
        """Build from :attr:`Job.result` (see ``worklist.result_summary``)."""
        triage = result.get("triage")
        if isinstance(triage, dict):
            triage = triage.get("category")

        def numbers(key: str) -> dict[str, float]:
            value = result.get(key)
            if isinstance(value, dict):
                return {str(k): float(v) for k, v in value.items() if isinstance(v, int | float)}
            return {"total": float(value)} if isinstance(value, int | float) else {}

        severity = result.get("severity_score")
        priority = result.get("priority")
        return cls(
            triage=str(triage) if triage else None,
            priority=priority if isinstance(priority, int) else None,
            severity_score=severity if isinstance(severity, int) else None,
            percent_involvement=numbers("percent_involvement"),
            lesion_volume_ml=numbers("lesion_volume_ml"),
            lung_volume_ml=numbers("lung_volume_ml"),
            series_uid=result.get("series_uid"),
            model_version=result.get("model_version"),
            quality_flags=[str(f) for f in result.get("quality_flags") or []],
        )


def _identity(job: Job) -> dict[str, Any]:
    ident = job.result.get("identity")
    return ident if isinstance(ident, dict) else {}


class JobLinks(_Schema):
    """Where to fetch a job and its results (present once the job is done)."""

    self: str
    report: str | None = None
    seg: str | None = None
    sr: str | None = None
    overlay: str | None = None
    preview: str | None = None


class JobPublic(_Schema):
    """One analysis job."""

    id: str
    key: str = Field(description="Idempotency key: what is analysed and by which model.")
    kind: JobKind
    state: JobState
    batch_id: str | None = None
    study_uid: str | None = None
    accession: str | None = None
    attempts: int
    max_attempts: int
    created_at: datetime | None = None
    updated_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    priority: int | None = None
    result: ResultSummaryPublic | None = None
    error: str | None = Field(default=None, description="Decline reason or last failure.")
    links: JobLinks

    @classmethod
    def from_job(cls, job: Job) -> JobPublic:
        """Build from the store's :class:`Job` (no server paths)."""
        base = f"{API_PREFIX}/jobs/{job.id}"
        done = job.state is JobState.DONE
        links = JobLinks(
            self=base,
            report=f"{base}/report" if done else None,
            seg=f"{base}/seg" if done else None,
            sr=f"{base}/sr" if done else None,
            overlay=f"{base}/overlay" if done else None,
            preview=f"{base}/preview.png" if done else None,
        )
        return cls(
            id=job.id,
            key=job.key,
            kind=job.kind,
            state=job.state,
            batch_id=job.batch_id,
            study_uid=job.study_uid or job.result.get("study_uid"),
            # A pushed study's job knows its accession number once its headers are read.
            accession=job.accession or _identity(job).get("accession") or None,
            attempts=job.attempts,
            max_attempts=job.max_attempts,
            created_at=job.created_at,
            updated_at=job.updated_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            priority=job.priority,
            result=ResultSummaryPublic.from_result(job.result) if done else None,
            error=job.error,
            links=links,
        )


class JobListPublic(_Schema):
    """A list of jobs."""

    count: int
    jobs: list[JobPublic]


# -- batches -----------------------------------------------------------------------------
class BatchQuery(_Schema):
    """Find the studies of a batch in the PACS (C-FIND / QIDO-RS) by date range and modality."""

    date_from: date
    date_to: date
    modality: str = Field(default="CT", pattern=r"^[A-Z]{2,3}$")

    @model_validator(mode="after")
    def _order(self) -> BatchQuery:
        if self.date_to < self.date_from:
            raise ValueError("date_to is before date_from")
        if (self.date_to - self.date_from).days > 366:
            raise ValueError("a batch query spans at most 366 days")
        return self


class BatchCreate(_Schema):
    """A batch: a list of StudyInstanceUIDs and/or accession numbers, or a PACS query."""

    name: str = Field(min_length=1, max_length=100, examples=["return-to-work 2025-03-12"])
    study_uids: list[str] = Field(default_factory=list, max_length=5000)
    accessions: list[str] = Field(default_factory=list, max_length=5000)
    query: BatchQuery | None = None

    @field_validator("study_uids")
    @classmethod
    def _uids(cls, v: list[str]) -> list[str]:
        return [check_uid(u) for u in v]

    @field_validator("accessions")
    @classmethod
    def _accs(cls, v: list[str]) -> list[str]:
        return [check_accession(a) for a in v]

    @model_validator(mode="after")
    def _something(self) -> BatchCreate:
        if not self.study_uids and not self.accessions and self.query is None:
            raise ValueError("give study_uids, accessions or a query")
        return self


class BatchProgressPublic(_Schema):
    """Progress of a batch."""

    total: int
    done: int
    declined: int
    failed: int
    running: int
    queued: int
    remaining: int
    percent_finished: float
    rate_per_min: float | None = Field(description="Studies finished per minute.")
    eta_s: float | None = Field(description="Seconds until the batch is finished, estimated.")

    @classmethod
    def from_progress(cls, p: BatchProgress) -> BatchProgressPublic:
        """Build from the store's :class:`BatchProgress`."""
        finished = p.done + p.declined + p.failed
        return cls(
            total=p.total,
            done=p.done,
            declined=p.declined,
            failed=p.failed,
            running=p.running,
            queued=p.queued,
            remaining=p.remaining,
            percent_finished=round(100.0 * finished / p.total, 1) if p.total else 100.0,
            rate_per_min=p.rate_per_min,
            eta_s=p.eta_s,
        )


class BatchPublic(_Schema):
    """A batch and its progress."""

    id: str
    name: str
    created_at: datetime
    created_by: str
    job_ids: list[str]
    progress: BatchProgressPublic
    links: dict[str, str]

    @classmethod
    def from_batch(cls, batch: Batch, progress: BatchProgress) -> BatchPublic:
        """Build from the store's batch and its progress."""
        base = f"{API_PREFIX}/batches/{batch.id}"
        return cls(
            id=batch.id,
            name=batch.name,
            created_at=batch.created_at,
            created_by=batch.created_by,
            job_ids=list(batch.job_ids),
            progress=BatchProgressPublic.from_progress(progress),
            links={
                "self": base,
                "csv": f"{base}/csv",
                "worklist": f"{API_PREFIX}/worklist?batch={batch.id}",
            },
        )


# -- worklist ----------------------------------------------------------------------------
class WorklistItemPublic(_Schema):
    """One row of the reading worklist: the patient, the study, the finding, the links.

    The fields are those of the CSV (:data:`ct_triage.server.worklist.CSV_COLUMNS`) plus the
    preview link. Patient fields are empty when the headers could not be read.
    """

    rank: int = Field(description="1 = read first.")
    job_id: str
    state: JobState
    triage: str | None = None
    priority: int | None = None
    finding: str = Field(description="What was found, in one line (or why nothing was).")
    patient_name: str = Field(description="Patient's Name, as 'FAMILY, Given'.")
    patient_id: str
    birth_date: str = Field(description="YYYY-MM-DD, or empty.")
    age: str = Field(description="Age at the study, e.g. '50 y'.")
    sex: str
    study_date: str = Field(description="YYYY-MM-DD, or empty.")
    study_time: str = Field(description="HH:MM, or empty.")
    accession: str
    modality: str
    series_description: str = Field(description="The analysed series.")
    study_description: str
    study_uid: str | None = None
    series_uid: str | None = None
    severity_score: int | None = None
    percent_involvement_total: float | None = None
    percent_involvement_right: float | None = None
    percent_involvement_left: float | None = None
    lesion_volume_ml_total: float | None = None
    lesion_volume_ml_ggo: float | None = None
    lesion_volume_ml_consolidation: float | None = None
    lung_volume_ml_total: float | None = None
    quality_flags: list[str] = Field(default_factory=list)
    error: str | None = None
    model_version: str | None = None
    finished_at: datetime | None = None
    viewer_url: str | None = Field(
        default=None, description="Opens the study in the site's viewer (when configured)."
    )
    preview: str | None = Field(default=None, description="URL of the preview PNG when done.")

    @classmethod
    def from_row(cls, row: StudyRow) -> WorklistItemPublic:
        """Build from the row the CSV is written from."""
        done = row.state == JobState.DONE.value
        return cls(
            rank=row.rank,
            job_id=row.job_id,
            state=JobState(row.state),
            triage=row.triage,
            priority=row.priority,
            finding=row.finding,
            patient_name=row.patient_name,
            patient_id=row.patient_id,
            birth_date=row.birth_date,
            age=row.age,
            sex=row.sex,
            study_date=row.study_date,
            study_time=row.study_time,
            accession=row.accession,
            modality=row.modality,
            series_description=row.series_description,
            study_description=row.study_description,
            study_uid=row.study_uid,
            series_uid=row.series_uid,
            severity_score=row.severity_score,
            percent_involvement_total=row.percent_involvement_total,
            percent_involvement_right=row.percent_involvement_right,
            percent_involvement_left=row.percent_involvement_left,
            lesion_volume_ml_total=row.lesion_volume_ml_total,
            lesion_volume_ml_ggo=row.lesion_volume_ml_ggo,
            lesion_volume_ml_consolidation=row.lesion_volume_ml_consolidation,
            lung_volume_ml_total=row.lung_volume_ml_total,
            quality_flags=list(row.quality_flags),
            error=row.error,
            model_version=row.model_version,
            finished_at=row.finished_at,
            viewer_url=row.viewer_url,
            preview=f"{API_PREFIX}/jobs/{row.job_id}/preview.png" if done else None,
        )


class WorklistPublic(_Schema):
    """The reading worklist: done studies by triage priority, then the others."""

    generated_at: datetime
    batch_id: str | None = None
    day: date | None = Field(default=None, description="The UTC day shown (no batch given).")
    disclaimer: str = DISCLAIMER
    items: list[WorklistItemPublic]


# -- health ------------------------------------------------------------------------------
class HealthPublic(_Schema):
    """Liveness: ``ok``, or ``degraded`` (alive, but something it needs is missing)."""

    status: Literal["ok", "degraded"] = "ok"
    reasons: list[str] = Field(default_factory=list)


class CheckPublic(_Schema):
    """One readiness check."""

    ok: bool
    detail: str


class ReadyPublic(_Schema):
    """Readiness: every check and, when not ready, why."""

    ready: bool
    checks: dict[str, CheckPublic]


# -- tokens ------------------------------------------------------------------------------
class TokenCreate(_Schema):
    """A new API token."""

    name: str = Field(min_length=1, max_length=100, examples=["ward 3"])
    role: Role


class TokenPublic(_Schema):
    """A token's description (never the secret)."""

    id: str
    name: str
    role: Role
    created_at: datetime
    revoked_at: datetime | None = None

    @classmethod
    def from_info(cls, info: TokenInfo) -> TokenPublic:
        """Build from :class:`TokenInfo`."""
        return cls(
            id=info.id,
            name=info.name,
            role=info.role,
            created_at=info.created_at,
            revoked_at=info.revoked_at,
        )


class TokenCreatedPublic(TokenPublic):
    """A token just created: the only time the token itself is shown."""

    token: str
