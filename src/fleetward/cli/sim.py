"""``fleetward sim``: run a simulated fleet against a fleetward server."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer
from rich.live import Live
from rich.table import Table

from fleetward.cli.common import TENANT, Environment, console
from fleetward.errors import InvalidInputError
from fleetward.sim.fleet import SimFleet, summary
from fleetward.sim.procs import FleetProcesses
from fleetward.sim.spec import FleetSpec

sim_app = typer.Typer(help="Simulated fleets: real agents, many per process.", no_args_is_help=True)


def _spec(**fields: Any) -> FleetSpec:
    try:
        return FleetSpec(**fields)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(str(exc)) from exc


def summary_table(snapshot: list[dict[str, Any]], *, elapsed: float) -> Table:
    """The live summary: connected, cut off, refused publishes, versions."""
    counts = summary(snapshot)
    table = Table(title=f"simulated fleet ({elapsed:.0f} s)", show_header=False)
    table.add_row("devices", str(counts["devices"]))
    table.add_row("online", str(counts["online"]))
    table.add_row("connected", str(counts["connected"]))
    table.add_row("cut off", str(counts["cut_off"]))
    table.add_row("refused publishes", str(counts["refused"]))
    table.add_row("acknowledged messages", str(counts["published"]))
    table.add_row("versions", ", ".join(f"{v}: {n}" for v, n in counts["versions"].items()) or "-")
    return table


@sim_app.command("run")
def run(
    server: str = typer.Option(
        ..., envvar="FLEETWARD_SERVER", help="fleetward's operator plane (enrollment)"
    ),
    device_server: str = typer.Option(
        ...,
        "--device-server",
        envvar="FLEETWARD_DEVICE_SERVER",
        help="fleetward's device plane, https://host:port",
    ),
    server_ca: Path = typer.Option(
        ...,
        "--server-ca",
        envvar="FLEETWARD_SERVER_CA",
        help="the service CA fleetward's certificates chain to (PEM)",
    ),
    token: str | None = typer.Option(
        None, envvar="FLEETWARD_TOKEN", help="admin API token (to enroll missing devices)"
    ),
    devices: int = typer.Option(100, help="how many devices"),
    env: Environment = typer.Option("drill", "--env", help="drill or test (never production)"),
    processes: int = typer.Option(1, help="processes to spread the devices over"),
    offline: float = typer.Option(0.0, help="fraction that stays offline"),
    tampered: float = typer.Option(0.0, help="fraction with a tampered bootloader"),
    slow_link_ms: int = typer.Option(0, help="delay added to each message and publish"),
    fail_health: float = typer.Option(0.0, help="fraction whose updates fail the health check"),
    batches: int = typer.Option(1, help="factory batches (cohorts) to spread devices over"),
    prefix: str = typer.Option("sim", help="device id prefix"),
    tenant: str = TENANT,
    product: str = typer.Option("sim-device"),
    hardware: str = typer.Option("sim-board"),
    firmware_version: str = typer.Option(
        "1.0.0", "--firmware-version", help="the firmware devices start with"
    ),
    interval: float = typer.Option(10.0, help="seconds between readings of a device"),
    seed: int = typer.Option(0, help="chooses the faulty devices"),
    directory: Path = typer.Option(Path("fleetward-sim"), "--dir", help="the fleet's directory"),
    duration: float | None = typer.Option(None, help="stop after this many seconds"),
    timeout: float = typer.Option(300.0, help="seconds to wait for devices to connect"),
) -> None:
    """Enroll (once) and run a simulated fleet until Ctrl-C, with a live summary."""
    spec = _spec(
        devices=devices, environment=env, offline=offline, tampered=tampered,
        slow_link_ms=slow_link_ms, fail_health=fail_health, batches=batches, prefix=prefix,
        tenant=tenant, product=product, hardware=hardware, initial_version=firmware_version,
        telemetry_interval=interval, seed=seed,
    )  # fmt: skip
    if processes < 1:
        raise InvalidInputError("--processes must be at least 1")
    fleet: SimFleet | FleetProcesses
    if processes == 1:
        fleet = SimFleet(
            spec, server_url=server, device_url=device_server, server_ca=server_ca,
            directory=directory, token=token,
        )  # fmt: skip
    else:
        fleet = FleetProcesses(
            spec, server_url=server, device_url=device_server, server_ca=server_ca,
            directory=directory, processes=processes, token=token,
        )  # fmt: skip

    def progress(done: int, total: int) -> None:
        console.print(f"enrolled {done}/{total}", end="\r")

    fleet.prepare(on_progress=progress)
    console.print()
    started = time.monotonic()
    try:
        fleet.start(timeout=timeout)
        console.print(
            f"{spec.devices} devices up in {time.monotonic() - started:.1f} s (Ctrl-C stops)"
        )
        with Live(summary_table(fleet.snapshot(), elapsed=0), console=console) as live:
            while duration is None or time.monotonic() - started < duration:
                time.sleep(1.0)
                live.update(summary_table(fleet.snapshot(), elapsed=time.monotonic() - started))
    except KeyboardInterrupt:
        pass
    finally:
        fleet.stop()


@sim_app.command("chips")
def chips(
    vendor: Path = typer.Option(
        ..., "--vendor", help="the simulated vendor's directory (root.pem, root-key.pem)"
    ),
    count: int = typer.Option(..., min=1, max=100_000, help="chips to make"),
    out: Path = typer.Option(..., "--out", help="the tray a factory station gets"),
) -> None:
    """Play the secure-element vendor: make COUNT chips in advance (each with
    its attestation key and certificate) into a tray for a factory station.
    The tray holds the vendor root's certificate, never its key."""
    from fleetward.agent.secure_element import SimulatedVendor

    if out.resolve() == vendor.resolve() or vendor.resolve() in out.resolve().parents:
        raise InvalidInputError("the tray must not be inside the vendor's directory")
    made = SimulatedVendor.open(vendor).ship(out, count=count)
    console.print(
        f"{len(made)} chip(s) in {out}; register {vendor / 'root.pem'} with fleetward factory root"
    )
