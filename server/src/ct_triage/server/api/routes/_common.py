"""Helpers shared by routes (lookups that raise the API's errors)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ct_triage.server.api.errors import NotFound
from ct_triage.server.api.schemas import ErrorPublic
from ct_triage.server.jobs.model import Job, JobStore

#: An OpenAPI ``responses`` mapping.
Responses = dict[int | str, dict[str, Any]]

#: OpenAPI description of the error answers every protected route may give.
AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorPublic, "description": "Missing, invalid or revoked token"},
    403: {"model": ErrorPublic, "description": "The token's role does not allow this"},
}


def job_or_404(store: JobStore, job_id: str) -> Job:
    """The job, or :class:`NotFound`."""
    job = store.get(job_id)
    if job is None:
        raise NotFound(f"no job {job_id!r}")
    return job


def responses(*parts: Mapping[Any, Any]) -> dict[int | str, dict[str, Any]]:
    """Merge OpenAPI ``responses`` mappings (later ones win)."""
    out: dict[int | str, dict[str, Any]] = {}
    for part in parts:
        out.update(part)
    return out
