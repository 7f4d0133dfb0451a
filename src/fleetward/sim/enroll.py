"""Enrolling a simulated fleet over the REST API and laying out its devices.

The directory of a fleet::

    <dir>/fleet.json            the spec it was made for (a later start checks it)
    <dir>/broker-ca.pem         the CA of the broker's certificate
    <dir>/keys/                 the software keystore (one encrypted key per device)
    <dir>/devices/<id>/         identity.json, cert.pem, ca.pem (the agent's),
                                boot/, slots/, tuf-root.json, sim.json

Enrollment goes the way a factory line does (see ``tests/agent``): with an
admin token, one factory per run, one batch per cohort, a station token,
then :func:`fleetward.agent.client.enroll_devices` in chunks, all on the
operator plane. It is resumable: a device that already has an identity is
kept, so a second start on the same directory enrolls only what is missing
(in fresh batches). The TUF root devices are provisioned with comes from
the device plane (HTTPS, trusting the service CA).
"""

from __future__ import annotations

import json
import secrets
import ssl
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx

from fleetward.agent import IDENTITY_FILE, Keystore, Server, Slots, enroll_devices, write_durably
from fleetward.errors import InvalidInputError, SimulationError
from fleetward.sim.spec import DevicePlan, FleetSpec, images, plan, tampered_bootloader

__all__ = ["SimulationError", "enroll_fleet", "keystore", "lay_out", "read_plan"]

SIM_FILE = "sim.json"
FLEET_FILE = "fleet.json"
BATCH_HOURS = 1  # the batches only need to live while this run enrolls


def keystore(directory: Path) -> Keystore:
    """The fleet's software keystore."""
    return Keystore("software", directory=directory / "keys")


def _spec_record(spec: FleetSpec) -> dict[str, Any]:
    record = asdict(spec)
    record["labels"] = dict(spec.labels)
    return record


def _check_directory(spec: FleetSpec, directory: Path) -> None:
    path = directory / FLEET_FILE
    record = _spec_record(spec)
    if path.exists():
        old = json.loads(path.read_text())
        # The faults may change between runs; who the devices are may not.
        same = ("devices", "prefix", "tenant", "environment", "product", "hardware", "batches")
        changed = [k for k in same if old.get(k) != record[k]]
        if changed:
            raise InvalidInputError(
                f"{directory} holds another fleet ({', '.join(changed)} differ); use a new --dir"
            )
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_durably(path, json.dumps(record, indent=2))


def _admin(server: Server, method: str, path: str, **kw: Any) -> Any:
    return server._call(method, path, **kw)  # the agent's one HTTP seam


