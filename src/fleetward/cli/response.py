"""``fleetward playbook``, ``fleetward incident`` and ``fleetward drill``.

The local CLI acts as the tenant's admin (it holds the keys). Approvals are
given by security operators, so ``incident approve`` and ``drill run`` take
their API tokens.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, get_args

import typer
from rich.table import Table

from fleetward.api.routes.response import (
    DrillOut,
    IncidentOut,
    IncidentState,
    PlaybookOut,
    incident_detail,
)
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
from fleetward.errors import InvalidInputError
from fleetward.response import compliance, drills, runs, service
from fleetward.response.effects import LiveEffects
from fleetward.runtime.context import AppContext
from fleetward.tenancy import service as tenancy
from fleetward.tenancy.roles import Principal

playbook_app = typer.Typer(help="Playbooks: versioned response procedures.", no_args_is_help=True)
incident_app = typer.Typer(help="Incidents, playbook runs and approvals.", no_args_is_help=True)
drill_app = typer.Typer(
    help="Drills: rehearse a playbook on a simulated fleet.", no_args_is_help=True
)

Severity = Literal["low", "medium", "high", "critical"]
if get_args(Severity) != service.SEVERITIES:  # one list of severities, checked at import
    raise RuntimeError("Severity must list fleetward.response.service.SEVERITIES")
ENV_HELP = "the environment of the cohort"


def _params(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise InvalidInputError(f"--param {pair!r}: write name=value")
        try:
            out[name] = json.loads(value)  # numbers and lists as JSON
        except ValueError:
            out[name] = value
    return out


def _as(ctx: typer.Context, token: str) -> Principal:
    app = load_ctx(ctx)
    with app.db.read() as s:
        return tenancy.authenticate(s, token)


# --------------------------------------------------------------------------- playbooks


@playbook_app.command("list")
def playbook_list(ctx: typer.Context, tenant: str = TENANT, as_json: bool = JSON) -> None:
    """The newest version of each playbook."""
    app = load_ctx(ctx)
    who = local_principal(app, tenant)
    with app.db.read() as s:
        playbooks = [PlaybookOut.of(p) for p in service.list_playbooks(s, who)]
    if as_json:
        print_items(playbooks)
        return
    table = Table("name", "version", "by", "at")
    for p in playbooks:
        table.add_row(p.name, str(p.version), p.created_by, p.created_at.isoformat())
    console.print(table)


@playbook_app.command("show")
def playbook_show(
    ctx: typer.Context,
    name: str,
    version: int | None = typer.Option(
        None, "--version", help="a stored version (default: newest)"
    ),
    tenant: str = TENANT,
    as_json: bool = JSON,
) -> None:
    """Print a playbook's text (with --json: the playbook with its version)."""
    app = load_ctx(ctx)
    with app.db.read() as s:
        playbook = PlaybookOut.of(
            service.get_playbook(s, local_principal(app, tenant), name, version)
        )
    if as_json:
        print_json(playbook.model_dump(mode="json"))
    else:
        typer.echo(playbook.source)


@playbook_app.command("put")
def playbook_put(ctx: typer.Context, path: Path, tenant: str = TENANT) -> None:
    """Store a new version of the playbook in PATH (YAML)."""
    source = path.read_text()
    with admin_session(ctx, tenant, action="playbook.put", subject=f"file:{path.name}") as (
        _app, who, s,
    ):  # fmt: skip
        row = service.put_playbook(s, who, source)
        console.print(f"{row.name} version {row.version} stored")


@playbook_app.command("install-standard")
def playbook_install(ctx: typer.Context, tenant: str = TENANT) -> None:
    """Install the shipped playbooks the tenant does not have yet."""
    with admin_session(ctx, tenant, action="playbook.put", subject="playbook:standard") as (
        _app, who, s,
    ):  # fmt: skip
        added = service.install_standard(s, who)
        console.print(", ".join(p.name for p in added) or "all standard playbooks are installed")


# --------------------------------------------------------------------------- incidents


@incident_app.command("open")
def incident_open(
    ctx: typer.Context,
    title: str | None = typer.Option(None),
    severity: Severity | None = typer.Option(
        None, "--severity", help="default: from the alert, else medium"
    ),
    alert: int | None = typer.Option(None, help="open from this alert"),
    tenant: str = TENANT,
) -> None:
    """Open an incident by hand or from an alert."""
    with admin_session(ctx, tenant, action="incident.open", subject="incident") as (_a, who, s):
        incident = service.open_incident(s, who, title=title, severity=severity, alert_id=alert)
        console.print(f"incident {incident.id} opened: {incident.title}")


