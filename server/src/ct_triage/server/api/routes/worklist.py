"""The reading worklist: done studies by triage priority, then running, queued, the rest.

Each row names the patient and the study (see :mod:`ct_triage.server.worklist`); every
answer is audited with the StudyInstanceUIDs it showed.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated

from fastapi import APIRouter, Query

from ct_triage.server.api.deps import AsViewer, Ctx, Store
from ct_triage.server.api.routes._common import AUTH_ERRORS
from ct_triage.server.api.schemas import WorklistItemPublic, WorklistPublic
from ct_triage.server.worklist import study_rows

router = APIRouter(tags=["worklist"])


@router.get(
    "/worklist",
    response_model=WorklistPublic,
    responses=AUTH_ERRORS,
    summary="Worklist of a batch or of a day (UTC), sorted by triage priority",
)
def get_worklist(
    caller: AsViewer,
    ctx: Ctx,
    store: Store,
    batch: Annotated[str | None, Query(max_length=64)] = None,
    day: Annotated[date | None, Query(alias="date", description="UTC day; default today")] = None,
) -> WorklistPublic:
    """Studies of ``batch`` (all days unless ``date`` is given) or of ``date`` (default today).

    Done studies come first by triage priority (1 = read first), then severity and percent
    involved; then running, queued, declined and failed ones. Rows carry the patient's
    identity (any authenticated role); the view is audited with the studies shown.
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
    rows = study_rows(jobs, viewer_template=ctx.config.viewer_url_template)
    caller.audit(
        "worklist.read",
        200,
        batch_id=batch,
        detail=f"{len(rows)} row(s)",
        study_uids=tuple(r.study_uid or f"job:{r.job_id}" for r in rows),
    )
    return WorklistPublic(
        generated_at=datetime.now(UTC),
        batch_id=batch,
        day=day,
        items=[WorklistItemPublic.from_row(r) for r in rows],
    )
