"""REST routes of the tenancy domain: the caller's tenant and its tokens."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field, StrictBool

from fleetward.api import problems
from fleetward.api.deps import Allow, Ctx
from fleetward.api.pagination import Cursor, Limit, Page, page_of
from fleetward.api.params import Counter
from fleetward.store import utcnow
from fleetward.tenancy import ApiToken, Tenant, scope, service
from fleetward.tenancy.roles import Principal

router = APIRouter(prefix="/api/v1", tags=["tenancy"], responses=problems.OPERATOR)


class TenantOut(BaseModel):
    """The caller's tenant."""

    name: str
    cert_lifetime_days: int
    allow_unattested_keys_in_production: bool
    role: str


class TenantPolicyIn(BaseModel):
    """Tenant policy changes (fields left out stay as they are)."""

    cert_lifetime_days: Counter | None = None
    allow_unattested_keys_in_production: StrictBool | None = Field(
        default=None, description="DANGEROUS: production certificates for unattested keys"
    )


class TokenIn(BaseModel):
    """A new token."""

    name: str = Field(min_length=1, max_length=100)
    role: str
    environment: str | None = None
    expires_in_days: int | None = Field(default=None, ge=1, le=3650)


class TokenOut(BaseModel):
    """A token (never its secret, except once at creation in ``token``)."""

    id: str
    name: str
    role: str
    environment: str | None
    created_at: dt.datetime
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None
    token: str | None = None

    @classmethod
    def of(cls, t: ApiToken, token: str | None = None) -> TokenOut:
        """From the ORM row."""
        return cls(
            id=t.id,
            name=t.name,
            role=t.role,
            environment=t.environment,
            created_at=t.created_at,
            expires_at=t.expires_at,
            revoked_at=t.revoked_at,
            token=token,
        )


def _tenant_out(t: Tenant, role: str) -> TenantOut:
    return TenantOut(
        name=t.name,
        cert_lifetime_days=t.cert_lifetime_days,
        allow_unattested_keys_in_production=t.allow_unattested_keys_in_production,
        role=role,
    )


@router.get("/tenant", response_model=TenantOut)
def get_tenant(ctx: Ctx, who: Annotated[Principal, Allow(scope.TENANT_READ)]) -> TenantOut:
    """The tenant this token belongs to."""
    with ctx.db.read() as s:
        return _tenant_out(service.get_tenant(s, who.tenant_id), who.role)


@router.patch("/tenant", response_model=TenantOut)
def patch_tenant(
    body: TenantPolicyIn, ctx: Ctx, who: Annotated[Principal, Allow(scope.TENANT_SETTINGS)]
) -> TenantOut:
    """Change tenant policy (admin)."""
    with ctx.operator_work(who, action="tenant.policy", subject=f"tenant:{who.tenant_name}") as s:
        if body.cert_lifetime_days is not None:
            service.set_cert_lifetime(s, who, days=body.cert_lifetime_days)
        if body.allow_unattested_keys_in_production is not None:
            service.set_allow_unattested(s, who, allow=body.allow_unattested_keys_in_production)
        return _tenant_out(service.get_tenant(s, who.tenant_id), who.role)


@router.get("/tokens", response_model=Page[TokenOut])
def list_tokens(
    ctx: Ctx,
    who: Annotated[Principal, Allow(scope.TOKEN_LIST)],
    cursor: Cursor = None,
    limit: Limit = 100,
) -> Page[TokenOut]:
    """Tokens of the tenant (admin), oldest first."""
    with ctx.db.read() as s:
        return page_of(
            service.list_tokens(s, who),
            cursor=cursor,
            limit=limit,
            key=lambda t: (t.created_at.isoformat(), t.id),
            kinds=(str, str),
            shape=TokenOut.of,
        )


@router.post("/tokens", response_model=TokenOut, status_code=201)
def create_token(
    body: TokenIn, ctx: Ctx, who: Annotated[Principal, Allow(scope.TOKEN_CREATE)]
) -> TokenOut:
    """Create a token; the secret is in ``token`` and is shown only now."""
    with ctx.operator_work(who, action="token.create", subject=f"token:{body.name}") as s:
        expires = (
            utcnow() + dt.timedelta(days=body.expires_in_days) if body.expires_in_days else None
        )
        row, token = service.create_token(
            s,
            tenant=service.get_tenant(s, who.tenant_id),
            name=body.name,
            role=body.role,
            environment=body.environment,
            expires_at=expires,
            actor=who.actor,
            grantor=who,
        )
        return TokenOut.of(row, token)


@router.delete("/tokens/{token_id}", status_code=204, response_class=Response)
def revoke_token(
    token_id: str, ctx: Ctx, who: Annotated[Principal, Allow(scope.TOKEN_REVOKE)]
) -> Response:
    """Revoke a token."""
    with ctx.operator_work(who, action="token.revoke", subject=f"token:{token_id[:32]}") as s:
        service.revoke_token(s, who, token_id)
    return Response(status_code=204)
