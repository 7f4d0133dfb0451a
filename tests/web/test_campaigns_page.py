"""The campaign pages: the list, one campaign's waves and gates, a release's
reviews; actions offered by role and refused when forged; another tenant's
ids and hostile parameters answered with error pages.

The campaign is made through the API (tests/trustmap/test_live.py's
product, devices enrolled through the API), its canary wave's device
reports a failure as the MQTT ingest would (``campaigns.report``), and the
driver's step halts it.
"""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from fleetward.ota import Campaign, campaigns
from fleetward.runtime.context import AppContext
from fleetward.tenancy import service as tenancy
from fleetward.web.pages import campaigns as campaigns_page
from tests.trustmap.test_live import auth, enroll, product
from tests.web.helpers import sign_in

__all__ = ["product"]  # the fixture, imported

_ACTION_FORM = re.compile(r'<form class="action" data-method="POST" data-path="([^"]+)"')


def role_token(client: TestClient, admin_token: str, role: str) -> str:
    """A token of ``role`` in the admin's tenant, made through the API."""
    made = client.post(
        "/api/v1/tokens", json={"name": f"console-{role}", "role": role}, headers=auth(admin_token)
    )
    assert made.status_code == 201, made.text
    return str(made.json()["token"])


def halted_campaign(client: TestClient, ctx: AppContext, admin_token: str, rid: int) -> int:
    """Four devices, a campaign of waves 25/100 whose canary device failed: halted."""
    for n in (2, 3, 4):
        enroll(client, admin_token, f"gw-test-{n}", "test")
    resp = client.post(
        "/api/v1/campaigns", json={"release_id": rid, "waves": [25, 100]}, headers=auth(admin_token)
    )
    assert resp.status_code == 201, resp.text
    cid = int(resp.json()["id"])
    with ctx.db.session() as s:
        first = campaigns.step(s, cid)
    assert len(first) == 1
    with ctx.db.session() as s:
        c = s.get(Campaign, cid)
        assert c is not None
        assert campaigns.report(
            s, tenant_id=c.tenant_id, device_id=first[0].device_id, campaign_id=cid,
            status="failed", version="0.9.0",
        )  # fmt: skip
    with ctx.db.session() as s:
        assert campaigns.step(s, cid) == []
    got = client.get(f"/api/v1/campaigns/{cid}", headers=auth(admin_token)).json()
    assert got["state"] == "halted", got
    return cid


def actions(html: str) -> list[str]:
    """The API paths of the action forms on a page."""
    return _ACTION_FORM.findall(html)


