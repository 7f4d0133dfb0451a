"""Factory enrollment through the API: every refusal the issue lists, and the records.

Each refusal must issue nothing and leave an enrollment record (and the
accepted ones must record who provisioned what, with which key origin).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from fleetward.identity.models import CertificateRecord, Device
from fleetward.runtime.context import AppContext
from fleetward.tenancy import service as tenancy
from tests.helpers import csr_pem, new_key
from tests.provisioning.chips import Vendor

API = "/api/v1/provisioning"


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Line:
    """A factory line set up by the tenant admin."""

    client: TestClient
    admin: str
    factory_id: int
    token: str
    vendor: Vendor

    def batch(self, **kw: Any) -> int:
        body = {"factory_id": self.factory_id, "product": "thermo", "expires_in_hours": 1, **kw}
        resp = self.client.post(f"{API}/batches", json=body, headers=auth(self.admin))
        assert resp.status_code == 201, resp.text
        return int(resp.json()["id"])

    def nonce(self) -> str:
        resp = self.client.post(f"{API}/nonces", headers=auth(self.token))
        assert resp.status_code == 201, resp.text
        return str(resp.json()["nonces"][0])

    def item(
        self, device_id: str, *, chip: bool = True, nonce: str | None = None
    ) -> dict[str, Any]:
        key = new_key()
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        body: dict[str, Any] = {"device_id": device_id, "csr": csr_pem(key, device_id).decode()}
        if chip:
            import base64

            spki = key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
            n = nonce or self.nonce()
            body["attestation"] = self.vendor.chip(device_id).statement(
                nonce=base64.urlsafe_b64decode(n), identity_spki_der=spki
            )
        return body

    def enroll(self, batch_id: int, *items: dict[str, Any], token: str | None = None) -> Any:
        return self.client.post(
            f"{API}/batches/{batch_id}/enroll",
            json={"items": list(items)},
            headers=auth(token or self.token),
        )


def make_line(client: TestClient, ctx: AppContext, admin: str, env: str, name: str) -> Line:
    with ctx.db.session() as s:
        tenancy.set_allow_unattested(s, tenancy.authenticate(s, admin), allow=False)
    vendor = Vendor.create()
    resp = client.post(
        f"{API}/attestation-roots",
        json={"name": vendor.name, "certificate": vendor.root_pem()},
        headers=auth(admin),
    )
    assert resp.status_code in (201, 409), resp.text
    factory = client.post(
        f"{API}/factories", json={"name": name, "environment": env}, headers=auth(admin)
    ).json()
    token = client.post(
        f"{API}/factories/{factory['id']}/tokens", json={"name": "station 1"}, headers=auth(admin)
    ).json()["token"]
    return Line(client, admin, factory["id"], token, vendor)


@pytest.fixture
def line(client: TestClient, ctx: AppContext, admin_token: str) -> Line:
    return make_line(client, ctx, admin_token, "production", "shenzhen-1")


def issued_count(ctx: AppContext) -> int:
    with ctx.db.read() as s:
        return int(s.execute(select(func.count()).select_from(CertificateRecord)).scalar_one())


def attempts(line: Line) -> list[dict[str, Any]]:
    resp = line.client.get(f"{API}/attempts", headers=auth(line.admin))
    assert resp.status_code == 200
    return list(resp.json()["items"])


def test_attested_enrollment_records_key_origin(line: Line, ctx: AppContext) -> None:
    batch = line.batch(device_ids=["dev-1", "dev-2"])
    resp = line.enroll(batch, line.item("dev-1"), line.item("dev-2"))
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert out["issued"] == 2
    assert {i["key_origin"] for i in out["items"]} == {"hardware-attested"}
    cert = x509.load_pem_x509_certificate(out["items"][0]["certificate"]["certificate"].encode())
    assert cert.subject.rfc4514_string().endswith("CN=dev-1")
    with ctx.db.read() as s:
        device = s.execute(select(Device).where(Device.device_id == "dev-1")).scalar_one()
        record = s.execute(
            select(CertificateRecord).where(CertificateRecord.device_pk == device.id)
        ).scalar_one()
    assert (device.key_origin, device.batch_id, device.factory_id) == (
        "hardware-attested",
        batch,
        line.factory_id,
    )
    assert record.key_origin == "hardware-attested"
    rows = attempts(line)
    assert [(r["device_id"], r["result"], r["key_origin"]) for r in rows] == [
        ("dev-1", "accepted", "hardware-attested"),
        ("dev-2", "accepted", "hardware-attested"),
    ]
    assert rows[0]["csr_fingerprint"] and rows[0]["token"].startswith("token:")
    batches = line.client.get(f"{API}/batches", headers=auth(line.token)).json()["items"]
    assert batches[0]["used_count"] == 2


def refused_item(line: Line, resp: Any, category: str) -> dict[str, Any]:
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["issued"] == 0
    problem = body["items"][0]["problem"]
    assert problem["category"] == category, problem
    return dict(problem)


def test_item_refusals_issue_nothing_and_are_recorded(line: Line, ctx: AppContext) -> None:
    batch = line.batch(range_prefix="SN", range_start=1, range_end=100, range_width=4)
    other_vendor = Vendor.create("Unregistered Vendor")
    cases: list[tuple[dict[str, Any], str, str]] = []
    cases.append((line.item("SN0101"), "outside-batch", "not in batch"))
    cases.append((line.item("XX0001"), "outside-batch", "not in batch"))
    cases.append((line.item("SN0002", chip=False), "software-key", "production refuses"))
    used = line.nonce()
    assert line.enroll(batch, line.item("SN0003", nonce=used)).json()["issued"] == 1
    cases.append((line.item("SN0004", nonce=used), "replayed-nonce", "nonce"))
    cases.append(
        (line.item("SN0005", nonce="AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"), "replayed-nonce", "nonce")
    )
    forged = line.item("SN0006")
    forged["attestation"]["signature"] = line.item("SN0006")["attestation"][
        "signature"
    ]  # signed for another key
    cases.append((forged, "attestation", "does not cover"))
    foreign = line.item("SN0007")
    chip = other_vendor.chip("SN0007")
    foreign["attestation"]["chain"] = [c.public_bytes(Encoding.PEM).decode() for c in chip.chain]
    cases.append((foreign, "attestation", "registered vendor root"))
    tampered = line.item("SN0008")
    pem = tampered["csr"]
    body = "".join(pem.splitlines()[1:-1])
    flipped = body[:40] + ("A" if body[40] != "A" else "B") + body[41:]
    tampered["csr"] = pem.splitlines()[0] + "\n" + flipped + "\n" + pem.splitlines()[-1] + "\n"
    cases.append((tampered, "invalid", ""))
    before = issued_count(ctx)
    for item, category, fragment in cases:
        problem = refused_item(line, line.enroll(batch, item), category)
        assert fragment in problem["detail"]
    assert issued_count(ctx) == before
    refused = [r for r in attempts(line) if r["result"] == "refused"]
    assert len(refused) == len(cases)
    counters = line.client.get(f"{API}/counters", headers=auth(line.admin)).json()["items"]
    mine = next(c for c in counters if c["batch_id"] == batch)
    assert mine["accepted"] == 1
    assert mine["refused_by_category"]["outside-batch"] == 2
    assert mine["refused_by_category"]["replayed-nonce"] == 2


def test_each_device_once_unless_granted(line: Line, ctx: AppContext) -> None:
    batch = line.batch(device_ids=["once-1"], max_count=1)
    assert line.enroll(batch, line.item("once-1")).json()["issued"] == 1
    batch2 = line.batch(device_ids=["once-1", "spare-1"])
    refused_item(line, line.enroll(batch2, line.item("once-1")), "duplicate")
    grant = line.client.post(
        f"{API}/reprovision-grants",
        json={"device_id": "once-1", "reason": "RMA 42"},
        headers=auth(line.admin),
    )
    assert grant.status_code == 201
    assert line.enroll(batch2, line.item("once-1")).json()["issued"] == 1
    history = line.client.get(
        "/api/v1/devices/once-1/certificates", headers=auth(line.admin)
    ).json()["items"]
    assert sorted((c["status"], c["revocation_reason"] or "") for c in history) == [
        ("good", ""),
        ("revoked", "superseded"),
    ]
    refused_item(line, line.enroll(batch2, line.item("once-1")), "duplicate")  # the grant is spent


def test_batch_limits(line: Line, ctx: AppContext) -> None:
    small = line.batch(device_ids=["l-1", "l-2", "l-3"], max_count=1)
    assert line.enroll(small, line.item("l-1")).json()["issued"] == 1
    resp = line.enroll(small, line.item("l-2"))
    assert resp.status_code == 409 and "exhausted" in resp.json()["detail"]
    closed = line.batch(device_ids=["c-1"])
    assert (
        line.client.post(
            f"{API}/batches/{closed}/status", json={"status": "closed"}, headers=auth(line.admin)
        ).status_code
        == 200
    )
    resp = line.enroll(closed, line.item("c-1"))
    assert resp.status_code == 409 and "closed" in resp.json()["detail"]
    expired = line.batch(device_ids=["e-1"], expires_in_hours=0.0001)
    import time

    time.sleep(0.5)
    resp = line.enroll(expired, line.item("e-1"))
    assert resp.status_code == 409 and "expired" in resp.json()["detail"]
    rows = [r for r in attempts(line) if r["result"] == "refused"]
    assert {r["device_id"] for r in rows} == {"l-2", "c-1", "e-1"}
    assert all(r["category"] == "batch-unusable" for r in rows)


def test_test_credentials_never_reach_production(
    client: TestClient, ctx: AppContext, admin_token: str
) -> None:
    prod = make_line(client, ctx, admin_token, "production", "prod-line")
    test = make_line(client, ctx, admin_token, "test", "test-line")
    prod_batch = prod.batch(device_ids=["p-1"])
    test_batch = test.batch(device_ids=["t-1"])
    resp = test.enroll(prod_batch, test.item("p-1"))
    assert resp.status_code == 403
    resp = prod.enroll(test_batch, prod.item("t-1"))
    assert resp.status_code == 403
    assert issued_count(ctx) == 0
    ok = test.enroll(test_batch, test.item("t-1", chip=False))  # software keys are fine in test
    assert ok.json()["issued"] == 1
    cert = x509.load_pem_x509_certificate(
        ok.json()["items"][0]["certificate"]["certificate"].encode()
    )
    assert "OU=test" in cert.subject.rfc4514_string()
    scope = [r for r in attempts(prod) if r["result"] == "refused"]
    assert {r["category"] for r in scope} == {"scope"}


def test_attempts_export_csv(line: Line) -> None:
    batch = line.batch(device_ids=["x-1"])
    line.enroll(batch, line.item("x-1"), line.item("x-9"))
    resp = line.client.get(f"{API}/attempts?format=csv", headers=auth(line.admin))
    assert resp.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(resp.text)))
    assert [(r["device_id"], r["result"]) for r in rows] == [
        ("x-1", "accepted"),
        ("x-9", "refused"),
    ]
    assert line.client.get(f"{API}/attempts", headers=auth(line.token)).status_code == 403
