"""Device identity over the REST API: issuance, renewal, revocation, and refusals.

Every refusal must answer with an RFC 9457 problem, leave no partial state,
and be recorded as a refused attempt in the audit log.
"""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import verification as xv
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from fleetward.audit.models import AuditEntry
from fleetward.identity.models import CertificateRecord, Device
from fleetward.identity.renewal import renewal_proof_message
from fleetward.runtime.context import AppContext
from fleetward.store import utcnow
from fleetward.tenancy import service as tenancy
from tests.conftest import DeviceTestClient
from tests.helpers import csr_pem, new_key


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def enroll(client: TestClient, token: str, device_id: str, pem: bytes, **extra: Any) -> Any:
    return client.post(
        f"/api/v1/devices/{device_id}/certificates",
        json={"csr": pem.decode(), **extra},
        headers=auth(token),
    )


def make_token(ctx: AppContext, role: str, *, tenant: str = "default", **kw: Any) -> str:
    with ctx.db.session() as s:
        t = tenancy.get_tenant_by_name(s, tenant)
        _, token = tenancy.create_token(
            s, tenant=t, name=f"{role} token", role=role, actor="test", **kw
        )
    return token


def refused(ctx: AppContext, action: str) -> list[AuditEntry]:
    with ctx.db.session() as s:
        stmt = select(AuditEntry).where(
            AuditEntry.action == action, AuditEntry.outcome == "refused"
        )
        return list(s.execute(stmt).scalars())


def device_count(ctx: AppContext) -> int:
    with ctx.db.session() as s:
        return int(s.execute(select(func.count()).select_from(Device)).scalar_one())


def assert_problem(resp: Any, status: int, fragment: str) -> None:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    body = resp.json()
    assert body["status"] == status
    assert body["type"].startswith("urn:fleetward:problem:")
    assert fragment in body["detail"]


def cas(client: TestClient, token: str) -> dict[str, x509.Certificate]:
    out = {}
    for ca in client.get("/api/v1/cas", headers=auth(token)).json()["items"]:
        out[ca["environment"] or "root"] = x509.load_pem_x509_certificate(
            ca["certificate"].encode()
        )
    return out


def test_enroll_issues_a_verifiable_certificate(
    client: TestClient, ctx: AppContext, admin_token: str
) -> None:
    resp = enroll(client, admin_token, "sensor-1", csr_pem(new_key(), "sensor-1"), product="thermo")
    assert resp.status_code == 201, resp.text
    cert = x509.load_pem_x509_certificate(resp.json()["certificate"].encode())
    chain = cas(client, admin_token)
    cert.verify_directly_issued_by(chain["production"])
    device = client.get("/api/v1/devices/sensor-1", headers=auth(admin_token)).json()
    assert device["state"] == "active" and device["product"] == "thermo"
    history = client.get("/api/v1/devices/sensor-1/certificates", headers=auth(admin_token)).json()[
        "items"
    ]
    assert [c["serial"] for c in history] == [format(cert.serial_number, "x")]
    with ctx.db.session() as s:
        issued = (
            s.execute(select(AuditEntry).where(AuditEntry.action == "certificate.issue"))
            .scalars()
            .all()
        )
    assert [e.subject for e in issued] == ["device:sensor-1"]


def test_second_enrollment_is_refused_and_recorded(
    client: TestClient, ctx: AppContext, admin_token: str
) -> None:
    assert enroll(client, admin_token, "d1", csr_pem(new_key(), "d1")).status_code == 201
    resp = enroll(client, admin_token, "d1", csr_pem(new_key(), "d1"))
    assert_problem(resp, 409, "already enrolled")
    assert [e.subject for e in refused(ctx, "certificate.issue")] == ["device:d1"]


