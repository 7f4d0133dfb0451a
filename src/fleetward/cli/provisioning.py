"""``fleetward factory``: factories, batches, vendor roots, records, and the factory line."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Literal

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
from rich.table import Table

from fleetward.agent.client import Server, enroll_devices
from fleetward.agent.keystore import Keystore
from fleetward.agent.secure_element import ChipTray
from fleetward.api.routes.provisioning import BatchOut, FactoryOut
from fleetward.cli.common import (
    JSON,
    TENANT,
    Environment,
    admin_session,
    console,
    load_ctx,
    local_principal,
    print_json,
)
from fleetward.errors import InvalidInputError
from fleetward.provisioning import service
from fleetward.store import utcnow

factory_app = typer.Typer(help="Factories, batches and the factory line.", no_args_is_help=True)


@factory_app.command("create")
def create(
    ctx: typer.Context,
    name: str,
    environment: Environment = typer.Option(..., "--env", help="the environment it enrolls into"),
    tenant: str = TENANT,
) -> None:
    """Register a factory."""
    with admin_session(ctx, tenant, action="factory.create", subject=f"factory:{name}") as (
        _app,
        who,
        s,
    ):
        f = service.create_factory(s, who, name=name, environment=environment)
        console.print(f"factory {f.id} ({f.name}, {f.environment})")


@factory_app.command("list")
def list_(ctx: typer.Context, tenant: str = TENANT, as_json: bool = JSON) -> None:
    """List factories and their batches (with --json: an object of both lists)."""
    app = load_ctx(ctx)
    who = local_principal(app, tenant)
    with app.db.read() as s:
        factories = [FactoryOut.of(f) for f in service.list_factories(s, who)]
        batches = [BatchOut.of(b) for b in service.list_batches(s, who)]
    if as_json:
        print_json(
            {
                "factories": [f.model_dump(mode="json") for f in factories],
                "batches": [b.model_dump(mode="json") for b in batches],
            }
        )
        return
    for f in factories:
        console.print(f"factory {f.id}: {f.name} ({f.environment})")
    table = Table("batch", "factory", "product", "env", "status", "used", "expires")
    for b in batches:
        table.add_row(
            str(b.id),
            str(b.factory_id),
            b.product,
            b.environment,
            b.status,
            f"{b.used_count}/{b.max_count}",
            b.expires_at.isoformat(timespec="seconds"),
        )
    console.print(table)


@factory_app.command("token")
def token(
    ctx: typer.Context,
    factory_id: int,
    name: str = typer.Option("station"),
    tenant: str = TENANT,
) -> None:
    """Create a factory-operator token bound to the factory (printed once)."""
    with admin_session(ctx, tenant, action="token.create", subject=f"factory:{factory_id}") as (
        _app,
        who,
        s,
    ):
        _, secret = service.create_factory_token(s, who, factory_id=factory_id, name=name)
    typer.echo(secret)


@factory_app.command("batch")
def batch(
    ctx: typer.Context,
    factory_id: int,
    product: str = typer.Option(...),
    prefix: str = typer.Option(..., help="serial range prefix, e.g. SN"),
    start: int = typer.Option(1),
    end: int = typer.Option(...),
    width: int = typer.Option(6, help="digits after the prefix"),
    max_count: int | None = typer.Option(None),
    expires_in_hours: float = typer.Option(24.0),
    tenant: str = TENANT,
) -> None:
    """Authorise a serial range of devices at a factory."""
    with admin_session(ctx, tenant, action="batch.create", subject=f"factory:{factory_id}") as (
        _app,
        who,
        s,
    ):
        b = service.create_batch(
            s,
            who,
            factory_id=factory_id,
            product=product,
            expires_at=utcnow() + dt.timedelta(hours=expires_in_hours),
            range_prefix=prefix,
            range_start=start,
            range_end=end,
            range_width=width,
            max_count=max_count,
        )
    typer.echo(b.id)


@factory_app.command("root")
def root(
    ctx: typer.Context,
    cert: Path = typer.Option(..., help="vendor attestation root (PEM)"),
    name: str = typer.Option(...),
    tenant: str = TENANT,
) -> None:
    """Trust a chip vendor's attestation root."""
    with admin_session(ctx, tenant, action="attestation-root.register", subject=f"root:{name}") as (
        _app,
        who,
        s,
    ):
        r = service.register_root(s, who, name=name, certificate_pem=cert.read_bytes())
    console.print(f"attestation root {r.id} registered (sha256 {r.fingerprint[:16]}...)")


