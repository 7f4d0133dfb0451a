"""The device agent against a live server: software and PKCS#11 keystores,
secure-element attestation, renewal, and the ``fleetward-agent`` command."""

from __future__ import annotations

import datetime as dt
import ssl
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from pkcs11 import Attribute, ObjectClass
from pkcs11.exceptions import AttributeSensitive
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
from fleetward.agent.secure_element import SimulatedVendor
from fleetward.keys._p11session import load_module
from fleetward.keys._p11uri import parse_pkcs11_uri
from fleetward.runtime.context import AppContext
from fleetward.tenancy import service as tenancy
from tests.hsm import SoftHsm

API = "/api/v1/provisioning"


def admin_call(live: str, token: str, method: str, path: str, **kw: Any) -> Any:
    resp = httpx.request(method, live + path, headers={"Authorization": f"Bearer {token}"}, **kw)
    assert resp.status_code < 300, resp.text
    return resp.json()


def factory_line(live: str, admin: str, env: str, ids: list[str]) -> tuple[str, int]:
    factory = admin_call(
        live,
        admin,
        "POST",
        f"{API}/factories",
        json={"name": f"f-{uuid.uuid4().hex[:6]}", "environment": env},
    )
    token = admin_call(
        live, admin, "POST", f"{API}/factories/{factory['id']}/tokens", json={"name": "station"}
    )["token"]
    batch = admin_call(
        live,
        admin,
        "POST",
        f"{API}/batches",
        json={
            "factory_id": factory["id"],
            "product": "p",
            "expires_in_hours": 1,
            "device_ids": ids,
        },
    )
    return token, int(batch["id"])


def test_software_keystore_enroll_and_renew(
    live: str, live_device: str, service_ca: Path, admin_token: str, tmp_path: Path
) -> None:
    token, batch = factory_line(live, admin_token, "test", ["sw-1", "sw-2"])
    store = Keystore("software", directory=tmp_path / "keys")
    with Server(live, token=token) as srv:
        results = enroll_devices(
            srv,
            store,
            batch_id=batch,
            device_ids=["sw-1", "sw-2", "sw-3"],
            out_dir=tmp_path / "devices",
        )
    assert [(r.device_id, r.key_origin) for r in results[:2]] == [
        ("sw-1", "software"),
        ("sw-2", "software"),
    ]
    assert results[2].error is not None and "not in batch" in results[2].error
    identity = load_identity(tmp_path / "devices" / "sw-1")
    cert = x509.load_pem_x509_certificate((tmp_path / "devices" / "sw-1" / "cert.pem").read_bytes())
    ca = x509.load_pem_x509_certificate((tmp_path / "devices" / "sw-1" / "ca.pem").read_bytes())
    cert.verify_directly_issued_by(ca)
    assert format(cert.serial_number, "x") == identity["serial"]
    sw1 = tmp_path / "devices" / "sw-1"
    # Renewal is the device's own act: on the device plane, as the device.
    with Server(live) as operator_plane, pytest.raises(ServerRefusedError) as refused:
        renew(operator_plane, store, sw1, within=dt.timedelta(days=365))
    assert refused.value.status == 404
    anonymous = ssl.create_default_context(cafile=str(service_ca))
    with Server(live_device, verify=anonymous) as srv, pytest.raises(ServerRefusedError) as no:
        renew(srv, store, sw1, within=dt.timedelta(days=365))
    assert no.value.status == 401 and "client certificate" in str(no.value)
    with device_server(live_device, directory=sw1, keystore=store, ca=service_ca) as srv:
        assert not renew(srv, store, sw1, within=dt.timedelta(days=1))
        assert renew(srv, store, sw1, within=dt.timedelta(days=365))
    renewed = x509.load_pem_x509_certificate(
        (tmp_path / "devices" / "sw-1" / "cert.pem").read_bytes()
    )
    assert renewed.serial_number != cert.serial_number
    assert renewed.public_key() == cert.public_key()  # same key, proven by the CSR signature