def enroll_fleet(
    spec: FleetSpec,
    *,
    server_url: str,
    device_url: str,
    server_ca: Path,
    token: str | None,
    directory: Path,
    on_progress: Callable[[int, int], object] | None = None,
) -> list[str]:
    """Enroll the devices of ``spec`` that ``directory`` does not hold yet and
    lay out every device; returns the ids enrolled by this call.

    Args:
        spec: the fleet.
        server_url: the operator plane (station enrollment).
        device_url: the device plane (the TUF root).
        server_ca: the service CA the device plane's certificate chains to.
        token: an admin API token of the spec's tenant (needed only when
            devices are missing).
        directory: where the fleet lives.
        on_progress: called with (devices ready, devices in the fleet).

    Raises:
        InvalidInputError: the directory holds another fleet, or no token.
        SimulationError: the server refused devices.
    """
    _check_directory(spec, directory)
    devices = directory / "devices"
    plans = plan(spec)
    missing = [p for p in plans if not (devices / p.device_id / IDENTITY_FILE).exists()]
    done = len(plans) - len(missing)
    if on_progress is not None:
        on_progress(done, len(plans))
    enrolled: list[str] = []
    if missing:
        if not token:
            raise InvalidInputError(
                f"{len(missing)} devices are not enrolled yet: an admin token is needed"
            )
        store = keystore(directory)
        # The operator plane may be HTTPS too, with the same service CA.
        anchor = ssl.create_default_context(cafile=str(server_ca))
        with Server(server_url, token=token, verify=anchor) as admin:
            factory = _admin(
                admin,
                "POST",
                "/api/v1/provisioning/factories",
                json={
                    "name": f"sim-{spec.prefix}-{secrets.token_hex(4)}",
                    "environment": spec.environment,
                },
            )
            station = _admin(
                admin,
                "POST",
                f"/api/v1/provisioning/factories/{factory['id']}/tokens",
                json={"name": "simulator"},
            )["token"]
            cohorts: dict[int, list[DevicePlan]] = {}
            for p in missing:
                cohorts.setdefault(p.batch, []).append(p)
            with Server(server_url, token=station, verify=anchor) as line:
                for _, members in sorted(cohorts.items()):
                    batch = _admin(
                        admin,
                        "POST",
                        "/api/v1/provisioning/batches",
                        json={
                            "factory_id": factory["id"],
                            "product": spec.product,
                            "expires_in_hours": BATCH_HOURS,
                            "device_ids": [p.device_id for p in members],
                        },
                    )

                    def progress(n: int) -> None:
                        nonlocal done
                        done += n
                        if on_progress is not None:
                            on_progress(done, len(plans))

                    results = enroll_devices(
                        line,
                        store,
                        batch_id=int(batch["id"]),
                        device_ids=[p.device_id for p in members],
                        out_dir=devices,
                        on_progress=progress,
                    )
                    refused = [r for r in results if r.error is not None]
                    if refused:
                        raise SimulationError(
                            f"the server refused {len(refused)} devices, e.g. "
                            f"{refused[0].device_id}: {refused[0].error}"
                        )
                    for p in members:
                        _write_sim(devices / p.device_id, p, spec, batch_id=int(batch["id"]))
                    enrolled.extend(p.device_id for p in members)
    root = _tuf_root(spec, device_url=device_url, server_ca=server_ca, directory=directory)
    for p in plans:
        lay_out(spec, p, devices / p.device_id, tuf_root=root)
    return enrolled


def _write_sim(folder: Path, p: DevicePlan, spec: FleetSpec, *, batch_id: int) -> None:
    record = {"batch": p.batch, "batch_id": batch_id, "labels": p.labels(spec)}
    write_durably(folder / SIM_FILE, json.dumps(record, indent=2))


def _tuf_root(
    spec: FleetSpec, *, device_url: str, server_ca: Path, directory: Path
) -> bytes | None:
    """The tenant's first TUF root (what a device is provisioned with), or
    None while the tenant has no repository yet: devices then fetch it at
    their first update check (trust on first use, as the agent does)."""
    path = directory / "tuf-root.json"
    if not path.exists():
        url = f"{device_url.rstrip('/')}/tuf/{spec.tenant}/metadata/1.root.json"
        try:
            resp = httpx.get(url, timeout=30, verify=ssl.create_default_context(cafile=server_ca))
        except httpx.HTTPError as exc:
            raise SimulationError(f"cannot reach the server: {exc}") from exc
        if resp.status_code == 404:
            return None
        if resp.status_code >= 400:
            raise SimulationError(f"the TUF root: HTTP {resp.status_code}")
        write_durably(path, resp.content)
    return path.read_bytes()


def lay_out(spec: FleetSpec, p: DevicePlan, folder: Path, *, tuf_root: bytes | None) -> None:
    """Give an enrolled device its boot stages, slots and TUF root (once;
    a device that ran keeps what it installed)."""
    boot = folder / "boot"
    if tuf_root is not None and not (folder / "tuf-root.json").exists():
        write_durably(folder / "tuf-root.json", tuf_root)
    if (boot / "kernel.bin").exists():
        return
    boot.mkdir(parents=True, exist_ok=True)
    stages = images(spec)
    bootloader = tampered_bootloader(spec) if p.tampered else stages["bootloader"]
    (boot / "bootloader.bin").write_bytes(bootloader)
    slots = Slots(folder, initial_version=spec.initial_version)
    image = slots.image(slots.active)
    if not image.exists():
        image.write_bytes(stages["application"])
    (boot / "kernel.bin").write_bytes(stages["kernel"])  # written last: the layout is done


def read_plan(folder: Path) -> dict[str, Any]:
    """What enrollment recorded about a device (batch, labels)."""
    path = folder / SIM_FILE
    if not path.exists():
        return {}
    data: dict[str, Any] = json.loads(path.read_text())
    return data