def test_admin_sees_the_halt_and_resumes_it(
    client: TestClient, ctx: AppContext, admin_token: str, product: int
) -> None:
    cid = halted_campaign(client, ctx, admin_token, product)
    csrf = sign_in(client, admin_token)

    listing = client.get("/console/campaigns")
    assert listing.status_code == 200, listing.text
    assert f'href="/console/campaigns/{cid}"' in listing.text
    assert "halted" in listing.text and "wave 1 gate failed" in listing.text
    assert client.get("/console/campaigns?state=completed").text.count("/console/campaigns/") == 0

    page = client.get(f"/console/campaigns/{cid}")
    assert page.status_code == 200, page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "Halted: wave 1 gate failed" in page.text
    # Wave 1: one device, failed; wave 2: three planned.
    assert re.search(r"1 \(current\)</th>\s*<td>25%</td>\s*<td>1</td>", page.text)
    assert re.search(r'<td class="bad">1</td>', page.text)
    assert re.search(
        r"<th scope=\"row\">2</th>\s*<td>100%</td>\s*<td>3</td>\s*<td>3</td>", page.text
    )
    state_path = f"/api/v1/campaigns/{cid}/state"
    assert actions(page.text).count(state_path) == 2  # resume and abort
    assert "fall back to their previous firmware" in page.text and "cannot be undone" in page.text
    assert 'name="state" value="running"' in page.text
    # A review is run on a running campaign only; a waiver is a security operator's.
    assert f"/api/v1/campaigns/{cid}/reviews" not in actions(page.text)

    # Resume as the script does: the session cookie and the CSRF token.
    resumed = client.post(state_path, json={"state": "running"}, headers={"X-CSRF-Token": csrf})
    assert resumed.status_code == 200, resumed.text
    after = client.get(f"/console/campaigns/{cid}")
    assert 'id="campaign-state">running<' in after.text
    assert "Halted:" not in after.text
    assert "accepted by an operator" in after.text  # the health gate, as it stands
    assert actions(after.text).count(state_path) == 1  # abort only
    assert f"/api/v1/campaigns/{cid}/reviews" in actions(after.text)

    # The review, run from the page's form: kept with the release, shown on both pages.
    ran = client.post(f"/api/v1/campaigns/{cid}/reviews", headers={"X-CSRF-Token": csrf})
    assert ran.status_code == 200, ran.text
    after = client.get(f"/console/campaigns/{cid}")
    assert "no trust map registered" in after.text
    assert "/reviews/waiver" not in after.text  # admin is no security operator
    rel = client.get(f"/console/releases/{product}")
    assert rel.status_code == 200, rel.text
    assert f"Review {ran.json()['id']}" in rel.text and "no trust map registered" in rel.text
    assert f'href="/console/campaigns/{cid}"' in rel.text


