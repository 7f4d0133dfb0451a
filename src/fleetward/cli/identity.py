"""``fleetward ca``, ``fleetward device``, ``fleetward cert`` and ``fleetward crl``."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Literal, get_args

import typer
from rich.table import Table

from fleetward.api.routes.identity import DeviceState
from fleetward.cli.common import (
    JSON,
    KEY_BACKEND,
    TENANT,
    Environment,
    KeyBackend,
    admin_session,
    console,
    load_ctx,
    load_settings,
    local_principal,
    print_items,
    print_json,
)
from fleetward.identity import (
    CertificateAuthority,
    ca_service,
    issuance,
    publication,
    rotation,
    service,
)
from fleetward.identity.revocation import REASONS
from fleetward.identity.schemas import CaOut, CertificateOut, DeviceOut, certificate_out
from fleetward.keys import open_signer
from fleetward.tenancy import service as tenancy

ca_app = typer.Typer(help="Certificate authorities.", no_args_is_help=True)
device_app = typer.Typer(help="Device registry and enrollment.", no_args_is_help=True)
cert_app = typer.Typer(help="Device certificates.", no_args_is_help=True)
crl_app = typer.Typer(help="Certificate revocation lists.", no_args_is_help=True)

# RFC 5280 reasons a device certificate may be revoked for (see identity.revocation).
Reason = Literal[
    "unspecified",
    "keyCompromise",
    "cACompromise",
    "affiliationChanged",
    "superseded",
    "cessationOfOperation",
    "privilegeWithdrawn",
    "aACompromise",
]
if set(get_args(Reason)) != set(REASONS):  # one list of reasons, checked at import
    raise RuntimeError("Reason must list fleetward.identity.revocation.REASONS")
REASON = typer.Option("unspecified", "--reason", help="RFC 5280 revocation reason")


@ca_app.command("list")
def ca_list(ctx: typer.Context, tenant: str = TENANT, as_json: bool = JSON) -> None:
    """List a tenant's CAs (with where their keys are kept)."""
    app = load_ctx(ctx)
    who = local_principal(app, tenant)
    with app.db.session() as s:
        cas = ca_service.list_cas(s, tenant_id=who.tenant_id)
        if as_json:
            print_items([CaOut.of(c, key_location=True) for c in cas])
            return
        table = Table("id", "kind", "env", "status", "trusted until", "subject", "key")
        for ca in cas:
            table.add_row(
                str(ca.id), ca.kind, ca.environment or "-", ca.status, _trust(ca), ca.subject,
                ca.key_uri,
            )  # fmt: skip
    console.print(table)


def _trust(ca: CertificateAuthority) -> str:
    """The trust column of ``ca list``: a retired CA's deadline, a distrusted one's end."""
    if ca.status == "distrusted" and ca.distrusted_at is not None:
        return f"distrusted {ca.distrusted_at:%Y-%m-%d %H:%M:%S}Z"
    if ca.status == "retired":
        until = f"{ca.trusted_until:%Y-%m-%d %H:%M:%S}Z" if ca.trusted_until else "no deadline"
        return until + (" or when migrated" if ca.distrust_when_migrated else "")
    return "-"


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(text: str) -> dt.timedelta:
    """``90s``, ``30m``, ``12h``, ``7d`` or plain seconds."""
    text = text.strip()
    unit = _UNITS.get(text[-1:])
    digits = text[:-1] if unit else text
    if not (digits.isascii() and digits.isdigit()) or len(digits) > 12:
        raise typer.BadParameter(f"{text!r} is not a duration like 7d, 12h, 30m or 90s")
    return dt.timedelta(seconds=int(digits) * (unit or 1))


@ca_app.command("distrust")
def ca_distrust(
    ctx: typer.Context,
    ca_id: int,
    force: bool = typer.Option(
        False, "--force", help="even though devices still depend on it (they are cut off)"
    ),
    tenant: str = TENANT,
) -> None:
    """Close a retired issuing CA's trust window now: it leaves every trust
    file and its certificates still good are revoked."""
    with admin_session(ctx, tenant, action="ca.distrust", subject=f"ca:{ca_id}") as (_, who, s):
        done = rotation.distrust_ca(s, who, ca_id, force=force)
    console.print(
        f"CA {ca_id} distrusted ({done.why}); {done.revoked} certificate(s) revoked"
        + (f", e.g. of {', '.join(done.stranded)}: re-provision them" if done.stranded else "")
    )


@ca_app.command("dependents")
def ca_dependents(
    ctx: typer.Context, ca_id: int, tenant: str = TENANT, as_json: bool = JSON
) -> None:
    """Devices that still depend on a CA (hold a good, unexpired certificate of it)."""
    app = load_ctx(ctx)
    who = local_principal(app, tenant)
    with app.db.read() as s:
        ca = ca_service.get_ca(s, tenant_id=who.tenant_id, ca_id=ca_id)
        count = rotation.dependents(s, ca_id=ca.id)
        sample = rotation.dependent_devices(s, ca_id=ca.id, limit=50)
    if as_json:
        print_json({"ca_id": ca_id, "dependents": count, "sample": sample})
        return
    console.print(f"{count} device(s) depend on CA {ca_id}" + (":" if sample else ""))
    for device_id in sample:
        console.print(f"  {device_id}")


