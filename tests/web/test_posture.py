"""The posture page (``/``): real counts for the viewer's tenant only.

The fleet is made through the API (tokens, enrollment, quarantine, tenant
policy, releases); what attestation would write on a device's boot (its
verdict event and running version) and what a detector would raise are
written through those domains' functions, as the verifier and the detector
would.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

import pytest
from fastapi.testclient import TestClient

from fleetward import detection, identity, ota, telemetry
from fleetward.runtime.context import AppContext
from fleetward.store import utcnow
from fleetward.tenancy import service as tenancy
from tests.helpers import csr_pem, new_key
from tests.ota.helpers import SBOM, measurements
from tests.web.helpers import sign_in

PRODUCT = "gateway"


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def new_token(client: TestClient, admin: str, role: str) -> str:
    r = client.post("/api/v1/tokens", json={"name": f"{role}-t", "role": role}, headers=auth(admin))
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


def enroll(client: TestClient, token: str, device_id: str, environment: str) -> None:
    r = client.post(
        f"/api/v1/devices/{device_id}/certificates",
        json={
            "csr": csr_pem(new_key(), device_id).decode(),
            "environment": environment,
            "product": PRODUCT,
        },
        headers=auth(token),
    )
    assert r.status_code == 201, r.text


def release(client: TestClient, rm: str, version: str) -> int:
    image = f"image {version}".encode()
    r = client.post(
        "/api/v1/releases",
        data={
            "product": PRODUCT,
            "version": version,
            "hardware": "board-a",
            "measurements": json.dumps(measurements(image)),
        },
        files={
            "artifact": ("fw.bin", image, "application/octet-stream"),
            "sbom": ("sbom.json", SBOM, "application/json"),
        },
        headers=auth(rm),
    )
    assert r.status_code == 201, r.text
    rid = int(r.json()["id"])
    approved = client.post(f"/api/v1/releases/{rid}/approvals", headers=auth(rm))
    assert approved.json()["state"] == "deployable", approved.text
    return rid


def booted(
    ctx: AppContext, tenant: str, device_id: str, version: str, verdict: str, *, ago: float = 60
) -> None:
    """What the verifier writes on a verdict: the running version and the event."""
    at = utcnow() - dt.timedelta(seconds=ago)
    with ctx.db.session() as s:
        t = tenancy.get_tenant_by_name(s, tenant)
        pk = identity.find_device_pk(s, tenant_id=t.id, device_id=device_id)
        assert pk is not None
        ota.note_running(s, tenant_id=t.id, device_pk=pk, product=PRODUCT, version=version, now=at)
        fields = {"verdict": verdict, "failed": ["secboot"] if verdict == "fail" else []}
        telemetry.record_events(
            s,
            [
                {
                    "tenant_id": t.id,
                    "device_pk": pk,
                    "type": "attestation.verdict",
                    "at": at,
                    "count": 1,
                    "fields": json.dumps({**fields, "swversion": version, "bootcount": 1}),
                }
            ],
        )


def alert(ctx: AppContext, tenant: str, key: str, severity: str) -> None:
    with ctx.db.session() as s:
        t = tenancy.get_tenant_by_name(s, tenant)
        finding = detection.Finding(
            tenant_id=t.id, kind="boot-integrity", key=key, severity=severity,
            subject=key, summary=f"test alert {key}", evidence={},
        )  # fmt: skip
        detection.raise_alert(s, finding, now=utcnow())


def figure(html: str, element_id: str) -> int:
    found = re.search(rf'id="{element_id}">(\d+)<', html)
    assert found is not None, f"no figure {element_id}"
    return int(found.group(1))


def table(html: str, element_id: str) -> str:
    start = html.index(f'id="{element_id}"')
    return html[start : html.index("</table>", start)]


@pytest.fixture
def fleet(client: TestClient, ctx: AppContext, admin_token: str) -> dict[str, Any]:
    """Tenant ``default``: a-1, a-2 (test), p-1 (production), s-1 (short-lived
    certificate), q-1 quarantined; two deployable releases; verdicts; alerts.
    Tenant ``other``: a larger fleet of its own that must never be counted."""
    rm = new_token(client, admin_token, "release-manager")
    for d in ("a-1", "a-2", "q-1"):
        enroll(client, admin_token, d, "test")
    enroll(client, admin_token, "p-1", "production")
    r = client.post(
        "/api/v1/devices/q-1/state", json={"state": "quarantined"}, headers=auth(admin_token)
    )
    assert r.status_code == 200, r.text
    r = client.patch("/api/v1/tenant", json={"cert_lifetime_days": 10}, headers=auth(admin_token))
    assert r.status_code == 200, r.text
    enroll(client, admin_token, "s-1", "test")
    r = client.post(f"/api/v1/ota/products/{PRODUCT}", json={"threshold": 1}, headers=auth(rm))
    assert r.status_code == 201, r.text
    release(client, rm, "1.0.0")
    release(client, rm, "1.1.0")
    booted(ctx, "default", "a-1", "1.0.0", "fail", ago=3 * 3600)  # older than the latest
    booted(ctx, "default", "a-1", "1.0.0", "fail")
    booted(ctx, "default", "a-2", "1.1.0", "fail", ago=2 * 86400)  # outside the 24 h window
    booted(ctx, "default", "a-2", "1.1.0", "pass")
    booted(ctx, "default", "p-1", "1.1.0", "pass")
    booted(ctx, "default", "s-1", "9.9.9", "unknown-firmware")
    alert(ctx, "default", "device:a-1", "high")
    alert(ctx, "default", "device:p-1", "low")

    with ctx.db.session() as s:
        other = tenancy.create_tenant(s, name="other", actor="test")
        identity.create_tenant_pki(s, ctx.pki, tenant=other, actor="test")
        _, other_admin = tenancy.create_token(s, tenant=other, name="a", role="admin", actor="test")
    for i in range(6):
        enroll(client, other_admin, f"o-{i}", "test")
        booted(ctx, "other", f"o-{i}", "1.0.0", "fail")
    alert(ctx, "other", "device:o-0", "critical")
    return {"rm": rm, "other_admin": other_admin}


def test_the_page_counts_the_tenants_fleet(
    client: TestClient, admin_token: str, fleet: dict[str, Any]
) -> None:
    sign_in(client, admin_token)
    page = client.get("/")
    assert page.status_code == 200, page.text
    html = page.text
    # Devices: five of this tenant (the other tenant's six never count).
    assert figure(html, "devices-total") == 5
    states = table(html, "devices-by-state")
    assert ">active</a></td><td>4<" in states and ">quarantined</a></td><td>1<" in states
    envs = table(html, "devices-by-environment")
    assert ">test</a></td><td>4<" in envs and ">production</a></td><td>1<" in envs
    assert "<svg" in html and 'aria-label="Devices by state"' in html
    # Certificates: only s-1's expires within 30 days.
    assert figure(html, "certs-expiring") == 1
    assert figure(html, "certs-expired") == 0
    soonest = table(html, "certs-soonest")
    assert '<a href="/console/devices/s-1">s-1</a>' in soonest
    assert "a-1" not in soonest
    # Boot verdicts: each device by its latest verdict within 24 h.
    cohorts = table(html, "cohorts")
    assert '<tr class="bad"><td>gateway</td><td>1.0.0</td><td>0</td>' in cohorts
    assert "<td>gateway</td><td>1.1.0</td><td>2</td>" in cohorts  # a-2 (latest) and p-1
    assert "<td>9.9.9</td>" in cohorts
    assert "1 fail" in html and "2 pass" in html and "1 unknown firmware" in html
    # Firmware: 1.0.0 and 9.9.9 drift from the newest deployable release 1.1.0.
    firmware = table(html, "firmware")
    assert '<tr class="drift"><td>gateway</td><td>1.0.0' in firmware
    assert '<tr class="drift"><td>gateway</td><td>9.9.9' in firmware
    assert "<tr><td>gateway</td><td>1.1.0</td>" in firmware
    assert figure(html, "firmware-drift") == 2
    # Alerts: two open (the other tenant's critical one is not among them).
    assert figure(html, "alerts-open") == 2
    severities = table(html, "alerts-by-severity")
    assert "critical" not in severities and ">high</a></td><td>1<" in severities
    assert 'href="/console/alerts"' in html and 'href="/console/vulns"' in html
    assert figure(html, "vulns-open") == 0


def test_another_tenants_viewer_sees_only_its_own(
    client: TestClient, fleet: dict[str, Any]
) -> None:
    sign_in(client, fleet["other_admin"])
    html = client.get("/").text
    assert figure(html, "devices-total") == 6
    assert figure(html, "alerts-open") == 1
    assert "a-1" not in html and "s-1" not in html
    cohorts = table(html, "cohorts")
    assert '<tr class="bad"><td>gateway</td><td>1.0.0</td><td>0</td>' in cohorts
    assert "1.1.0" not in cohorts


def test_the_auditor_sees_the_page_and_no_action(
    client: TestClient, admin_token: str, fleet: dict[str, Any]
) -> None:
    auditor = new_token(client, admin_token, "auditor")
    csrf = sign_in(client, auditor)
    html = client.get("/").text
    assert figure(html, "devices-total") == 5
    assert 'class="action"' not in html and "data-method" not in html
    # The API refuses what the auditor's session might forge.
    forged = client.post(
        "/api/v1/devices/a-1/state", json={"state": "quarantined"}, headers={"X-CSRF-Token": csrf}
    )
    assert forged.status_code == 403, forged.text


@pytest.mark.sqlite_run_only
def test_the_partial_answer_is_the_main_block_only(client: TestClient, admin_token: str) -> None:
    sign_in(client, admin_token)
    part = client.get("/", headers={"X-Console-Partial": "1"})
    assert part.status_code == 200
    assert "Fleet posture" in part.text
    assert "<html" not in part.text and "<nav" not in part.text
    assert part.headers["content-security-policy"].startswith("default-src 'none'")


@pytest.mark.sqlite_run_only
def test_an_empty_tenant_and_hostile_query_parameters(client: TestClient, admin_token: str) -> None:
    sign_in(client, admin_token)
    page = client.get("/", params={"state": "<script>alert(1)</script>", "limit": "9" * 40})
    assert page.status_code == 200
    assert "<script>alert" not in page.text
    assert figure(page.text, "devices-total") == 0
    assert "No boot verdict in the last 24 hours." in page.text
    assert "No device has reported its firmware yet." in page.text


@pytest.mark.sqlite_run_only
def test_a_factory_bound_token_reads_no_section(client: TestClient, admin_token: str) -> None:
    f = client.post(
        "/api/v1/provisioning/factories",
        json={"name": "line-1", "environment": "test"},
        headers=auth(admin_token),
    )
    assert f.status_code == 201, f.text
    t = client.post(
        f"/api/v1/provisioning/factories/{f.json()['id']}/tokens",
        json={"name": "line"},
        headers=auth(admin_token),
    )
    assert t.status_code == 201, t.text
    sign_in(client, t.json()["token"])
    html = client.get("/").text
    assert "allow none of the posture" in html
    assert 'id="devices-total"' not in html
