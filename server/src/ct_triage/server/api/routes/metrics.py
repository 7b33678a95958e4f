"""Prometheus metrics (token-protected; any role)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from starlette.concurrency import run_in_threadpool

from ct_triage.server.api.deps import AsViewer, Ctx
from ct_triage.server.api.metrics import CONTENT_TYPE
from ct_triage.server.api.routes._common import AUTH_ERRORS

router = APIRouter(tags=["health"])


@router.get(
    "/metrics",
    response_class=Response,
    responses=AUTH_ERRORS
    | {200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus text"}},
    summary="Prometheus metrics: jobs by state, queue depth, stage latency, model/provider",
)
async def metrics(ctx: Ctx, caller: AsViewer) -> Response:
    """Prometheus text exposition format (needs a token, e.g. a viewer token for Prometheus)."""
    body = await run_in_threadpool(ctx.metrics.render)
    return Response(content=body, media_type=CONTENT_TYPE)