@factory_app.command("attempts")
def attempts(
    ctx: typer.Context,
    fmt: Literal["json", "csv"] = typer.Option("json", "--format", help="export format"),
    batch_id: int | None = typer.Option(None, "--batch", help="only this batch's records"),
    tenant: str = TENANT,
) -> None:
    """Export enrollment records (who provisioned what, when, how)."""
    app = load_ctx(ctx)
    who = local_principal(app, tenant)
    rows: list[dict[str, object]] = []
    after = 0
    with app.db.read() as s:
        while True:
            page = service.list_attempts(s, who, batch_id=batch_id, after_id=after, limit=10_000)
            if not page:
                break
            rows.extend(service.attempt_record(a) for a in page)
            after = page[-1].id
    typer.echo(service.attempts_csv(rows) if fmt == "csv" else json.dumps(rows, indent=2), nl=False)


def _range_ids(batch: dict[str, object], count: int) -> list[str]:
    prefix, width = batch.get("range_prefix"), batch.get("range_width")
    if not isinstance(prefix, str) or not isinstance(width, int):
        raise InvalidInputError("the factory line needs a serial-range batch")
    start = int(batch["range_start"]) + int(batch["used_count"])  # type: ignore[call-overload]
    end = int(batch["range_end"])  # type: ignore[call-overload]
    if start + count - 1 > end:
        raise InvalidInputError(f"the batch has only {end - start + 1} unused serials left")
    return [f"{prefix}{n:0{width}d}" for n in range(start, start + count)]


@factory_app.command("run")
def run(
    batch_id: int = typer.Option(..., "--batch"),
    count: int = typer.Option(..., min=1),
    server: str = typer.Option(..., envvar="FLEETWARD_SERVER"),
    station_token: str = typer.Option(..., "--token", envvar="FLEETWARD_TOKEN"),
    directory: Path | None = typer.Option(
        None, "--dir", help="device identities and manifest.json [default: factory-out]"
    ),
    out_alias: Path | None = typer.Option(None, "--out", hidden=True),  # the old spelling
    keystore: Literal["software", "pkcs11"] = typer.Option("software", help="where keys live"),
    pkcs11_token: str | None = typer.Option(None, envvar="FLEETWARD_AGENT_PKCS11_TOKEN"),
    pkcs11_pin: str | None = typer.Option(None, envvar="FLEETWARD_AGENT_PKCS11_PIN"),
    secure_elements: Path | None = typer.Option(
        None,
        help="a tray of secure elements the vendor shipped (fleetward sim chips): one "
        "attests each key; a directory holding any other private key is refused",
    ),
) -> None:
    """Provision COUNT devices of a batch with the real agent code, then write a manifest."""
    out = directory or out_alias or Path("factory-out")
    # Checked first: a station never holds the vendor's key (or any key but its chips').
    tray = ChipTray.open(secure_elements) if secure_elements else None
    store = Keystore(keystore, directory=out / "keys", token_label=pkcs11_token, pin=pkcs11_pin)
    started = utcnow()
    with Server(server, token=station_token) as srv:
        ids = _range_ids(srv.batch(batch_id), count)
        shipped = tray.take(len(ids)) if tray else None
        chips = [c.element for c in shipped] if shipped else None
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=console,
        ) as progress:
            task = progress.add_task(f"batch {batch_id}", total=len(ids))
            results = enroll_devices(
                srv,
                store,
                batch_id=batch_id,
                device_ids=ids,
                out_dir=out / "devices",
                chips=chips,
                on_progress=lambda n: progress.advance(task, n),
            )
    if tray is not None and shipped is not None:
        # A chip that attested a device stays with it (it attests its later keys).
        for chip, result in zip(shipped, results, strict=True):
            if result.error is None:
                tray.seat(chip, out / "devices" / result.device_id)
    manifest = {
        "batch": batch_id,
        "started": started.isoformat(),
        "finished": utcnow().isoformat(),
        "keystore": keystore,
        "devices": [r.__dict__ for r in results],
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    ok = sum(1 for r in results if r.error is None)
    console.print(f"provisioned {ok} of {len(results)}; manifest in {out / 'manifest.json'}")
    if ok != len(results):
        raise typer.Exit(1)
