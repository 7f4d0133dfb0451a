"""The controls review gate: no campaign passes its first wave until its
release's review passed or a security operator waived it.

On a live installation (tests/trustmap/test_live.py's product): the canary
wave succeeds, the campaign waits, the trust map worker's round reviews it;
without a registered map the review fails and only a security waiver (with
its reason, audited, kept with the release) lets the second wave start; with
a map that holds, it passes by itself. Registered maps are checked, their
drifts raise ``trust-drift`` alerts, and every route refuses the anonymous,
the weakest role, another tenant and hostile input with a problem.
"""

from __future__ import annotations

import json
from typing import Any

import yaml
from fastapi.testclient import TestClient

from fleetward import audit
from fleetward.ota import Campaign, campaigns
from fleetward.runtime.context import AppContext
from fleetward.tenancy import service as tenancy
from fleetward.trustmap import evidence, runner
from tests.trustmap.test_live import PRODUCT, adapted_map, auth, enroll, product, token

__all__ = ["product"]  # the fixture, imported


def start(client: TestClient, ctx: AppContext, rid: int, admin_token: str) -> tuple[int, set[str]]:
    """Four devices, a campaign of waves 25/100; its first wave offered and succeeded."""
    for n in (2, 3, 4):
        enroll(client, admin_token, f"gw-test-{n}", "test")
    resp = client.post(
        "/api/v1/campaigns",
        json={"release_id": rid, "waves": [25, 100]},
        headers=auth(token(ctx, "release-manager")),
    )
    assert resp.status_code == 201, resp.text
    cid = int(resp.json()["id"])
    with ctx.db.session() as s:
        first = campaigns.step(s, cid)
    assert first
    with ctx.db.session() as s:
        c = s.get(Campaign, cid)
        assert c is not None
        for offer in first:
            assert campaigns.report(
                s, tenant_id=c.tenant_id, device_id=offer.device_id, campaign_id=cid,
                status="succeeded", version="1.0.0",
            )  # fmt: skip
    return cid, {o.device_id for o in first}


def stepped(ctx: AppContext, cid: int) -> list[str]:
    with ctx.db.session() as s:
        return [o.device_id for o in campaigns.step(s, cid)]


def reviews(client: TestClient, ctx: AppContext, rid: int) -> list[dict[str, Any]]:
    resp = client.get(f"/api/v1/releases/{rid}/reviews", headers=auth(token(ctx, "auditor")))
    assert resp.status_code == 200, resp.text
    items: list[dict[str, Any]] = resp.json()["items"]
    return items