@pytest.mark.hsm
def test_pkcs11_keystore_with_attested_keys_in_production(
    live: str, admin_token: str, ctx: AppContext, softhsm: SoftHsm, tmp_path: Path
) -> None:
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
    ids = [f"hw-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    token, batch = factory_line(live, admin_token, "production", ids)
    store = Keystore(
        "pkcs11", directory=tmp_path / "keys", token_label=softhsm.token_label, pin=softhsm.pin
    )
    with Server(live, token=token) as srv:
        results = enroll_devices(
            srv,
            store,
            batch_id=batch,
            device_ids=ids,
            out_dir=tmp_path / "devices",
            chips=[vendor.chip(i) for i in ids],
        )
    assert [r.key_origin for r in results] == ["hardware-attested", "hardware-attested"]
    identity = load_identity(tmp_path / "devices" / ids[0])
    assert identity["key_uri"].startswith("pkcs11:")
    # The device key the agent made cannot be read out of the token.
    signer = store.open(identity["key_uri"])  # keeps the token logged in for the session below
    token = load_module(softhsm.module).get_token(token_label=softhsm.token_label)
    with token.open() as session:
        _, label = parse_pkcs11_uri(identity["key_uri"])
        assert label.startswith(ids[0] + ".")
        private = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=label)
        assert private[Attribute.SENSITIVE] is True
        assert private[Attribute.EXTRACTABLE] is False
        with pytest.raises(AttributeSensitive):
            private[Attribute.VALUE]
    signer.close()
    # Without a chip, production refuses the same kind of key.
    token2, batch2 = factory_line(live, admin_token, "production", ["hw-soft"])
    with Server(live, token=token2) as srv:
        [refused] = enroll_devices(
            srv, store, batch_id=batch2, device_ids=["hw-soft"], out_dir=tmp_path / "devices"
        )
    assert refused.error is not None and "production refuses" in refused.error


def test_agent_command(
    live: str, live_device: str, service_ca: Path, admin_token: str, tmp_path: Path
) -> None:
    token, batch = factory_line(live, admin_token, "test", ["cli-1"])
    runner = CliRunner()
    args = ["--server", live, "--dir", str(tmp_path)]
    out = runner.invoke(
        agent_cli,
        ["enroll", "--device-id", "cli-1", "--batch", str(batch), "--token", token, *args],
    )
    assert out.exit_code == 0, out.output
    assert (tmp_path / "cli-1" / "cert.pem").exists()
    again = runner.invoke(
        agent_cli,
        ["enroll", "--device-id", "cli-1", "--batch", str(batch), "--token", token, *args],
    )
    assert again.exit_code == 1
    device = ["--device-server", live_device, "--server-ca", str(service_ca)]
    device += ["--dir", str(tmp_path)]
    out = runner.invoke(
        agent_cli, ["renew", "--device-id", "cli-1", "--within-days", "3650", *device]
    )
    assert out.exit_code == 0 and "renewed" in out.output


def test_factory_line_run_and_records_export(
    live: str, admin_token: str, ctx: AppContext, tmp_path: Path
) -> None:
    import json

    from fleetward.cli.main import app as fleetward_cli

    factory = admin_call(
        live,
        admin_token,
        "POST",
        f"{API}/factories",
        json={"name": "line-9", "environment": "test"},
    )
    token = admin_call(
        live, admin_token, "POST", f"{API}/factories/{factory['id']}/tokens", json={"name": "s"}
    )["token"]
    batch = admin_call(
        live,
        admin_token,
        "POST",
        f"{API}/batches",
        json={
            "factory_id": factory["id"],
            "product": "p",
            "expires_in_hours": 1,
            "range_prefix": "LN",
            "range_start": 1,
            "range_end": 20,
            "range_width": 5,
        },
    )
    runner = CliRunner()
    args = [
        "factory",
        "run",
        "--batch",
        str(batch["id"]),
        "--server",
        live,
        "--token",
        token,
        "--dir",
        str(tmp_path / "out"),
    ]
    out = runner.invoke(fleetward_cli, [*args, "--count", "12"])
    assert out.exit_code == 0, out.output
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [d["device_id"] for d in manifest["devices"]] == [f"LN{n:05d}" for n in range(1, 13)]
    assert all(d["error"] is None and d["serial"] for d in manifest["devices"])
    # The next run continues where the batch stands; asking for more than is left fails clearly.
    out = runner.invoke(fleetward_cli, [*args, "--count", "9"])
    assert out.exit_code != 0 and "only 8 unused serials" in str(out.exception)
    home = str(ctx.settings.home)
    export = runner.invoke(
        fleetward_cli,
        ["--home", home, "factory", "attempts", "--format", "csv", "--batch", str(batch["id"])],
    )
    assert export.exit_code == 0, export.output
    assert export.output.count("accepted") == 12


