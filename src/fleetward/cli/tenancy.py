"""``fleetward tenant`` and ``fleetward token``."""

from __future__ import annotations

import datetime as dt
from typing import Literal, get_args

import typer
from rich.table import Table

from fleetward.api.routes.tenancy import TokenOut
from fleetward.cli.common import (
    JSON,
    KEY_BACKEND,
    TENANT,
    Environment,
    KeyBackend,
    admin_session,
    console,
    load_ctx,
    local_actor,
    local_principal,
    print_items,
    print_json,
)
from fleetward.identity import ca_service
from fleetward.store import utcnow
from fleetward.tenancy import service
from fleetward.tenancy.roles import ROLES

tenant_app = typer.Typer(help="Tenants (the isolation boundary).", no_args_is_help=True)
token_app = typer.Typer(help="Operator API tokens.", no_args_is_help=True)

Role = Literal["admin", "security", "release-manager", "factory-operator", "auditor"]
if set(get_args(Role)) != set(ROLES):  # one list of roles, checked at import
    raise RuntimeError("Role must list fleetward.tenancy.roles.ROLES")


@tenant_app.command("create")
def tenant_create(
    ctx: typer.Context,
    name: str,
    key_backend: KeyBackend = KEY_BACKEND,
) -> None:
    """Create a tenant with its CAs, and print its first admin token once."""
    app = load_ctx(ctx)
    actor = local_actor()
    with app.unit_of_work(
        actor=actor, action="tenant.create", subject=f"tenant:{name}", tenant_id=None
    ) as s:
        tenant = service.create_tenant(s, name=name, actor=actor)
        ca_service.create_tenant_pki(s, app.pki, tenant=tenant, actor=actor, backend=key_backend)
        _, token = service.create_token(
            s, tenant=tenant, name="first admin", role="admin", actor=actor
        )
    console.print(f"tenant [bold]{name}[/bold] created")
    console.print(f"admin token (shown once): [bold]{token}[/bold]")


@tenant_app.command("policy")
def tenant_policy(
    ctx: typer.Context,
    tenant: str = TENANT,
    cert_lifetime_days: int | None = typer.Option(None, min=1),
    allow_unattested_keys_in_production: bool | None = typer.Option(
        None,
        "--allow-unattested-keys-in-production/--refuse-unattested-keys-in-production",
        help="DANGEROUS: let production certify keys without a key attestation",
    ),
) -> None:
    """Change a tenant's issuance policy."""
    with admin_session(ctx, tenant, action="tenant.policy", subject=f"tenant:{tenant}") as (
        _app,
        who,
        s,
    ):
        if cert_lifetime_days is not None:
            service.set_cert_lifetime(s, who, days=cert_lifetime_days)
        if allow_unattested_keys_in_production is not None:
            service.set_allow_unattested(s, who, allow=allow_unattested_keys_in_production)
        t = service.get_tenant(s, who.tenant_id)
        console.print(
            f"tenant {t.name}: certificates {t.cert_lifetime_days} days; unattested keys in "
            f"production {'ALLOWED' if t.allow_unattested_keys_in_production else 'refused'}"
        )


@tenant_app.command("list")
def tenant_list(ctx: typer.Context, as_json: bool = JSON) -> None:
    """List tenants."""
    app = load_ctx(ctx)
    with app.db.session() as s:
        rows = [
            {
                "id": t.id,
                "name": t.name,
                "cert_lifetime_days": t.cert_lifetime_days,
                "allow_unattested_keys_in_production": t.allow_unattested_keys_in_production,
                "created_at": t.created_at.isoformat(),
            }
            for t in service.list_tenants(s)
        ]
    if as_json:
        print_json(rows)
        return
    table = Table("id", "name", "cert lifetime (days)", "created")
    for t in rows:
        table.add_row(
            str(t["id"]), str(t["name"]), str(t["cert_lifetime_days"]), str(t["created_at"])
        )
    console.print(table)


@token_app.command("create")
def token_create(
    ctx: typer.Context,
    name: str,
    role: Role = typer.Option(..., "--role", help="what the token may do"),
    tenant: str = TENANT,
    environment: Environment | None = typer.Option(
        None, "--env", help="restrict the token to one environment"
    ),
    expires_in_days: int | None = typer.Option(None, min=1),
) -> None:
    """Create an API token; the token is printed once."""
    app = load_ctx(ctx)
    who = local_principal(app, tenant)
    expires = utcnow() + dt.timedelta(days=expires_in_days) if expires_in_days else None
    with app.unit_of_work(
        actor=who.actor, action="token.create", subject=f"token:{name}", tenant_id=who.tenant_id
    ) as s:
        row, token = service.create_token(
            s,
            tenant=service.get_tenant(s, who.tenant_id),
            name=name,
            role=role,
            environment=environment,
            expires_at=expires,
            actor=who.actor,
        )
    console.print(f"token {row.id} ({role}) created; shown once:")
    typer.echo(token)


@token_app.command("list")
def token_list(ctx: typer.Context, tenant: str = TENANT, as_json: bool = JSON) -> None:
    """List a tenant's tokens (never their secrets)."""
    app = load_ctx(ctx)
    who = local_principal(app, tenant)
    with app.db.session() as s:
        tokens = [TokenOut.of(t) for t in service.list_tokens(s, who)]
    if as_json:
        print_items(tokens)
        return
    table = Table("id", "name", "role", "env", "expires", "revoked")
    for t in tokens:
        table.add_row(
            t.id,
            t.name,
            t.role,
            t.environment or "-",
            t.expires_at.isoformat() if t.expires_at else "-",
            t.revoked_at.isoformat() if t.revoked_at else "-",
        )
    console.print(table)


@token_app.command("revoke")
def token_revoke(ctx: typer.Context, token_id: str, tenant: str = TENANT) -> None:
    """Revoke a token."""
    with admin_session(ctx, tenant, action="token.revoke", subject=f"token:{token_id}") as (
        _app,
        who,
        s,
    ):
        service.revoke_token(s, who, token_id)
    console.print(f"token {token_id} revoked")
