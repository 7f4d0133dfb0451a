"""``fleetward tenant`` and ``fleetward token``."""

from __future__ import annotations

import datetime as dt

import typer
from rich.table import Table

from fleetward.cli.common import admin_session, console, load_ctx, local_actor, local_principal
from fleetward.identity import ca_service
from fleetward.store import utcnow
from fleetward.tenancy import service

tenant_app = typer.Typer(help="Tenants (the isolation boundary).", no_args_is_help=True)
token_app = typer.Typer(help="Operator API tokens.", no_args_is_help=True)


@tenant_app.command("create")
def tenant_create(
    ctx: typer.Context,
    name: str,
    key_backend: str = typer.Option("file", help="file or pkcs11 for CA keys"),
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
    tenant: str = typer.Option("default"),
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
def tenant_list(ctx: typer.Context) -> None:
    """List tenants."""
    app = load_ctx(ctx)
    table = Table("id", "name", "cert lifetime (days)", "created")
    with app.db.session() as s:
        for t in service.list_tenants(s):
            table.add_row(str(t.id), t.name, str(t.cert_lifetime_days), t.created_at.isoformat())
    console.print(table)


@token_app.command("create")
def token_create(
    ctx: typer.Context,
    name: str,
    role: str = typer.Option(
        ..., help="admin, security, release-manager, factory-operator, auditor"
    ),
    tenant: str = typer.Option("default"),
    environment: str | None = typer.Option(None, help="restrict to test or production"),
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
def token_list(ctx: typer.Context, tenant: str = typer.Option("default")) -> None:
    """List a tenant's tokens."""
    app = load_ctx(ctx)
    who = local_principal(app, tenant)
    table = Table("id", "name", "role", "env", "expires", "revoked")
    with app.db.session() as s:
        for t in service.list_tokens(s, who):
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
def token_revoke(ctx: typer.Context, token_id: str, tenant: str = typer.Option("default")) -> None:
    """Revoke a token."""
    with admin_session(ctx, tenant, action="token.revoke", subject=f"token:{token_id}") as (
        _app,
        who,
        s,
    ):
        service.revoke_token(s, who, token_id)
    console.print(f"token {token_id} revoked")
