"""``fleetward-agent``: enroll this device, renew its certificate."""

from __future__ import annotations

import datetime as dt
import sys
import time
from pathlib import Path

import typer
from rich.console import Console

from fleetward.agent.client import Server, enroll_devices, renew
from fleetward.agent.keystore import Keystore
from fleetward.agent.secure_element import SimulatedVendor
from fleetward.errors import FleetwardError

app = typer.Typer(
    help="fleetward device agent.", no_args_is_help=True, pretty_exceptions_enable=False
)
console = Console(stderr=True)

KEYSTORE = typer.Option("software", help="software or pkcs11")
TOKEN_LABEL = typer.Option(None, envvar="FLEETWARD_AGENT_PKCS11_TOKEN", help="PKCS#11 token label")
PIN = typer.Option(None, envvar="FLEETWARD_AGENT_PKCS11_PIN", help="PKCS#11 user PIN")
MODULE = typer.Option(
    None,
    "--pkcs11-module",
    envvar="FLEETWARD_AGENT_PKCS11_MODULE",
    help="PKCS#11 library (default SoftHSM2's)",
)


def keystore_for(
    kind: str,
    directory: Path,
    token_label: str | None,
    pin: str | None,
    module: str | None = None,
) -> Keystore:
    """The keystore the options name."""
    return Keystore(kind, directory=directory, token_label=token_label, pin=pin, module=module)


@app.command()
def enroll(
    device_id: str = typer.Option(..., help="this device's id (the batch must list it)"),
    batch: int = typer.Option(..., help="enrollment batch id"),
    server: str = typer.Option(..., envvar="FLEETWARD_SERVER", help="fleetward base URL"),
    token: str = typer.Option(..., envvar="FLEETWARD_TOKEN", help="factory-operator token"),
    directory: Path = typer.Option(Path("fleetward-agent"), "--dir", help="state directory"),
    keystore: str = KEYSTORE,
    token_label: str | None = TOKEN_LABEL,
    pin: str | None = PIN,
    pkcs11_module: str | None = MODULE,
    secure_element: Path | None = typer.Option(
        None, help="simulated secure-element vendor directory: attest the key with a chip"
    ),
) -> None:
    """Generate the identity key, build the CSR, attest it, and enroll."""
    store = keystore_for(keystore, directory, token_label, pin, pkcs11_module)
    chips = [SimulatedVendor.open(secure_element).chip(device_id)] if secure_element else None
    with Server(server, token=token) as srv:
        [result] = enroll_devices(
            srv, store, batch_id=batch, device_ids=[device_id], out_dir=directory, chips=chips
        )
    if result.error:
        console.print(f"[red]refused[/red]: {result.error}")
        raise typer.Exit(1)
    console.print(f"enrolled {device_id}: serial {result.serial}, key {result.key_origin}")


@app.command("renew")
def renew_cmd(
    device_id: str = typer.Option(...),
    server: str = typer.Option(..., envvar="FLEETWARD_SERVER"),
    directory: Path = typer.Option(Path("fleetward-agent"), "--dir"),
    keystore: str = KEYSTORE,
    token_label: str | None = TOKEN_LABEL,
    pin: str | None = PIN,
    pkcs11_module: str | None = MODULE,
    within_days: float = typer.Option(30.0, help="renew when the certificate expires within"),
    new_key: bool = typer.Option(
        False, "--new-key", help="move to a new identity key (the current key signs the proof)"
    ),
    secure_element: Path | None = typer.Option(
        None, help="simulated secure-element vendor directory: attest the new key with a chip"
    ),
) -> None:
    """Renew the certificate if it expires soon (proof: a CSR from the same key, or,
    with ``--new-key``, the current key's signature and the chip's attestation)."""
    store = keystore_for(keystore, directory, token_label, pin, pkcs11_module)
    chip = SimulatedVendor.open(secure_element).chip(device_id) if secure_element else None
    with Server(server) as srv:
        done = renew(
            srv,
            store,
            directory / device_id,
            within=dt.timedelta(days=within_days),
            new_key=new_key,
            chip=chip,
        )
    console.print("renewed" if done else "certificate is not due for renewal")


@app.command("run")
def run_cmd(
    device_id: str = typer.Option(..., help="this device's id"),
    server: str = typer.Option(..., envvar="FLEETWARD_SERVER", help="fleetward base URL"),
    directory: Path = typer.Option(Path("fleetward-agent"), "--dir", help="state directory"),
    keystore: str = KEYSTORE,
    token_label: str | None = TOKEN_LABEL,
    pin: str | None = PIN,
    pkcs11_module: str | None = MODULE,
    broker: str | None = typer.Option(
        None, help="host:port of the broker (default: what the server announces)"
    ),
    broker_ca: Path | None = typer.Option(
        None, help="CA of the broker's certificate (default: fetched from the server once)"
    ),
    interval: float = typer.Option(10.0, help="seconds between telemetry readings"),
    renew_within_days: float = typer.Option(30.0, help="renew when expiry is this close"),
    hardware: str | None = typer.Option(
        None, help="this device's hardware id: take OTA offers for it (A/B slots in --dir)"
    ),
    firmware_version: str = typer.Option("0.0.0", help="the version the device ships with"),
) -> None:
    """Connect to the broker with this device's certificate, publish telemetry,
    answer allowed commands, reconnect with backoff, renew before expiry."""
    import signal
    import threading

    import httpx

    from fleetward.agent.mqtt import AgentConfig, DeviceAgent

    device_dir = directory / device_id
    ca_path = broker_ca or device_dir / "broker-ca.pem"
    host, port = "", 0
    if broker is None or not ca_path.exists():
        info = httpx.get(f"{server.rstrip('/')}/api/v1/comms/broker", timeout=10).json()
        host, port = info["host"], int(info["port"])
        if not ca_path.exists():
            ca_path.write_text(info["ca_pem"])
    if broker is not None:
        host, _, port_text = broker.rpartition(":")
        port = int(port_text)
    config = AgentConfig(
        directory=device_dir,
        keystore=keystore_for(keystore, directory, token_label, pin, pkcs11_module),
        broker_host=host,
        broker_port=port,
        broker_ca=ca_path,
        server_url=server,
        telemetry_interval=interval,
        renew_within=dt.timedelta(days=renew_within_days),
    )
    ota = None
    if hardware is not None:
        from fleetward.agent.mqtt import tenant_of
        from fleetward.agent.ota import OtaClient

        ota = OtaClient(
            device_dir,
            server_url=server,
            tenant=tenant_of(device_dir / "cert.pem"),
            hardware=hardware,
            initial_version=firmware_version,
        )
    agent = DeviceAgent(config, reading=lambda: {"uptime": round(time.monotonic(), 1)}, ota=ota)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    console.print(f"{device_id}: connecting to {host}:{port} (Ctrl-C stops)")
    try:
        agent.run(stop)
    except KeyboardInterrupt:
        stop.set()
    console.print(
        f"{device_id}: {agent.stats.published} messages acknowledged, "
        f"{agent.stats.connects} connections, {agent.stats.renewals} renewals"
    )


def main() -> None:
    """Console entry point."""
    try:
        app()
    except FleetwardError as exc:
        console.print(f"[red]error:[/red] {exc.detail}")
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
