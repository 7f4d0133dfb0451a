"""The console's device list and device page: search, filters and paging;
one timeline from enrollment to now; actions offered by role and refused
when forged; another tenant's device is a 404 page; hostile query values
are 4xx pages that repeat nothing unescaped."""

from __future__ import annotations

import datetime as dt
import html
import itertools
import json
import re
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from fleetward import detection, ota, telemetry
from fleetward.identity.models import Device
from fleetward.runtime.context import AppContext
from fleetward.tenancy import service as tenancy
from fleetward.web.pages import devices as devices_page
from fleetward.web.pages.devices import Entry, timeline
from tests.helpers import csr_pem, new_key
from tests.web.helpers import sign_in


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def enroll(client: TestClient, token: str, device_id: str, **extra: Any) -> dict[str, Any]:
    r = client.post(
        f"/api/v1/devices/{device_id}/certificates",
        json={"csr": csr_pem(new_key(), device_id).decode(), **extra},
        headers=auth(token),
    )
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


def token_of(client: TestClient, admin: str, role: str) -> str:
    r = client.post(
        "/api/v1/tokens", json={"name": f"{role} token", "role": role}, headers=auth(admin)
    )
    assert r.status_code == 201, r.text
    token: str = r.json()["token"]
    return token


def rows(page: str) -> list[str]:
    """The device ids of a list page, in order."""
    return re.findall(r'<th scope="row"><a href="/console/devices/[^"]+">([^<]+)</a>', page)


def next_link(page: str) -> str | None:
    found = re.search(r'<a href="([^"]+)" rel="next">', page)
    return html.unescape(found.group(1)) if found else None


