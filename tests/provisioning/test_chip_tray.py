"""Chips the station cannot forge: the vendor ships chips in advance, the
station takes them from a tray and never holds a vendor private key."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)
from typer.testing import CliRunner

from fleetward.agent.secure_element import ChipTray, SecureElement, SimulatedVendor
from fleetward.errors import InvalidInputError
from fleetward.provisioning.attestation import parse_statement, verify_statement
from fleetward.runtime.context import AppContext

API = "/api/v1/provisioning"


def admin_call(live: str, token: str, method: str, path: str, **kw: Any) -> Any:
    resp = httpx.request(method, live + path, headers={"Authorization": f"Bearer {token}"}, **kw)
    assert resp.status_code < 300, resp.text
    return resp.json()


def _spki(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def test_shipped_chips_attest_and_the_tray_holds_no_vendor_key(tmp_path: Path) -> None:
    vendor = SimulatedVendor.open(tmp_path / "vendor")
    serials = vendor.ship(tmp_path / "tray", count=3)
    assert len(set(serials)) == 3
    tray = ChipTray.open(tmp_path / "tray")
    assert tray.available == 3
    assert not (tmp_path / "tray" / "root-key.pem").exists()
    assert (tmp_path / "tray" / "vendor-root.pem").read_text() == vendor.root_pem()
    [chip] = tray.take(1)
    assert tray.available == 2
    identity = ec.generate_private_key(ec.SECP256R1())
    nonce = b"n" * 16
    statement = chip.element.statement(nonce=nonce, identity_public_key=identity.public_key())
    attested = verify_statement(
        parse_statement(statement),
        identity_spki_der=_spki(identity),
        expected_nonce=nonce,
        roots=[vendor.root],
        now=dt.datetime.now(dt.UTC),
    )
    assert attested.chip == f"CN=secure element {chip.serial}"
    seated = ChipTray.seat(chip, tmp_path / "devices" / "d1")
    assert not chip.path.exists() and (seated / "key.pem").exists()
    assert SecureElement.load(seated).chain == chip.element.chain
    with pytest.raises(InvalidInputError, match="holds 2 chip"):
        tray.take(3)


def test_the_vendors_own_directory_is_refused(tmp_path: Path) -> None:
    SimulatedVendor.open(tmp_path / "vendor")
    with pytest.raises(InvalidInputError, match="vendor's attestation root key"):
        ChipTray.open(tmp_path / "vendor")


@pytest.mark.parametrize("form", ["pem", "der", "nested"])
def test_a_tray_with_any_other_private_key_is_refused(tmp_path: Path, form: str) -> None:
    SimulatedVendor.open(tmp_path / "vendor").ship(tmp_path / "tray", count=1)
    key = ec.generate_private_key(ec.SECP256R1())
    if form == "der":
        (tmp_path / "tray" / "blob.bin").write_bytes(
            key.private_bytes(Encoding.DER, PrivateFormat.PKCS8, NoEncryption())
        )
    else:
        where = tmp_path / "tray" / ("x/y/z" if form == "nested" else "")
        where.mkdir(parents=True, exist_ok=True)
        (where / "k.pem").write_bytes(
            key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        )
    with pytest.raises(InvalidInputError, match="private key that is no chip's"):
        ChipTray.open(tmp_path / "tray")


def test_a_chip_whose_key_does_not_match_its_certificate_is_refused(tmp_path: Path) -> None:
    vendor = SimulatedVendor.open(tmp_path / "vendor")
    a, b = vendor.ship(tmp_path / "tray", count=2)
    shutil.copy(tmp_path / "tray" / b / "chain.pem", tmp_path / "tray" / a / "chain.pem")
    with pytest.raises(InvalidInputError, match="does not match"):
        ChipTray.open(tmp_path / "tray").take(2)


def test_a_symlink_in_the_tray_is_refused(tmp_path: Path) -> None:
    SimulatedVendor.open(tmp_path / "vendor").ship(tmp_path / "tray", count=1)
    (tmp_path / "tray" / "vendor").symlink_to(tmp_path / "vendor")
    with pytest.raises(InvalidInputError, match="symbolic links"):
        ChipTray.open(tmp_path / "tray")


def test_factory_run_takes_chips_from_a_tray_and_refuses_the_vendor_directory(
    live: str, admin_token: str, ctx: AppContext, tmp_path: Path
) -> None:
    from fleetward.cli.main import app as fleetward_cli

    runner = CliRunner()
    vendor_dir, tray = tmp_path / "vendor", tmp_path / "tray"
    out = runner.invoke(
        fleetward_cli,
        ["sim", "chips", "--vendor", str(vendor_dir), "--count", "4", "--out", str(tray)],
    )
    assert out.exit_code == 0, out.output
    admin_call(
        live,
        admin_token,
        "POST",
        f"{API}/attestation-roots",
        json={"name": "sim", "certificate": (vendor_dir / "root.pem").read_text()},
    )
    factory = admin_call(
        live, admin_token, "POST", f"{API}/factories",
        json={"name": "line-se", "environment": "production"},
    )  # fmt: skip
    token = admin_call(
        live, admin_token, "POST", f"{API}/factories/{factory['id']}/tokens",
        json={"name": "s"},
    )["token"]  # fmt: skip
    batch = admin_call(
        live, admin_token, "POST", f"{API}/batches",
        json={"factory_id": factory["id"], "product": "p", "expires_in_hours": 1,
              "range_prefix": "SE", "range_start": 1, "range_end": 20, "range_width": 3},
    )  # fmt: skip
    args = ["factory", "run", "--batch", str(batch["id"]), "--server", live, "--token", token]
    # The vendor's own directory: refused before anything is enrolled.
    refused = runner.invoke(
        fleetward_cli,
        [*args, "--count", "1", "--dir", str(tmp_path / "bad"),
         "--secure-elements", str(vendor_dir)],
    )  # fmt: skip
    assert refused.exit_code != 0
    assert "vendor's attestation root key" in str(refused.exception)
    assert not (tmp_path / "bad" / "manifest.json").exists()
    ok = runner.invoke(
        fleetward_cli,
        [*args, "--count", "3", "--dir", str(tmp_path / "out"), "--secure-elements", str(tray)],
    )
    assert ok.exit_code == 0, ok.output
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [d["key_origin"] for d in manifest["devices"]] == ["hardware-attested"] * 3
    for d in manifest["devices"]:
        assert (tmp_path / "out" / "devices" / d["device_id"] / "chip" / "key.pem").exists()
    assert ChipTray.open(tray).available == 1  # the three chips moved into their devices