def test_the_list_is_paged_newest_first(
    client: TestClient,
    ctx: AppContext,
    admin_token: str,
    product: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = halted_campaign(client, ctx, admin_token, product)
    resp = client.post(
        "/api/v1/campaigns",
        json={"release_id": product, "waves": [50, 100]},
        headers=auth(admin_token),
    )
    assert resp.status_code == 201, resp.text
    second = int(resp.json()["id"])
    monkeypatch.setattr(campaigns_page, "PAGE", 1)
    sign_in(client, admin_token)
    page = client.get("/console/campaigns").text
    assert f'href="/console/campaigns/{second}"' in page
    assert f'href="/console/campaigns/{first}"' not in page
    found = re.search(r'<a href="([^"]+)" rel="next">', page)
    assert found is not None and found.group(1) == f"/console/campaigns?before={second}"
    rest = client.get(found.group(1)).text
    assert f'href="/console/campaigns/{first}"' in rest and 'rel="next"' not in rest
    halted = client.get("/console/campaigns?state=halted").text
    assert f'href="/console/campaigns/{first}"' in halted
    assert f'href="/console/campaigns/{second}"' not in halted


def test_security_may_waive_a_failed_review(
    client: TestClient, ctx: AppContext, admin_token: str, product: int
) -> None:
    cid = halted_campaign(client, ctx, admin_token, product)
    resp = client.post(
        f"/api/v1/campaigns/{cid}/state", json={"state": "running"}, headers=auth(admin_token)
    )
    assert resp.status_code == 200, resp.text
    resp = client.post(f"/api/v1/campaigns/{cid}/reviews", headers=auth(admin_token))
    assert resp.json()["outcome"] == "failed", resp.text
    sec = TestClient(client.app)
    csrf = sign_in(sec, role_token(client, admin_token, "security"))
    page = sec.get(f"/console/campaigns/{cid}")
    waiver = f"/api/v1/campaigns/{cid}/reviews/waiver"
    assert waiver in actions(page.text)
    assert 'name="reason"' in page.text and "first wave" in page.text
    done = sec.post(waiver, json={"reason": "canary healthy"}, headers={"X-CSRF-Token": csrf})
    assert done.status_code == 201, done.text
    after = sec.get(f"/console/campaigns/{cid}")
    assert waiver not in actions(after.text) and "canary healthy" in after.text


def test_an_auditor_is_offered_nothing_and_refused_a_forged_call(
    client: TestClient, ctx: AppContext, admin_token: str, product: int
) -> None:
    cid = halted_campaign(client, ctx, admin_token, product)
    auditor = TestClient(client.app)
    csrf = sign_in(auditor, role_token(client, admin_token, "auditor"))
    page = auditor.get(f"/console/campaigns/{cid}")
    assert page.status_code == 200 and "Halted:" in page.text
    assert actions(page.text) == [] and 'class="action"' not in page.text
    for state in ("running", "aborted"):
        forged = auditor.post(
            f"/api/v1/campaigns/{cid}/state", json={"state": state}, headers={"X-CSRF-Token": csrf}
        )
        assert forged.status_code == 403, forged.text
    forged = auditor.post(f"/api/v1/campaigns/{cid}/reviews", headers={"X-CSRF-Token": csrf})
    assert forged.status_code == 403, forged.text
    assert 'id="campaign-state">halted<' in auditor.get(f"/console/campaigns/{cid}").text


def test_an_environment_scoped_admin_sees_it_but_is_offered_no_tenant_wide_action(
    client: TestClient, ctx: AppContext, admin_token: str, product: int
) -> None:
    cid = halted_campaign(client, ctx, admin_token, product)
    made = client.post(
        "/api/v1/tokens",
        json={"name": "test-admin", "role": "admin", "environment": "test"},
        headers=auth(admin_token),
    )
    assert made.status_code == 201, made.text
    scoped = TestClient(client.app)
    csrf = sign_in(scoped, made.json()["token"])
    page = scoped.get(f"/console/campaigns/{cid}")
    assert page.status_code == 200 and "Halted:" in page.text
    assert actions(page.text) == []  # campaigns are tenant-wide: not for one environment
    forged = scoped.post(
        f"/api/v1/campaigns/{cid}/state", json={"state": "aborted"}, headers={"X-CSRF-Token": csrf}
    )
    assert forged.status_code == 403, forged.text


def test_another_tenants_campaign_and_release_are_404_pages(
    client: TestClient, ctx: AppContext, admin_token: str, product: int
) -> None:
    cid = halted_campaign(client, ctx, admin_token, product)
    with ctx.db.session() as s:
        other = tenancy.create_tenant(s, name="other", actor="test")
        _, stranger = tenancy.create_token(s, tenant=other, name="o", role="admin", actor="test")
    sign_in(client, stranger)
    for path in (f"/console/campaigns/{cid}", f"/console/releases/{product}"):
        r = client.get(path)
        assert r.status_code == 404, (path, r.text)
        assert r.headers["content-type"].startswith("text/html") and "404" in r.text
    listing = client.get("/console/campaigns")
    assert listing.status_code == 200 and f"/console/campaigns/{cid}" not in listing.text


@pytest.mark.sqlite_run_only
def test_hostile_parameters_are_4xx_pages(client: TestClient, admin_token: str) -> None:
    sign_in(client, admin_token)
    for path in (
        "/console/campaigns?state=bogus",
        "/console/campaigns?state=" + "x" * 5000,
        "/console/campaigns?before=-1",
        "/console/campaigns?before=0",
        "/console/campaigns?before=1e3",
        "/console/campaigns?before=99999999999999999999999",
        "/console/campaigns?before=%EF%BC%91",  # a fullwidth digit
        "/console/campaigns/abc",
        "/console/campaigns/0",
        "/console/campaigns/%00",
        "/console/campaigns/99999999999999999999",
        "/console/releases/-5",
        "/console/releases/1.5",
    ):
        r = client.get(path)
        assert r.status_code == 400, (path, r.status_code, r.text[:200])
        assert r.headers["content-type"].startswith("text/html"), path
    for path in ("/console/campaigns/9223372036854775807", "/console/releases/12345"):
        r = client.get(path)
        assert r.status_code == 404, (path, r.text[:200])
    assert client.get("/console/campaigns?before=5&state=running").status_code == 200