@pytest.mark.hsm
def test_refusals_with_softhsm_keys(
    live: str, admin_token: str, ctx: AppContext, softhsm: SoftHsm, tmp_path: Path
) -> None:
    """The issue's refusals, with identity keys generated on the SoftHSM2 token."""
    from fleetward.agent.keystore import make_csr

    with ctx.db.session() as s:
        tenancy.set_allow_unattested(s, tenancy.authenticate(s, admin_token), allow=False)
    vendor = SimulatedVendor.open(tmp_path / "vendor")
    admin_call(
        live,
        admin_token,
        "POST",
        f"{API}/attestation-roots",
        json={"name": "sim2", "certificate": vendor.root_pem()},
    )
    ids = [f"r-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    token, batch = factory_line(live, admin_token, "production", ids)
    store = Keystore(
        "pkcs11", directory=tmp_path / "keys", token_label=softhsm.token_label, pin=softhsm.pin
    )
    out = tmp_path / "devices"
    with Server(live, token=token) as srv:
        [ok] = enroll_devices(
            srv,
            store,
            batch_id=batch,
            device_ids=[ids[0]],
            out_dir=out,
            chips=[vendor.chip(ids[0])],
        )
        assert ok.error is None
        refusals = {
            "outside-batch": enroll_devices(
                srv,
                store,
                batch_id=batch,
                device_ids=["stranger-1"],
                out_dir=out,
                chips=[vendor.chip("s")],
            ),
            "duplicate": enroll_devices(
                srv,
                store,
                batch_id=batch,
                device_ids=[ids[0]],
                out_dir=out,
                chips=[vendor.chip(ids[0])],
            ),
            "unregistered vendor": enroll_devices(
                srv,
                store,
                batch_id=batch,
                device_ids=[ids[1]],
                out_dir=out,
                chips=[SimulatedVendor.create().chip(ids[1])],
            ),
        }
        expected = {
            "outside-batch": "not in batch",
            "duplicate": "already provisioned",
            "unregistered vendor": "registered vendor root",
        }
        for name, [result] in refusals.items():
            assert result.error is not None and expected[name] in result.error, (name, result)
        # Replayed attestation: a statement with a spent nonce, for a fresh token key.
        signer = store.generate(ids[2])
        chip = vendor.chip(ids[2])
        [nonce] = srv.nonces(1)
        statement = chip.statement(nonce=nonce, identity_public_key=signer.public_key())
        item = {
            "device_id": ids[2],
            "csr": make_csr(signer, ids[2]).decode(),
            "attestation": statement,
        }
        first = srv.provision(batch, [item])
        assert "certificate" in first[0]
        replay = srv.provision(batch, [dict(item, device_id=ids[1])])
        assert "nonce" in replay[0]["problem"]["detail"]
        # Tampered CSR: flip a byte inside the signed part.
        other = store.generate(f"{ids[1]}-t")
        [nonce2] = srv.nonces(1)
        pem = make_csr(other, ids[1]).decode().splitlines()
        body = "".join(pem[1:-1])
        body = body[:60] + ("A" if body[60] != "A" else "B") + body[61:]
        tampered = {
            "device_id": ids[1],
            "csr": "\n".join([pem[0], body, pem[-1]]) + "\n",
            "attestation": vendor.chip(ids[1]).statement(
                nonce=nonce2, identity_public_key=other.public_key()
            ),
        }
        assert "problem" in srv.provision(batch, [tampered])[0]
    rows = admin_call(live, admin_token, "GET", f"{API}/attempts", params={"batch_id": batch})[
        "items"
    ]
    assert sum(r["result"] == "accepted" for r in rows) == 2
    assert {r["category"] for r in rows if r["result"] == "refused"} >= {
        "outside-batch",
        "duplicate",
        "attestation",
        "replayed-nonce",
    }
