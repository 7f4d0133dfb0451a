"""Vulnerability operations through the API, on the database: SBOM index,
imports, findings, exposure, priorities, alerts, the CRA case, remediation,
VEX and the review.

The devices' running versions are written as attestation would write them
(``ota.note_running``); ``test_e2e.py`` drives real agents instead.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from fleetward import ota
from fleetward.audit.models import AuditEntry
from fleetward.identity import find_device_pk
from fleetward.runtime.context import AppContext
from fleetward.tenancy import service as tenancy
from fleetward.vulns import runner
from fleetward.vulns.models import Advisory, Finding
from tests.helpers import csr_pem, new_key
from tests.ota.helpers import measurements

PRODUCT = "gw"
OPENSSL_CVE = "CVE-2023-5678"


def sbom(openssl: str, requests: str) -> bytes:
    """A CycloneDX 1.5 SBOM of a gateway image: openssl by CPE, requests by purl."""
    return json.dumps(
        {
            "bomFormat": "CycloneDX",
            "specVersion": "1.5",
            "version": 1,
            "metadata": {"component": {"type": "firmware", "name": PRODUCT, "version": "x"}},
            "components": [
                {
                    "type": "library",
                    "bom-ref": "openssl",
                    "name": "openssl",
                    "version": openssl,
                    "cpe": f"cpe:2.3:a:openssl:openssl:{openssl}:*:*:*:*:*:*:*",
                    "purl": f"pkg:generic/openssl@{openssl}",
                },
                {
                    "type": "library",
                    "bom-ref": "requests",
                    "name": "requests",
                    "version": requests,
                    "purl": f"pkg:pypi/requests@{requests}",
                },
            ],
        }
    ).encode()


OSV_REQUESTS = {
    "schema_version": "1.6.0",
    "id": "GHSA-j8r2-6x86-q33q",
    "modified": "2026-11-01T00:00:00Z",
    "published": "2023-05-22T00:00:00Z",
    "aliases": ["CVE-2023-32681"],
    "summary": "Unintended leak of Proxy-Authorization header in requests",
    "severity": [{"type": "CVSS_V3", "score": "CVSS:3.1/AV:N/AC:H/PR:N/UI:R/S:C/C:H/I:N/A:N"}],
    "affected": [
        {
            "package": {"ecosystem": "PyPI", "name": "requests"},
            "ranges": [
                {"type": "ECOSYSTEM", "events": [{"introduced": "2.3.0"}, {"fixed": "2.31.0"}]}
            ],
        }
    ],
}

NVD_OPENSSL = {
    "resultsPerPage": 1,
    "startIndex": 0,
    "totalResults": 1,
    "format": "NVD_CVE",
    "version": "2.0",
    "timestamp": "2026-12-01T00:00:00.000",
    "vulnerabilities": [
        {
            "cve": {
                "id": OPENSSL_CVE,
                "sourceIdentifier": "openssl-security@openssl.org",
                "published": "2023-11-06T16:15:42.670",
                "lastModified": "2026-11-01T00:00:00.000",
                "vulnStatus": "Analyzed",
                "descriptions": [{"lang": "en", "value": "Excessive time spent in DH checks."}],
                "metrics": {
                    "cvssMetricV31": [
                        {
                            "source": "nvd@nist.gov",
                            "type": "Primary",
                            "cvssData": {
                                "version": "3.1",
                                "vectorString": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H",
                                "baseScore": 9.8,
                                "baseSeverity": "CRITICAL",
                            },
                        }
                    ]
                },
                "configurations": [
                    {
                        "nodes": [
                            {
                                "operator": "OR",
                                "negate": False,
                                "cpeMatch": [
                                    {
                                        "vulnerable": True,
                                        "criteria": "cpe:2.3:a:openssl:openssl:*:*:*:*:*:*:*:*",
                                        "versionStartIncluding": "3.0.0",
                                        "versionEndExcluding": "3.0.13",
                                        "matchCriteriaId": "A1B2",
                                    }
                                ],
                            }
                        ]
                    }
                ],
                "references": [{"url": "https://www.openssl.org/news/secadv/20231106.txt"}],
            }
        }
    ],
}


def kev(*cves: str) -> dict[str, Any]:
    return {
        "title": "CISA Catalog of Known Exploited Vulnerabilities",
        "catalogVersion": "2026.12.07",
        "dateReleased": "2026-12-07T00:00:00.000Z",
        "count": len(cves),
        "vulnerabilities": [
            {
                "cveID": c,
                "vendorProject": "OpenSSL",
                "product": "OpenSSL",
                "vulnerabilityName": "OpenSSL DH check denial of service",
                "dateAdded": "2026-12-07",
                "shortDescription": "Excessive time in DH checks.",
                "requiredAction": "Apply updates per vendor instructions.",
                "dueDate": "2026-12-28",
                "knownRansomwareCampaignUse": "Unknown",
                "notes": "",
                "cwes": ["CWE-606"],
            }
            for c in cves
        ],
    }


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def token(ctx: AppContext, role: str, tenant: str = "default") -> str:
    with ctx.db.session() as s:
        t = tenancy.get_tenant_by_name(s, tenant)
        _, secret = tenancy.create_token(s, tenant=t, name=f"{role}-{tenant}", role=role, actor="t")
    return secret


def release(client: TestClient, rm: str, version: str, body: bytes) -> int:
    image = f"image {version}".encode()
    files = {
        "artifact": ("fw.bin", image, "application/octet-stream"),
        "sbom": ("sbom.json", body, "application/json"),
    }
    data = {
        "product": PRODUCT,
        "version": version,
        "hardware": "board-a",
        "measurements": json.dumps(measurements(image)),
    }
    resp = client.post("/api/v1/releases", data=data, files=files, headers=auth(rm))
    assert resp.status_code == 201, resp.text
    rid = int(resp.json()["id"])
    return rid


def upload_feed(client: TestClient, sec: str, name: str, body: bytes) -> dict[str, Any]:
    resp = client.post(
        "/api/v1/vulns/imports", files={"file": (name, body, "application/json")}, headers=auth(sec)
    )
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


def run(client: TestClient, ctx: AppContext, devices: list[str], version: str) -> None:
    """The devices now run ``version`` (as their attestation would say)."""
    now = dt.datetime.now(dt.UTC)
    with ctx.db.session() as s:
        t = tenancy.get_tenant_by_name(s, "default")
        for d in devices:
            pk = find_device_pk(s, tenant_id=t.id, device_id=d)
            assert pk is not None
            ota.note_running(
                s, tenant_id=t.id, device_pk=pk, product=PRODUCT, version=version, now=now
            )


@pytest.fixture
def fleet(client: TestClient, ctx: AppContext, admin_token: str) -> dict[str, Any]:
    rm = token(ctx, "release-manager")
    resp = client.post(f"/api/v1/ota/products/{PRODUCT}", json={"threshold": 1}, headers=auth(rm))
    assert resp.status_code == 201, resp.text
    v1 = release(client, rm, "1.0.0", sbom("3.0.11", "2.30.0"))
    assert client.post(f"/api/v1/releases/{v1}/approvals", headers=auth(rm)).status_code == 200
    devices = [f"gw-{i}" for i in range(3)]
    for d in devices:
        resp = client.post(
            f"/api/v1/devices/{d}/certificates",
            json={"csr": csr_pem(new_key(), d).decode(), "environment": "test", "product": PRODUCT},
            headers=auth(admin_token),
        )
        assert resp.status_code == 201, resp.text
    run(client, ctx, devices, "1.0.0")
    return {"rm": rm, "sec": token(ctx, "security"), "v1": v1, "devices": devices}


def findings(client: TestClient, tok: str, **params: Any) -> list[dict[str, Any]]:
    resp = client.get("/api/v1/vulns/findings", params=params, headers=auth(tok))
    assert resp.status_code == 200, resp.text
    return list(resp.json()["items"])


def alerts(client: TestClient, tok: str) -> list[dict[str, Any]]:
    return list(client.get("/api/v1/alerts", headers=auth(tok)).json()["items"])


def test_a_release_from_sbom_to_remediation(
    client: TestClient, ctx: AppContext, fleet: dict[str, Any]
) -> None:
    sec, rm, v1 = fleet["sec"], fleet["rm"], fleet["v1"]
    # The SBOM was indexed at upload.
    assert findings(client, sec) == []
    osv = upload_feed(client, sec, "GHSA.json", json.dumps(OSV_REQUESTS).encode())
    assert (osv["kind"], osv["added"], osv["findings_new"]) == ("osv", 1, 1)
    nvd = upload_feed(client, sec, "nvd.json", json.dumps(NVD_OPENSSL).encode())
    assert (nvd["kind"], nvd["added"], nvd["findings_new"]) == ("nvd", 1, 1)
    items = findings(client, sec)
    assert [f["advisory"] for f in items] == [OPENSSL_CVE, "GHSA-j8r2-6x86-q33q"]  # critical first
    crit, req = items
    assert (crit["component"], crit["via"], crit["devices"], crit["severity"]) == (
        "openssl", "cpe", 3, "critical",
    )  # fmt: skip
    assert (req["component"], req["via"], req["fixed_versions"]) == (
        "requests",
        "package",
        ["2.31.0"],
    )
    assert crit["priority"] < req["priority"]
    # Critical, but only test devices run it: one level down, and that level's due date.
    due = dt.datetime.fromisoformat(crit["due_at"]) - dt.datetime.fromisoformat(crit["first_seen"])
    assert crit["priority"] == "P2", crit["reasons"]
    assert due == dt.timedelta(days=30), crit["reasons"]
    assert any("production" in r for r in crit["reasons"]), crit["reasons"]
    exposure = client.get(f"/api/v1/vulns/findings/{crit['id']}/exposure", headers=auth(sec)).json()
    assert (exposure["devices"], exposure["environments"]) == (3, {"test": 3})
    # A critical finding that devices run raises one alert.
    kinds = [a["kind"] for a in alerts(client, sec)]
    assert kinds.count("vulnerability-critical") == 1

    # KEV lists the openssl CVE: exploited, a CRA case opens with its clock.
    before = dt.datetime.now(dt.UTC)
    k = upload_feed(
        client, sec, "known_exploited_vulnerabilities.json", json.dumps(kev(OPENSSL_CVE)).encode()
    )
    assert (k["kind"], k["added"]) == ("kev", 1)
    crit = client.get(f"/api/v1/vulns/findings/{crit['id']}", headers=auth(sec)).json()
    assert crit["priority"] == "P1"
    assert any("KEV" in r for r in crit["reasons"])
    assert [a["kind"] for a in alerts(client, sec)].count("vulnerability-exploited") == 1
    [case] = client.get("/api/v1/vulns/cases", headers=auth(sec)).json()["items"]
    assert (case["vulnerability"], case["trigger"], case["state"]) == (OPENSSL_CVE, "kev", "open")
    aware = dt.datetime.fromisoformat(case["aware_at"])
    assert before - dt.timedelta(seconds=5) <= aware <= dt.datetime.now(dt.UTC)
    assert dt.datetime.fromisoformat(case["early_warning_due"]) == aware + dt.timedelta(hours=24)
    assert dt.datetime.fromisoformat(case["notification_due"]) == aware + dt.timedelta(hours=72)
    assert case["final_due"] is None  # no fix yet
    draft = client.get(
        f"/api/v1/vulns/cases/{case['id']}/reports/early-warning", headers=auth(sec)
    ).json()
    assert "3" in draft["markdown"] and OPENSSL_CVE in draft["markdown"]
    assert "3" in json.dumps(draft["json"])
    resp = client.post(
        f"/api/v1/vulns/cases/{case['id']}/reports/early-warning",
        json={"reference": "ENISA-2026-0001"},
        headers=auth(sec),
    )
    assert resp.status_code == 200, resp.text
    again = client.post(
        f"/api/v1/vulns/cases/{case['id']}/reports/early-warning",
        json={"reference": "ENISA-2026-0002"},
        headers=auth(sec),
    )
    assert again.status_code == 409
    final = client.post(
        f"/api/v1/vulns/cases/{case['id']}/reports/final",
        json={"reference": "x"},
        headers=auth(sec),
    )
    assert final.status_code == 409  # no fix available yet

    # A fixed release: linked to the findings, and the final clock starts.
    v2 = release(client, rm, "1.0.1", sbom("3.0.13", "2.31.0"))
    approved = client.post(f"/api/v1/releases/{v2}/approvals", headers=auth(rm))
    assert approved.json()["state"] == "deployable", approved.text
    runner.vuln_round(ctx.db)
    crit = client.get(f"/api/v1/vulns/findings/{crit['id']}", headers=auth(sec)).json()
    assert crit["fix_release_id"] == v2 and crit["state"] == "open"
    case = client.get(f"/api/v1/vulns/cases/{case['id']}", headers=auth(sec)).json()
    assert case["final_due"] is not None

    # Two devices update: still open, exposure 1; the last one: remediated.
    run(client, ctx, fleet["devices"][:2], "1.0.1")
    runner.vuln_round(ctx.db)
    assert (
        client.get(f"/api/v1/vulns/findings/{crit['id']}", headers=auth(sec)).json()["devices"] == 1
    )
    run(client, ctx, fleet["devices"][2:], "1.0.1")
    out = runner.vuln_round(ctx.db)
    assert out.remediated == 2
    closed = client.get(f"/api/v1/vulns/findings/{crit['id']}", headers=auth(sec)).json()
    assert (closed["state"], closed["close_reason"], closed["devices"]) == (
        "closed", "remediated", 0,
    )  # fmt: skip
    assert findings(client, sec) == []

    # VEX of the old release: both findings resolved, schema-valid CycloneDX 1.5.
    vex = client.get(f"/api/v1/vulns/releases/{v1}/vex", headers=auth(sec))
    assert vex.status_code == 200
    assert JsonStrictValidator(SchemaVersion.V1_5).validate_str(vex.text) is None
    states = {v["id"]: v["analysis"]["state"] for v in vex.json()["vulnerabilities"]}
    assert states == {OPENSSL_CVE: "resolved", "GHSA-j8r2-6x86-q33q": "resolved"}

    # The review names what was found and fixed in the period.
    review = client.post("/api/v1/vulns/reviews", headers=auth(sec))
    assert review.status_code == 201, review.text
    body = review.json()
    assert {f["advisory"] for f in body["body"]["fixed"]} == {OPENSSL_CVE, "GHSA-j8r2-6x86-q33q"}
    assert OPENSSL_CVE in body["markdown"]

    # Every change was audited.
    with ctx.db.read() as s:
        actions = set(s.execute(select(AuditEntry.action)).scalars())
    assert {"vulns.import", "vulns.case.open", "vulns.case.submit", "vulns.case.fix"} <= actions


def test_reimport_touches_only_changed_records(
    client: TestClient, ctx: AppContext, fleet: dict[str, Any]
) -> None:
    sec = fleet["sec"]
    body = json.dumps(OSV_REQUESTS).encode()
    upload_feed(client, sec, "a.json", body)
    same = upload_feed(client, sec, "a.json", body)
    assert (same["added"], same["updated"], same["unchanged"], same["findings_new"]) == (0, 0, 1, 0)
    # The advisory is withdrawn: the finding closes with that reason.
    withdrawn = {
        **OSV_REQUESTS,
        "modified": "2026-12-01T00:00:00Z",
        "withdrawn": "2026-12-01T00:00:00Z",
    }
    w = upload_feed(client, sec, "a.json", json.dumps(withdrawn).encode())
    assert (w["updated"], w["findings_closed"]) == (1, 1)
    [f] = findings(client, sec, state="closed")
    assert f["close_reason"] == "withdrawn"
    # An older record never replaces a newer one.
    old = upload_feed(client, sec, "a.json", body)
    assert (old["updated"], old["unchanged"]) == (0, 1)
    with ctx.db.read() as s:
        assert s.execute(select(func.count()).select_from(Advisory)).scalar_one() == 1


def test_triage_is_validated_scoped_and_audited(
    client: TestClient, ctx: AppContext, fleet: dict[str, Any]
) -> None:
    sec = fleet["sec"]
    upload_feed(client, sec, "a.json", json.dumps(OSV_REQUESTS).encode())
    [f] = findings(client, sec)
    url = f"/api/v1/vulns/findings/{f['id']}/triage"
    bad = client.post(url, json={"analysis": "not_affected"}, headers=auth(sec))
    assert bad.status_code == 400 and "justification" in bad.json()["detail"]
    assert client.post(url, json={"analysis": "nope"}, headers=auth(sec)).status_code == 422
    ok = client.post(
        url,
        json={
            "analysis": "not_affected",
            "justification": "code_not_reachable",
            "detail": "no proxy",
        },
        headers=auth(sec),
    )
    assert ok.status_code == 200, ok.text
    assert (ok.json()["analysis"], ok.json()["justification"]) == (
        "not_affected",
        "code_not_reachable",
    )
    # The weakest roles read but do not triage; another tenant sees nothing.
    auditor = token(ctx, "auditor")
    assert client.get(url.rsplit("/", 1)[0], headers=auth(auditor)).status_code == 200
    assert (
        client.post(url, json={"analysis": "exploitable"}, headers=auth(auditor)).status_code == 403
    )
    with ctx.db.session() as s:
        tenancy.create_tenant(s, name="other", actor="t")
    other = token(ctx, "admin", tenant="other")
    assert client.get(url.rsplit("/", 1)[0], headers=auth(other)).status_code == 404
    assert (
        client.post(url, json={"analysis": "exploitable"}, headers=auth(other)).status_code == 404
    )
    assert findings(client, other) == []
    with ctx.db.read() as s:
        entry = s.execute(
            select(AuditEntry).where(
                AuditEntry.action == "vulns.triage", AuditEntry.outcome == "ok"
            )
        ).scalar_one()
        row = s.get(Finding, f["id"])
        assert row is not None and row.analysis == "not_affected"
    assert json.loads(entry.details)["before"]["analysis"] == "in_triage"


def test_a_bad_feed_is_refused_whole_or_skipped_per_record(
    client: TestClient, ctx: AppContext, fleet: dict[str, Any], tmp_path: Path
) -> None:
    sec = fleet["sec"]
    resp = client.post(
        "/api/v1/vulns/imports", files={"file": ("x.json", b"{not json", "application/json")},
        headers=auth(sec),
    )  # fmt: skip
    assert resp.status_code == 400, resp.text
    bad_kev = kev(OPENSSL_CVE)
    bad_kev["vulnerabilities"].append(
        {**bad_kev["vulnerabilities"][0], "cveID": "CVE-2", "dateAdded": "yesterday"}
    )
    report = upload_feed(
        client, sec, "known_exploited_vulnerabilities.json", json.dumps(bad_kev).encode()
    )
    assert (report["added"], report["skipped"]) == (1, 1)
    assert report["problems"] and report["problems"][0]["reason"]


def test_the_worker_indexes_old_releases_and_writes_reviews(
    client: TestClient, ctx: AppContext, fleet: dict[str, Any]
) -> None:
    from sqlalchemy import delete

    from fleetward.vulns.models import Review, SbomComponent, SbomIndex

    sec = fleet["sec"]
    upload_feed(client, sec, "a.json", json.dumps(OSV_REQUESTS).encode())
    # A release from before vulnerability operations: no index, no components.
    with ctx.db.session() as s:
        s.execute(delete(Finding))
        s.execute(delete(SbomComponent))
        s.execute(delete(SbomIndex))
    assert findings(client, sec) == []
    out = runner.vuln_round(ctx.db, review_every=dt.timedelta(days=7))
    assert out.indexed == 1 and out.reviews == 1
    [f] = findings(client, sec)
    assert f["advisory"] == "GHSA-j8r2-6x86-q33q" and f["devices"] == 3
    # The next round writes no second review within the interval, nor indexes again.
    again = runner.vuln_round(ctx.db, review_every=dt.timedelta(days=7))
    assert (again.indexed, again.reviews) == (0, 0)
    with ctx.db.read() as s:
        [review] = s.execute(select(Review)).scalars()
    assert review.created_by == "fleetward:vulns"
    assert "GHSA-j8r2-6x86-q33q" in review.markdown
