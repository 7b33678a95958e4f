"""Liveness (anonymous) and readiness (model, store, spool, PACS)."""

from __future__ import annotations

import logging
import uuid

from fastapi import APIRouter, Response
from starlette.concurrency import run_in_threadpool

from ct_triage.server.api.context import ApiContext
from ct_triage.server.api.deps import AsViewer, Ctx
from ct_triage.server.api.routes._common import AUTH_ERRORS
from ct_triage.server.api.schemas import CheckPublic, HealthPublic, ReadyPublic

logger = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthPublic, summary="Liveness (no token needed)")
async def healthz(ctx: Ctx) -> HealthPublic:
    """The process answers HTTP; ``degraded`` with short reasons while something it needs is
    missing (e.g. the PACS not answering since start-up). Details: the log and ``/readyz``."""
    problems = ctx.health.problems()
    if problems:
        return HealthPublic(status="degraded", reasons=[f"{k}: {v}" for k, v in problems.items()])
    return HealthPublic()


def run_checks(ctx: ApiContext) -> dict[str, CheckPublic]:
    """Every readiness check, each with a reason when it fails (blocking)."""
    checks: dict[str, CheckPublic] = {}
    m = ctx.model
    checks["model"] = (
        CheckPublic(ok=True, detail=f"{m.algorithm_label} on {m.provider or 'unknown provider'}")
        if m is not None
        else CheckPublic(ok=False, detail="no model loaded in this process")
    )
    try:
        counts = ctx.store.counts_by_state()
        checks["store"] = CheckPublic(ok=True, detail=f"{sum(counts.values())} job(s)")
    except Exception as exc:
        checks["store"] = CheckPublic(ok=False, detail=f"job store unreachable: {exc}")
    uploads = ctx.config.uploads_dir
    try:
        uploads.mkdir(parents=True, exist_ok=True)
        probe = uploads / f".ready-{uuid.uuid4().hex}"
        probe.write_bytes(b"ok")
        probe.unlink()
        checks["spool"] = CheckPublic(ok=True, detail=f"{uploads} writable")
    except OSError as exc:
        checks["spool"] = CheckPublic(ok=False, detail=f"{uploads} not writable: {exc}")
    if ctx.pacs_check is not None:
        try:
            ctx.pacs_check()
            checks["pacs"] = CheckPublic(ok=True, detail="PACS answers")
        except Exception as exc:
            checks["pacs"] = CheckPublic(ok=False, detail=f"PACS unreachable: {exc}")
    return checks


@router.get(
    "/readyz",
    response_model=ReadyPublic,
    responses=AUTH_ERRORS
    | {503: {"model": ReadyPublic, "description": "Not ready (reasons given)"}},
    summary="Readiness: model loaded, store reachable, spool writable, PACS reachable",
)
async def readyz(ctx: Ctx, caller: AsViewer, response: Response) -> ReadyPublic:
    """Ready when every check passes; 503 with the failing checks' reasons otherwise."""
    checks = await run_in_threadpool(run_checks, ctx)
    ready = all(c.ok for c in checks.values())
    if not ready:
        response.status_code = 503
        failing = ", ".join(f"{k}: {v.detail}" for k, v in checks.items() if not v.ok)
        logger.warning("not ready: %s", failing)
    return ReadyPublic(ready=ready, checks=checks)
