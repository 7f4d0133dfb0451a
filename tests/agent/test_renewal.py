"""The agent's renewal onto a new key: its secure element attests the new key,
and without it production refuses; with the same key nothing changes."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path

import pytest
from cryptography import x509
from sqlalchemy import select
from typer.testing import CliRunner

from fleetward.agent.cli import app as agent_cli
from fleetward.agent.client import (
    Server,
    ServerRefusedError,
    device_server,
    enroll_devices,
    load_identity,
    renew,
)
from fleetward.agent.keystore import Keystore
from fleetward.agent.secure_element import ChipTray, SecureElement, SimulatedVendor
from fleetward.identity.models import CertificateRecord, Device
from fleetward.runtime.context import AppContext
from fleetward.tenancy import service as tenancy
from tests.agent.test_agent import API, admin_call, factory_line

HW = "hardware-attested"
DUE = dt.timedelta(days=3650)  # renew now, whatever the certificate's expiry


def cert_of(directory: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate((directory / "cert.pem").read_bytes())


def origins(ctx: AppContext, device_id: str) -> tuple[str | None, set[str | None]]:
    with ctx.db.read() as s:
        device = s.execute(select(Device).where(Device.device_id == device_id)).scalar_one()
        certs = s.execute(
            select(CertificateRecord.key_origin).where(CertificateRecord.device_pk == device.id)
        ).scalars()
        return device.key_origin, set(certs)


@pytest.fixture
def attested(live: str, admin_token: str, ctx: AppContext, tmp_path: Path) -> tuple[str, Path]:
    """A production device whose key a simulated secure element attested."""
    with ctx.db.session() as s:
        tenancy.set_allow_unattested(s, tenancy.authenticate(s, admin_token), allow=False)
    vendor = SimulatedVendor.open(tmp_path / "vendor")
    admin_call(
        live,
        admin_token,
        "POST",
        f"{API}/attestation-roots",
        json={"name": "sim", "certificate": vendor.root_pem()},
    )
    device_id = f"se-{uuid.uuid4().hex[:8]}"
    token, batch = factory_line(live, admin_token, "production", [device_id])
    vendor.ship(tmp_path / "tray", count=1)  # the vendor ships; the station takes a chip
    [chip] = ChipTray.open(tmp_path / "tray").take(1)
    with Server(live, token=token) as srv:
        [result] = enroll_devices(
            srv,
            Keystore("software", directory=tmp_path),
            batch_id=batch,
            device_ids=[device_id],
            out_dir=tmp_path,
            chips=[chip.element],
        )
    assert result.key_origin == HW, result
    ChipTray.seat(chip, tmp_path / device_id)  # it attests the device's later keys
    return device_id, tmp_path


def test_new_key_is_attested_by_the_secure_element(
    live_device: str, service_ca: Path, ctx: AppContext, attested: tuple[str, Path]
) -> None:
    device_id, home = attested
    store = Keystore("software", directory=home)
    directory = home / device_id
    first = cert_of(directory)
    enrolled = load_identity(directory)
    with device_server(live_device, directory=directory, keystore=store, ca=service_ca) as srv:
        # A new key without the chip: production refuses, and the device keeps
        # its key and certificate.
        with pytest.raises(ServerRefusedError, match="key attestation") as refused:
            renew(srv, store, directory, within=DUE, new_key=True)
        assert refused.value.status == 422
        assert cert_of(directory) == first
        assert load_identity(directory) == enrolled
        # Same key: nothing changes but the certificate.
        assert renew(srv, store, directory, within=DUE)
    second = cert_of(directory)
    # The next TLS handshake presents the new certificate.
    with device_server(live_device, directory=directory, keystore=store, ca=service_ca) as srv:
        assert second.serial_number != first.serial_number
        assert second.public_key() == first.public_key()
        # A new key, attested by the chip for this renewal.
        chip = SecureElement.load(directory / "chip")
        assert renew(srv, store, directory, within=DUE, new_key=True, chip=chip)
    third = cert_of(directory)
    assert third.public_key() != first.public_key()
    identity = load_identity(directory)
    assert identity["key_origin"] == HW
    assert store.open(identity["key_uri"]).public_key() == third.public_key()
    assert origins(ctx, device_id) == (HW, {HW})


def test_agent_command_renews_onto_an_attested_key(
    live_device: str, service_ca: Path, ctx: AppContext, attested: tuple[str, Path]
) -> None:
    device_id, home = attested
    runner = CliRunner()
    args = ["renew", "--device-id", device_id, "--device-server", live_device]
    args += ["--server-ca", str(service_ca), "--dir", str(home)]
    before = cert_of(home / device_id)
    out = runner.invoke(agent_cli, [*args, "--within-days", "3650", "--new-key"])
    assert isinstance(out.exception, ServerRefusedError) and out.exception.status == 422
    assert cert_of(home / device_id) == before
    out = runner.invoke(
        agent_cli,
        [*args, "--within-days", "3650", "--new-key", "--secure-element"],
    )
    assert out.exit_code == 0 and "renewed" in out.output, out.output
    after = cert_of(home / device_id)
    assert after.public_key() != before.public_key()
    assert origins(ctx, device_id) == (HW, {HW})
