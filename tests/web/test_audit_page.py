"""The console's audit pages (fleetward.web.pages.audit): the log, newest
first and filtered; the chain's verification only when asked; an entry's
inclusion proof in a signed checkpoint, verified."""

from __future__ import annotations

import html
import re
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from fleetward import audit
from fleetward.runtime.context import AppContext
from fleetward.tenancy import service as tenancy
from tests.web.helpers import sign_in


def _h(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _as(client: TestClient, token: str) -> str:
    client.cookies.clear()
    return sign_in(client, token)


def _is_page(r: Any, status: int) -> None:
    assert r.status_code == status, (r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("text/html")


def _incidents(client: TestClient, admin: str, *titles: str) -> None:
    for title in titles:
        r = client.post("/api/v1/incidents", json={"title": title}, headers=_h(admin))
        assert r.status_code == 201, r.text


def _seqs(page: str) -> list[int]:
    return [int(s) for s in re.findall(r'<td><a href="/console/audit/(\d+)">', page)]


def _checkpoint(ctx: AppContext) -> None:
    with ctx.db.session() as s:
        audit.checkpoint(s, signer=ctx.checkpoint_signer())


def test_the_log_is_newest_first_filtered_and_paged(
    client: TestClient, ctx: AppContext, admin_token: str
) -> None:
    _incidents(client, admin_token, *[f"incident {i}" for i in range(55)])
    auditor = client.post(
        "/api/v1/tokens", json={"name": "aud", "role": "auditor"}, headers=_h(admin_token)
    ).json()["token"]
    _as(client, auditor)  # the auditor reads the log (and signs in: an entry too)
    page = client.get("/console/audit")
    _is_page(page, 200)
    seqs = _seqs(page.text)
    assert len(seqs) == 50 and seqs == sorted(seqs, reverse=True)
    assert "incident.open" in page.text
    assert "Verify the chain now" in page.text and "does NOT verify" not in page.text
    found = re.search(r'href="(/console/audit\?[^"]+)" rel="next"', page.text)
    assert found
    second = client.get(html.unescape(found.group(1)))
    assert max(_seqs(second.text)) < min(seqs)
    only = client.get("/console/audit", params={"action": "incident.", "subject": "incident:1"})
    _is_page(only, 200)
    subjects = re.findall(r"<td>(incident:\d+)</td>", only.text)
    assert subjects and all("incident:1" in s for s in subjects)
    assert "incident:2<" not in only.text
    # LIKE wildcards in a filter match themselves, not everything.
    none = client.get("/console/audit", params={"subject": "%"})
    assert _seqs(none.text) == [] and "No entries match" in none.text
    by_actor = client.get("/console/audit", params={"actor": "nobody"})
    assert _seqs(by_actor.text) == []
    # Nothing to act on here: the log is read only.
    assert 'class="action"' not in page.text


def test_verification_runs_only_when_asked_and_reports_a_break(
    client: TestClient, ctx: AppContext, admin_token: str
) -> None:
    _incidents(client, admin_token, "one", "two")
    _checkpoint(ctx)
    _as(client, admin_token)
    plain = client.get("/console/audit")
    assert "Not verified on this visit" in plain.text
    asked = client.get("/console/audit", params={"verify": "1", "action": "incident."})
    _is_page(asked, 200)
    assert "The chain verifies" in asked.text
    assert 'data-live="false"' in asked.text  # not repeated by live refreshes
    filtered = client.get("/console/audit", params={"action": "incident."})
    link = re.search(r'href="([^"]*verify=1[^"]*)"', filtered.text)
    assert link and "action=incident." in html.unescape(link.group(1))  # filters kept
    # Rewrite an entry under the checkpoint: the page says so (not an error page).
    with ctx.db.session() as s:
        s.execute(text("UPDATE audit_entries SET subject = 'forged' WHERE seq = 2"))
    broken = client.get("/console/audit", params={"verify": "1"})
    _is_page(broken, 200)
    assert "The chain does NOT verify" in broken.text


def test_an_entry_shows_a_verifying_inclusion_proof(
    client: TestClient, ctx: AppContext, admin_token: str
) -> None:
    _incidents(client, admin_token, "proved")
    _as(client, admin_token)
    with ctx.db.read() as s:
        seq = audit.search_entries(s, tenant_id=1, action="incident.open", limit=1)[0].seq
    before = client.get(f"/console/audit/{seq}")
    _is_page(before, 200)
    assert "incident.open" in before.text and "no checkpoint covers" in before.text
    _checkpoint(ctx)
    page = client.get(f"/console/audit/{seq}")
    _is_page(page, 200)
    assert "The proof verifies" in page.text and "does NOT verify" not in page.text
    assert f"Leaf index</dt><dd>{seq - 1} of" in page.text
    # An auditor sees the proof, the checkpoint key's location redacted.
    auditor = client.post(
        "/api/v1/tokens", json={"name": "aud", "role": "auditor"}, headers=_h(admin_token)
    ).json()["token"]
    _as(client, auditor)
    theirs = client.get(f"/console/audit/{seq}")
    assert "The proof verifies" in theirs.text and "(redacted)" in theirs.text


def test_another_tenants_entry_and_roles_without_audit_are_refused(
    client: TestClient, ctx: AppContext, admin_token: str
) -> None:
    _incidents(client, admin_token, "ours")
    _checkpoint(ctx)
    with ctx.db.read() as s:
        ours = audit.search_entries(s, tenant_id=1, limit=1)[0].seq
    with ctx.db.session() as s:
        acme = tenancy.create_tenant(s, name="acme", actor="test")
        _, theirs = tenancy.create_token(s, tenant=acme, name="acme", role="admin", actor="t")
    _as(client, theirs)
    _is_page(client.get(f"/console/audit/{ours}"), 404)
    _is_page(client.get("/console/audit/1"), 404)  # a system entry
    assert f'href="/console/audit/{ours}"' not in client.get("/console/audit").text
    # A role without audit.read gets a 403 page, not the log.
    manager = client.post(
        "/api/v1/tokens", json={"name": "rm", "role": "release-manager"}, headers=_h(admin_token)
    ).json()["token"]
    _as(client, manager)
    _is_page(client.get("/console/audit"), 403)
    _is_page(client.get(f"/console/audit/{ours}"), 403)


@pytest.mark.sqlite_run_only
def test_hostile_query_strings_are_4xx_pages(client: TestClient, admin_token: str) -> None:
    _as(client, admin_token)
    for path in (
        "/console/audit?action=%3Cscript%3E",
        "/console/audit?action=INCIDENT",
        "/console/audit?action=" + "a" * 65,
        "/console/audit?actor=" + "a" * 201,
        "/console/audit?subject=%00",
        "/console/audit?subject=" + "s" * 10_000,
        "/console/audit?before=0",
        "/console/audit?before=-1",
        "/console/audit?before=9999999999999999999999",
        "/console/audit?verify=yes",
        "/console/audit/0",
        "/console/audit/abc",
        "/console/audit/99999999999999999999",
        "/console/audit/9007199254740991",  # the largest accepted: not found
    ):
        r = client.get(path)
        assert 400 <= r.status_code < 500, (path, r.status_code, r.text[:200])
        assert r.headers["content-type"].startswith("text/html"), path