def test_no_second_wave_before_a_review_passes_or_is_waived(
    client: TestClient, ctx: AppContext, admin_token: str, product: int
) -> None:
    cid, first = start(client, ctx, product, admin_token)
    # The canary wave succeeded, but no review yet: the campaign waits.
    assert stepped(ctx, cid) == []
    got = client.get(f"/api/v1/campaigns/{cid}", headers=auth(admin_token)).json()
    assert got["state"] == "running" and "controls review" in got["reason"]
    sec, rm = token(ctx, "security"), token(ctx, "release-manager")
    # A waiver needs a review to waive.
    resp = client.post(
        f"/api/v1/campaigns/{cid}/reviews/waiver", json={"reason": "ok"}, headers=auth(sec)
    )
    assert resp.status_code == 409, resp.text

    # The worker's round reviews it: no trust map registered, so it fails.
    assert runner.review_gates(ctx.db) == 1
    [review] = reviews(client, ctx, product)
    assert review["outcome"] == "failed" and review["campaign_id"] == cid
    items = {i["name"]: i for i in review["items"]}
    assert (
        not items["trust-map"]["ok"] and "no trust map registered" in items["trust-map"]["detail"]
    )
    assert items["canary-healthy"]["ok"] and items["signing-threshold"]["ok"]
    assert items["sbom-scanned"]["ok"] and items["reference-measurements"]["ok"]
    assert not items["no-open-drift"]["ok"] and not items["detectors-on"]["ok"]
    # Reviewing again with nothing changed records nothing new.
    assert runner.review_gates(ctx.db) == 1
    assert len(reviews(client, ctx, product)) == 1
    assert stepped(ctx, cid) == []

    # Waivers: not by a release manager, not without a reason, not for another tenant.
    url = f"/api/v1/campaigns/{cid}/reviews/waiver"
    resp = client.post(url, json={"reason": "ship it"}, headers=auth(rm))
    assert resp.status_code == 403 and resp.headers["content-type"] == "application/problem+json"
    resp = client.post(url, json={"reason": ""}, headers=auth(sec))
    assert resp.status_code == 422, resp.text
    resp = client.post(url, json={"reason": "   "}, headers=auth(sec))
    assert resp.status_code == 400, resp.text
    resp = client.post(url, json={"reason": "x" * 2001}, headers=auth(sec))
    assert resp.status_code == 422, resp.text
    with ctx.db.session() as s:
        other = tenancy.create_tenant(s, name="other", actor="t")
        _, stranger = tenancy.create_token(s, tenant=other, name="s", role="security", actor="t")
    resp = client.post(url, json={"reason": "mine now"}, headers=auth(stranger))
    assert resp.status_code == 404, resp.text
    resp = client.get(f"/api/v1/releases/{product}/reviews", headers=auth(stranger))
    assert resp.status_code == 404, resp.text
    assert client.post(url, json={"reason": "anon"}).status_code == 401
    assert stepped(ctx, cid) == []

    # A security operator waives it, with the reason: the second wave starts.
    resp = client.post(url, json={"reason": "map being written; canary healthy"}, headers=auth(sec))
    assert resp.status_code == 201, resp.text
    waived = resp.json()
    assert waived["outcome"] == "waived" and waived["actor"].startswith("token:")
    assert waived["reason"] == "map being written; canary healthy"
    assert client.post(url, json={"reason": "again"}, headers=auth(sec)).status_code == 409
    # Run again by a release manager, it fails again (kept), but the waiver stands.
    resp = client.post(f"/api/v1/campaigns/{cid}/reviews", headers=auth(rm))
    assert resp.status_code == 200 and resp.json()["outcome"] == "failed", resp.text
    assert client.post(f"/api/v1/campaigns/{cid}/reviews", headers=auth(sec)).status_code == 403
    again = client.post(url, json={"reason": "again"}, headers=auth(sec))
    assert again.status_code == 409 and "waived already" in again.json()["detail"]
    rest = stepped(ctx, cid)
    assert set(rest) == {"gw-test-1", "gw-test-2", "gw-test-3", "gw-test-4"} - first
    # Kept with the release, newest first, and audited.
    assert [r["outcome"] for r in reviews(client, ctx, product)] == ["failed", "waived", "failed"]
    with ctx.db.session() as s:
        tid = tenancy.get_tenant_by_name(s, "default").id
        actions = [e.action for e in audit.list_entries(s, tenant_id=tid, limit=1000)]
    assert "ota.review" in actions and "ota.review.waive" in actions
    # The conformance evidence counts the waiver, citing its audit entry.
    with ctx.db.read() as s:
        ev = evidence.gather(s, tenant_id=tid, product=PRODUCT, as_of=None)
    lines = {line.key: line for line in ev.lines}
    assert lines["reviews.waived"].value == 1 and lines["reviews.passed"].value == 0
    # The same through the API, for the roles that read the audit log.
    url = "/api/v1/trustmap/conformance"
    got = client.get(url, params={"product": PRODUCT}, headers=auth(token(ctx, "auditor")))
    assert got.status_code == 200, got.text
    doc = got.json()
    assert doc["evidence"]["reviews.waived"]["value"] == 1
    assert {r["framework"] for r in doc["requirements"]} == {"CRA Annex I", "ETSI EN 303 645"}
    again = client.get(
        url, params={"product": PRODUCT, "as_of": doc["as_of"]["seq"]}, headers=auth(sec)
    )
    assert again.json() == doc  # reproducible from the log (same configuration)
    md = client.get(url, params={"format": "markdown"}, headers=auth(sec))
    assert md.status_code == 200 and md.text.startswith("# Conformance evidence")
    assert client.get(url, headers=auth(rm)).status_code == 403  # no audit.read
    assert client.get(url, params={"as_of": 0}, headers=auth(sec)).status_code == 422
    assert client.get(url, params={"as_of": 2**63}, headers=auth(sec)).status_code == 422
    far = client.get(url, params={"as_of": 2**62}, headers=auth(sec))
    assert far.status_code == 400 and far.headers["content-type"] == "application/problem+json"
    assert client.get(url).status_code == 401


