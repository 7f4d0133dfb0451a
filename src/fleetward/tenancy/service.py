"""Tenancy use cases: tenants, tokens, authentication."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, ScalarSelect, bindparam, select
from sqlalchemy.orm import Session

from fleetward import audit
from fleetward.errors import AuthenticationError, ConflictError, InvalidInputError, NotFoundError
from fleetward.store import utcnow
from fleetward.tenancy import scope
from fleetward.tenancy._tokens import hash_secret, new_token, parse_token, secret_matches
from fleetward.tenancy.models import ApiToken, Tenant
from fleetward.tenancy.roles import ENVIRONMENTS, ROLES, Permission, Principal, require

__all__ = [
    "IssuancePolicy",
    "authenticate",
    "create_tenant",
    "create_token",
    "get_tenant",
    "get_tenant_by_name",
    "issuance_policy",
    "list_tenants",
    "list_tokens",
    "revoke_token",
    "set_allow_unattested",
    "set_cert_lifetime",
    "tenant_id_named",
    "tenant_names",
]

TENANT_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
MAX_CERT_LIFETIME_DAYS = 825  # ceiling on tenant policy: long-lived device certs defeat rotation


def create_tenant(
    session: Session, *, name: str, actor: str, now: dt.datetime | None = None
) -> Tenant:
    """Create a tenant.

    Raises:
        InvalidInputError: the name is not a DNS-label-like identifier.
        ConflictError: the name is taken.
    """
    if not TENANT_NAME.fullmatch(name):
        raise InvalidInputError(
            "tenant name must be 1-63 lowercase letters, digits or '-', "
            "not starting or ending with '-'"
        )
    if session.execute(select(Tenant.id).where(Tenant.name == name)).first():
        raise ConflictError(f"tenant {name!r} already exists")
    now = now or utcnow()
    tenant = Tenant(name=name, cert_lifetime_days=90, created_at=now)
    session.add(tenant)
    session.flush()
    audit.append(
        session,
        actor=actor,
        action="tenant.create",
        subject=f"tenant:{name}",
        tenant_id=tenant.id,
        now=now,
    )
    return tenant


def get_tenant(session: Session, tenant_id: int) -> Tenant:
    """The tenant with this id."""
    tenant = session.get(Tenant, tenant_id)
    if tenant is None:
        raise NotFoundError("tenant not found")
    return tenant


def get_tenant_by_name(session: Session, name: str) -> Tenant:
    """The tenant with this name."""
    tenant = session.execute(select(Tenant).where(Tenant.name == name)).scalar()
    if tenant is None:
        raise NotFoundError(f"tenant {name!r} not found")
    return tenant


def list_tenants(session: Session) -> list[Tenant]:
    """Every tenant (local CLI only; the API never lists across tenants)."""
    return list(session.execute(select(Tenant).order_by(Tenant.id)).scalars())


def tenant_names(session: Session) -> dict[int, str]:
    """Every tenant's name by id, in id order (system tasks that work across
    tenants: the broker table, the campaign driver, the TUF refresher)."""
    return {
        int(tid): str(name)
        for tid, name in session.execute(select(Tenant.id, Tenant.name).order_by(Tenant.id))
    }


def tenant_id_named(name: str) -> ScalarSelect[int]:
    """The id of the tenant called ``name``, as a scalar subquery (NULL for none).

    For the public routes that name a tenant (a TUF repository, a device's
    attestation URL, EST's CA certificates): the caller looks the tenant up
    inside the one query that reads its own rows, so an unknown tenant and a
    known tenant without that row cost the same and answer the same 404.
    Two queries would tell which tenant names exist by their timing.
    """
    return select(Tenant.id).where(Tenant.name == name).scalar_subquery()


@dataclass(frozen=True)
class IssuancePolicy:
    """What a tenant's settings say about issuing a device certificate."""

    tenant_name: str
    cert_lifetime_days: int
    allow_unattested_keys_in_production: bool


_ISSUANCE_POLICY = select(
    Tenant.name, Tenant.cert_lifetime_days, Tenant.allow_unattested_keys_in_production
).where(Tenant.id == bindparam("tenant_id"))


def issuance_policy(conn: Connection | Session, tenant_id: int) -> IssuancePolicy:
    """The tenant's issuance policy as committed now (one primary-key read).

    Read on every issuance and renewal, never cached: turning
    ``allow_unattested_keys_in_production`` off must hold for the very next
    request in every process.

    Raises:
        NotFoundError: no such tenant.
    """
    row = conn.execute(_ISSUANCE_POLICY, {"tenant_id": tenant_id}).first()
    if row is None:
        raise NotFoundError("tenant not found")
    return IssuancePolicy(
        tenant_name=str(row[0]),
        cert_lifetime_days=int(row[1]),
        allow_unattested_keys_in_production=bool(row[2]),
    )


def set_cert_lifetime(session: Session, principal: Principal, *, days: int) -> Tenant:
    """Set the tenant's device certificate lifetime policy (every environment:
    only a token with no environment or factory scope)."""
    scope.authorize(principal, scope.TENANT_SETTINGS)
    if not 1 <= days <= MAX_CERT_LIFETIME_DAYS:
        raise InvalidInputError(f"certificate lifetime must be 1..{MAX_CERT_LIFETIME_DAYS} days")
    tenant = get_tenant(session, principal.tenant_id)
    old = tenant.cert_lifetime_days
    tenant.cert_lifetime_days = days
    audit.append(
        session,
        actor=principal.actor,
        action="tenant.policy",
        subject=f"tenant:{tenant.name}",
        tenant_id=tenant.id,
        details={"cert_lifetime_days": [old, days]},
    )
    return tenant


def create_token(
    session: Session,
    *,
    tenant: Tenant,
    name: str,
    role: str,
    actor: str,
    environment: str | None = None,
    expires_at: dt.datetime | None = None,
    factory_id: int | None = None,
    grantor: Principal | None = None,
    now: dt.datetime | None = None,
) -> tuple[ApiToken, str]:
    """Create an API token; returns the row and the token string (shown once).

    Args:
        grantor: the operator creating it; the new token must fit inside its
            scope (:func:`fleetward.tenancy.scope.decide_grant`). ``None`` for
            the installation itself (``init``, the local CLI).

    Raises:
        InvalidInputError: unknown role or environment, empty name, past expiry.
        PermissionDeniedError / OutOfScopeError: wider than the grantor.
    """
    now = now or utcnow()
    if role not in ROLES:
        raise InvalidInputError(f"unknown role {role!r}; roles: {', '.join(ROLES)}")
    if environment is not None and environment not in ENVIRONMENTS:
        raise InvalidInputError(f"unknown environment {environment!r}")
    if grantor is not None:
        if grantor.tenant_id != tenant.id:
            raise NotFoundError("tenant not found")
        scope.authorize_grant(grantor, role=role, environment=environment, factory_id=factory_id)
        expires_at = scope.grant_expiry(grantor, expires_at)
        scope.decide_lifetime(grantor, expires_at=expires_at).raise_if_refused()
    if not name or len(name) > 100:
        raise InvalidInputError("token name must be 1-100 characters")
    if expires_at is not None and expires_at <= now:
        raise InvalidInputError("token expiry must be in the future")
    token_id, secret, full = new_token()
    row = ApiToken(
        id=token_id,
        tenant_id=tenant.id,
        name=name,
        role=role,
        environment=environment,
        factory_id=factory_id,
        secret_hash=hash_secret(secret),
        created_by=actor,
        created_at=now,
        expires_at=expires_at,
    )
    session.add(row)
    audit.append(
        session,
        actor=actor,
        action="token.create",
        subject=f"token:{token_id}",
        tenant_id=tenant.id,
        details={
            "name": name,
            "role": role,
            "environment": environment,
            "factory": factory_id,
            "expires_at": expires_at.isoformat() if expires_at else None,
        },
        now=now,
    )
    return row, full


TOKEN_COLUMNS = (
    ApiToken.id,
    ApiToken.secret_hash,
    ApiToken.role,
    ApiToken.environment,
    ApiToken.expires_at,
    ApiToken.revoked_at,
    Tenant.id,
    Tenant.name,
    ApiToken.factory_id,
)
"""What :func:`token_principal` reads, in order (also the console's session read)."""
_TOKEN = (
    select(*TOKEN_COLUMNS)
    .join(Tenant, Tenant.id == ApiToken.tenant_id)
    .where(ApiToken.id == bindparam("token_id"))
)


def authenticate(session: Session, token: str, *, now: dt.datetime | None = None) -> Principal:
    """Resolve a token string to a principal (one indexed read; every request does it).

    Raises:
        AuthenticationError: malformed, unknown, wrong secret, expired or revoked.
    """
    token_id, secret = parse_token(token)
    row = session.connection().execute(_TOKEN, {"token_id": token_id}).first()
    if row is None or not secret_matches(secret, row[1]):
        raise AuthenticationError("invalid API token")
    now = now or utcnow()
    if row[5] is not None:
        raise AuthenticationError("API token has been revoked")
    if row[4] is not None and row[4] <= now:
        raise AuthenticationError("API token has expired")
    return token_principal(row)


def token_principal(row: Sequence[Any]) -> Principal:
    """The principal of a token row read with :data:`TOKEN_COLUMNS` (in that order)."""
    return Principal(
        tenant_id=row[6],
        tenant_name=row[7],
        role=row[2],
        actor=f"token:{row[0]}",
        environment=row[3],
        factory_id=row[8],
        expires_at=row[4],
    )


def set_allow_unattested(session: Session, principal: Principal, *, allow: bool) -> Tenant:
    """Set the dangerous option that lets production accept unattested (software) keys
    (only a token with no environment or factory scope)."""
    scope.authorize(principal, scope.TENANT_SETTINGS)
    tenant = get_tenant(session, principal.tenant_id)
    tenant.allow_unattested_keys_in_production = allow
    audit.append(
        session,
        actor=principal.actor,
        action="tenant.policy",
        subject=f"tenant:{tenant.name}",
        tenant_id=tenant.id,
        details={"allow_unattested_keys_in_production": allow},
    )
    return tenant


def list_tokens(session: Session, principal: Principal) -> list[ApiToken]:
    """Tokens of the principal's tenant (a scoped token sees those in its scope)."""
    scope.authorize(principal, scope.TOKEN_LIST)
    stmt = (
        select(ApiToken)
        .where(ApiToken.tenant_id == principal.tenant_id)
        .order_by(ApiToken.created_at)
    )
    if principal.environment is not None:
        stmt = stmt.where(ApiToken.environment == principal.environment)
    if principal.factory_id is not None:
        stmt = stmt.where(ApiToken.factory_id == principal.factory_id)
    return list(session.execute(stmt).scalars())


def revoke_token(session: Session, principal: Principal, token_id: str) -> ApiToken:
    """Revoke a token of the principal's tenant (idempotent refusal on repeat);
    only a token the principal could have granted (same rules as creating)."""
    require(principal, Permission.TOKEN_MANAGE)
    row = session.get(ApiToken, token_id)
    if row is None or row.tenant_id != principal.tenant_id:
        raise NotFoundError(f"token {token_id!r} not found")
    scope.authorize_grant(
        principal, role=row.role, environment=row.environment, factory_id=row.factory_id
    )
    if row.revoked_at is not None:
        raise ConflictError(f"token {token_id!r} is already revoked")
    row.revoked_at = utcnow()
    audit.append(
        session,
        actor=principal.actor,
        action="token.revoke",
        subject=f"token:{token_id}",
        tenant_id=principal.tenant_id,
    )
    return row
