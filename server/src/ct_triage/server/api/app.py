"""Build the FastAPI application: :func:`create_app` (STYLE.md items 6-8).

Nothing is built at import time. :func:`create_app` takes the process settings; its
lifespan opens what the caller did not pass (job store from ``job_store_url``, token store,
audit log, metrics registry, PACS functions), puts them in one :class:`ApiContext` and closes
what it opened. Errors of the product's hierarchy are turned into JSON answers in one place
(:func:`_triage_error`) and logged once there.

Routes (all under ``/api/v1`` and needing ``Authorization: Bearer <token>`` unless noted):

=========================================  ===========  ==================================
``POST /studies``                          operator     queue a PULL job (idempotent)
``POST /uploads``                          operator     zip / DICOM upload → UPLOAD job
``GET /jobs``, ``GET /jobs/{id}``          viewer       job status
``GET /jobs/{id}/report|seg|sr|overlay``   viewer       results (``preview.png`` too)
``POST /batches``                          operator     many studies, or a PACS query
``GET /batches/{id}``, ``/{id}/csv``       viewer       progress, CSV
``GET /worklist?batch=&date=``             viewer       sorted by triage priority
``GET /healthz``                           anonymous    liveness (also at ``/healthz``)
``GET /readyz``                            viewer       readiness (also at ``/readyz``)
``GET /metrics``                           viewer       Prometheus (also at ``/metrics``)
``POST|GET /tokens``, ``DELETE /tokens/x`` admin        token management
=========================================  ===========  ==================================

The OpenAPI document (``/api/v1/openapi.json``), the docs page (``/api/v1/docs``) and the
worklist page's HTML/JS/CSS (``/worklist``, ``/static/*``) hold no data and need no token.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ct_triage.models.errors import TriageError
from ct_triage.models.identity import PRODUCT_VERSION, ModelIdentity
from ct_triage.models.manifest import WEIGHTS_DIR, load_manifest
from ct_triage.server.api.audit import AuditLog
from ct_triage.server.api.auth import TokenStore
from ct_triage.server.api.config import ApiConfig
from ct_triage.server.api.context import ApiContext, PacsCheck, StudyFinder
from ct_triage.server.api.errors import Unauthorized, status_for
from ct_triage.server.api.metrics import ApiMetrics
from ct_triage.server.api.pacs import pacs_functions
from ct_triage.server.api.routes import (
    batches,
    health,
    jobs,
    metrics,
    pages,
    studies,
    tokens,
    worklist,
)
from ct_triage.server.api.schemas import API_PREFIX
from ct_triage.server.jobs.factory import create_job_store
from ct_triage.server.jobs.model import JobStore
from ct_triage.server.settings import Settings
from ct_triage.server.startup import ServiceHealth

__all__ = ["create_app"]

logger = logging.getLogger(__name__)

_DESCRIPTION = (
    "Chest CT triage: lung and pneumonia-lesion quantification. AI triage aid, "
    "**NOT FOR PRIMARY DIAGNOSIS**. Every route except `/healthz` needs "
    "`Authorization: Bearer <token>` (create one with `ct-triage token create`); roles: "
    "viewer (read) < operator (submit) < admin (tokens)."
)


def _manifest_version(settings: Settings) -> str:
    """The model version from the manifest (without loading the model)."""
    return str(load_manifest(settings.inference.model_dir or WEIGHTS_DIR).version)


async def _triage_error(request: Request, exc: Exception) -> JSONResponse:
    """Turn a product error into ``{"error", "detail"}`` with its HTTP status; log it once."""
    assert isinstance(exc, TriageError)
    status = status_for(exc)
    if status >= 500:
        logger.error("%s %s -> %d: %s", request.method, request.url.path, status, exc)
    else:
        logger.info("%s %s -> %d: %s", request.method, request.url.path, status, exc)
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
    return JSONResponse(
        {"error": type(exc).__name__, "detail": str(exc)}, status_code=status, headers=headers
    )


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.error("%s %s -> 500", request.method, request.url.path, exc_info=exc)
    return JSONResponse(
        {"error": "InternalError", "detail": "internal error (see the server log)"},
        status_code=500,
    )


class _Observe:
    """ASGI middleware: security headers, and the request counter of the metrics."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        api = str(scope.get("path", "")).startswith(API_PREFIX)

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = MutableHeaders(scope=message)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                headers.setdefault("Referrer-Policy", "no-referrer")
                headers.setdefault("X-Frame-Options", "DENY")
                if api:
                    headers.setdefault("Cache-Control", "no-store")
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            ctx: ApiContext | None = getattr(scope["app"].state, "ctx", None)
            route = getattr(scope.get("route"), "path", "unmatched")
            if ctx is not None:
                ctx.metrics.http_requests.labels(
                    method=scope.get("method", ""), route=route, status=str(status)
                ).inc()


