"""API tokens (admin only). The token itself is shown once, at creation."""

from __future__ import annotations

from fastapi import APIRouter

from ct_triage.server.api.deps import AsAdmin, Ctx
from ct_triage.server.api.routes._common import AUTH_ERRORS
from ct_triage.server.api.schemas import (
    ErrorPublic,
    TokenCreate,
    TokenCreatedPublic,
    TokenPublic,
)

router = APIRouter(tags=["tokens"])


@router.post(
    "/tokens",
    response_model=TokenCreatedPublic,
    status_code=201,
    responses=AUTH_ERRORS,
    summary="Create a token (shown once; stored hashed)",
)
def create_token(body: TokenCreate, caller: AsAdmin, ctx: Ctx) -> TokenCreatedPublic:
    """Create a token with a role."""
    info, token = ctx.tokens.create(name=body.name, role=body.role)
    caller.audit("token.create", 201, detail=f"{info.id} {info.role}", durable=True)
    public = TokenPublic.from_info(info)
    return TokenCreatedPublic(**public.model_dump(), token=token)


@router.get(
    "/tokens",
    response_model=list[TokenPublic],
    responses=AUTH_ERRORS,
    summary="List tokens (never the secrets)",
)
def list_tokens(caller: AsAdmin, ctx: Ctx) -> list[TokenPublic]:
    """Every token, newest first, revoked ones included."""
    return [TokenPublic.from_info(t) for t in ctx.tokens.list()]


@router.delete(
    "/tokens/{token_id}",
    response_model=TokenPublic,
    responses=AUTH_ERRORS | {404: {"model": ErrorPublic, "description": "No such token"}},
    summary="Revoke a token",
)
def revoke_token(token_id: str, caller: AsAdmin, ctx: Ctx) -> TokenPublic:
    """Revoke a token; it is kept (revoked) for the audit trail."""
    info = ctx.tokens.revoke(token_id)
    caller.audit("token.revoke", 200, detail=info.id, durable=True)
    return TokenPublic.from_info(info)
