"""The escalations a narrow credential managed before, each refused now.

Tried as an attacker with a legitimate but narrow token: a ``test``-scoped
admin minted an unscoped admin, switched production's dangerous option on,
and the new token enrolled a production software key; a ``test``-scoped
security token quarantined, revoked and cohort-revoked production.
"""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import select

from fleetward.identity.models import CertificateRecord, Device
from fleetward.runtime.context import AppContext
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
    tokens = client.get(f"{API}/tokens", headers=_h(admin)).json()["items"]
    assert {t["environment"] for t in tokens} == {"test"}  # sees only its own scope
    with ctx.db.read() as s:
        unscoped = s.execute(
            select(ApiToken.id).where(ApiToken.environment.is_(None)).limit(1)
        ).scalar_one()
    _refused(client.delete(f"{API}/tokens/{unscoped}", headers=_h(admin)))
    # And its tokens enroll in test only: production stays out of reach.
    key = new_key()
    resp = client.post(
        f"{API}/devices/p-1/certificates",
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
            f"{API}/certificates/{serial}/revocation",
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


def test_what_a_live_attack_found_next(
    client: TestClient, ctx: AppContext, admin_token: str
) -> None:
    """Found by attacking the first fix on a live server: each refused now."""
    admin = _h(admin_token)
    enroll(ctx, ["prod-3"], env="production")
    with ctx.db.read() as s:
        serial = s.execute(
            select(CertificateRecord.serial)
            .join(Device, Device.id == CertificateRecord.device_pk)
            .where(Device.device_id == "prod-3")
        ).scalar_one()
    # A revoked production certificate does not make the device the test
    # environment's: a test-scoped admin may not enroll it there.
    revoked = client.post(
        f"{API}/certificates/{serial}/revocation", json={"reason": "superseded"}, headers=admin
    )
    assert revoked.status_code == 200
    ta = _token(ctx, "admin", "test")
    taken = client.post(
        f"{API}/devices/prod-3/certificates",
        json={"csr": csr_pem(new_key(), "prod-3").decode(), "environment": "test"},
        headers=_h(ta),
    )
    _refused(taken)
    with ctx.db.read() as s:
        envs = set(
            s.execute(
                select(CertificateRecord.environment)
                .join(Device, Device.id == CertificateRecord.device_pk)
                .where(Device.device_id == "prod-3")
            ).scalars()
        )
    assert envs == {"production"}
    # Device ids an open production batch names are not the test environment's.
    factory = client.post(
        f"{API}/provisioning/factories",
        json={"name": "line-p", "environment": "production"},
        headers=admin,
    ).json()["id"]
    client.post(
        f"{API}/provisioning/batches",
        json={"factory_id": factory, "product": "p", "expires_in_hours": 1, "device_ids": ["pb-9"]},
        headers=admin,
    )
    _refused(
        client.post(
            f"{API}/devices/pb-9/certificates",
            json={"csr": csr_pem(new_key(), "pb-9").decode(), "environment": "test"},
            headers=_h(ta),
        )
    )
    attempts = client.get(f"{API}/provisioning/attempts", headers=admin).json()["items"]
    pb9 = next(a for a in attempts if a["device_id"] == "pb-9")
    assert pb9["result"] == "refused" and pb9["environment"] == "test"
    # A short-lived token cannot mint a permanent one.
    short = client.post(
        f"{API}/tokens",
        json={"name": "short", "role": "admin", "environment": "test", "expires_in_days": 1},
        headers=admin,
    ).json()["token"]
    _refused(
        client.post(
            f"{API}/tokens",
            json={"name": "forever", "role": "admin", "environment": "test"},
            headers=_h(short),
        )
    )
    within = client.post(
        f"{API}/tokens",
        json={"name": "brief", "role": "auditor", "environment": "test", "expires_in_days": 1},
        headers=_h(short),
    )
    assert within.status_code == 201, within.text
    # (a day asked of a token with less left gets what the grantor has)
    assert (
        within.json()["expires_at"]
        <= client.get(f"{API}/tokens", headers=admin).json()["items"][-2]["expires_at"]
    )
    # A test-scoped security token may not close (and so stop) a production response.
    client.put(
        f"{API}/playbooks",
        json={
            "source": "name: q\nparams: {ids: null}\ncohort: {devices: '{ids}'}\n"
            "steps: [{action: quarantine}]\n"
        },
        headers=admin,
    )
    incident = client.post(f"{API}/incidents", json={"title": "p"}, headers=admin).json()["id"]
    enroll(ctx, ["prod-4"], env="production")
    run = client.post(
        f"{API}/incidents/{incident}/runs",
        json={"playbook": "q", "params": {"ids": ["prod-4"]}, "environment": "production"},
        headers=admin,
    )
    assert run.status_code == 201, run.text
    ts = _token(ctx, "security", "test")
    _refused(
        client.post(
            f"{API}/incidents/{incident}/state",
            json={"state": "closed", "force": True},
            headers=_h(ts),
        )
    )
    _refused(client.post(f"{API}/incidents/{incident}/notes", json={"text": "x"}, headers=_h(ts)))
    # The dangerous option takes a JSON boolean, not a truthy string.
    loose = client.patch(
        f"{API}/tenant", json={"allow_unattested_keys_in_production": "yes"}, headers=admin
    )
    assert loose.status_code == 422


def test_records_and_audit_views_are_safe_to_open(
    client: TestClient, ctx: AppContext, admin_token: str
) -> None:
    admin = _h(admin_token)
    bad = '=HYPERLINK("http://203.0.113.9/x","open")'
    client.post(
        f"{API}/enrollments",
        json={"items": [{"device_id": bad, "csr": "x"}], "environment": "test"},
        headers=admin,
    )
    text = client.get(f"{API}/provisioning/attempts?format=csv", headers=admin).text
    assert "\n=" not in text and ",=" not in text and "'=HYPERLINK" in text
    auditor = _h(_token(ctx, "auditor", None))
    entries = client.get(f"{API}/audit/entries?limit=1000", headers=auditor).json()["items"]
    keys = [e["details"]["key"] for e in entries if "key" in e["details"]]
    assert keys and set(keys) == {"(redacted)"}
    full = client.get(f"{API}/audit/entries?limit=1000", headers=admin).json()["items"]
    assert any(str(e["details"].get("key", "")).startswith("file:") for e in full)
