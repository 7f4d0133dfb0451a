"""``fleetward policy`` and ``fleetward broker``."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import typer
from rich.table import Table

from fleetward.api.routes.comms import PolicyOut
from fleetward.cli.common import (
    JSON,
    TENANT,
    Environment,
    admin_session,
    console,
    load_ctx,
    local_principal,
    print_items,
    print_json,
)
from fleetward.comms import service
from fleetward.comms.identities import SERVICE_JOBS
from fleetward.comms.mosquitto_conf import (
    DEFAULT_PORTS,
    DEFAULT_SERVICE_PORT,
    BrokerFiles,
    Listeners,
)
from fleetward.comms.policy import Action, load_policy_text
from fleetward.comms.sync import BrokerSync, prepare
from fleetward.errors import InvalidInputError

policy_app = typer.Typer(help="Device communication policy.", no_args_is_help=True)
broker_app = typer.Typer(help="The MQTT broker (Mosquitto) configuration.", no_args_is_help=True)


@policy_app.command("show")
def show(
    ctx: typer.Context,
    tenant: str = TENANT,
    version: int | None = typer.Option(None, help="a stored version (default: current)"),
    as_json: bool = JSON,
) -> None:
    """Print the policy document with its version and hash (JSON, with or
    without --json: the document is JSON)."""
    app = load_ctx(ctx)
    who = local_principal(app, tenant)
    with app.db.read() as s:
        v = service.get_policy(s, who, version)
    print_json({"version": v.version, "sha256": v.sha256, "document": v.policy.document()})


@policy_app.command("set")
def set_(ctx: typer.Context, path: Path, tenant: str = TENANT) -> None:
    """Validate PATH (YAML or JSON) and store it as the next version (audited)."""
    policy = load_policy_text(path.read_bytes())
    with admin_session(ctx, tenant, action="comms.policy.set", subject="policy") as (_, who, s):
        v = service.set_policy(s, who, policy)
    console.print(f"policy version {v.version} stored (sha256 {v.sha256[:16]})")


@policy_app.command("history")
def history(ctx: typer.Context, tenant: str = TENANT, as_json: bool = JSON) -> None:
    """List stored versions, newest first."""
    app = load_ctx(ctx)
    who = local_principal(app, tenant)
    with app.db.read() as s:
        versions = service.list_versions(s, who)
    if as_json:
        print_items([PolicyOut.of(v) for v in versions])
        return
    table = Table("version", "sha256", "by", "at", "roles")
    for v in versions:
        roles = ", ".join(r.name for r in v.policy.roles)
        table.add_row(str(v.version), v.sha256[:16], v.created_by, str(v.created_at), roles)
    console.print(table)


@policy_app.command("check")
def check(
    ctx: typer.Context,
    device: str | None = typer.Option(None, help="device id"),
    service_identity: str | None = typer.Option(
        None,
        "--service",
        help=f"one of fleetward's own broker identities instead: {', '.join(SERVICE_JOBS)}",
    ),
    publish: str | None = typer.Option(None, help="a topic the identity would publish to"),
    subscribe: str | None = typer.Option(None, help="a filter it would subscribe to"),
    receive: str | None = typer.Option(None, help="a topic delivered to it"),
    environment: Environment | None = typer.Option(
        None, "--env", help="the device's listener (default: the environment it lives in)"
    ),
    tenant: str = TENANT,
) -> None:
    """Allow or deny, with the rule that decided; exit 1 on deny.

    Explains a device's decision under its tenant's policy (--device), or
    one of fleetward's own identities' under the rules of its job (--service)."""
    asked: tuple[tuple[Action, str | None], ...] = (
        ("publish", publish),
        ("subscribe", subscribe),
        ("receive", receive),
    )
    given = [(a, t) for a, t in asked if t is not None]
    if len(given) != 1:
        raise InvalidInputError("give exactly one of --publish, --subscribe or --receive")
    action, topic = given[0]
    if (device is None) == (service_identity is None):
        raise InvalidInputError("give exactly one of --device or --service")
    verdict_of = {True: "[green]allow[/green]", False: "[red]deny[/red]"}
    if service_identity is not None:
        decision = service.explain_service(service_identity, action=action, topic=topic)
        who_is = f"fleetward-{service_identity}"
        console.print(f"{verdict_of[decision.allowed]} {action} {topic} for {who_is} (its job)")
        console.print(f"  {decision.rule.describe() if decision.rule else decision.reason}")
        if not decision.allowed:
            raise typer.Exit(1)
        return
    if device is None:
        raise InvalidInputError("give --device or --service")
    app = load_ctx(ctx)
    who = local_principal(app, tenant)
    with app.db.read() as s:
        decision, version, _ = service.explain(
            s, who, device, action=action, topic=topic, environment=environment
        )
    verdict = verdict_of[decision.allowed]
    console.print(f"{verdict} {action} {topic} for {device} (policy version {version.version})")
    console.print(f"  {decision.rule.describe() if decision.rule else decision.reason}")
    if not decision.allowed:
        raise typer.Exit(1)


@broker_app.command("render")
def render(
    ctx: typer.Context,
    directory: Path | None = typer.Option(
        None, "--dir", help="directory for mosquitto.conf and its files (required)"
    ),
    out_alias: Path | None = typer.Option(None, "--out", hidden=True),  # the old spelling
    host: str = typer.Option("127.0.0.1", help="listener address"),
    mqtt_port: int = typer.Option(
        DEFAULT_PORTS["production"], "--mqtt-port", help="production device listener (TLS)"
    ),
    mqtt_test_port: int = typer.Option(DEFAULT_PORTS["test"], help="test device listener"),
    mqtt_drill_port: int = typer.Option(DEFAULT_PORTS["drill"], help="drill device listener"),
    service_port: int = typer.Option(DEFAULT_SERVICE_PORT, help="fleetward's own listener"),
) -> None:
    """Write the Mosquitto configuration, certificates, plugin, ACL table,
    CA and CRL bundles for an operator-run broker. Keep them fresh with
    `fleetward broker sync --dir` (the same directory)."""
    target = directory or out_alias
    if target is None:
        raise typer.BadParameter("missing option --dir", param_hint="--dir")
    app = load_ctx(ctx)
    try:
        listeners = Listeners(
            host=host,
            ports={"test": mqtt_test_port, "production": mqtt_port, "drill": mqtt_drill_port},
            service_port=service_port,
        )
    except ValueError as exc:
        raise InvalidInputError(str(exc)) from exc
    files = prepare(
        app.db, app.pki, target.resolve(), service_pki=app.service_pki, listeners=listeners
    )
    console.print(f"broker configuration written: {files.config}")
    console.print(
        f"run: mosquitto -c {files.config}   and keep "
        f"`fleetward broker sync --dir {files.root}` running"
    )


@broker_app.command("sync")
def sync(
    ctx: typer.Context,
    directory: Path = typer.Option(..., "--dir", help="the directory `broker render` wrote"),
    pid_file: Path | None = typer.Option(
        None, help="Mosquitto's pid file, for SIGHUP on CRL change"
    ),
    interval: float = typer.Option(0.1, help="seconds between database polls"),
) -> None:
    """Keep the ACL table, CA and CRL bundles in step with the database and
    ingest the plugin's authorization events, until interrupted. Also runs
    the CRL publisher (under its lease: where `fleetward serve` publishes,
    this one stands by), so the CRL stays fresh with no API process."""
    from fleetward.runtime.broker import BrokerSyncWorker
    from fleetward.runtime.publisher import Publisher
    from fleetward.runtime.stack import Stack

    app = load_ctx(ctx)

    def reload() -> None:
        if pid_file is not None and pid_file.exists():
            import os

            os.kill(int(pid_file.read_text().strip()), signal.SIGHUP)

    files = BrokerFiles(directory.resolve())
    if not files.config.exists():
        raise InvalidInputError(f"{directory} has no mosquitto.conf; run `fleetward broker render`")
    stack = Stack(
        [
            BrokerSyncWorker(
                BrokerSync(app.db, app.pki, files, service_pki=app.service_pki, reload=reload),
                interval=interval,
            ),
            Publisher(app),
        ]
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    console.print(f"syncing {files.root} every {interval} s (Ctrl-C stops)")
    stack.start()
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        stack.stop()