def test_a_review_passes_by_itself_when_the_map_holds(
    client: TestClient, ctx: AppContext, admin_token: str, product: int
) -> None:
    sec = token(ctx, "security")
    m = adapted_map()
    m["updates"]["first_wave_max_percent"] = 50  # the campaign's canary is 25 %
    m["code"]["attestation_required_for_updates"] = False
    url = f"/api/v1/trustmap/maps/{PRODUCT}"
    # Registering: security only; the map must be valid and name this product.
    resp = client.put(url, json={"document": yaml.safe_dump(m)}, headers=auth(admin_token))
    assert resp.status_code == 201, resp.text
    weak = token(ctx, "release-manager")
    resp = client.put(url, json={"document": yaml.safe_dump(m)}, headers=auth(weak))
    assert resp.status_code == 403, resp.text
    bad = yaml.safe_dump({**m, "surprise": 1})
    resp = client.put(url, json={"document": bad}, headers=auth(sec))
    assert resp.status_code == 400 and "surprise" in resp.json()["detail"], resp.text
    resp = client.put(
        "/api/v1/trustmap/maps/other", json={"document": yaml.safe_dump(m)}, headers=auth(sec)
    )
    assert resp.status_code == 400 and "describes 'gw'" in resp.json()["detail"], resp.text
    resp = client.put("/api/v1/trustmap/maps/BAD..name", json={"document": "x"}, headers=auth(sec))
    assert resp.status_code == 422, resp.text
    resp = client.put(url, json={"document": "[unclosed"}, headers=auth(sec))
    assert resp.status_code == 400, resp.text
    assert client.get(url).status_code == 401

    cid, _ = start(client, ctx, product, admin_token)
    assert stepped(ctx, cid) == []
    assert runner.review_gates(ctx.db) == 1
    [review] = reviews(client, ctx, product)
    assert review["outcome"] == "passed", review
    assert review["map_digest"] and all(i["ok"] for i in review["items"])
    assert len(stepped(ctx, cid)) == 3  # the second wave, no waiver needed
    assert runner.review_gates(ctx.db) == 0  # nothing waits any more
    with ctx.db.read() as s:
        tid = tenancy.get_tenant_by_name(s, "default").id
        ev = evidence.gather(s, tenant_id=tid, product=PRODUCT, as_of=None)
    lines = {line.key: line for line in ev.lines}
    assert (lines["reviews.passed"].value, lines["trustmap.registered"].value) == (1, 1)

    # The map as registered, its check, its threat model.
    reader = token(ctx, "auditor")
    got = client.get(url, headers=auth(reader)).json()
    assert got["product"] == PRODUCT and yaml.safe_load(got["document"]) == m
    listed = client.get("/api/v1/trustmap/maps", headers=auth(reader)).json()["items"]
    assert [x["product"] for x in listed] == [PRODUCT]
    resp = client.get(f"{url}/checks/latest", headers=auth(reader))
    assert resp.status_code == 404, resp.text  # not checked yet
    assert client.post(f"{url}/checks", headers=auth(reader)).status_code == 403
    # The campaign's first wave (25 %) is within the map's 50 %: no drift.
    resp = client.post(f"{url}/checks", headers=auth(sec))
    assert resp.status_code == 200, resp.text
    assert resp.json()["drifts"] == [] and "first-wave" in resp.json()["checked"]
    assert "least-privilege-topics" in resp.json()["confirmed"]
    threats = client.get(f"{url}/threats", headers=auth(reader))
    assert threats.status_code == 200 and threats.json()["checked"] is True
    assert threats.json()["controls"]["least-privilege-topics"]["confirmed"] is True
    md = client.get(f"{url}/threats", params={"format": "markdown"}, headers=auth(reader))
    assert md.status_code == 200 and md.text.startswith("# Threat model: gw")
    dot = client.get(f"{url}/threats", params={"format": "dot"}, headers=auth(reader))
    assert dot.status_code == 200 and dot.text.startswith("digraph")
    bad_format = client.get(f"{url}/threats", params={"format": "pdf"}, headers=auth(reader))
    assert bad_format.status_code == 422

    # A drift made live is found by the worker's check and raises an alert.
    resp = client.put(
        "/api/v1/alerts/responses/authz-failures",
        json={"action": "quarantine-device"},
        headers=auth(admin_token),
    )
    assert resp.status_code == 200, resp.text
    assert runner.check_maps(ctx.db) == 1
    latest = client.get(f"{url}/checks/latest", headers=auth(reader)).json()
    assert [d["kind"] for d in latest["drifts"]] == ["response-differs"]
    alerts = client.get("/api/v1/alerts", headers=auth(reader)).json()["items"]
    [alert] = [a for a in alerts if a["kind"] == "trust-drift"]
    assert alert["subject"] == f"trustmap:{PRODUCT}" and alert["severity"] == "high"
    assert "authz-failures" in alert["summary"]
    # Checked again, the drift refreshes its alert instead of adding one.
    assert runner.check_maps(ctx.db) == 1
    alerts = client.get("/api/v1/alerts", headers=auth(reader)).json()["items"]
    assert len([a for a in alerts if a["kind"] == "trust-drift"]) == 1
    # Another tenant sees none of it.
    with ctx.db.session() as s:
        other = tenancy.create_tenant(s, name="other", actor="t")
        _, stranger = tenancy.create_token(s, tenant=other, name="s", role="security", actor="t")
    assert client.get(url, headers=auth(stranger)).status_code == 404
    assert client.post(f"{url}/checks", headers=auth(stranger)).status_code == 404
    assert client.get("/api/v1/trustmap/maps", headers=auth(stranger)).json()["items"] == []
    assert json.loads(client.get(f"{url}/threats", headers=auth(stranger)).text)["status"] == 404
