"""The reading worklist: done studies by triage priority, then running, queued, the rest."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated

from fastapi import APIRouter, Query

from ct_triage.server.api.deps import AsViewer, Store
from ct_triage.server.api.routes._common import AUTH_ERRORS
from ct_triage.server.api.schemas import (
    API_PREFIX,
    ResultSummaryPublic,
    WorklistItemPublic,
    WorklistPublic,
)
from ct_triage.server.jobs.model import Job, JobState

router = APIRouter(tags=["worklist"])


def _item(rank: int, job: Job) -> WorklistItemPublic:
    done = job.state is JobState.DONE
    r = ResultSummaryPublic.from_result(job.result) if done else ResultSummaryPublic()
    return WorklistItemPublic(
        rank=rank,
        job_id=job.id,
        state=job.state,
        study_uid=job.study_uid or job.result.get("study_uid"),
        accession=job.accession,
        triage=r.triage,
        priority=job.priority if job.priority is not None else r.priority,
        severity_score=r.severity_score,
        percent_involvement_total=r.percent_involvement.get("total"),
        lesion_volume_ml_total=r.lesion_volume_ml.get("total"),
        quality_flags=r.quality_flags,
        error=job.error,
        created_at=job.created_at,
        finished_at=job.finished_at,
        preview=f"{API_PREFIX}/jobs/{job.id}/preview.png" if done else None,
    )


@router.get(
    "/worklist",
    response_model=WorklistPublic,
    responses=AUTH_ERRORS,
    summary="Worklist of a batch or of a day (UTC), sorted by triage priority",
)
def get_worklist(
    caller: AsViewer,
    store: Store,
    batch: Annotated[str | None, Query(max_length=64)] = None,
    day: Annotated[date | None, Query(alias="date", description="UTC day; default today")] = None,
) -> WorklistPublic:
    """Studies of ``batch`` (all days unless ``date`` is given) or of ``date`` (default today).

    Done studies come first by triage priority (1 = read first), then severity and percent
    involved; then running, queued, declined and failed ones.
    """
    if batch is None and day is None:
        day = datetime.now(UTC).date()
    if day is not None:
        start = datetime.combine(day, time.min, tzinfo=UTC)
        end = start + timedelta(days=1)
        jobs = [
            j
            for j in store.worklist(batch_id=batch, since=start)
            if j.created_at is None or j.created_at < end
        ]
    else:
        jobs = store.worklist(batch_id=batch)
    caller.audit("worklist.read", 200, batch_id=batch, detail=f"{len(jobs)} row(s)")
    return WorklistPublic(
        generated_at=datetime.now(UTC),
        batch_id=batch,
        day=day,
        items=[_item(i, j) for i, j in enumerate(jobs, start=1)],
    )
