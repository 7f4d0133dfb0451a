"""``fleetward ca``, ``fleetward device``, ``fleetward cert`` and ``fleetward crl``."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from fleetward.cli.common import admin_session, console, load_ctx, load_settings, local_principal
from fleetward.identity import ca_service, issuance, publication, service
from fleetward.identity.schemas import CertificateOut, DeviceOut, certificate_out
from fleetward.keys import open_signer
from fleetward.tenancy import service as tenancy

ca_app = typer.Typer(help="Certificate authorities.", no_args_is_help=True)
device_app = typer.Typer(help="Device registry and enrollment.", no_args_is_help=True)
cert_app = typer.Typer(help="Device certificates.", no_args_is_help=True)
crl_app = typer.Typer(help="Certificate revocation lists.", no_args_is_help=True)

TENANT = typer.Option("default", help="tenant name")


@ca_app.command("list")
def ca_list(ctx: typer.Context, tenant: str = TENANT) -> None:
    """List a tenant's CAs."""
    app = load_ctx(ctx)
    who = local_principal(app, tenant)
    table = Table("id", "kind", "env", "status", "subject", "key")
    with app.db.session() as s:
        for ca in ca_service.list_cas(s, tenant_id=who.tenant_id):
            table.add_row(
                str(ca.id), ca.kind, ca.environment or "-", ca.status, ca.subject, ca.key_uri
            )
    console.print(table)


@ca_app.command("issuing-csr")
def ca_issuing_csr(
    ctx: typer.Context,
    environment: str = typer.Option(..., "--env", help="test or production"),
    out: Path = typer.Option(..., help="where to write the CSR (PEM)"),
    tenant: str = TENANT,
    key_backend: str = typer.Option("file", help="file or pkcs11"),
) -> None:
    """Create a new issuing CA key and write its CSR for the (offline) root to sign."""
    with admin_session(ctx, tenant, action="ca.csr", subject=f"tenant:{tenant}") as (
        app,
        who,
        s,
    ):
        ca, csr = ca_service.create_issuing_csr(
            s,
            app.pki,
            tenant=tenancy.get_tenant(s, who.tenant_id),
            environment=environment,
            actor=who.actor,
            backend=key_backend,
        )
    out.write_bytes(csr)
    console.print(f"pending issuing CA {ca.id}; CSR written to {out}")


@ca_app.command("sign-csr")
def ca_sign_csr(
    ctx: typer.Context,
    root_key: Path = typer.Option(..., help="the offline root key file (encrypted PEM)"),
    root_cert: Path = typer.Option(..., help="the root certificate (PEM)"),
    csr: Path = typer.Option(..., help="issuing CA CSR (PEM)"),
    environment: str = typer.Option(..., "--env"),
    out: Path = typer.Option(...),
) -> None:
    """Sign an issuing CA CSR with an offline root key (no database needed).
    The key's passphrase is FLEETWARD_KEY_PASSPHRASE (the installation's, which
    encrypted it at `init --offline-root`), or is asked for."""
    setting = load_settings(ctx).file_key_passphrase
    passphrase = (
        setting.get_secret_value()
        if setting is not None
        else typer.prompt(f"passphrase of {root_key}", hide_input=True)
    )
    signer = open_signer(f"file:{root_key.resolve()}", passphrase=passphrase.encode())
    pem = ca_service.sign_issuing_csr_offline(
        root_cert_pem=root_cert.read_bytes(),
        root_signer=signer,
        csr_pem=csr.read_bytes(),
        environment=environment,
    )
    out.write_bytes(pem)
    console.print(f"issuing CA certificate written to {out}")


@ca_app.command("import")
def ca_import(
    ctx: typer.Context,
    ca_id: int,
    cert: Path = typer.Option(..., help="the signed issuing CA certificate (PEM)"),
    tenant: str = TENANT,
) -> None:
    """Activate a pending issuing CA with its signed certificate."""
    with admin_session(ctx, tenant, action="ca.activate", subject=f"ca:{ca_id}") as (
        app,
        who,
        s,
    ):
        ca_service.import_issuing_certificate(
            s,
            app.pki,
            tenant_id=who.tenant_id,
            ca_id=ca_id,
            certificate_pem=cert.read_bytes(),
            actor=who.actor,
        )
    console.print(f"issuing CA {ca_id} is active")


@ca_app.command("export")
def ca_export(ctx: typer.Context, ca_id: int, tenant: str = TENANT) -> None:
    """Print a CA certificate (PEM)."""
    app = load_ctx(ctx)
    who = local_principal(app, tenant)
    with app.db.session() as s:
        ca = ca_service.get_ca(s, tenant_id=who.tenant_id, ca_id=ca_id)
        typer.echo(ca.certificate_pem or ca.csr_pem or "", nl=False)