def create_app(
    settings: Settings,
    *,
    store: JobStore | None = None,
    model: ModelIdentity | None = None,
    token_store: TokenStore | None = None,
    study_finder: StudyFinder | None = None,
    pacs_check: PacsCheck | None = None,
    api_config: ApiConfig | None = None,
    service_health: ServiceHealth | None = None,
) -> FastAPI:
    """Build the HTTP application.

    Parameters
    ----------
    settings
        The process settings.
    store
        The job store; default: opened from ``job_store_url`` (SQLite under ``data_dir``)
        by the lifespan, which then closes it.
    model
        The model loaded in this process (its version keys the jobs; readiness needs it).
        ``None``: the version is read from the model's manifest and ``/readyz`` reports
        that no model is loaded here.
    token_store
        The API tokens; default ``<data_dir>/api-tokens.db``.
    study_finder, pacs_check
        PACS query (batches) and reachability check (readiness); default: built from the
        settings when a PACS is configured.
    api_config
        Override of the API's view of the settings (limits, paths); default
        :meth:`ApiConfig.from_settings`.
    service_health
        Shared with the process's start-up checks: why the service is degraded
        (``/healthz``); default: a fresh one (never degraded).

    Returns
    -------
    FastAPI
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        config = api_config or ApiConfig.from_settings(settings)
        config.uploads_dir.mkdir(parents=True, exist_ok=True)
        async with AsyncExitStack() as stack:
            job_store = store
            if job_store is None:
                job_store = create_job_store(settings.resolved_job_store_url())
                stack.callback(job_store.close)
            tokens_db = token_store
            if tokens_db is None:
                tokens_db = TokenStore(config.tokens_db)
                stack.callback(tokens_db.close)
            audit = AuditLog(config.audit_log)
            stack.callback(audit.close)
            finder, check = study_finder, pacs_check
            if config.pacs_configured and (finder is None or check is None):
                default_finder, default_check = pacs_functions(settings)
                finder = finder or default_finder
                check = check or default_check
            app.state.ctx = ApiContext(
                settings=settings,
                config=config,
                store=job_store,
                tokens=tokens_db,
                audit=audit,
                metrics=ApiMetrics(job_store, model),
                model=model,
                model_version=model.version if model is not None else _manifest_version(settings),
                study_finder=finder,
                pacs_check=check,
                health=service_health or ServiceHealth(),
            )
            logger.info("HTTP API ready (job store %r)", job_store)
            try:
                yield
            finally:
                del app.state.ctx

    # The interactive API docs load Swagger UI from files bundled with fastapi-offline, not
    # from a CDN: hospital networks often have no route to the internet.
    app = FastAPIOffline(
        title="chest-ct-triage",
        version=PRODUCT_VERSION,
        description=_DESCRIPTION,
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=f"{API_PREFIX}/docs",
        redoc_url=None,
        static_url=f"{API_PREFIX}/docs-static",
        lifespan=lifespan,
    )
    app.add_exception_handler(TriageError, _triage_error)
    app.add_exception_handler(Exception, _unexpected_error)
    app.add_middleware(_Observe)
    for router in (
        health.router,
        metrics.router,
        studies.router,
        jobs.router,
        batches.router,
        worklist.router,
        tokens.router,
    ):
        app.include_router(router, prefix=API_PREFIX)
    # Conventional probe and scrape paths, same handlers (not repeated in the OpenAPI).
    app.include_router(health.router, include_in_schema=False)
    app.include_router(metrics.router, include_in_schema=False)
    app.include_router(pages.router)
    return app
