"""A factory token enrolls only through its factory's open batches, on every
route that can enroll, and every attempt on every path is an enrollment record.

Before this, a token bound to a factory enrolled a device that none of its
batches names through ``/devices/{id}/certificates``, ``/enrollments`` and EST
``simpleenroll`` (201, 1 issued, 200), with no record of the attempt.
"""

from __future__ import annotations

import base64
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import load_pem_x509_csr
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from fleetward.identity.models import CertificateRecord
from fleetward.provisioning.models import EnrollmentBatch
from fleetward.runtime.context import AppContext
from fleetward.tenancy import service as tenancy
from tests.helpers import csr_pem, new_key

API = "/api/v1"


def _h(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _csr(device_id: str) -> str:
    return csr_pem(new_key(), device_id).decode()


def _est(client: TestClient, token: str, device_id: str, label: str = "test") -> Any:
    der = load_pem_x509_csr(_csr(device_id).encode()).public_bytes(Encoding.DER)
    basic = base64.b64encode(f"{device_id}:{token}".encode()).decode()
    return client.post(
        f"/.well-known/est/{label}/simpleenroll",
        content=base64.b64encode(der),
        headers={"Authorization": f"Basic {basic}", "Content-Type": "application/pkcs10"},
    )


def _station(ctx: AppContext, client: TestClient, admin: str) -> tuple[str, int, int]:
    """A test-environment factory with one batch of two named devices (limit 2)."""
    factory = client.post(
        f"{API}/provisioning/factories",
        json={"name": "line-1", "environment": "test"},
        headers=_h(admin),
    ).json()["id"]
    batch = client.post(
        f"{API}/provisioning/batches",
        json={
            "factory_id": factory,
            "product": "thermo",
            "expires_in_hours": 1,
            "device_ids": ["fb-1", "fb-2", "fb-3"],
            "max_count": 2,
        },
        headers=_h(admin),
    ).json()["id"]
    token = client.post(
        f"{API}/provisioning/factories/{factory}/tokens", json={"name": "st"}, headers=_h(admin)
    ).json()["token"]
    return token, factory, batch


def _attempts(client: TestClient, admin: str) -> list[dict[str, Any]]:
    resp = client.get(f"{API}/provisioning/attempts", headers=_h(admin))
    assert resp.status_code == 200
    rows: list[dict[str, Any]] = resp.json()["items"]
    return rows


def _certs(ctx: AppContext) -> int:
    with ctx.db.read() as s:
        return int(s.execute(select(func.count()).select_from(CertificateRecord)).scalar_one())


def test_factory_token_outside_its_batches_is_refused_on_every_route(
    client: TestClient, device_client: TestClient, ctx: AppContext, admin_token: str
) -> None:
    token, factory, _ = _station(ctx, client, admin_token)
    before = _certs(ctx)
    one = client.post(
        f"{API}/devices/stranger-1/certificates",
        json={"csr": _csr("stranger-1"), "environment": "test"},
        headers=_h(token),
    )
    assert one.status_code == 403, one.text
    assert one.json()["type"] == "urn:fleetward:problem:outside-batch"
    assert "open test batches" in one.json()["detail"]
    many = client.post(
        f"{API}/enrollments",
        json={"items": [{"device_id": "stranger-2", "csr": _csr("stranger-2")}]},
        headers=_h(token),
    )
    assert many.status_code == 200 and many.json()["issued"] == 0, many.text
    assert many.json()["items"][0]["problem"]["status"] == 403
    est = _est(device_client, token, "stranger-3")
    assert est.status_code == 403, est.text
    # Another environment is out of the token's scope before any batch is looked at.
    prod = _est(device_client, token, "stranger-4", label="production")
    assert prod.status_code == 403 and prod.json()["type"].endswith("out-of-scope")
    assert _certs(ctx) == before  # nothing issued
    rows = {r["device_id"]: r for r in _attempts(client, admin_token)}
    for device, route in [
        ("stranger-1", "rest"),
        ("stranger-2", "rest-batch"),
        ("stranger-3", "est"),
        ("stranger-4", "est"),
    ]:
        row = rows[device]
        assert row["result"] == "refused" and row["route"] == route, row
        assert row["token"].startswith("token:") and row["factory_id"] == factory
        assert row["csr_fingerprint"] and row["reason"]
    assert rows["stranger-1"]["category"] == "outside-batch"
    assert rows["stranger-4"]["category"] == "scope"


def test_another_factorys_batch_is_not_charged_with_a_refusal(
    client: TestClient, ctx: AppContext, admin_token: str
) -> None:
    """A factory token posting to another factory's batch is refused, and the
    record names its own factory: the other line's counters stay clean."""
    token, factory, _ = _station(ctx, client, admin_token)
    other = client.post(
        f"{API}/provisioning/factories",
        json={"name": "line-2", "environment": "test"},
        headers=_h(admin_token),
    ).json()["id"]
    theirs = client.post(
        f"{API}/provisioning/batches",
        json={"factory_id": other, "product": "p", "expires_in_hours": 1, "device_ids": ["x-1"]},
        headers=_h(admin_token),
    ).json()["id"]
    resp = client.post(
        f"{API}/provisioning/batches/{theirs}/enroll",
        json={"items": [{"device_id": "x-1", "csr": _csr("x-1")}]},
        headers=_h(token),
    )
    assert resp.status_code == 403, resp.text
    row = next(r for r in _attempts(client, admin_token) if r["device_id"] == "x-1")
    assert row["factory_id"] == factory and row["batch_id"] is None


def test_factory_token_enrolls_through_the_batch_that_names_the_device(
    client: TestClient, device_client: TestClient, ctx: AppContext, admin_token: str
) -> None:
    token, _, batch = _station(ctx, client, admin_token)
    resp = client.post(
        f"{API}/devices/fb-1/certificates",
        json={"csr": _csr("fb-1"), "environment": "test"},
        headers=_h(token),
    )
    assert resp.status_code == 201, resp.text
    assert _est(device_client, token, "fb-2").status_code == 200
    # The batch's count limit holds on these routes too (2 of 3 names).
    third = client.post(
        f"{API}/enrollments",
        json={"items": [{"device_id": "fb-3", "csr": _csr("fb-3")}], "environment": "test"},
        headers=_h(token),
    )
    assert third.json()["issued"] == 0, third.text
    # Once per device: fb-1 again is a duplicate, not a second identity.
    again = client.post(
        f"{API}/devices/fb-1/certificates", json={"csr": _csr("fb-1")}, headers=_h(token)
    )
    assert again.status_code == 409, again.text
    with ctx.db.read() as s:
        used = s.get_one(EnrollmentBatch, batch).used_count
    assert used == 2
    rows = [r for r in _attempts(client, admin_token) if r["device_id"].startswith("fb-")]
    accepted = [r for r in rows if r["result"] == "accepted"]
    assert {(r["device_id"], r["route"], r["batch_id"]) for r in accepted} == {
        ("fb-1", "rest", batch),
        ("fb-2", "est", batch),
    }
    assert all(r["environment"] == "test" and r["serial"] for r in accepted)
    assert {r["category"] for r in rows if r["result"] == "refused"} <= {
        "outside-batch",
        "batch-unusable",
        "duplicate",
    }
    assert len(rows) == 4 and rows[-1]["category"] == "batch-unusable"


def test_operator_enrollments_are_recorded_too(
    client: TestClient, ctx: AppContext, admin_token: str
) -> None:
    ok = client.post(
        f"{API}/devices/op-1/certificates",
        json={"csr": _csr("op-1"), "environment": "test"},
        headers=_h(admin_token),
    )
    assert ok.status_code == 201
    bad = client.post(
        f"{API}/devices/op-2/certificates",
        json={"csr": _csr("someone-else"), "environment": "test"},
        headers=_h(admin_token),
    )
    assert bad.status_code in (400, 422), bad.text
    with ctx.db.session() as s:
        _, auditor = tenancy.create_token(
            s, tenant=tenancy.get_tenant(s, 1), name="a", role="auditor", actor="t"
        )
    refused = client.post(
        f"{API}/devices/op-3/certificates", json={"csr": _csr("op-3")}, headers=_h(auditor)
    )
    assert refused.status_code == 403
    rows = {r["device_id"]: r for r in _attempts(client, admin_token)}
    assert rows["op-1"]["result"] == "accepted" and rows["op-1"]["key_origin"] == "software"
    assert rows["op-1"]["route"] == "rest" and rows["op-1"]["factory_id"] is None
    assert rows["op-2"]["result"] == "refused" and rows["op-2"]["reason"]
    # A role that may not enroll is refused at the door: cheap, and no record.
    assert "op-3" not in rows
    csv_text = client.get(f"{API}/provisioning/attempts?format=csv", headers=_h(admin_token)).text
    assert csv_text.splitlines()[0].endswith(",route,environment")