@incident_app.command("list")
def incident_list(
    ctx: typer.Context,
    tenant: str = TENANT,
    state: IncidentState | None = typer.Option(
        None, "--state", help="only incidents in this state"
    ),
    limit: int = typer.Option(100, "--limit", min=1, max=1000, help="incidents at most"),
    as_json: bool = JSON,
) -> None:
    """The tenant's incidents, newest first."""
    app = load_ctx(ctx)
    with app.db.read() as s:
        incidents = [
            IncidentOut.of(i)
            for i in service.list_incidents(
                s, local_principal(app, tenant), state=state, limit=limit
            )
        ]
    if as_json:
        print_items(incidents)
        return
    table = Table("id", "state", "severity", "title", "opened", "contained")
    for i in incidents:
        table.add_row(
            str(i.id), i.state + (" (drill)" if i.drill else ""), i.severity, i.title,
            i.opened_at.isoformat(timespec="seconds"),
            i.contained_at.isoformat(timespec="seconds") if i.contained_at else "-",
        )  # fmt: skip
    console.print(table)


@incident_app.command("show")
def incident_show(
    ctx: typer.Context, incident_id: int, tenant: str = TENANT, as_json: bool = JSON
) -> None:
    """An incident's timeline (with the audit entry of each line) and stragglers."""
    app = load_ctx(ctx)
    who = local_principal(app, tenant)
    if as_json:
        with app.db.read() as s:
            print_json(incident_detail(s, who, incident_id).model_dump(mode="json"))
        return
    with app.db.read() as s:
        incident = service.get_incident(s, who, incident_id)
        console.print(f"[bold]incident {incident.id}[/]: {incident.title} ({incident.state})")
        table = Table("at", "actor", "what", "audit")
        for e in service.timeline(s, who, incident_id):
            table.add_row(
                e.at.isoformat(timespec="seconds"), e.actor, e.summary, str(e.audit_seq or "-")
            )
        console.print(table)
        left = compliance.stragglers(s, who, incident_id)
    if left:
        console.print(f"{len(left)} device(s) have not complied yet, e.g. {left[0]['device_id']}")


@incident_app.command("dry-run")
def incident_dry_run(
    ctx: typer.Context,
    incident_id: int,
    playbook: str,
    param: list[str] = typer.Option([], help="name=value (JSON values allowed)"),
    env: Environment = typer.Option("production", "--env", help=ENV_HELP),
    confirm: int | None = typer.Option(None, help="the cohort size, when the playbook asks"),
    tenant: str = TENANT,
) -> None:
    """Show the blast radius of a run (JSON); nothing happens."""
    app = load_ctx(ctx)
    with app.db.read() as s:
        radius = runs.dry_run(
            s, local_principal(app, tenant), incident_id=incident_id, playbook=playbook,
            params=_params(param), environment=env, confirm=confirm,
        )  # fmt: skip
    print_json(radius.as_dict())


@incident_app.command("run")
def incident_run(
    ctx: typer.Context,
    incident_id: int,
    playbook: str,
    param: list[str] = typer.Option([], help="name=value (JSON values allowed)"),
    env: Environment = typer.Option("production", "--env", help=ENV_HELP),
    confirm: int | None = typer.Option(None, help="the cohort size, when the playbook asks"),
    tenant: str = TENANT,
) -> None:
    """Plan a run (destructive steps then wait for approvals)."""
    subject = f"incident:{incident_id}"
    with admin_session(ctx, tenant, action="playbook.run.plan", subject=subject) as (_a, who, s):
        run = runs.start_run(
            s, who, incident_id=incident_id, playbook=playbook, params=_params(param),
            environment=env, confirm=confirm,
        )  # fmt: skip
        console.print(f"run {run.id}: {run.state} ({run.cohort_size} devices)")


@incident_app.command("approve")
def incident_approve(
    ctx: typer.Context,
    run_id: int,
    token: str = typer.Option(..., envvar="FLEETWARD_TOKEN", help="a security operator's token"),
) -> None:
    """Approve a run as the security operator whose token is given."""
    who = _as(ctx, token)
    app = load_ctx(ctx)
    with app.operator_work(who, action="playbook.run.approve", subject=f"run:{run_id}") as s:
        run = runs.approve_run(s, who, run_id)
        console.print(f"run {run.id}: {run.state}")


@incident_app.command("execute")
def incident_execute(ctx: typer.Context, run_id: int, tenant: str = TENANT) -> None:
    """Run a ready run's steps now."""
    app = load_ctx(ctx)
    effects = LiveEffects(app.settings.home)
    try:
        run = runs.execute_run(app, local_principal(app, tenant), run_id, effects=effects)
    finally:
        effects.close()
    console.print(f"run {run.id}: {run.state}: {run.outcome}")


@incident_app.command("close")
def incident_close(
    ctx: typer.Context, incident_id: int, force: bool = False, tenant: str = TENANT
) -> None:
    """Close an incident (--force leaves devices that have not complied)."""
    with admin_session(ctx, tenant, action="incident.close", subject=f"incident:{incident_id}") as (
        _a, who, s,
    ):  # fmt: skip
        service.close_incident(s, who, incident_id, force=force)
        console.print(f"incident {incident_id} closed")


# --------------------------------------------------------------------------- drills