@pytest.mark.parametrize(
    ("pem_factory", "status", "fragment"),
    [
        (
            lambda: csr_pem(
                new_key(),
                "d9",
                extensions=[(x509.BasicConstraints(ca=True, path_length=None), True)],
            ),
            422,
            "CA certificate",
        ),
        (lambda: csr_pem(new_key(), "someone-else"), 422, "not device"),
        (lambda: csr_pem(new_key("rsa-1024"), "d9"), 422, "not accepted"),
        (lambda: b"not a csr", 400, "malformed CSR"),
        (
            lambda: (
                b"-----BEGIN CERTIFICATE REQUEST-----\n"
                + b"QUFB" * 4200
                + b"\n-----END CERTIFICATE REQUEST-----\n"
            ),
            413,
            "limit",
        ),
    ],
    ids=["ca-flag", "foreign-id", "rsa-1024", "malformed", "oversized"],
)
def test_bad_csrs_are_refused_without_partial_state(
    client: TestClient,
    ctx: AppContext,
    admin_token: str,
    pem_factory: Any,
    status: int,
    fragment: str,
) -> None:
    before = device_count(ctx)
    resp = enroll(client, admin_token, "d9", pem_factory())
    assert_problem(resp, status, fragment)
    assert device_count(ctx) == before
    with ctx.db.session() as s:
        assert s.execute(select(func.count()).select_from(CertificateRecord)).scalar_one() == 0
    entries = refused(ctx, "certificate.issue")
    assert len(entries) == 1 and fragment in entries[0].details


def test_bad_tokens_are_refused_and_recorded(client: TestClient, ctx: AppContext) -> None:
    expired = make_token(
        ctx,
        "admin",
        expires_at=utcnow() + dt.timedelta(seconds=1),
        now=utcnow() - dt.timedelta(hours=1),
    )
    revoked = make_token(ctx, "admin")
    with ctx.db.session() as s:
        who = tenancy.authenticate(s, revoked)
        tenancy.revoke_token(
            s,
            who.__class__(
                tenant_id=who.tenant_id, tenant_name="default", role="admin", actor="test"
            ),
            revoked.split("_")[1],
        )
    wrong_secret = revoked.rsplit("_", 1)[0] + "_" + "x" * 43
    cases = [
        (None, "API token is required"),
        ("garbage", "malformed"),
        (wrong_secret, "invalid API token"),
        (revoked, "revoked"),
    ]
    for token, fragment in cases:
        headers = auth(token) if token else {}
        assert_problem(client.get("/api/v1/devices", headers=headers), 401, fragment)
    # The expiring token was created one hour in the past with a one-second life.
    with ctx.db.session() as s:
        row_id = expired.split("_")[1]
        from fleetward.tenancy.models import ApiToken

        s.get(ApiToken, row_id).expires_at = utcnow() - dt.timedelta(seconds=1)  # type: ignore[union-attr]
    assert_problem(client.get("/api/v1/devices", headers=auth(expired)), 401, "expired")
    assert len(refused(ctx, "auth.token")) == 5


def test_roles_are_enforced(client: TestClient, ctx: AppContext) -> None:
    auditor = make_token(ctx, "auditor")
    resp = enroll(client, auditor, "d1", csr_pem(new_key(), "d1"))
    assert_problem(resp, 403, "may not")
    assert client.get("/api/v1/devices", headers=auth(auditor)).status_code == 200
    assert client.get("/api/v1/audit/entries", headers=auth(auditor)).status_code == 200
    factory = make_token(ctx, "factory-operator")
    assert_problem(client.get("/api/v1/audit/entries", headers=auth(factory)), 403, "may not")
    assert_problem(
        client.post("/api/v1/tokens", json={"name": "x", "role": "admin"}, headers=auth(factory)),
        403,
        "may not",
    )


def test_environment_scoped_token(client: TestClient, ctx: AppContext) -> None:
    test_only = make_token(ctx, "factory-operator", environment="test")
    resp = enroll(client, test_only, "d1", csr_pem(new_key(), "d1"), environment="production")
    assert_problem(resp, 403, "scoped to the test environment")
    resp = enroll(client, test_only, "d1", csr_pem(new_key(), "d1"))
    assert resp.status_code == 201
    assert resp.json()["environment"] == "test"


def test_test_certificates_never_verify_under_the_production_chain(
    client: TestClient, admin_token: str
) -> None:
    chain = cas(client, admin_token)
    resp = enroll(client, admin_token, "t1", csr_pem(new_key(), "t1"), environment="test")
    leaf = x509.load_pem_x509_certificate(resp.json()["certificate"].encode())
    now = utcnow()

    def verify(anchor: x509.Certificate) -> None:
        verifier = xv.PolicyBuilder().store(xv.Store([anchor])).time(now).build_client_verifier()
        verifier.verify(leaf, [])

    verify(chain["test"])
    with pytest.raises(xv.VerificationError):
        verify(chain["production"])


