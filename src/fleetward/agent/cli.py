"""``fleetward-agent``: enroll this device, renew its certificate, run it.

``enroll`` is a station's action (an operator token) on the operator plane
(``--server``, ``FLEETWARD_SERVER``). ``renew`` and ``run`` act as the
device on the device plane (``--device-server``, ``FLEETWARD_DEVICE_SERVER``;
HTTPS, the device certificate as TLS client certificate), trusting the
service CA (``--server-ca``, ``FLEETWARD_SERVER_CA``: the file
``fleetward serve`` prints).
"""

from __future__ import annotations

import datetime as dt
import ssl
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from fleetward.agent.client import Server, device_server, enroll_devices, renew
from fleetward.agent.keystore import Keystore
from fleetward.agent.secure_element import ChipTray, SecureElement
from fleetward.errors import FleetwardError

app = typer.Typer(
    help="fleetward device agent.", no_args_is_help=True, pretty_exceptions_enable=False
)
console = Console(stderr=True, soft_wrap=True)  # an error stays one line

KEYSTORE = typer.Option("software", help="software or pkcs11")
TOKEN_LABEL = typer.Option(None, envvar="FLEETWARD_AGENT_PKCS11_TOKEN", help="PKCS#11 token label")
PIN = typer.Option(None, envvar="FLEETWARD_AGENT_PKCS11_PIN", help="PKCS#11 user PIN")
MODULE = typer.Option(
    None,
    "--pkcs11-module",
    envvar="FLEETWARD_AGENT_PKCS11_MODULE",
    help="PKCS#11 library (default SoftHSM2's)",
)
DEVICE_SERVER = typer.Option(
    ...,
    "--device-server",
    envvar="FLEETWARD_DEVICE_SERVER",
    help="fleetward's device plane, https://host:port",
)
SERVER_CA = typer.Option(
    ...,
    "--server-ca",
    envvar="FLEETWARD_SERVER_CA",
    help="the service CA the device plane's certificate chains to (PEM)",
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
        None,
        help="a tray of secure elements the vendor shipped (fleetward sim chips): one "
        "attests the key and stays with the device; a directory holding any other private "
        "key is refused",
    ),
) -> None:
    """Generate the identity key, build the CSR, attest it, and enroll."""
    tray = ChipTray.open(secure_element) if secure_element else None
    store = keystore_for(keystore, directory, token_label, pin, pkcs11_module)
    shipped = tray.take(1) if tray else None
    chips = [c.element for c in shipped] if shipped else None
    with Server(server, token=token) as srv:
        [result] = enroll_devices(
            srv, store, batch_id=batch, device_ids=[device_id], out_dir=directory, chips=chips
        )
    if result.error:
        console.print(f"[red]refused[/red]: {result.error}")
        raise typer.Exit(1)
    if shipped:  # the chip attests this device's later keys
        ChipTray.seat(shipped[0], directory / device_id)
    console.print(f"enrolled {device_id}: serial {result.serial}, key {result.key_origin}")


