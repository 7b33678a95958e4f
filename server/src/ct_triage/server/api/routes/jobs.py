"""Jobs: status, listing, and the result files of a done job."""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from ct_triage.server.api.deps import AsViewer, Store
from ct_triage.server.api.errors import Conflict, NotFound
from ct_triage.server.api.routes._common import AUTH_ERRORS, Responses, job_or_404
from ct_triage.server.api.schemas import ErrorPublic, JobListPublic, JobPublic
from ct_triage.server.jobs.model import Job, JobState

router = APIRouter(tags=["jobs"])

_NOT_FOUND: Responses = {404: {"model": ErrorPublic, "description": "No such job"}}
_RESULT_ERRORS = AUTH_ERRORS | {
    404: {"model": ErrorPublic, "description": "No such job or result file"},
    409: {"model": ErrorPublic, "description": "The job is not done (no results yet)"},
}


@router.get(
    "/jobs",
    response_model=JobListPublic,
    responses=AUTH_ERRORS,
    summary="List jobs, newest first (filter by state and batch)",
)
def list_jobs(
    caller: AsViewer,
    store: Store,
    state: Annotated[list[JobState] | None, Query(description="Repeat for several")] = None,
    batch: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=5000)] = 500,
) -> JobListPublic:
    """Jobs in any of ``state`` (default: all), of ``batch`` (default: any)."""
    jobs = store.list_jobs(batch_id=batch, states=state or None, limit=limit)
    caller.audit("job.list", 200, batch_id=batch, detail=f"{len(jobs)} job(s)")
    return JobListPublic(count=len(jobs), jobs=[JobPublic.from_job(j) for j in jobs])


@router.get(
    "/jobs/{job_id}",
    response_model=JobPublic,
    responses=AUTH_ERRORS | _NOT_FOUND,
    summary="One job: state, result summary and links",
)
def get_job(job_id: str, caller: AsViewer, store: Store) -> JobPublic:
    """The job, with links to its results once done."""
    job = job_or_404(store, job_id)
    caller.audit("job.read", 200, job_id=job.id, study_uid=job.study_uid)
    return JobPublic.from_job(job)


def _result_dir(job: Job) -> Path:
    if job.state is not JobState.DONE:
        detail = f": {job.error}" if job.error else ""
        raise Conflict(f"job {job.id} is {job.state}, it has no results{detail}")
    folder = job.result.get("result_dir")
    if not folder:
        raise NotFound(f"job {job.id} records no result folder")
    return Path(folder)


def _result_file(store: Store, caller: AsViewer, job_id: str, name: str) -> tuple[Job, Path]:
    job = job_or_404(store, job_id)
    path = _result_dir(job) / name
    if not path.is_file():
        raise NotFound(f"job {job.id}: {name} is missing from its results")
    caller.audit("result.read", 200, job_id=job.id, study_uid=job.study_uid, detail=name)
    return job, path


@router.get(
    "/jobs/{job_id}/report",
    response_class=FileResponse,
    responses=_RESULT_ERRORS | {200: {"content": {"application/json": {}}}},
    summary="report.json of a done job",
)
def get_report(job_id: str, caller: AsViewer, store: Store) -> FileResponse:
    """The full ``report.json`` (schema in DESIGN.md, "Contracts")."""
    job, path = _result_file(store, caller, job_id, "report.json")
    return FileResponse(path, media_type="application/json", filename=f"{job.id}-report.json")


@router.get(
    "/jobs/{job_id}/seg",
    response_class=FileResponse,
    responses=_RESULT_ERRORS | {200: {"content": {"application/dicom": {}}}},
    summary="DICOM SEG of a done job",
)
def get_seg(job_id: str, caller: AsViewer, store: Store) -> FileResponse:
    """The DICOM Segmentation (PS3.3 A.51): lungs, ground-glass, consolidation."""
    job, path = _result_file(store, caller, job_id, "seg.dcm")
    return FileResponse(path, media_type="application/dicom", filename=f"{job.id}-seg.dcm")


@router.get(
    "/jobs/{job_id}/sr",
    response_class=FileResponse,
    responses=_RESULT_ERRORS | {200: {"content": {"application/dicom": {}}}},
    summary="DICOM SR (TID 1500) of a done job",
)
def get_sr(job_id: str, caller: AsViewer, store: Store) -> FileResponse:
    """The Comprehensive 3D SR measurement report (TID 1500)."""
    job, path = _result_file(store, caller, job_id, "sr.dcm")
    return FileResponse(path, media_type="application/dicom", filename=f"{job.id}-sr.dcm")


@router.get(
    "/jobs/{job_id}/preview.png",
    response_class=FileResponse,
    responses=_RESULT_ERRORS | {200: {"content": {"image/png": {}}}},
    summary="Preview image (key slice with the lesion overlay)",
)
def get_preview(job_id: str, caller: AsViewer, store: Store) -> FileResponse:
    """The preview PNG."""
    _job, path = _result_file(store, caller, job_id, "preview.png")
    return FileResponse(path, media_type="image/png")


def _zip_folder(folder: Path) -> Path:
    fd, name = tempfile.mkstemp(prefix="ct-triage-overlay-", suffix=".zip")
    os.close(fd)
    try:
        with zipfile.ZipFile(name, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for f in sorted(folder.glob("*.dcm")):
                zf.write(f, arcname=f"overlay/{f.name}")
    except BaseException:
        os.unlink(name)
        raise
    return Path(name)


@router.get(
    "/jobs/{job_id}/overlay",
    response_class=FileResponse,
    responses=_RESULT_ERRORS | {200: {"content": {"application/zip": {}}}},
    summary="Zip of the overlay series (secondary capture) of a done job",
)
async def get_overlay(job_id: str, caller: AsViewer, store: Store) -> FileResponse:
    """The burned-in overlay series as a zip of DICOM files under ``overlay/``."""
    job = await run_in_threadpool(job_or_404, store, job_id)
    folder = _result_dir(job) / "overlay"
    if not folder.is_dir():
        raise NotFound(f"job {job.id}: the overlay series is missing from its results")
    archive = await run_in_threadpool(_zip_folder, folder)
    caller.audit("result.read", 200, job_id=job.id, study_uid=job.study_uid, detail="overlay")
    return FileResponse(
        archive,
        media_type="application/zip",
        filename=f"{job.id}-overlay.zip",
        background=BackgroundTask(os.unlink, archive),
    )