def test_cross_tenant_access_is_not_found(
    client: TestClient, ctx: AppContext, admin_token: str
) -> None:
    resp = enroll(client, admin_token, "mine", csr_pem(new_key(), "mine"))
    serial = resp.json()["serial"]
    with ctx.db.session() as s:
        other = tenancy.create_tenant(s, name="other", actor="test")
        _, other_token = tenancy.create_token(s, tenant=other, name="a", role="admin", actor="test")
    for method, path, body in [
        ("GET", "/api/v1/devices/mine", None),
        ("GET", "/api/v1/devices/mine/certificates", None),
        ("GET", f"/api/v1/certificates/{serial}", None),
        ("POST", f"/api/v1/certificates/{serial}/revocation", {"reason": "keyCompromise"}),
        ("POST", "/api/v1/devices/mine/revocation", {"reason": "keyCompromise"}),
        ("POST", "/api/v1/devices/mine/state", {"state": "quarantined"}),
    ]:
        resp = client.request(method, path, json=body, headers=auth(other_token))
        assert_problem(resp, 404, "not found")
    assert client.get("/api/v1/devices", headers=auth(other_token)).json()["items"] == []
    # Nothing changed for the owner.
    assert (
        client.get(f"/api/v1/certificates/{serial}", headers=auth(admin_token)).json()["status"]
        == "good"
    )


def test_renewal_same_key_and_new_key(
    client: TestClient, device_client: DeviceTestClient, admin_token: str
) -> None:
    key = new_key()
    first = enroll(client, admin_token, "r1", csr_pem(key, "r1")).json()["certificate"]
    resp = device_client.as_device(first).post(
        "/api/v1/renew", json={"certificate": first, "csr": csr_pem(key, "r1").decode()}
    )
    assert resp.status_code == 201, resp.text
    second = resp.json()["certificate"]
    new = new_key()
    new_csr = csr_pem(new, "r1")
    resp = device_client.as_device(second).post(
        "/api/v1/renew", json={"certificate": second, "csr": new_csr.decode()}
    )
    assert_problem(resp, 422, "needs a proof")
    der = x509.load_pem_x509_csr(new_csr).public_bytes(
        __import__(
            "cryptography.hazmat.primitives.serialization", fromlist=["Encoding"]
        ).Encoding.DER
    )
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    forged = new.sign(renewal_proof_message(der), ec.ECDSA(hashes.SHA256()))  # type: ignore[call-arg, arg-type]
    resp = device_client.as_device(second).post(
        "/api/v1/renew",
        json={
            "certificate": second,
            "csr": new_csr.decode(),
            "proof": base64.b64encode(forged).decode(),
        },
    )
    assert_problem(resp, 422, "does not verify")
    proof = key.sign(renewal_proof_message(der), ec.ECDSA(hashes.SHA256()))
    resp = device_client.as_device(second).post(
        "/api/v1/renew",
        json={
            "certificate": second,
            "csr": new_csr.decode(),
            "proof": base64.b64encode(proof).decode(),
        },
    )
    assert resp.status_code == 201, resp.text
    history = client.get("/api/v1/devices/r1/certificates", headers=auth(admin_token)).json()[
        "items"
    ]
    assert len(history) == 3


def test_revoked_certificate_cannot_renew(
    client: TestClient, device_client: DeviceTestClient, ctx: AppContext, admin_token: str
) -> None:
    key = new_key()
    body = enroll(client, admin_token, "r2", csr_pem(key, "r2")).json()
    resp = client.post(
        f"/api/v1/certificates/{body['serial']}/revocation",
        json={"reason": "keyCompromise"},
        headers=auth(admin_token),
    )
    assert (
        resp.json()["status"] == "revoked" and resp.json()["revocation_reason"] == "keyCompromise"
    )
    resp = device_client.as_device(body["certificate"]).post(
        "/api/v1/renew",
        json={"certificate": body["certificate"], "csr": csr_pem(key, "r2").decode()},
    )
    # Refused when the device authenticates, before any work: counted, not audited.
    assert_problem(resp, 401, "revoked")
    assert len(refused(ctx, "certificate.renew")) == 0
    history = client.get("/api/v1/devices/r2/certificates", headers=auth(admin_token)).json()[
        "items"
    ]
    assert len(history) == 1