@drill_app.command("list")
def drill_list(
    ctx: typer.Context,
    tenant: str = TENANT,
    limit: int = typer.Option(50, "--limit", min=1, max=1000, help="drills at most"),
    as_json: bool = JSON,
) -> None:
    """Drill reports, newest first: the trend."""
    app = load_ctx(ctx)
    with app.db.read() as s:
        found = [
            DrillOut.of(d) for d in drills.list_drills(s, local_principal(app, tenant), limit=limit)
        ]
    if as_json:
        print_items(found)
        return
    table = Table("id", "when", "playbook", "state", "devices", "affected", "detect s",
                  "contain s", "stragglers")  # fmt: skip
    for d in found:
        table.add_row(
            str(d.id), d.started_at.isoformat(timespec="seconds"),
            f"{d.playbook} v{d.playbook_version}", d.state, str(d.devices), str(d.affected),
            "-" if d.detect_s is None else f"{d.detect_s:.2f}",
            "-" if d.contain_s is None else f"{d.contain_s:.2f}", str(d.stragglers),
        )  # fmt: skip
    console.print(table)


@drill_app.command("show")
def drill_show(
    ctx: typer.Context, drill_id: int, tenant: str = TENANT, as_json: bool = JSON
) -> None:
    """One drill's report (JSON, with or without --json: the report is a document)."""
    app = load_ctx(ctx)
    with app.db.read() as s:
        d = drills.get_drill(s, local_principal(app, tenant), drill_id)
        print_json({"id": d.id, "playbook": d.playbook, "state": d.state, **json.loads(d.report)})


def _batch_refs(
    app: AppContext, who: Principal, params: dict[str, Any], snapshot: list[dict[str, Any]]
) -> dict[str, Any]:
    """``@b1`` stands for the factory batch id of the simulated batch ``b1``
    (the fleet is enrolled by the drill, so its batch ids are not known before)."""
    from fleetward import identity

    out = dict(params)
    for name, value in params.items():
        if not (isinstance(value, str) and value.startswith("@")):
            continue
        members = [d["device_id"] for d in snapshot if d["batch"] == value[1:]]
        if not members:
            raise InvalidInputError(f"--param {name}={value}: the fleet has no batch {value[1:]}")
        with app.db.read() as s:
            found = identity.batches_of(s, tenant_id=who.tenant_id, device_ids=members[:1])
        if len(found) != 1:
            raise InvalidInputError(f"--param {name}={value}: batch {value[1:]} is not enrolled")
        out[name] = found.pop()
    return out


@drill_app.command("run")
def drill_run(
    ctx: typer.Context,
    playbook: str,
    server: str = typer.Option(..., envvar="FLEETWARD_SERVER", help="the running fleetward"),
    device_server: str | None = typer.Option(
        None,
        "--device-server",
        envvar="FLEETWARD_DEVICE_SERVER",
        help="its device plane (default: where the settings put it)",
    ),
    token: str = typer.Option(
        ..., envvar="FLEETWARD_TOKEN", help="admin token (enrolls the fleet)"
    ),
    approver: list[str] = typer.Option([], help="security operators' tokens, one per approval"),
    param: list[str] = typer.Option(
        [], help="name=value (JSON values allowed; @b1 is simulated batch b1's id)"
    ),
    devices: int = typer.Option(100),
    processes: int = typer.Option(1),
    batches: int = typer.Option(4),
    offline: float = typer.Option(0.02, help="fraction of devices offline during the drill"),
    inject: int = typer.Option(0, help="tamper with this many devices of batch b1 (detection)"),
    confirm: int | None = None,
    directory: Path = typer.Option(Path("drill-fleet"), "--dir"),
    tenant: str = TENANT,
) -> None:
    """Rehearse PLAYBOOK on a simulated fleet in the drill environment."""
    from fleetward.sim import FleetProcesses, FleetSpec

    app = load_ctx(ctx)
    starter = local_principal(app, tenant)
    approvers = [_as(ctx, t) for t in approver]
    spec = FleetSpec(
        devices=devices, prefix="drill", tenant=tenant, environment="drill", batches=batches,
        offline=offline, telemetry_interval=5.0,
    )  # fmt: skip
    fleet = FleetProcesses(
        spec, server_url=server, directory=directory, processes=processes, token=token,
        device_url=device_server
        or f"https://{app.settings.device_host}:{app.settings.device_port}",
        server_ca=app.service_pki.ca_cert,
    )  # fmt: skip
    fleet.prepare(on_progress=lambda done, total: console.print(f"enrolled {done}/{total}"))
    effects = LiveEffects(app.settings.home)
    try:
        fleet.start()
        snap = fleet.snapshot()
        chosen = [d["device_id"] for d in snap if d["batch"] == "b1" and d["connected"]][:inject]
        params = _batch_refs(app, starter, _params(param), snap)
        drill = drills.run_drill(
            app, fleet, starter=starter, approvers=approvers, playbook=playbook,
            params=params, inject=chosen, confirm=confirm, effects=effects,
            scenario="cli", progress=console.print,
        )  # fmt: skip
    finally:
        effects.close()
        fleet.stop()
    console.print(
        f"drill {drill.id} {drill.state}: contain {drill.contain_s} s, "
        f"{drill.stragglers} straggler(s)"
    )
