"""``fleetward-agent``: enroll this device, renew its certificate."""

from __future__ import annotations

import datetime as dt
import os
import sys
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


def keystore_for(kind: str, directory: Path, token_label: str | None, pin: str | None) -> Keystore:
    """The keystore the options name."""
    return Keystore(kind, directory=directory, token_label=token_label, pin=pin)


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
    secure_element: Path | None = typer.Option(
        None, help="simulated secure-element vendor directory: attest the key with a chip"
    ),
) -> None:
    """Generate the identity key, build the CSR, attest it, and enroll."""
    store = keystore_for(keystore, directory, token_label, pin)
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
    within_days: float = typer.Option(30.0, help="renew when the certificate expires within"),
) -> None:
    """Renew the certificate if it expires soon (proof: a CSR from the same key)."""
    store = keystore_for(keystore, directory, token_label, pin)
    with Server(server) as srv:
        done = renew(srv, store, directory / device_id, within=dt.timedelta(days=within_days))
    console.print("renewed" if done else "certificate is not due for renewal")


def main() -> None:
    """Console entry point."""
    try:
        app()
    except FleetwardError as exc:
        console.print(f"[red]error:[/red] {exc.detail}")
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
