"""Submit a study held by the PACS (a PULL job), and upload a study (an UPLOAD job)."""

from __future__ import annotations

import shutil

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from ct_triage.server.api.context import ApiContext
from ct_triage.server.api.deps import AsOperator, Ctx, Store
from ct_triage.server.api.errors import Conflict
from ct_triage.server.api.routes._common import AUTH_ERRORS, Responses
from ct_triage.server.api.schemas import API_PREFIX, ErrorPublic, JobPublic, StudyCreate
from ct_triage.server.api.uploads import UploadLimits, receive_upload
from ct_triage.server.jobs.model import Job, JobKind, JobStore

router = APIRouter(tags=["studies"])


def study_key(ref: str, model_version: str) -> str:
    """Idempotency key of a PULL job: ``study:<uid|accession>:<model_version>``."""
    return f"study:{ref}:{model_version}"


def submit_study(
    store: JobStore,
    *,
    study_uid: str | None,
    accession: str | None,
    model_version: str,
    batch_id: str | None = None,
) -> tuple[Job, bool]:
    """Create (or find) the PULL job of one study."""
    ref = study_uid or accession
    assert ref is not None
    payload = {"study_uid": study_uid} if study_uid else {"accession": accession}
    return store.submit(
        key=study_key(ref, model_version),
        kind=JobKind.PULL,
        payload=payload,
        batch_id=batch_id,
        study_uid=study_uid,
        accession=accession,
    )


def require_pacs(ctx: ApiContext) -> None:
    """Refuse at once a study this server could never fetch (no PACS configured)."""
    if not ctx.config.pacs_configured:
        raise Conflict(
            "no PACS is configured (CT_TRIAGE_PACS or CT_TRIAGE_PACS_DICOMWEB_URL): this "
            "server cannot fetch a study by UID or accession; upload it with POST "
            f"{API_PREFIX}/uploads instead"
        )


_NO_PACS: Responses = {
    409: {"model": ErrorPublic, "description": "No PACS is configured to fetch the study from"}
}

_CREATED: Responses = {
    202: {"model": JobPublic, "description": "Job created and queued"},
    200: {"model": JobPublic, "description": "Already submitted: the existing job"},
}


@router.post(
    "/studies",
    response_model=JobPublic,
    status_code=202,
    responses=_CREATED | AUTH_ERRORS | _NO_PACS,
    summary="Analyse a PACS study by StudyInstanceUID or accession number (idempotent)",
)
def create_study_job(
    body: StudyCreate, caller: AsOperator, ctx: Ctx, store: Store, response: Response
) -> JobPublic:
    """Queue a PULL job keyed ``study:<uid|accession>:<model_version>``.

    The same study submitted again for the same model version answers 200 with the job that
    exists; a new job answers 202. With no PACS configured the request is refused (409)
    instead of queueing a job that can only fail.
    """
    require_pacs(ctx)
    job, created = submit_study(
        store, study_uid=body.study_uid, accession=body.accession, model_version=ctx.model_version
    )
    response.status_code = 202 if created else 200
    response.headers["Location"] = f"{API_PREFIX}/jobs/{job.id}"
    caller.audit(
        "study.submit",
        response.status_code,
        job_id=job.id,
        study_uid=job.study_uid,
        detail="created" if created else "existing",
        durable=True,
    )
    return JobPublic.from_job(job)


@router.post(
    "/uploads",
    response_model=JobPublic,
    status_code=202,
    responses=_CREATED
    | AUTH_ERRORS
    | {
        400: {"model": ErrorPublic, "description": "Unsafe or corrupt archive, or no file"},
        413: {"model": ErrorPublic, "description": "Upload larger than the limit"},
        415: {"model": ErrorPublic, "description": "Content-Type not accepted"},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/zip": {"schema": {"type": "string", "format": "binary"}},
                "application/dicom": {"schema": {"type": "string", "format": "binary"}},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "files": {
                                "type": "array",
                                "items": {"type": "string", "format": "binary"},
                            }
                        },
                    }
                },
            },
        }
    },
    summary="Upload a study (zip, one DICOM file, or multipart DICOM/zip files)",
)
async def upload_study(
    request: Request, caller: AsOperator, ctx: Ctx, store: Store, response: Response
) -> JobPublic:
    """Stream the upload under the spool's uploads folder and queue an UPLOAD job.

    The job is keyed by the SHA-256 of the uploaded bytes and the model version: the same
    upload again answers 200 with the existing job (and the duplicate is discarded).
    """
    cfg = ctx.config
    received = await receive_upload(
        request,
        root=cfg.uploads_dir,
        limits=UploadLimits(max_bytes=cfg.upload_max_bytes, zip_limits=cfg.zip_limits),
    )
    try:
        job, created = await run_in_threadpool(
            lambda: store.submit(
                key=f"upload:{received.sha256}:{ctx.model_version}",
                kind=JobKind.UPLOAD,
                payload={"path": str(received.files_dir), "upload_id": received.upload_id},
            )
        )
    except BaseException:
        shutil.rmtree(received.folder, ignore_errors=True)
        raise
    if not created:
        await run_in_threadpool(shutil.rmtree, received.folder, True)
    response.status_code = 202 if created else 200
    response.headers["Location"] = f"{API_PREFIX}/jobs/{job.id}"
    caller.audit(
        "study.upload",
        response.status_code,
        job_id=job.id,
        detail=f"{received.n_parts} file(s), {received.n_bytes} bytes",
        durable=True,
    )
    return JobPublic.from_job(job)