@app.command("renew")
def renew_cmd(
    device_id: str = typer.Option(...),
    device_server_url: str = DEVICE_SERVER,
    server_ca: Path = SERVER_CA,
    directory: Path = typer.Option(Path("fleetward-agent"), "--dir"),
    keystore: str = KEYSTORE,
    token_label: str | None = TOKEN_LABEL,
    pin: str | None = PIN,
    pkcs11_module: str | None = MODULE,
    within_days: float = typer.Option(30.0, help="renew when the certificate expires within"),
    new_key: bool = typer.Option(
        False, "--new-key", help="move to a new identity key (the current key signs the proof)"
    ),
    secure_element: bool = typer.Option(
        False,
        "--secure-element",
        help="attest the new key with the device's own chip (<dir>/<device>/chip, "
        "seated at enrollment)",
    ),
) -> None:
    """Renew the certificate if it expires soon (proof: a CSR from the same key, or,
    with ``--new-key``, the current key's signature and the chip's attestation)."""
    store = keystore_for(keystore, directory, token_label, pin, pkcs11_module)
    chip = SecureElement.load(directory / device_id / "chip") if secure_element else None
    with device_server(
        device_server_url, directory=directory / device_id, keystore=store, ca=server_ca
    ) as srv:
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
    server: str = DEVICE_SERVER,
    server_ca: Path = SERVER_CA,
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
    attest: bool = typer.Option(
        True,
        "--attest/--no-attest",
        help="submit boot evidence at start, after each update and on the attest command",
    ),
) -> None:
    """Connect to the broker with this device's certificate, publish telemetry,
    answer allowed commands, reconnect with backoff, renew before expiry, and
    attest its boot (at start, after every update it installs, and on the
    server's ``attest`` command)."""
    import signal
    import threading

    import httpx

    from fleetward.agent.mqtt import AgentConfig, DeviceAgent

    device_dir = directory / device_id
    ca_path = broker_ca or device_dir / "broker-ca.pem"
    host, port = "", 0
    store = keystore_for(keystore, directory, token_label, pin, pkcs11_module)
    if broker is None or not ca_path.exists():
        info = httpx.get(
            f"{server.rstrip('/')}/api/v1/comms/broker",
            timeout=10,
            verify=ssl.create_default_context(cafile=server_ca),
        ).json()
        # Its own environment's listener: the others refuse its certificate.
        from fleetward.agent.mqtt import broker_listener, environment_of

        host, port = broker_listener(info, environment_of(device_dir / "cert.pem"))
        if not ca_path.exists():
            ca_path.write_text(info["ca_pem"])
    if broker is not None:
        host, _, port_text = broker.rpartition(":")
        port = int(port_text)
    config = AgentConfig(
        directory=device_dir,
        keystore=store,
        broker_host=host,
        broker_port=port,
        broker_ca=ca_path,
        server_url=server,
        server_ca=server_ca,
        telemetry_interval=interval,
        renew_within=dt.timedelta(days=renew_within_days),
    )
    ota = None
    if hardware is not None:
        from fleetward.agent._tls import client_context
        from fleetward.agent.mqtt import tenant_of
        from fleetward.agent.ota import OtaClient

        ota = OtaClient(
            device_dir,
            server_url=server,
            tenant=tenant_of(device_dir / "cert.pem"),
            hardware=hardware,
            initial_version=firmware_version,
            # The device plane, as this device (its certificate as it is at each check).
            tls=lambda: client_context(device_dir, store, cafile=server_ca),
        )
    attester = (
        _attester(device_dir, store, server=server, server_ca=server_ca, version=firmware_version)
        if attest
        else None
    )
    agent = DeviceAgent(
        config,
        reading=lambda: {"uptime": round(time.monotonic(), 1)},
        ota=ota,
        attester=attester,
    )
    if attester is not None:
        verdict = agent.attest_now()
        console.print(f"{device_id}: boot attestation: {(verdict or {}).get('verdict', 'failed')}")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    console.print(f"{device_id}: connecting to {host}:{port} (Ctrl-C stops)")
    try:
        agent.run(stop)
    except KeyboardInterrupt:
        stop.set()
    console.print(
        f"{device_id}: {agent.stats.published} messages acknowledged, "
        f"{agent.stats.connects} connections, {agent.stats.renewals} renewals, "
        f"{agent.stats.attestations} attestations"
    )


def _attester(
    device_dir: Path,
    store: Keystore,
    *,
    server: str,
    server_ca: Path,
    version: str,
) -> Callable[[], dict[str, Any]]:
    """Submit this boot's evidence, signed by the device key, over the
    device plane (a fresh TLS context each time: the certificate may have
    been renewed since)."""
    from fleetward.agent._tls import client_context
    from fleetward.agent.attest import attest
    from fleetward.agent.client import load_identity
    from fleetward.agent.mqtt import tenant_of
    from fleetward.agent.ota import Slots

    boots = 0

    def run() -> dict[str, Any]:
        nonlocal boots
        boots += 1
        identity = load_identity(device_dir)
        return attest(
            server_url=server,
            tenant=tenant_of(device_dir / "cert.pem"),
            device_id=identity["device_id"],
            directory=device_dir,
            slots=Slots(device_dir, initial_version=version),
            signer=store.open(identity["key_uri"]),
            boot_count=boots,
            verify=client_context(device_dir, store, cafile=server_ca),
        )

    return run


MAX_ERROR_CHARS = 300  # one line: a parser's message can quote a whole file


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= MAX_ERROR_CHARS else line[: MAX_ERROR_CHARS - 3] + "..."


def main() -> None:
    """Console entry point: a refusal or bad local data (a missing or
    unreadable file, a state file or CA bundle that does not parse, which
    raise ``OSError`` -- ``ssl.SSLError`` included -- or ``ValueError``)
    ends the command with one ``error:`` line on stderr and exit code 1,
    never a traceback."""
    try:
        app()
    except FleetwardError as exc:
        console.print(f"[red]error:[/red] {_one_line(exc.detail)}", highlight=False)
        sys.exit(1)
    except (OSError, ValueError) as exc:
        where = getattr(exc, "filename", None)
        text = f"{where}: {getattr(exc, 'strerror', None) or exc}" if where else str(exc)
        console.print(f"[red]error:[/red] {_one_line(text or type(exc).__name__)}", highlight=False)
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