def test_unknown_revocation_reason_is_refused(client: TestClient, admin_token: str) -> None:
    serial = enroll(client, admin_token, "r3", csr_pem(new_key(), "r3")).json()["serial"]
    resp = client.post(
        f"/api/v1/certificates/{serial}/revocation",
        json={"reason": "bored"},
        headers=auth(admin_token),
    )
    assert_problem(resp, 400, "unknown revocation reason")
    assert (
        client.get(f"/api/v1/certificates/{serial}", headers=auth(admin_token)).json()["status"]
        == "good"
    )


def test_batch_enrollment_items_succeed_or_fail_alone(
    client: TestClient, ctx: AppContext, admin_token: str
) -> None:
    items = [
        {"device_id": "b1", "csr": csr_pem(new_key(), "b1").decode()},
        {"device_id": "b2", "csr": csr_pem(new_key(), "other").decode()},
        {"device_id": "b1", "csr": csr_pem(new_key(), "b1").decode()},
        {"device_id": "b/3", "csr": csr_pem(new_key(), None).decode()},
        {"device_id": "b4", "csr": csr_pem(new_key(), None).decode()},
    ]
    resp = client.post("/api/v1/enrollments", json={"items": items}, headers=auth(admin_token))
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert (out["issued"], out["refused"]) == (2, 3)
    assert [i["certificate"] is not None for i in out["items"]] == [True, False, False, False, True]
    assert "twice" in out["items"][2]["problem"]["detail"]
    assert device_count(ctx) == 2
    assert len(refused(ctx, "certificate.issue")) == 3
    too_many = {"items": [items[0]] * 1001}
    assert_problem(
        client.post("/api/v1/enrollments", json=too_many, headers=auth(admin_token)),
        422,
        "at most 1000 items",
    )


def test_device_lifecycle(client: TestClient, admin_token: str) -> None:
    h = auth(admin_token)
    assert (
        client.post("/api/v1/devices", json={"device_id": "l1", "product": "p"}, headers=h).json()[
            "state"
        ]
        == "pending"
    )
    assert_problem(
        client.post("/api/v1/devices", json={"device_id": "l1"}, headers=h), 409, "already exists"
    )
    assert enroll(client, admin_token, "l1", csr_pem(new_key(), "l1")).status_code == 201
    assert (
        client.post("/api/v1/devices/l1/state", json={"state": "quarantined"}, headers=h).json()[
            "state"
        ]
        == "quarantined"
    )
    assert_problem(enroll(client, admin_token, "l1", csr_pem(new_key(), "l1")), 409, "quarantined")
    assert (
        client.post("/api/v1/devices/l1/state", json={"state": "active"}, headers=h).json()["state"]
        == "active"
    )
    assert (
        client.post(
            "/api/v1/devices/l1/revocation", json={"reason": "keyCompromise"}, headers=h
        ).json()["state"]
        == "revoked"
    )
    certs = client.get("/api/v1/devices/l1/certificates", headers=h).json()["items"]
    assert [c["status"] for c in certs] == ["revoked"]
    assert_problem(
        client.post("/api/v1/devices/l1/state", json={"state": "active"}, headers=h),
        409,
        "cannot become",
    )
    assert_problem(
        client.post("/api/v1/devices/l1/state", json={"state": "sleepy"}, headers=h),
        400,
        "unknown device state",
    )


def test_openapi_and_problem_for_unknown_route(client: TestClient) -> None:
    spec = client.get("/api/v1/openapi.json").json()
    assert "/api/v1/devices/{device_id}/certificates" in spec["paths"]
    assert_problem(client.get("/api/v1/nowhere"), 404, "Not Found")
    resp = client.post(
        "/api/v1/devices/x/certificates", json={"nope": 1}, headers={"Authorization": "Bearer x"}
    )
    assert resp.status_code in (401, 422)
