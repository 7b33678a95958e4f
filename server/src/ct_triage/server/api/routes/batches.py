"""Batches: submit many studies at once, follow their progress, export a CSV."""

from __future__ import annotations

import csv
import io
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import PlainTextResponse

from ct_triage.models.identity import DISCLAIMER
from ct_triage.server.api.deps import AsOperator, AsViewer, Ctx, Store
from ct_triage.server.api.errors import BadRequest, NotFound
from ct_triage.server.api.routes._common import AUTH_ERRORS, Responses
from ct_triage.server.api.routes.studies import submit_study
from ct_triage.server.api.schemas import API_PREFIX, BatchCreate, BatchPublic, ErrorPublic
from ct_triage.server.jobs.model import Batch, Job, JobStore

router = APIRouter(tags=["batches"])

_NOT_FOUND: Responses = {404: {"model": ErrorPublic, "description": "No such batch"}}
MAX_BATCH = 5000

CSV_COLUMNS = (
    "rank",
    "job_id",
    "state",
    "accession",
    "study_uid",
    "triage",
    "priority",
    "severity_score",
    "percent_involvement_total",
    "percent_involvement_right",
    "percent_involvement_left",
    "lesion_volume_ml_total",
    "lesion_volume_ml_ggo",
    "lesion_volume_ml_consolidation",
    "lung_volume_ml_total",
    "model_version",
    "quality_flags",
    "error",
    "disclaimer",
)


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
        502: {"model": ErrorPublic, "description": "The PACS query failed"},
    },
    summary="Submit a batch: UIDs and/or accessions, or a PACS date-range query",
)
def create_batch(body: BatchCreate, caller: AsOperator, ctx: Ctx, store: Store) -> BatchPublic:
    """Create one PULL job per study (existing jobs of the same study are reused)."""
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
    return BatchPublic.from_batch(batch, store.batch_progress(batch.id))


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
    return BatchPublic.from_batch(batch, store.batch_progress(batch.id))


def _cell(value: Any) -> str:
    """A CSV cell; text that a spreadsheet would run as a formula is quoted with ``'``."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.2f}"
    text = str(value)
    if text[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + text
    return text


def csv_rows(jobs: list[Job]) -> list[list[str]]:
    """One row per job in worklist order (columns :data:`CSV_COLUMNS`)."""
    from ct_triage.server.api.schemas import ResultSummaryPublic

    rows = []
    for rank, job in enumerate(jobs, start=1):
        r = ResultSummaryPublic.from_result(job.result) if job.result else ResultSummaryPublic()
        pi, les, lung = r.percent_involvement, r.lesion_volume_ml, r.lung_volume_ml
        values: list[Any] = [
            rank,
            job.id,
            job.state.value,
            job.accession,
            job.study_uid or job.result.get("study_uid"),
            r.triage,
            job.priority if job.priority is not None else r.priority,
            r.severity_score,
            pi.get("total"),
            pi.get("right"),
            pi.get("left"),
            les.get("total"),
            les.get("ggo"),
            les.get("consolidation"),
            lung.get("total"),
            r.model_version,
            "; ".join(r.quality_flags),
            job.error,
            DISCLAIMER,
        ]
        rows.append([_cell(v) for v in values])
    return rows


@router.get(
    "/batches/{batch_id}/csv",
    response_class=PlainTextResponse,
    responses=AUTH_ERRORS | _NOT_FOUND | {200: {"content": {"text/csv": {}}}},
    summary="The batch as CSV, in triage-priority order",
)
def get_batch_csv(batch_id: str, caller: AsViewer, store: Store) -> Response:
    """CSV (RFC 4180, UTF-8) of the batch's jobs, sorted like the worklist."""
    batch = _batch_or_404(store, batch_id)
    jobs = store.worklist(batch_id=batch.id)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    writer.writerows(csv_rows(jobs))
    caller.audit("batch.csv", 200, batch_id=batch.id, detail=f"{len(jobs)} row(s)")
    return Response(
        content=buf.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={
            "Content-Disposition": f'attachment; filename="batch-{batch.id}.csv"',
            "Link": f'<{API_PREFIX}/batches/{batch.id}>; rel="up"',
        },
    )