@ca_app.command("issuing-csr")
def ca_issuing_csr(
    ctx: typer.Context,
    environment: Environment = typer.Option(..., "--env", help="the CA's environment"),
    out: Path = typer.Option(..., help="where to write the CSR (PEM)"),
    tenant: str = TENANT,
    key_backend: KeyBackend = KEY_BACKEND,
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
    environment: Environment = typer.Option(..., "--env", help="the CA's environment"),
    out: Path = typer.Option(..., help="where to write the certificate (PEM)"),
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
    trust_window: str = typer.Option(
        "7d", help="how long the CA it replaces stays trusted (7d, 12h, 30m, 90s)"
    ),
    reason: str = typer.Option(
        "superseded",
        help="what the replaced CA's certificates are revoked for: superseded, or cACompromise",
    ),
    distrust_when_migrated: bool = typer.Option(
        False, help="distrust the replaced CA as soon as no device depends on it"
    ),
    tenant: str = TENANT,
) -> None:
    """Activate a pending issuing CA with its signed certificate (the active
    one of its environment retires, trusted for --trust-window)."""
    window = _duration(trust_window)
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
            trust_window=window,
            reason=reason,
            distrust_when_migrated=distrust_when_migrated,
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
    ctx: typer.Context,
    tenant: str = TENANT,
    state: DeviceState | None = typer.Option(None, "--state", help="only devices in this state"),
    product: str | None = typer.Option(None, "--product", help="only devices of this product"),
    limit: int = typer.Option(100, "--limit", min=1, max=1000, help="devices at most"),
    as_json: bool = JSON,
) -> None:
    """List devices, by device id."""
    app = load_ctx(ctx)
    who = local_principal(app, tenant)
    with app.db.session() as s:
        devices = [
            DeviceOut.of(d)
            for d in service.list_devices(s, who, state=state, product=product, limit=limit)
        ]
    if as_json:
        print_items(devices)
        return
    table = Table("device", "product", "state", "labels", "updated")
    for d in devices:
        labels = ", ".join(f"{k}={v}" for k, v in d.labels.items())
        table.add_row(d.device_id, d.product, d.state, labels, d.updated_at.isoformat())
    console.print(table)


@device_app.command("show")
def device_show(
    ctx: typer.Context, device_id: str, tenant: str = TENANT, as_json: bool = JSON
) -> None:
    """Show a device and its certificate history."""
    app = load_ctx(ctx)
    who = local_principal(app, tenant)
    with app.db.session() as s:
        device = DeviceOut.of(service.get_device(s, who, device_id))
        certificates = [
            CertificateOut.of(r, device_id) for r in service.list_certificates(s, who, device_id)
        ]
    if as_json:
        print_json(
            {
                **device.model_dump(mode="json"),
                "certificates": [
                    c.model_dump(mode="json", exclude={"certificate"}) for c in certificates
                ],
            }
        )
        return
    for name, value in device.model_dump(mode="json").items():
        console.print(f"{name}: {value}")
    table = Table("serial", "environment", "not after", "status")
    for c in certificates:
        reason = f" ({c.revocation_reason})" if c.revocation_reason else ""
        table.add_row(c.serial, c.environment, c.not_after.isoformat(), c.status + reason)
    console.print(table)


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
    environment: Environment = typer.Option("production", "--env", help="the device's environment"),
    out: Path | None = typer.Option(None, help="write the certificate here (PEM)"),
    tenant: str = TENANT,
) -> None:
    """Issue a device certificate from its CSR (an enrollment record is kept)."""
    app = load_ctx(ctx)
    who = local_principal(app, tenant)
    r = app.enroll_one(
        who,
        issuance.BatchItem(device_id=device_id, csr=csr.read_bytes()),
        environment=environment,
        route="cli",
    )
    pem = certificate_out(r).certificate
    if out:
        out.write_text(pem)
        console.print(f"certificate {r.serial} written to {out}")
    else:
        typer.echo(pem, nl=False)


@device_app.command("state")
def device_state(
    ctx: typer.Context,
    device_id: str,
    state: DeviceState = typer.Argument(..., help="the new lifecycle state"),
    reason: str | None = typer.Option(None, "--reason", help="why (recorded in the audit log)"),
    tenant: str = TENANT,
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
    ctx: typer.Context, device_id: str, reason: Reason = REASON, tenant: str = TENANT
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
def cert_show(ctx: typer.Context, serial: str, tenant: str = TENANT, as_json: bool = JSON) -> None:
    """Show a certificate (with its PEM)."""
    app = load_ctx(ctx)
    who = local_principal(app, tenant)
    with app.db.session() as s:
        cert = CertificateOut.of(service.get_certificate(s, who, serial))
    if as_json:
        typer.echo(cert.model_dump_json(indent=2))
        return
    for name, value in cert.model_dump(mode="json", exclude={"certificate"}).items():
        console.print(f"{name}: {value}")
    typer.echo(cert.certificate, nl=False)


@cert_app.command("revoke")
def cert_revoke(
    ctx: typer.Context,
    serial: str,
    reason: Reason = REASON,
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
