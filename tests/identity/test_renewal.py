"""Renewal keeps the key origin: a new key needs a fresh attestation where
attested keys are required, and certificates and devices record the origin.

Devices are enrolled the factory way (a vendor root registered with the
tenant, a chip's statement over a server nonce), then renew over the REST
API and EST ``simplereenroll``.
"""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, pkcs7
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from fleetward.errors import AttestationError
from fleetward.identity import renewal
from fleetward.identity.issuance import UnattestedKeyError
from fleetward.identity.models import CertificateRecord, Device
from fleetward.provisioning import attestation
from fleetward.runtime.context import AppContext
from fleetward.tenancy import service as tenancy
from tests.conftest import DeviceTestClient
from tests.helpers import csr_pem
from tests.provisioning.chips import Vendor

API = "/api/v1/provisioning"
HW, SW = "hardware-attested", "software"
ISSUED: dict[str, list[str]] = {}  # device id -> serials, in the order issued


def issued(device_id: str, certificate_pem: str) -> None:
    cert = x509.load_pem_x509_certificate(certificate_pem.encode())
    ISSUED.setdefault(device_id, []).append(format(cert.serial_number, "x"))


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def new_ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def spki(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def der_of(pem: bytes) -> bytes:
    return x509.load_pem_x509_csr(pem).public_bytes(Encoding.DER)


@dataclass
class Enrolled:
    """A device as it stands after its last certificate."""

    device_id: str
    key: ec.EllipticCurvePrivateKey
    certificate: str  # PEM


@dataclass
class Tenant:
    """The default tenant with a registered chip vendor and a line per environment."""

    client: TestClient
    ctx: AppContext
    admin: str
    vendor: Vendor
    device: DeviceTestClient  # the device plane

    def allow_unattested(self, allow: bool) -> None:
        with self.ctx.db.session() as s:
            tenancy.set_allow_unattested(s, tenancy.authenticate(s, self.admin), allow=allow)

    def enroll(self, env: str, *, attested: bool = True) -> Enrolled:
        """Provision one device in ``env``, its key attested by a chip (or not)."""
        device_id = f"{env[:4]}-{uuid.uuid4().hex[:8]}"
        admin = auth(self.admin)
        factory = self.client.post(
            f"{API}/factories",
            json={"name": f"f-{uuid.uuid4().hex[:6]}", "environment": env},
            headers=admin,
        ).json()
        token = self.client.post(
            f"{API}/factories/{factory['id']}/tokens", json={"name": "s"}, headers=admin
        ).json()["token"]
        batch = self.client.post(
            f"{API}/batches",
            json={
                "factory_id": factory["id"],
                "product": "p",
                "expires_in_hours": 1,
                "device_ids": [device_id],
            },
            headers=admin,
        ).json()["id"]
        key = new_ec_key()
        item: dict[str, Any] = {"device_id": device_id, "csr": csr_pem(key, device_id).decode()}
        if attested:
            resp = self.client.post(f"{API}/nonces", headers=auth(token))
            nonce = base64.urlsafe_b64decode(resp.json()["nonces"][0])
            item["attestation"] = self.vendor.chip(device_id).statement(
                nonce=nonce, identity_spki_der=spki(key)
            )
        resp = self.client.post(
            f"{API}/batches/{batch}/enroll", json={"items": [item]}, headers=auth(token)
        )
        assert resp.status_code == 200, resp.text
        [out] = resp.json()["items"]
        assert out["key_origin"] == (HW if attested else SW), out
        issued(device_id, out["certificate"]["certificate"])
        return Enrolled(device_id, key, out["certificate"]["certificate"])

    def state(self, device_id: str) -> tuple[str | None, list[str | None]]:
        """The device's key origin and its certificates' (in the order issued)."""
        with self.ctx.db.read() as s:
            device = s.execute(select(Device).where(Device.device_id == device_id)).scalar_one()
            origins = {
                serial: origin
                for serial, origin in s.execute(
                    select(CertificateRecord.serial, CertificateRecord.key_origin).where(
                        CertificateRecord.device_pk == device.id
                    )
                )
            }
            assert len(origins) == len(ISSUED[device_id])
            return device.key_origin, [origins[serial] for serial in ISSUED[device_id]]

    def certificates(self, device_id: str) -> int:
        with self.ctx.db.read() as s:
            return int(
                s.execute(
                    select(func.count())
                    .select_from(CertificateRecord)
                    .join(Device, Device.id == CertificateRecord.device_pk)
                    .where(Device.device_id == device_id)
                ).scalar_one()
            )


@pytest.fixture
def tenant(
    client: TestClient, device_client: DeviceTestClient, ctx: AppContext, admin_token: str
) -> Tenant:
    t = Tenant(client, ctx, admin_token, Vendor.create(), device_client)
    resp = client.post(
        f"{API}/attestation-roots",
        json={"name": t.vendor.name, "certificate": t.vendor.root_pem()},
        headers=auth(admin_token),
    )
    assert resp.status_code == 201, resp.text
    t.allow_unattested(False)  # production requires attested keys, as it does by default
    return t


def renew_body(
    dev: Enrolled,
    new: ec.EllipticCurvePrivateKey | None = None,
    *,
    chip: Vendor | None = None,
    attest_key: ec.EllipticCurvePrivateKey | None = None,
    nonce: bytes | None = None,
) -> dict[str, Any]:
    """A renewal request: the same key, or ``new`` with the current key's proof
    and, with ``chip``, a statement (over ``attest_key`` and ``nonce`` when given)."""
    if new is None:
        return {"certificate": dev.certificate, "csr": csr_pem(dev.key, dev.device_id).decode()}
    pem = csr_pem(new, dev.device_id)
    der = der_of(pem)
    proof = dev.key.sign(renewal.renewal_proof_message(der), ec.ECDSA(hashes.SHA256()))
    body: dict[str, Any] = {
        "certificate": dev.certificate,
        "csr": pem.decode(),
        "proof": base64.b64encode(proof).decode(),
    }
    if chip is not None:
        body["attestation"] = chip.chip(dev.device_id).statement(
            nonce=nonce if nonce is not None else renewal.renewal_attestation_nonce(der),
            identity_spki_der=spki(attest_key or new),
        )
    return body


def renewed(tenant: Tenant, dev: Enrolled, body: dict[str, Any], key: Any = None) -> Enrolled:
    resp = tenant.device.as_device(body["certificate"]).post("/api/v1/renew", json=body)
    assert resp.status_code == 201, resp.text
    issued(dev.device_id, resp.json()["certificate"])
    return Enrolled(dev.device_id, key or dev.key, resp.json()["certificate"])


def assert_refused(
    tenant: Tenant, dev: Enrolled, body: dict[str, Any], status: int, slug: str
) -> None:
    before = tenant.certificates(dev.device_id), tenant.state(dev.device_id)
    resp = tenant.device.as_device(body["certificate"]).post("/api/v1/renew", json=body)
    assert resp.status_code == status, resp.text
    assert resp.json()["type"].endswith(slug), resp.json()
    assert (tenant.certificates(dev.device_id), tenant.state(dev.device_id)) == before


# -- the attack and the rules, over REST -------------------------------------


def test_new_software_key_on_attested_production_device_is_refused(tenant: Tenant) -> None:
    dev = tenant.enroll("production")
    body = renew_body(dev, new_ec_key())  # a valid proof by the old key, no attestation
    assert_refused(tenant, dev, body, 422, "unattested-key")
    assert tenant.state(dev.device_id) == (HW, [HW])


def test_same_key_keeps_hardware_attested(tenant: Tenant) -> None:
    dev = tenant.enroll("production")
    dev = renewed(tenant, dev, renew_body(dev))
    dev = renewed(tenant, dev, renew_body(dev))
    assert tenant.state(dev.device_id) == (HW, [HW, HW, HW])
    resp = tenant.client.get(
        f"/api/v1/devices/{dev.device_id}/certificates", headers=auth(tenant.admin)
    )
    assert [c["key_origin"] for c in resp.json()["items"]] == [HW, HW, HW]


def test_new_key_with_valid_attestation_is_hardware_attested(tenant: Tenant) -> None:
    dev = tenant.enroll("production")
    new = new_ec_key()
    dev = renewed(tenant, dev, renew_body(dev, new, chip=tenant.vendor), new)
    assert tenant.state(dev.device_id) == (HW, [HW, HW])
    cert = x509.load_pem_x509_certificate(dev.certificate.encode())
    assert cert.public_key() == new.public_key()
    # The new key renews with itself afterwards and keeps its origin.
    renewed(tenant, dev, renew_body(dev))
    assert tenant.state(dev.device_id) == (HW, [HW, HW, HW])


def test_bad_attestations_are_refused(tenant: Tenant) -> None:
    dev = tenant.enroll("production")
    new = new_ec_key()
    other_csr = der_of(csr_pem(new_ec_key(), dev.device_id))
    cases = {
        "unregistered root": renew_body(dev, new, chip=Vendor.create("Unregistered")),
        "another key": renew_body(dev, new, chip=tenant.vendor, attest_key=new_ec_key()),
        "another CSR's nonce": renew_body(
            dev, new, chip=tenant.vendor, nonce=renewal.renewal_attestation_nonce(other_csr)
        ),
        "a random nonce": renew_body(dev, new, chip=tenant.vendor, nonce=b"n" * 32),
    }
    for name, body in cases.items():
        slug = "attestation-nonce" if "nonce" in name else "attestation"
        assert_refused(tenant, dev, body, 422, slug)
    # Even where unattested keys are accepted, a statement that fails is refused.
    tenant.allow_unattested(True)
    assert_refused(tenant, dev, cases["unregistered root"], 422, "attestation")
    # Oversized and malformed statements.
    big = dict(renew_body(dev, new, chip=tenant.vendor))
    big["attestation"] = dict(big["attestation"], padding="x" * attestation.MAX_STATEMENT_BYTES)
    assert_refused(tenant, dev, big, 413, "payload-too-large")
    junk = dict(renew_body(dev, new), attestation={"format": "v0"})
    assert_refused(tenant, dev, junk, 422, "attestation")
    assert tenant.state(dev.device_id) == (HW, [HW])


def test_test_environment_new_software_key_is_software(tenant: Tenant) -> None:
    dev = tenant.enroll("test")
    new = new_ec_key()
    dev = renewed(tenant, dev, renew_body(dev, new), new)
    assert tenant.state(dev.device_id) == (SW, [HW, SW])
    # An attested key again in test: hardware-attested again.
    newer = new_ec_key()
    renewed(tenant, dev, renew_body(dev, newer, chip=tenant.vendor), newer)
    assert tenant.state(dev.device_id) == (HW, [HW, SW, HW])


def test_tenant_option_allows_software_keys_read_fresh(tenant: Tenant) -> None:
    dev = tenant.enroll("production")
    tenant.allow_unattested(True)
    new = new_ec_key()
    dev = renewed(tenant, dev, renew_body(dev, new), new)
    assert tenant.state(dev.device_id) == (SW, [HW, SW])
    # Turned off again: the very next renewal onto a new key is refused.
    tenant.allow_unattested(False)
    assert_refused(tenant, dev, renew_body(dev, new_ec_key()), 422, "unattested-key")
    # The software key renews with itself and stays software.
    renewed(tenant, dev, renew_body(dev))
    assert tenant.state(dev.device_id) == (SW, [HW, SW, SW])


def test_certificates_renewed_before_origins_were_recorded(tenant: Tenant) -> None:
    """A certificate without a recorded origin takes its key's origin from the
    device's history: the legitimate same-key chain stays hardware-attested, and
    a key that came in through the old bug is software."""
    dev = tenant.enroll("production")
    dev = renewed(tenant, dev, renew_body(dev))
    with tenant.ctx.db.session() as s:  # as renewals before the fix stored it
        s.execute(
            update(CertificateRecord)
            .where(CertificateRecord.key_origin.is_not(None))
            .where(CertificateRecord.serial == cert_serial(dev))
            .values(key_origin=None)
        )
    dev = renewed(tenant, dev, renew_body(dev))
    assert tenant.state(dev.device_id) == (HW, [HW, None, HW])
    tenant.allow_unattested(True)
    new = new_ec_key()
    dev = renewed(tenant, dev, renew_body(dev, new), new)
    tenant.allow_unattested(False)
    with tenant.ctx.db.session() as s:
        s.execute(
            update(CertificateRecord)
            .where(CertificateRecord.serial == cert_serial(dev))
            .values(key_origin=None)
        )
        s.execute(update(Device).where(Device.device_id == dev.device_id).values(key_origin=HW))
    renewed(tenant, dev, renew_body(dev))
    assert tenant.state(dev.device_id) == (SW, [HW, None, HW, None, SW])


def cert_serial(dev: Enrolled) -> str:
    return format(x509.load_pem_x509_certificate(dev.certificate.encode()).serial_number, "x")


# -- EST simplereenroll ------------------------------------------------------


def est_renew(
    tenant: Tenant, dev: Enrolled, body: dict[str, Any], *, attestation_header: str | None = None
) -> Any:
    headers = {}
    if "proof" in body:
        headers["X-Fleetward-Renewal-Proof"] = body["proof"]
    if "attestation" in body:
        headers["X-Fleetward-Key-Attestation"] = base64.b64encode(
            json.dumps(body["attestation"]).encode()
        ).decode()
    if attestation_header is not None:
        headers["X-Fleetward-Key-Attestation"] = attestation_header
    return tenant.device.as_device(body["certificate"]).post(
        "/.well-known/est/simplereenroll",
        content=base64.encodebytes(der_of(body["csr"].encode())),
        headers=headers,
    )


def est_issued(dev: Enrolled, resp: Any) -> x509.Certificate:
    assert resp.status_code == 200, resp.text
    [cert] = pkcs7.load_der_pkcs7_certificates(base64.b64decode(resp.content))
    issued(dev.device_id, cert.public_bytes(Encoding.PEM).decode())
    return cert


def test_est_simplereenroll_keeps_key_origin(tenant: Tenant) -> None:
    dev = tenant.enroll("production")
    before = tenant.certificates(dev.device_id)
    # The attack: a new software key with the old key's proof.
    resp = est_renew(tenant, dev, renew_body(dev, new_ec_key()))
    assert resp.status_code == 422 and resp.json()["type"].endswith("unattested-key"), resp.text
    # A statement from an unregistered vendor, and one over another key.
    for body in (
        renew_body(dev, new_ec_key(), chip=Vendor.create("Unregistered")),
        renew_body(dev, new_ec_key(), chip=tenant.vendor, attest_key=new_ec_key()),
    ):
        resp = est_renew(tenant, dev, body)
        assert resp.status_code == 422 and "attestation" in resp.json()["type"], resp.text
    # Bad and oversized headers.
    body = renew_body(dev, new_ec_key(), chip=tenant.vendor)
    assert est_renew(tenant, dev, body, attestation_header="%%%").status_code == 400
    assert est_renew(tenant, dev, body, attestation_header="A" * 40_000).status_code == 413
    assert tenant.certificates(dev.device_id) == before
    assert tenant.state(dev.device_id) == (HW, [HW])
    # Same key: kept. New key with its chip's statement: hardware-attested.
    est_issued(dev, est_renew(tenant, dev, renew_body(dev)))
    new = new_ec_key()
    cert = est_issued(dev, est_renew(tenant, dev, renew_body(dev, new, chip=tenant.vendor)))
    assert cert.public_key() == new.public_key()
    assert tenant.state(dev.device_id) == (HW, [HW, HW, HW])


def test_est_test_environment_new_software_key_is_software(tenant: Tenant) -> None:
    dev = tenant.enroll("test")
    est_issued(dev, est_renew(tenant, dev, renew_body(dev, new_ec_key())))
    assert tenant.state(dev.device_id) == (SW, [HW, SW])


# -- the decision, without a server ------------------------------------------


def test_key_origin_rules() -> None:
    def decide(same_key: bool, previous: str, attested: str | None, required: bool) -> str:
        return renewal.renewal_key_origin(
            same_key=same_key, previous=previous, attested=attested, requires_attestation=required
        )

    for required in (True, False):
        assert decide(True, HW, None, required) == HW  # the same key keeps its origin
        assert decide(True, SW, None, required) == SW
        assert decide(False, SW, HW, required) == HW  # a verified statement decides
        assert decide(True, SW, HW, required) == HW
    assert decide(False, HW, None, False) == SW
    with pytest.raises(UnattestedKeyError):
        decide(False, HW, None, True)


def test_renew_without_a_verifier_refuses_statements(tenant: Tenant) -> None:
    dev = tenant.enroll("test")
    new = new_ec_key()
    body = renew_body(dev, new, chip=tenant.vendor)
    with tenant.ctx.db.session() as s, pytest.raises(AttestationError, match="cannot be verified"):
        renewal.renew(
            s,
            tenant.ctx.pki,
            current=dev.certificate.encode(),
            csr=body["csr"].encode(),
            proof=base64.b64decode(body["proof"]),
            attestation=body["attestation"],
        )


def test_statement_limit_matches_provisioning() -> None:
    assert renewal.MAX_ATTESTATION_BYTES == attestation.MAX_STATEMENT_BYTES
