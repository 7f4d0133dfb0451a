"""The vulnerabilities page: open findings by priority, the findings table
(filtered, paged by cursor), CRA cases with their deadlines and urgency;
scoped to the viewer's tenant; hostile filters answered with 400 pages.

The findings come from feeds uploaded through the API against a release
whose SBOM was indexed at upload (tests/vulns/test_flow.py's fleet).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from fleetward.runtime.context import AppContext
from fleetward.tenancy import service as tenancy
from fleetward.vulns.models import Case
from fleetward.web.pages import vulns as vulns_page
from tests.vulns.test_flow import (
    NVD_OPENSSL,
    OPENSSL_CVE,
    OSV_REQUESTS,
    auth,
    fleet,
    kev,
    upload_feed,
)
from tests.web.helpers import sign_in

__all__ = ["fleet"]  # the fixture, imported

REQUESTS_GHSA = "GHSA-j8r2-6x86-q33q"


@pytest.fixture
def findings(client: TestClient, fleet: dict[str, Any]) -> list[dict[str, Any]]:
    """Two findings (openssl, exploited: P1 with a CRA case; requests) through the API."""
    sec = fleet["sec"]
    upload_feed(client, sec, "GHSA.json", json.dumps(OSV_REQUESTS).encode())
    upload_feed(client, sec, "nvd.json", json.dumps(NVD_OPENSSL).encode())
    upload_feed(
        client, sec, "known_exploited_vulnerabilities.json", json.dumps(kev(OPENSSL_CVE)).encode()
    )
    resp = client.get("/api/v1/vulns/findings", headers=auth(sec))
    assert resp.status_code == 200, resp.text
    items: list[dict[str, Any]] = resp.json()["items"]
    assert [f["advisory"] for f in items] == [OPENSSL_CVE, REQUESTS_GHSA]
    return items


def test_findings_and_cra_cases_for_admin(
    client: TestClient, ctx: AppContext, admin_token: str, findings: list[dict[str, Any]]
) -> None:
    sign_in(client, admin_token)
    page = client.get("/console/vulns")
    assert page.status_code == 200, page.text
    text = page.text
    assert OPENSSL_CVE in text and REQUESTS_GHSA in text
    assert "Open findings by priority" in text and "<svg" in text
    assert re.search(r'<span class="big">2</span> open', text)
    assert text.index(OPENSSL_CVE) < text.index(REQUESTS_GHSA)  # most urgent first
    assert "Why P1: " in text and "KEV" in text  # the priority's reasons
    # The CRA case with its three clocks; the final one waits for a fix.
    assert "early-warning (24 h)" in text and "notification (72 h)" in text
    assert "no fix yet" in text and "early-warning by" in text
    assert 'class="action"' not in text  # nothing to do here but read

    p1 = client.get("/console/vulns?priority=P1").text
    assert OPENSSL_CVE in p1.split('id="cases"')[0] and REQUESTS_GHSA not in p1
    closed = client.get("/console/vulns?state=closed").text
    assert "No findings match." in closed
    # The cursor: past the first finding only the second is left.
    first = findings[0]
    after = client.get("/console/vulns", params={"after": f"{first['rank']!r},{first['id']}"})
    assert after.status_code == 200, after.text
    table = after.text.split('id="cases"')[0]
    assert REQUESTS_GHSA in table and OPENSSL_CVE not in table

    # Three days later, the early warning and the notification are overdue.
    with ctx.db.session() as s:
        s.execute(update(Case).values(aware_at=dt.datetime.now(dt.UTC) - dt.timedelta(days=3)))
    late = client.get("/console/vulns").text
    assert 'class="badge bad">overdue' in late and "with a report overdue" in late


def test_the_findings_are_paged_by_the_pages_own_link(
    client: TestClient,
    admin_token: str,
    findings: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(vulns_page, "PAGE", 1)
    sign_in(client, admin_token)
    page = client.get("/console/vulns").text
    table = page.split('id="cases"')[0]
    assert OPENSSL_CVE in table and REQUESTS_GHSA not in table
    found = re.search(r'<a href="([^"]+)" rel="next">', page)
    assert found is not None
    rest = client.get(found.group(1).replace("&amp;", "&"))
    assert rest.status_code == 200, rest.text
    table = rest.text.split('id="cases"')[0]
    assert REQUESTS_GHSA in table and OPENSSL_CVE not in table and 'rel="next"' not in table


def test_an_auditor_reads_it_and_another_tenant_sees_none_of_it(
    client: TestClient, ctx: AppContext, admin_token: str, findings: list[dict[str, Any]]
) -> None:
    made = client.post(
        "/api/v1/tokens", json={"name": "aud", "role": "auditor"}, headers=auth(admin_token)
    )
    assert made.status_code == 201, made.text
    auditor = TestClient(client.app)
    sign_in(auditor, made.json()["token"])
    page = auditor.get("/console/vulns")
    assert page.status_code == 200 and OPENSSL_CVE in page.text
    assert 'class="action"' not in page.text
    with ctx.db.session() as s:
        other = tenancy.create_tenant(s, name="other", actor="test")
        _, stranger = tenancy.create_token(s, tenant=other, name="o", role="admin", actor="test")
    sign_in(client, stranger)
    theirs = client.get("/console/vulns")
    assert theirs.status_code == 200, theirs.text
    assert OPENSSL_CVE not in theirs.text and REQUESTS_GHSA not in theirs.text
    assert "No CRA case." in theirs.text and "No findings match." in theirs.text


@pytest.mark.sqlite_run_only
def test_hostile_filters_are_400_pages(client: TestClient, admin_token: str) -> None:
    sign_in(client, admin_token)
    for query in (
        "priority=P9",
        "priority=" + "P1" * 3000,
        "state=deleted",
        "overdue=true",
        "after=nan,1",
        "after=inf,1",
        "after=1.0",
        "after=1.0,-1",
        "after=1.0,0",
        "after=1e999,5",
        "after=x,5",
        "after=1.0,99999999999999999999",
        "after=" + "9" * 100,
    ):
        r = client.get("/console/vulns?" + query)
        assert r.status_code == 400, (query, r.status_code, r.text[:200])
        assert r.headers["content-type"].startswith("text/html"), query
    ok = client.get("/console/vulns?priority=P2&state=any&overdue=1&after=0.5,3")
    assert ok.status_code == 200, ok.text
