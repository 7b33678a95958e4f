"""Dependencies of the routes, as ``Annotated`` aliases (STYLE.md item 7).

``Ctx`` is the :class:`ApiContext`; ``Store`` the job store; ``AsViewer``, ``AsOperator``
and ``AsAdmin`` authenticate the ``Authorization: Bearer`` token, check its role and give a
:class:`Caller` (who, from where, and an ``audit`` method bound to both).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, cast

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ct_triage.server.api.audit import AuditLog
from ct_triage.server.api.auth import Principal, Role
from ct_triage.server.api.context import ApiContext
from ct_triage.server.api.errors import Forbidden, Unauthorized
from ct_triage.server.jobs.model import JobStore

_bearer = HTTPBearer(
    auto_error=False,
    description="An API token (`ct-triage token create`): `Authorization: Bearer ctt_...`",
)


def get_context(request: Request) -> ApiContext:
    """The application's context (built by its lifespan)."""
    return cast(ApiContext, request.app.state.ctx)


Ctx = Annotated[ApiContext, Depends(get_context)]


def get_store(ctx: Ctx) -> JobStore:
    """The job store."""
    return ctx.store


Store = Annotated[JobStore, Depends(get_store)]


def client_ip(request: Request) -> str | None:
    """The client's address (as seen by uvicorn, which honours trusted proxy headers)."""
    return request.client.host if request.client else None


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated request: who made it, from where, and the audit log."""

    principal: Principal
    ip: str | None
    audit_log: AuditLog

    def audit(
        self,
        action: str,
        status: int,
        *,
        job_id: str | None = None,
        study_uid: str | None = None,
        batch_id: str | None = None,
        detail: str | None = None,
        study_uids: tuple[str, ...] | None = None,
        durable: bool = False,
    ) -> None:
        """Record an audited action of this caller (no patient data)."""
        self.audit_log.record(
            principal=self.principal,
            ip=self.ip,
            action=action,
            status=status,
            job_id=job_id,
            study_uid=study_uid,
            batch_id=batch_id,
            detail=detail,
            study_uids=study_uids,
            durable=durable,
        )


def require(role: Role) -> Callable[..., Caller]:
    """A dependency that admits tokens of ``role`` or above.

    It is a plain function, so FastAPI runs it in a worker thread: the PBKDF2 check never
    blocks the event loop.
    """

    def dependency(
        request: Request,
        ctx: Ctx,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    ) -> Caller:
        ip = client_ip(request)
        route = request.url.path
        if credentials is None or credentials.scheme.lower() != "bearer":
            ctx.audit.record(principal=None, ip=ip, action="auth.missing", status=401, detail=route)
            raise Unauthorized("missing bearer token: send 'Authorization: Bearer <token>'")
        principal = ctx.tokens.verify(credentials.credentials)
        if principal is None:
            ctx.audit.record(principal=None, ip=ip, action="auth.invalid", status=401, detail=route)
            raise Unauthorized(ctx.tokens.why_refused(credentials.credentials))
        if not principal.role.allows(role):
            ctx.audit.record(
                principal=principal, ip=ip, action="auth.forbidden", status=403, detail=route
            )
            raise Forbidden(f"this action needs the {role} role; the token has {principal.role}")
        return Caller(principal, ip, ctx.audit)

    dependency.__name__ = f"require_{role}"
    return dependency


AsViewer = Annotated[Caller, Depends(require(Role.VIEWER))]
AsOperator = Annotated[Caller, Depends(require(Role.OPERATOR))]
AsAdmin = Annotated[Caller, Depends(require(Role.ADMIN))]
