"""The escalations a narrow credential managed before, each refused now.

Tried as an attacker with a legitimate but narrow token: a ``test``-scoped
admin minted an unscoped admin, switched production's dangerous option on,
and the new token enrolled a production software key; a ``test``-scoped
security token quarantined, revoked and cohort-revoked production.
"""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import select

from fleetward.api.context import AppContext
from fleetward.identity.models import CertificateRecord, Device
from fleetward.tenancy import service as tenancy
from fleetward.tenancy.models import ApiToken
from tests.helpers import csr_pem, new_key
from tests.response.helpers import enroll

API = "/api/v1"


def _h(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _token(ctx: AppContext, role: str, environment: str | None) -> str:
    with ctx.db.session() as s:
        _, token = tenancy.create_token(
            s,
            tenant=tenancy.get_tenant(s, 1),
            name=f"{role}-{environment}",
            role=role,
            environment=environment,
            actor="test",
        )
    return token


def _refused(resp: object, slug: str = "out-of-scope") -> None:
    assert getattr(resp, "status_code", None) == 403, getattr(resp, "text", resp)
    assert resp.json()["type"] == f"urn:fleetward:problem:{slug}"  # type: ignore[attr-defined]


def test_a_test_scoped_admin_cannot_widen_itself(client: TestClient, ctx: AppContext) -> None:
    admin = _token(ctx, "admin", "test")
    # No unscoped, no production, token from a test-scoped admin.
    for env in (None, "production"):
        body = {"name": "wider", "role": "admin", "environment": env}
        _refused(client.post(f"{API}/tokens", json=body, headers=_h(admin)))
    # Within its scope it may still hand out tokens.
    ok = client.post(
        f"{API}/tokens",
        json={"name": "narrow", "role": "security", "environment": "test"},
        headers=_h(admin),
    )
    assert ok.status_code == 201 and ok.json()["environment"] == "test"
    # Tenant settings apply in every environment.
    settings: list[dict[str, object]] = [
        {"allow_unattested_keys_in_production": True},
        {"cert_lifetime_days": 800},
    ]
    for change in settings:
        _refused(client.patch(f"{API}/tenant", json=change, headers=_h(admin)))
    # It cannot revoke (and so lock out) the unscoped admin either.
    tokens = client.get(f"{API}/tokens", headers=_h(admin)).json()
    assert {t["environment"] for t in tokens} == {"test"}  # sees only its own scope
    with ctx.db.read() as s:
        unscoped = s.execute(
            select(ApiToken.id).where(ApiToken.environment.is_(None)).limit(1)
        ).scalar_one()
    _refused(client.delete(f"{API}/tokens/{unscoped}", headers=_h(admin)))
    # And its tokens enroll in test only: production stays out of reach.
    key = new_key()
    resp = client.post(
        f"{API}/devices/p-1/enroll",
        json={"csr": csr_pem(key, "p-1").decode(), "environment": "production"},
        headers=_h(ok.json()["token"]),
    )
    assert resp.status_code == 403, resp.text


def test_a_test_scoped_security_token_cannot_touch_production(
    client: TestClient, ctx: AppContext
) -> None:
    enroll(ctx, ["prod-1", "prod-2"], env="production")
    enroll(ctx, ["test-1", "test-2"], env="test")
    sec = _token(ctx, "security", "test")
    with ctx.db.read() as s:
        serial = s.execute(
            select(CertificateRecord.serial)
            .join(Device, Device.id == CertificateRecord.device_pk)
            .where(Device.device_id == "prod-2")
        ).scalar_one()
    _refused(
        client.post(
            f"{API}/devices/prod-1/state",
            json={"state": "quarantined", "reason": "x"},
            headers=_h(sec),
        )
    )
    _refused(
        client.post(
            f"{API}/certificates/{serial}/revoke",
            json={"reason": "keyCompromise"},
            headers=_h(sec),
        )
    )
    _refused(
        client.post(
            f"{API}/revocations/devices",
            json={"device_ids": ["test-2", "prod-2"], "reason": "keyCompromise"},
            headers=_h(sec),
        )
    )
    with ctx.db.read() as s:
        states = {d: st for d, st in s.execute(select(Device.device_id, Device.state))}
        good = s.execute(
            select(CertificateRecord.status).where(CertificateRecord.serial == serial)
        ).scalar_one()
    # Nothing changed: not even the test device of the mixed cohort.
    assert states == {d: "active" for d in ("prod-1", "prod-2", "test-1", "test-2")}
    assert good == "good"
    # Its own environment it still manages.
    ok = client.post(
        f"{API}/devices/test-1/state",
        json={"state": "quarantined", "reason": "x"},
        headers=_h(sec),
    )
    assert ok.status_code == 200 and ok.json()["state"] == "quarantined"
    cohort = client.post(
        f"{API}/revocations/devices",
        json={"device_ids": ["test-2"], "reason": "keyCompromise"},
        headers=_h(sec),
    )
    assert cohort.status_code == 200 and cohort.json()["revoked"] == 1
