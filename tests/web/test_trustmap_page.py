"""The trust maps page: registered maps per product, the latest check's
drifts with the objects they name, and "check now" for the roles that may.

The map (tests/trustmap/test_live.py's, adapted to a fresh installation) is
registered through the API; the check runs through the API with the
console's session cookie and CSRF token, as the page's form sends it; the
drift is made through the API (a software key enrolled in production).
"""

from __future__ import annotations

import yaml
from fastapi.testclient import TestClient

from fleetward.runtime.context import AppContext
from fleetward.tenancy import service as tenancy
from tests.trustmap.test_live import PRODUCT, adapted_map, auth, enroll, product
from tests.web.helpers import sign_in

__all__ = ["product"]  # the fixture, imported

CHECK = f"/api/v1/trustmap/maps/{PRODUCT}/checks"


def register(client: TestClient, admin_token: str) -> None:
    resp = client.put(
        f"/api/v1/trustmap/maps/{PRODUCT}",
        json={"document": yaml.safe_dump(adapted_map())},
        headers=auth(admin_token),
    )
    assert resp.status_code == 201, resp.text


def test_maps_checks_and_drifts_for_admin(
    client: TestClient, admin_token: str, product: int
) -> None:
    csrf = sign_in(client, admin_token)
    empty = client.get("/console/trustmap")
    assert empty.status_code == 200 and "No trust map registered" in empty.text
    register(client, admin_token)
    page = client.get("/console/trustmap").text
    assert f'id="map-{PRODUCT}"' in page and "not checked yet" in page
    assert f'data-path="{CHECK}"' in page
    assert "raises a trust-drift alert" in page  # the effect, stated before it runs

    # Checked now, from the page's form: the installation holds the map.
    ran = client.post(CHECK, headers={"X-CSRF-Token": csrf})
    assert ran.status_code == 200 and ran.json()["drifts"] == [], ran.text
    page = client.get("/console/trustmap").text
    assert "0 drifts" in page and "holds what the map declares" in page

    # A software key in production, where the map certifies hardware keys only.
    enroll(client, admin_token, "gw-prod-1", "production")
    ran = client.post(CHECK, headers={"X-CSRF-Token": csrf})
    assert ran.status_code == 200, ran.text
    [drift] = [d for d in ran.json()["drifts"] if "gw-prod-1" in d["objects"]]
    page = client.get("/console/trustmap").text
    assert "holds what the map declares" not in page
    assert drift["kind"] in page and drift["subject"] in page and "gw-prod-1" in page
    badge = "bad" if drift["severity"] in ("critical", "high") else "warn"
    assert f'class="badge {badge}">{drift["severity"]}<' in page


def test_an_auditor_reads_without_the_action_and_is_refused_a_forged_check(
    client: TestClient, admin_token: str, product: int
) -> None:
    register(client, admin_token)
    made = client.post(
        "/api/v1/tokens", json={"name": "aud", "role": "auditor"}, headers=auth(admin_token)
    )
    assert made.status_code == 201, made.text
    auditor = TestClient(client.app)
    csrf = sign_in(auditor, made.json()["token"])
    page = auditor.get("/console/trustmap")
    assert page.status_code == 200 and f'id="map-{PRODUCT}"' in page.text
    assert 'class="action"' not in page.text
    forged = auditor.post(CHECK, headers={"X-CSRF-Token": csrf})
    assert forged.status_code == 403, forged.text
    assert "not checked yet" in auditor.get("/console/trustmap").text


def test_another_tenant_sees_none_of_the_maps(
    client: TestClient, ctx: AppContext, admin_token: str, product: int
) -> None:
    register(client, admin_token)
    with ctx.db.session() as s:
        other = tenancy.create_tenant(s, name="other", actor="test")
        _, stranger = tenancy.create_token(s, tenant=other, name="o", role="admin", actor="test")
    csrf = sign_in(client, stranger)
    page = client.get("/console/trustmap?product=<script>")
    assert page.status_code == 200 and "No trust map registered" in page.text
    assert "<script>" not in page.text.split("<main")[1]
    assert client.post(CHECK, headers={"X-CSRF-Token": csrf}).status_code == 404
