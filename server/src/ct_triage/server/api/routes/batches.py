"""Batches: submit many studies at once, follow their progress, export a CSV."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import PlainTextResponse

from ct_triage.server.api.deps import AsOperator, AsViewer, Ctx, Store
from ct_triage.server.api.errors import BadRequest, NotFound
from ct_triage.server.api.routes._common import AUTH_ERRORS, Responses
from ct_triage.server.api.routes.studies import require_pacs, submit_study
from ct_triage.server.api.schemas import API_PREFIX, BatchCreate, BatchPublic, ErrorPublic
from ct_triage.server.jobs.model import Batch, JobStore, settled_progress
from ct_triage.server.worklist import csv_text, study_rows

router = APIRouter(tags=["batches"])

_NOT_FOUND: Responses = {404: {"model": ErrorPublic, "description": "No such batch"}}
MAX_BATCH = 5000


def _batch_or_404(store: JobStore, batch_id: str) -> Batch:
    batch = store.get_batch(batch_id)
    if batch is None:
        raise NotFound(f"no batch {batch_id!r}")
    return batch


@router.post(
    "/batches",
    response_model=BatchPublic,
    status_code=202,
    responses=AUTH_ERRORS
    | {
        400: {"model": ErrorPublic, "description": "Query without a PACS, or too many studies"},
        409: {"model": ErrorPublic, "description": "UIDs/accessions but no PACS to fetch them"},
        502: {"model": ErrorPublic, "description": "The PACS query failed"},
    },
    summary="Submit a batch: UIDs and/or accessions, or a PACS date-range query",
)
def create_batch(body: BatchCreate, caller: AsOperator, ctx: Ctx, store: Store) -> BatchPublic:
    """Create one PULL job per study (existing jobs of the same study are reused)."""
    if body.study_uids or body.accessions:
        require_pacs(ctx)
    refs: list[tuple[str | None, str | None]] = [(u, None) for u in body.study_uids]
    refs += [(None, a) for a in body.accessions]
    if body.query is not None:
        if ctx.study_finder is None:
            raise BadRequest("no PACS is configured: a batch query needs CT_TRIAGE_PACS")
        q = body.query
        for match in ctx.study_finder(q.date_from, q.date_to, q.modality):
            refs.append((match.study_instance_uid, None))
    unique = list(dict.fromkeys(refs))
    if len(unique) > MAX_BATCH:
        raise BadRequest(f"a batch holds at most {MAX_BATCH} studies ({len(unique)} given)")
    job_ids = [
        submit_study(store, study_uid=uid, accession=acc, model_version=ctx.model_version)[0].id
        for uid, acc in unique
    ]
    batch = store.create_batch(name=body.name, created_by=caller.principal.name, job_ids=job_ids)
    caller.audit(
        "batch.submit", 202, batch_id=batch.id, detail=f"{len(job_ids)} job(s)", durable=True
    )
    return BatchPublic.from_batch(batch, settled_progress(store, batch.id))


@router.get(
    "/batches/{batch_id}",
    response_model=BatchPublic,
    responses=AUTH_ERRORS | _NOT_FOUND,
    summary="A batch and its progress (done, failed, remaining, rate, ETA)",
)
def get_batch(batch_id: str, caller: AsViewer, store: Store) -> BatchPublic:
    """The batch with its progress."""
    batch = _batch_or_404(store, batch_id)
    caller.audit("batch.read", 200, batch_id=batch.id)
    return BatchPublic.from_batch(batch, settled_progress(store, batch.id))


@router.get(
    "/batches/{batch_id}/csv",
    response_class=PlainTextResponse,
    responses=AUTH_ERRORS | _NOT_FOUND | {200: {"content": {"text/csv": {}}}},
    summary="The batch as CSV, in triage-priority order",
)
def get_batch_csv(batch_id: str, caller: AsViewer, ctx: Ctx, store: Store) -> Response:
    """CSV (RFC 4180, UTF-8) of the batch's studies, sorted like the worklist.

    The same columns, in the same order, as ``ct-triage batch --csv``
    (:data:`ct_triage.server.worklist.CSV_COLUMNS`), patient identity included; the download
    is audited with the studies it holds.
    """
    batch = _batch_or_404(store, batch_id)
    rows = study_rows(
        store.worklist(batch_id=batch.id), viewer_template=ctx.config.viewer_url_template
    )
    caller.audit(
        "batch.csv",
        200,
        batch_id=batch.id,
        detail=f"{len(rows)} row(s)",
        study_uids=tuple(r.study_uid or f"job:{r.job_id}" for r in rows),
    )
    return Response(
        content=csv_text(rows),
        media_type="text/csv; charset=utf-8",
        headers={
            "Content-Disposition": f'attachment; filename="batch-{batch.id}.csv"',
            "Link": f'<{API_PREFIX}/batches/{batch.id}>; rel="up"',
        },
    )