def test_list_searches_filters_and_pages(
    client: TestClient, admin_token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(7):
        enroll(client, admin_token, f"pump-{i:02d}", product="pump")
    enroll(client, admin_token, "valve-01", product="valve", environment="test")
    r = client.post(
        "/api/v1/devices",
        json={"device_id": "spare-01", "product": "pump"},
        headers=auth(admin_token),
    )
    assert r.status_code == 201, r.text
    sign_in(client, admin_token)

    page = client.get("/console/devices")
    assert page.status_code == 200, page.text
    assert rows(page.text) == [*(f"pump-{i:02d}" for i in range(7)), "spare-01", "valve-01"]
    first = page.text.split('<th scope="row">', 2)[1]  # pump-00's row: every column filled
    for cell in ("<td>pump</td>", 'badge ok">active<', "<td>production</td>", "<td>software</td>"):
        assert cell in first, cell
    assert "<time datetime=" in first  # its certificate's expiry
    assert next_link(page.text) is None

    assert rows(client.get("/console/devices?q=UMP-0").text) == [f"pump-{i:02d}" for i in range(7)]
    assert rows(client.get("/console/devices?q=e-0").text) == ["spare-01", "valve-01"]
    assert rows(client.get("/console/devices?product=valve").text) == ["valve-01"]
    assert rows(client.get("/console/devices?environment=test").text) == ["valve-01"]
    assert rows(client.get("/console/devices?state=pending").text) == ["spare-01"]
    # A literal search: '_' and '%' are not wildcards.
    assert rows(client.get("/console/devices?q=p_mp").text) == []

    # Paging: the list is cut at the page size with a next-page link that keeps the filters.
    monkeypatch.setattr(devices_page, "PAGE", 3)
    seen: list[str] = []
    url: str | None = "/console/devices?product=pump&state=active"
    while url:
        got = client.get(url)
        assert got.status_code == 200, got.text
        assert len(rows(got.text)) <= 3
        seen += rows(got.text)
        url = next_link(got.text)
        if url:
            assert "product=pump" in url and "state=active" in url
    assert seen == [f"pump-{i:02d}" for i in range(7)]


def test_device_page_tells_one_timeline(
    client: TestClient, admin_token: str, ctx: AppContext
) -> None:
    cert = enroll(client, admin_token, "d-1", labels={"site": "north"})
    r = client.post(
        "/api/v1/devices/d-1/state",
        json={"state": "quarantined", "reason": "suspicious boot"},
        headers=auth(admin_token),
    )
    assert r.status_code == 200, r.text
    now = dt.datetime.now(dt.UTC)
    with ctx.db.session() as s:
        d = s.execute(select(Device).where(Device.device_id == "d-1")).scalar_one()
        pk, tenant_id = d.id, d.tenant_id
        ev = [
            ("attestation.verdict", {"verdict": "fail", "failed": ["kernel"], "bootcount": 7}),
            ("ota.step", {"step": "fell-back", "campaign": 3, "version": "1.2.0"}),
            ("authz.publish-denied", {"identity": "x", "action": "publish", "topic": "fw/x/y"}),
            ("metric", {"temp": 40}),
        ]
        telemetry.record_events(
            s,
            [
                {"tenant_id": tenant_id, "device_pk": pk, "type": t, "at": now, "count": 1,
                 "fields": json.dumps(f)}
                for t, f in ev
            ],
        )  # fmt: skip
        ota.note_running(
            s, tenant_id=tenant_id, device_pk=pk, product="default", version="1.1.9", now=now
        )
        detection.raise_alert(
            s,
            detection.Finding(
                tenant_id=tenant_id, kind="boot-integrity", key="d-1", severity="high",
                subject="device:d-1", summary="boot of d-1 failed: <kernel>", evidence={},
            ),
            now=now,
        )  # fmt: skip
    sign_in(client, admin_token)
    page = client.get("/console/devices/d-1")
    assert page.status_code == 200, page.text
    text = page.text
    assert 'id="device-state">quarantined<' in text
    assert "site=north" in text
    assert "<dd>1.1.9 <span" in text  # the firmware it last proved
    assert "<dt>Last seen</dt><dd><time" in text  # the accepted verdict
    assert "<dt>Broker denials</dt><dd>authz.publish-denied: 1</dd>" in text
    listed = client.get("/console/devices?q=d-1").text
    assert "<td>1.1.9</td>" in listed and "never" not in listed
    assert cert["serial"] in text
    items = re.findall(r'<li data-kind="([a-z]+)">', text)
    for kind in ("enrollment", "certificate", "lifecycle", "boot", "update", "broker", "alert"):
        assert kind in items, kind
    assert "metric" not in items and "event" not in items  # metrics are not history
    assert "enrollment accepted" in text and f"certificate {cert['serial']} issued" in text
    assert "quarantined" in text and "suspicious boot" in text
    assert "boot verdict fail" in text and "update fell-back" in text
    assert "&lt;kernel&gt;" in text and "<kernel>" not in text  # escaped, not markup
    # Newest first: the quarantine comes before the enrollment it followed.
    assert items.index("lifecycle") < items.index("certificate") < len(items)
    assert items[-1] in ("enrollment", "certificate")
    # The admin is offered release and revocation (it is quarantined), with their effects.
    assert 'data-path="/api/v1/devices/d-1/state"' in text
    assert "broker gives it its roles" in text
    assert 'data-path="/api/v1/devices/d-1/revocation"' in text
    assert "cuts off its live connections" in text and "cannot be undone" in text
    assert '<option value="keyCompromise">' in text


@pytest.mark.sqlite_run_only
def test_auditor_sees_no_actions_and_a_forged_one_is_refused(
    client: TestClient, admin_token: str
) -> None:
    enroll(client, admin_token, "d-1")
    auditor = token_of(client, admin_token, "auditor")
    release = token_of(client, admin_token, "release-manager")
    csrf = sign_in(client, auditor)
    page = client.get("/console/devices/d-1")
    assert page.status_code == 200, page.text
    assert 'class="action"' not in page.text and "data-path" not in page.text
    assert "Not shown to your role" not in page.text  # an auditor reads the records and the log
    forged = client.post(
        "/api/v1/devices/d-1/state",
        json={"state": "quarantined"},
        headers={"X-CSRF-Token": csrf},
    )
    assert forged.status_code == 403, forged.text
    forged = client.post(
        "/api/v1/devices/d-1/revocation", json={"reason": "keyCompromise"},
        headers={"X-CSRF-Token": csrf},
    )  # fmt: skip
    assert forged.status_code == 403, forged.text
    assert 'id="device-state">active<' in client.get("/console/devices/d-1").text
    # A role without the log still gets the page, told what it does not see.
    client.cookies.clear()
    sign_in(client, release)
    page = client.get("/console/devices/d-1")
    assert page.status_code == 200, page.text
    assert "Not shown to your role: enrollment attempts and audit entries" in page.text
    assert "data-path" not in page.text


def test_quarantine_with_the_session_changes_the_page(client: TestClient, admin_token: str) -> None:
    enroll(client, admin_token, "d-1")
    csrf = sign_in(client, admin_token)
    page = client.get("/console/devices/d-1").text
    assert 'id="device-state">active<' in page
    assert "limits it to the quarantine role" in page
    assert 'name="state" value="quarantined"' in page
    done = client.post(
        "/api/v1/devices/d-1/state",
        json={"state": "quarantined", "reason": "console"},
        headers={"X-CSRF-Token": csrf},
    )
    assert done.status_code == 200, done.text
    page = client.get("/console/devices/d-1").text
    assert 'id="device-state">quarantined<' in page
    assert 'name="state" value="active"' in page  # now offered: release
    assert 'name="state" value="quarantined"' not in page
    assert '<span class="badge warn">quarantined</span>' in client.get("/console/devices").text


@pytest.mark.sqlite_run_only
def test_another_tenants_device_is_a_404_page(
    client: TestClient, admin_token: str, ctx: AppContext
) -> None:
    enroll(client, admin_token, "mine")
    with ctx.db.session() as s:
        other = tenancy.create_tenant(s, name="other", actor="test")
        _, other_token = tenancy.create_token(s, tenant=other, name="a", role="admin", actor="test")
    sign_in(client, other_token)
    for path in ("/console/devices/mine", "/console/devices/nobody"):
        r = client.get(path)
        assert r.status_code == 404, r.text
        assert r.headers["content-type"].startswith("text/html")
        assert "not found" in r.text
    assert rows(client.get("/console/devices").text) == []
    assert rows(client.get("/console/devices?q=mine").text) == []


HOSTILE = "<script>alert(1)</script>"


@pytest.mark.sqlite_run_only
@pytest.mark.parametrize(
    "query",
    [
        {"q": "a" * 10_000},
        {"q": HOSTILE},
        {"state": HOSTILE},
        {"state": "quarantined'--"},
        {"product": HOSTILE},
        {"product": "nope"},
        {"environment": "staging"},
        {"after": HOSTILE},
        {"q": "\x00"},
    ],
)
def test_hostile_list_queries_are_400_pages(
    client: TestClient, admin_token: str, query: dict[str, str]
) -> None:
    sign_in(client, admin_token)
    r = client.get("/console/devices", params=query)
    assert r.status_code == 400, r.text
    assert r.headers["content-type"].startswith("text/html")
    assert "<script>alert" not in r.text
    assert "a" * 1000 not in r.text  # not repeated back


@pytest.mark.sqlite_run_only
def test_hostile_bytes_and_ids_are_4xx(client: TestClient, admin_token: str) -> None:
    sign_in(client, admin_token)
    for raw in (
        "/console/devices?q=%ff%fe",
        "/console/devices?q=%ed%a0%80",
        "/console/devices?state=%00",
    ):
        r = client.get(raw)
        assert r.status_code == 400, (raw, r.text)
    for path in (
        "/console/devices/%3Cscript%3Ealert(1)%3C%2Fscript%3E",
        "/console/devices/" + "a" * 10_000,
        "/console/devices/%ff",
        "/console/devices/..%2F..%2Fapi",
    ):
        r = client.get(path)
        assert 400 <= r.status_code < 500, (path[:80], r.status_code)
        if r.headers["content-type"].startswith("text/html"):  # a page: nothing reflected
            assert "<script>alert" not in r.text and "a" * 1000 not in r.text
        else:  # no console route matched (an encoded '/'): the API's JSON problem
            assert r.headers["content-type"].startswith("application/problem+json")


def test_timeline_is_newest_first_and_bounded() -> None:
    base = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)

    class Cert:
        def __init__(self, i: int) -> None:
            self.serial = f"{i:x}"
            self.not_before = base + dt.timedelta(days=i)
            self.not_after = self.not_before + dt.timedelta(days=90)
            self.environment = "production"
            self.key_origin = "software"
            self.revoked_at = self.not_before + dt.timedelta(hours=1) if i % 2 else None
            self.revocation_reason = "superseded" if i % 2 else None

    lines = timeline(
        certificates=[Cert(i) for i in range(300)], attempts=(), audit_entries=(), events=(),
        alerts=(), factories={}, limit=200,
    )  # fmt: skip
    assert len(lines) == 200
    assert all(a.at >= b.at for a, b in itertools.pairwise(lines))
    assert lines[0] == Entry(
        base + dt.timedelta(days=299, hours=1), "certificate", "certificate 12b revoked",
        "reason superseded", "bad",
    )  # fmt: skip


@pytest.mark.sqlite_run_only
def test_actions_follow_the_tokens_environment(client: TestClient, admin_token: str) -> None:
    enroll(client, admin_token, "prod-1")
    enroll(client, admin_token, "test-1", environment="test")
    r = client.post(
        "/api/v1/tokens",
        json={"name": "test security", "role": "security", "environment": "test"},
        headers=auth(admin_token),
    )
    assert r.status_code == 201, r.text
    csrf = sign_in(client, r.json()["token"])
    mine = client.get("/console/devices/test-1").text
    assert 'data-path="/api/v1/devices/test-1/state"' in mine
    assert 'data-path="/api/v1/devices/test-1/revocation"' in mine
    theirs = client.get("/console/devices/prod-1")
    assert theirs.status_code == 200  # an environment scope limits changes, not reads
    assert "data-path" not in theirs.text
    forged = client.post(
        "/api/v1/devices/prod-1/state", json={"state": "quarantined"},
        headers={"X-CSRF-Token": csrf},
    )  # fmt: skip
    assert forged.status_code == 403, forged.text