@device_app.command("list")
def device_list(
    ctx: typer.Context, tenant: str = TENANT, state: str | None = None, limit: int = 100
) -> None:
    """List devices."""
    app = load_ctx(ctx)
    who = local_principal(app, tenant)
    table = Table("device", "product", "state", "labels", "updated")
    with app.db.session() as s:
        for d in service.list_devices(s, who, state=state, limit=limit):
            table.add_row(d.device_id, d.product, d.state, d.labels, d.updated_at.isoformat())
    console.print(table)


@device_app.command("show")
def device_show(ctx: typer.Context, device_id: str, tenant: str = TENANT) -> None:
    """Show a device and its certificate history (JSON)."""
    app = load_ctx(ctx)
    who = local_principal(app, tenant)
    with app.db.session() as s:
        d = DeviceOut.of(service.get_device(s, who, device_id)).model_dump(mode="json")
        d["certificates"] = [
            CertificateOut.of(r, device_id).model_dump(mode="json", exclude={"certificate"})
            for r in service.list_certificates(s, who, device_id)
        ]
    typer.echo(json.dumps(d, indent=2))


@device_app.command("register")
def device_register(
    ctx: typer.Context, device_id: str, product: str | None = None, tenant: str = TENANT
) -> None:
    """Register a device (pending)."""
    with admin_session(ctx, tenant, action="device.register", subject=f"device:{device_id}") as (
        _app,
        who,
        s,
    ):
        service.register_device(s, who, device_id=device_id, product=product)
    console.print(f"device {device_id} registered")


@device_app.command("enroll")
def device_enroll(
    ctx: typer.Context,
    device_id: str,
    csr: Path = typer.Option(..., help="the device's PKCS#10 request (PEM or DER)"),
    environment: str = typer.Option("production", "--env"),
    out: Path | None = typer.Option(None, help="write the certificate here (PEM)"),
    tenant: str = TENANT,
) -> None:
    """Issue a device certificate from its CSR (an enrollment record is kept)."""
    app = load_ctx(ctx)
    who = local_principal(app, tenant)
    with app.refusals_recorded(
        actor=who.actor,
        action="certificate.issue",
        subject=f"device:{device_id[:64]}",
        tenant_id=who.tenant_id,
    ):
        result = app.enroll_devices(
            who,
            items=[issuance.BatchItem(device_id=device_id, csr=csr.read_bytes())],
            environment=environment,
            route="cli",
        )[0]
    if result.error is not None:
        raise result.error  # already recorded, with the enrollment record
    if result.issued is None:
        raise RuntimeError("broken invariant, expected: result.issued is not None")
    r = result.issued
    pem = certificate_out(r).certificate
    if out:
        out.write_text(pem)
        console.print(f"certificate {r.serial} written to {out}")
    else:
        typer.echo(pem, nl=False)


@device_app.command("state")
def device_state(
    ctx: typer.Context, device_id: str, state: str, reason: str | None = None, tenant: str = TENANT
) -> None:
    """Move a device to another lifecycle state."""
    with admin_session(ctx, tenant, action="device.state", subject=f"device:{device_id[:64]}") as (
        _app,
        who,
        s,
    ):
        service.set_device_state(s, who, device_id, state=state, reason=reason)
    console.print(f"device {device_id} is {state}")


@device_app.command("revoke")
def device_revoke(
    ctx: typer.Context, device_id: str, reason: str = "unspecified", tenant: str = TENANT
) -> None:
    """Revoke a device and all its certificates."""
    with admin_session(ctx, tenant, action="device.revoke", subject=f"device:{device_id[:64]}") as (
        _app,
        who,
        s,
    ):
        service.revoke_device(s, who, device_id, reason=reason)
    console.print(f"device {device_id} revoked")


@cert_app.command("show")
def cert_show(ctx: typer.Context, serial: str, tenant: str = TENANT) -> None:
    """Show a certificate (JSON, with PEM)."""
    app = load_ctx(ctx)
    who = local_principal(app, tenant)
    with app.db.session() as s:
        typer.echo(
            CertificateOut.of(service.get_certificate(s, who, serial)).model_dump_json(indent=2)
        )


@cert_app.command("revoke")
def cert_revoke(
    ctx: typer.Context,
    serial: str,
    reason: str = typer.Option("unspecified", help="RFC 5280 reason, e.g. keyCompromise"),
    tenant: str = TENANT,
) -> None:
    """Revoke one certificate."""
    with admin_session(
        ctx, tenant, action="certificate.revoke", subject=f"certificate:{serial[:42]}"
    ) as (
        _app,
        who,
        s,
    ):
        service.revoke_certificate(s, who, serial, reason=reason)
    console.print(f"certificate {serial} revoked ({reason})")


@crl_app.command("publish")
def crl_publish(ctx: typer.Context, force: bool = False) -> None:
    """Rebuild stale CRLs now (the server does this every interval)."""
    app = load_ctx(ctx)
    rebuilt = publication.publish_crls(app.db, app.pki, force=force)
    for crl in rebuilt:
        console.print(f"CA {crl.ca_id}: CRL #{crl.number}, {crl.entries} entries")
    if not rebuilt:
        console.print("every CRL is current")
