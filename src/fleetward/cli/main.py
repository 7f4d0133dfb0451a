"""Entry point of the ``fleetward`` command: ``init``, ``serve`` and the domain groups."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape

from fleetward import __version__, logs
from fleetward.cli._errors import CleanErrors, describe
from fleetward.cli.audit import audit_app
from fleetward.cli.common import KEY_BACKEND, KeyBackend, console, err, load_ctx, local_actor
from fleetward.cli.comms import broker_app, policy_app
from fleetward.cli.config import LOG_FORMAT, LOG_LEVEL, config_app
from fleetward.cli.identity import ca_app, cert_app, crl_app, device_app
from fleetward.cli.ota import ota_app
from fleetward.cli.provisioning import factory_app
from fleetward.cli.response import drill_app, incident_app, playbook_app
from fleetward.cli.sim import sim_app
from fleetward.cli.tenancy import tenant_app, token_app
from fleetward.cli.trustmap import trustmap_app
from fleetward.cli.vulns import vulns_app
from fleetward.config import LogFormat, LogLevel, Settings, default_home
from fleetward.errors import FleetwardError
from fleetward.runtime.context import AppContext
from fleetward.runtime.installation import initialise

if TYPE_CHECKING:
    from fleetward.runtime.stack import Stack

app = typer.Typer(
    help="fleetward: trust plane for device fleets.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    cls=CleanErrors,  # bad data becomes a FleetwardError: one line and exit 1 (main)
)
app.add_typer(tenant_app, name="tenant")
app.add_typer(token_app, name="token")
app.add_typer(ca_app, name="ca")
app.add_typer(device_app, name="device")
app.add_typer(cert_app, name="cert")
app.add_typer(crl_app, name="crl")
app.add_typer(audit_app, name="audit")
app.add_typer(factory_app, name="factory")
app.add_typer(policy_app, name="policy")
app.add_typer(broker_app, name="broker")
app.add_typer(ota_app, name="ota")
app.add_typer(sim_app, name="sim")
app.add_typer(playbook_app, name="playbook")
app.add_typer(incident_app, name="incident")
app.add_typer(drill_app, name="drill")
app.add_typer(config_app, name="config")
app.add_typer(vulns_app, name="vulns")
app.add_typer(trustmap_app, name="trustmap")


@app.callback()
def root(
    ctx: typer.Context,
    home: Path | None = typer.Option(
        None, "--home", envvar="FLEETWARD_HOME", help="data directory (default ~/.fleetward)"
    ),
) -> None:
    """fleetward: trust plane for device fleets."""
    ctx.obj = {"home": str(home) if home else None}


@app.command()
def version() -> None:
    """Print the fleetward version."""
    typer.echo(__version__)


@app.command()
def init(
    ctx: typer.Context,
    key_backend: KeyBackend = KEY_BACKEND,
    offline_root: Path | None = typer.Option(
        None, help="write the root CA key here (encrypted) instead of keeping it"
    ),
    public_url: str | None = typer.Option(
        None,
        help="base URL in certificates: the device plane (default https://127.0.0.1:8443)",
    ),
) -> None:
    """Create the home directory, database, checkpoint key, tenant `default` with
    its CAs, and print the first admin API token (once)."""
    home = ctx.find_root().obj.get("home")
    settings = Settings.load(Path(home) if home else default_home())
    if public_url:
        settings = settings.replace(public_url=public_url.rstrip("/"))
    _, token = initialise(
        settings, actor=local_actor(), key_backend=key_backend, offline_root=offline_root
    )
    console.print(f"fleetward initialised in {settings.home}")
    console.print(f"database: {settings.database_url}")
    if offline_root:
        console.print(f"root CA key written to {offline_root}: move it offline")
    console.print("first admin API token (shown once, keep it):")
    typer.echo(token)


@app.command()
def doctor(
    ctx: typer.Context,
    fix: bool = typer.Option(
        False, "--fix", help="remove group/other permission bits (ownership is only reported)"
    ),
) -> None:
    """Check that the home directory is private: report group/other permission
    bits on the home and anything under it (and on a SQLite database kept
    elsewhere), and entries not owned by you. Only reports unless --fix.
    Exits 1 while any problem remains."""
    from sqlalchemy.engine import make_url

    from fleetward._files import inspect_home

    home = ctx.find_root().obj.get("home")
    settings = Settings.load(Path(home) if home else default_home())
    if not settings.home.is_dir():
        err.print(f"[red]error:[/red] {settings.home} does not exist")
        raise typer.Exit(1)
    extra: list[Path] = []
    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        db = Path(url.database).resolve()
        extra = [db.with_name(db.name + s) for s in ("", "-wal", "-shm", ".writer-lock")]
    report = inspect_home(settings.home, uid=os.geteuid(), fix=fix, extra=extra)
    for finding in report.findings:
        mark = "fixed" if finding.fixed else "problem"
        typer.echo(f"{mark}: {finding.path}: {finding.problem}")
    if report.remaining:
        hint = "" if fix else " (--fix removes group/other bits)"
        err.print(f"{len(report.remaining)} problem(s) in {settings.home}{hint}")
        raise typer.Exit(1)
    console.print(f"{settings.home} is private")


HOST: Any = typer.Option(
    None, "--host", help="operator plane bind address (default FLEETWARD_OPERATOR_HOST, 127.0.0.1)"
)
PORT: Any = typer.Option(
    None, "--port", help="operator plane port (default FLEETWARD_OPERATOR_PORT, 8400)"
)
DEVICE_HOST: Any = typer.Option(
    None, "--device-host", help="device plane bind address (default FLEETWARD_DEVICE_HOST)"
)
DEVICE_PORT: Any = typer.Option(
    None, "--device-port", help="device plane port, TLS (default FLEETWARD_DEVICE_PORT, 8443)"
)
OPERATOR_TLS: Any = typer.Option(
    None,
    "--operator-tls/--no-operator-tls",
    help="serve the operator plane over HTTPS (default FLEETWARD_OPERATOR_TLS, off)",
)
WORKERS: Any = typer.Option(1, min=1, help="API processes (each serves both planes)")


@app.command()
def serve(
    ctx: typer.Context,
    port: int | None = PORT,
    host: str | None = HOST,
    device_port: int | None = DEVICE_PORT,
    device_host: str | None = DEVICE_HOST,
    operator_tls: bool | None = OPERATOR_TLS,
    crl_interval: float = typer.Option(
        10.0, help="publication interval: a revocation is in the CRL within this many seconds"
    ),
    checkpoint_interval: float = typer.Option(600.0, help="seconds between audit checkpoints"),
    workers: int = WORKERS,
    log_level: LogLevel | None = LOG_LEVEL,
    log_format: LogFormat | None = LOG_FORMAT,
) -> None:
    """Run the API: the operator plane (REST under /api/v1) and the device
    plane (TLS: EST, OCSP, CRLs, TUF, attestation, renewal)."""
    context = load_ctx(
        ctx,
        log_level=log_level,
        log_format=log_format,
        operator_host=host,
        operator_port=port,
        device_host=device_host,
        device_port=device_port,
        operator_tls=operator_tls,
    )
    logs.configure(level=context.settings.log_level, fmt=context.settings.log_format)
    context.db.migrate()
    _serve(
        context,
        workers=workers,
        crl_interval=crl_interval,
        checkpoint_interval=checkpoint_interval,
    )


@app.command()
def up(
    ctx: typer.Context,
    port: int | None = PORT,
    device_port: int | None = DEVICE_PORT,
    operator_tls: bool | None = OPERATOR_TLS,
    mqtt_port: int | None = typer.Option(
        None, help="production devices' MQTT port (TLS; default FLEETWARD_MQTT_PRODUCTION_PORT)"
    ),
    mqtt_test_port: int | None = typer.Option(
        None, help="test devices' MQTT port (TLS; default FLEETWARD_MQTT_TEST_PORT)"
    ),
    mqtt_drill_port: int | None = typer.Option(
        None, help="drill devices' MQTT port (TLS; default FLEETWARD_MQTT_DRILL_PORT)"
    ),
    service_port: int | None = typer.Option(
        None, help="fleetward's own MQTT port (default FLEETWARD_MQTT_SERVICE_PORT)"
    ),
    crl_interval: float = typer.Option(10.0, help="CRL publication interval (seconds)"),
    workers: int = WORKERS,
    demo: bool = typer.Option(False, "--demo", help="also run a simulated fleet (test env)"),
    demo_devices: int = typer.Option(20, min=1, max=1000, help="devices in the --demo fleet"),
    log_level: LogLevel | None = LOG_LEVEL,
    log_format: LogFormat | None = LOG_FORMAT,
) -> None:
    """Run fleetward with a Mosquitto it configures and keeps in step (all on
    127.0.0.1): both API planes, the broker with the fleetward plugin, the
    sync loop, the OTA campaign driver, telemetry ingest, the detection loop
    and the incident compliance tracker. With --demo, a simulated fleet
    enrolls and connects once the API is up."""
    from fleetward.runtime.stack import up_stack

    context = load_ctx(
        ctx,
        log_level=log_level,
        log_format=log_format,
        operator_host="127.0.0.1",
        operator_port=port,
        device_host="127.0.0.1",
        device_port=device_port,
        operator_tls=operator_tls,
        mqtt_host="127.0.0.1",
        mqtt_production_port=mqtt_port,
        mqtt_test_port=mqtt_test_port,
        mqtt_drill_port=mqtt_drill_port,
        mqtt_service_port=service_port,
    )
    settings = context.settings
    logs.configure(level=settings.log_level, fmt=settings.log_format)
    context.db.migrate()
    _ensure_environment_cas(context)
    # One API process runs the publishers in this stack; several run their
    # own (under the same leases), and this process runs the rest.
    stack = up_stack(
        context,
        api_url=_operator_url(settings),
        crl_interval=crl_interval,
        publishers=workers == 1,
        demo_devices=demo_devices if demo else None,
    )
    stack.start()  # the broker first: if it cannot start, say so and exit
    broker = stack.broker
    if broker is not None:
        console.print(
            f"mosquitto: devices on mqtts://{settings.mqtt_host}: "
            f"{settings.mqtt_production_port} (production), {settings.mqtt_test_port} (test), "
            f"{settings.mqtt_drill_port} (drill); fleetward on {settings.mqtt_service_port}; "
            f"config {broker.files.config}"
        )
    if demo:
        console.print(f"demo: {demo_devices} simulated devices connect once the API is up")
    try:
        _serve(
            context,
            workers=workers,
            crl_interval=crl_interval,
            checkpoint_interval=600.0,
            runtime=stack if workers == 1 else None,
        )
    finally:
        stack.stop()


def _ensure_environment_cas(context: AppContext) -> None:
    """Give every tenant an issuing CA per environment (installations made
    before the drill environment lack one; an offline root is left alone)."""
    from fleetward.identity import ca_service
    from fleetward.tenancy import service as tenancy

    with context.db.session() as s:
        for tenant in tenancy.list_tenants(s):
            for ca in ca_service.ensure_issuing_cas(
                s, context.pki, tenant=tenant, actor=local_actor()
            ):
                console.print(f"tenant {tenant.name}: {ca.environment} issuing CA {ca.id} created")


def _operator_url(settings: Settings) -> str:
    scheme = "https" if settings.operator_tls else "http"
    return f"{scheme}://{settings.operator_host}:{settings.operator_port}"


def _serve(
    context: AppContext,
    *,
    workers: int,
    crl_interval: float,
    checkpoint_interval: float,
    runtime: Stack | None = None,
) -> None:
    from fleetward.api.serve import plane_servers, run_planes

    settings = context.settings
    # The service CA and server certificate are made here, once, before any
    # worker process could race to create them.
    context.service_pki.server()
    console.print(f"fleetward {__version__} (home {settings.home})")
    console.print(f"operator plane: {_operator_url(settings)}")
    console.print(
        f"device plane:   https://{settings.device_host}:{settings.device_port} "
        f"(devices trust {context.service_pki.ca_cert})"
    )
    if workers > 1:
        from fleetward.api.workers import serve_workers

        context.db.dispose()
        serve_workers(
            settings,
            workers=workers,
            crl_interval=crl_interval,
            checkpoint_interval=checkpoint_interval,
        )
        return
    run_planes(
        plane_servers(
            context,
            runtime=runtime,
            crl_interval=crl_interval,
            checkpoint_interval=checkpoint_interval,
            isolate_publisher=True,
        )
    )


def main() -> None:
    """Console entry point: fleetward errors become one line and exit code 1."""
    # Whatever this process or a library writes is its user's alone (rule 4
    # of fleetward._files); the home's writers also set modes explicitly.
    os.umask(0o077)
    try:
        app()
    except FleetwardError as exc:  # bad data of every kind (see fleetward.cli._errors)
        err.print(f"[red]error:[/red] {escape(describe(exc))}", soft_wrap=True)
        sys.exit(1)
