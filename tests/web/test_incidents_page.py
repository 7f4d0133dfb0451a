"""The console's alerts, incidents and drills pages (fleetward.web.pages.incidents).

Data is made the way the system makes it: alerts raised by the detection
service, incidents, playbooks and runs through the REST API, a drill run by
the response domain on an in-process fleet. Each page is read as admin, as
the weakest role (auditor: no action forms, forged calls refused by the
API), as another tenant (404 pages) and with hostile query strings (4xx
pages, never a 500).
"""

from __future__ import annotations

import html
import json
import re
import time
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from fleetward import detection, response
from fleetward.identity import ca_service
from fleetward.identity.models import Device
from fleetward.response import drills
from fleetward.runtime.context import AppContext
from fleetward.store.db import utcnow
from fleetward.tenancy import service as tenancy
from tests.response.helpers import SEC, SEC2, enroll
from tests.web.helpers import sign_in

REVOKE = (
    "name: revoke-batch\nparams: {batch: null}\ncohort: {batch: '{batch}'}\n"
    "steps: [{action: revoke, reason: keyCompromise}]\n"
)


def _h(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _token(client: TestClient, admin: str, role: str) -> str:
    r = client.post("/api/v1/tokens", json={"name": f"{role}-1", "role": role}, headers=_h(admin))
    assert r.status_code == 201, r.text
    token: str = r.json()["token"]
    return token


def _as(client: TestClient, token: str) -> str:
    """Sign the client's cookie jar in as ``token``; the session's CSRF token."""
    client.cookies.clear()
    return sign_in(client, token)


def _raise(ctx: AppContext, key: str, severity: str, evidence: dict[str, Any]) -> int:
    finding = detection.Finding(
        tenant_id=1, kind="boot-integrity", key=key, severity=severity,
        subject=key, summary=f"boot evidence of {key} failed", evidence=evidence,
    )  # fmt: skip
    with ctx.db.session() as s:
        alert = detection.raise_alert(s, finding, now=utcnow())
        assert alert is not None
        return alert.id


def _incident(client: TestClient, admin: str, title: str = "keys leaked") -> int:
    r = client.post("/api/v1/incidents", json={"title": title}, headers=_h(admin))
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


def _is_page(r: Any, status: int) -> None:
    assert r.status_code == status, (r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("text/html")
    assert "Content-Security-Policy" in r.headers


def _forms(page: str, path: str) -> int:
    """How many action forms call ``path`` (an exact API path)."""
    return page.count(f'data-path="{path}"')


# --------------------------------------------------------------------------- alerts


def test_alerts_show_evidence_filter_and_triage(
    client: TestClient, ctx: AppContext, admin_token: str
) -> None:
    high = _raise(ctx, "device:a-1", "high", {"pcr": "<script>alert(1)</script>"})
    low = _raise(ctx, "device:a-2", "low", {"pcr": "7"})
    csrf = _as(client, admin_token)
    page = client.get("/console/alerts")
    _is_page(page, 200)
    assert "device:a-1" in page.text and "device:a-2" in page.text
    assert "<script>alert(1)" not in page.text  # the evidence is escaped
    assert html.escape("<script>alert(1)</script>", quote=False) in page.text
    state_path = f"/api/v1/alerts/{high}/state"
    assert _forms(page.text, state_path) == 2  # acknowledge, resolve
    assert 'data-confirm="Resolve alert' in page.text
    assert _forms(page.text, "/api/v1/incidents") == 2  # open an incident from each
    only_low = client.get("/console/alerts", params={"severity": "low"})
    assert "device:a-2" in only_low.text and "device:a-1" not in only_low.text
    # What the acknowledge form sends, as the script sends it.
    r = client.post(state_path, json={"state": "acknowledged"}, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200, r.text
    acked = client.get("/console/alerts", params={"state": "acknowledged"})
    assert f'id="alert-{high}"' in acked.text and f'id="alert-{low}"' not in acked.text
    # An acknowledged alert offers resolve, not acknowledge again.
    assert _forms(acked.text, state_path) == 1


def test_alerts_are_paged(client: TestClient, ctx: AppContext, admin_token: str) -> None:
    ids = [_raise(ctx, f"device:p-{i}", "medium", {"i": i}) for i in range(52)]
    _as(client, admin_token)
    first = client.get("/console/alerts", params={"severity": "medium"})
    found = re.search(r'href="(/console/alerts\?[^"]+)" rel="next"', first.text)
    assert found, "no next page link"
    link = html.unescape(found.group(1))
    assert "severity=medium" in link  # the filter is kept
    second = client.get(link)
    _is_page(second, 200)
    assert f'id="alert-{ids[0]}"' in second.text and f'id="alert-{ids[-1]}"' not in second.text
    assert 'rel="next"' not in second.text


# --------------------------------------------------------------------------- incidents


def test_incident_page_dry_run_first_then_plan(
    client: TestClient, ctx: AppContext, admin_token: str
) -> None:
    enroll(ctx, [f"b21-{i}" for i in range(3)], batch=21)
    enroll(ctx, ["bystander"], batch=22)
    assert (
        client.put("/api/v1/playbooks", json={"source": REVOKE}, headers=_h(admin_token))
    ).status_code == 201
    number = _incident(client, admin_token)
    csrf = _as(client, admin_token)
    listing = client.get("/console/incidents")
    _is_page(listing, 200)
    assert f'href="/console/incidents/{number}"' in listing.text and "keys leaked" in listing.text
    page = client.get(f"/console/incidents/{number}")
    _is_page(page, 200)
    assert "opened by hand: keys leaked" in page.text  # the timeline
    assert "revoke-batch v1" in page.text and "batch (required)" in page.text  # the chooser
    assert _forms(page.text, f"/api/v1/incidents/{number}/notes") == 1
    assert _forms(page.text, f"/api/v1/incidents/{number}/runs") == 0  # no dry run yet
    # The dry run: a GET of the page; nothing is written.
    asked = {"playbook": "revoke-batch", "environment": "test", "params": '{"batch": 21}'}
    dry = client.get(f"/console/incidents/{number}", params=asked)
    _is_page(dry, 200)
    assert "Dry run: revoke-batch v1 in test" in dry.text
    assert "<strong>3</strong> of 4 in test" in dry.text
    assert 'data-live="false"' in dry.text  # what is read is not swapped under the reader
    assert _forms(dry.text, f"/api/v1/incidents/{number}/runs") == 1
    effect = re.search(r'data-confirm="(Plan a run of [^"]+)"', dry.text)
    assert effect and "3 device(s)" in effect.group(1) and "revoke" in effect.group(1)
    assert "1 security approval" in html.unescape(effect.group(1))
    hidden = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"', dry.text))
    body = {
        "playbook": hidden["playbook"], "version": int(hidden["version"]),
        "environment": hidden["environment"], "params": json.loads(html.unescape(hidden["params"])),
    }  # fmt: skip
    assert body == {"playbook": "revoke-batch", "version": 1, "environment": "test",
                    "params": {"batch": 21}}  # fmt: skip
    with ctx.db.read() as s:
        assert set(s.execute(select(Device.state)).scalars()) == {"active"}
    # What the plan form sends, as the script sends it.
    run = client.post(f"/api/v1/incidents/{number}/runs", json=body, headers={"X-CSRF-Token": csrf})
    assert run.status_code == 201, run.text
    after = client.get(f"/console/incidents/{number}")
    assert f'id="run-{run.json()["id"]}"' in after.text and "awaiting-approval" in after.text
    assert "revoke-batch v1" in after.text and "0 of 1" in after.text
    # An admin is not a security operator: no approve form is offered.
    assert _forms(after.text, f"/api/v1/runs/{run.json()['id']}/approvals") == 0
    # A security operator (not the requester) is offered the approval, then the execution.
    run_id = run.json()["id"]
    sec_csrf = _as(client, _token(client, admin_token, "security"))
    offered = client.get(f"/console/incidents/{number}")
    assert _forms(offered.text, f"/api/v1/runs/{run_id}/approvals") == 1
    assert _forms(offered.text, f"/api/v1/runs/{run_id}/executions") == 0
    approve = client.post(f"/api/v1/runs/{run_id}/approvals", headers={"X-CSRF-Token": sec_csrf})
    assert approve.status_code == 200 and approve.json()["state"] == "ready", approve.text
    ready = client.get(f"/console/incidents/{number}")
    assert _forms(ready.text, f"/api/v1/runs/{run_id}/approvals") == 0
    assert _forms(ready.text, f"/api/v1/runs/{run_id}/executions") == 1
    assert 'data-confirm="Execute run' in ready.text and "on 3 device(s) in test" in ready.text
    _as(client, admin_token)
    # An empty cohort: the refusal shows instead of the plan form.
    empty = client.get(f"/console/incidents/{number}", params={**asked, "params": '{"batch": 99}'})
    _is_page(empty, 200)
    assert "A run would be refused" in empty.text
    assert _forms(empty.text, f"/api/v1/incidents/{number}/runs") == 0


def test_auditor_is_offered_no_action_and_forged_ones_are_refused(
    client: TestClient, ctx: AppContext, admin_token: str
) -> None:
    alert = _raise(ctx, "device:x-1", "critical", {"pcr": "9"})
    client.put("/api/v1/playbooks", json={"source": REVOKE}, headers=_h(admin_token))
    number = _incident(client, admin_token)
    auditor = _token(client, admin_token, "auditor")
    csrf = _as(client, auditor)
    alerts = client.get("/console/alerts")
    _is_page(alerts, 200)
    assert "device:x-1" in alerts.text
    assert 'class="action"' not in alerts.text
    page = client.get(f"/console/incidents/{number}")
    _is_page(page, 200)
    assert 'class="action"' not in page.text and "Dry run" not in page.text
    assert 'class="action"' not in client.get("/console/incidents").text
    # The dry run is a run's first step: refused as a page too.
    dry = client.get(
        f"/console/incidents/{number}",
        params={"playbook": "revoke-batch", "params": '{"batch": 1}', "environment": "test"},
    )
    _is_page(dry, 403)
    # Forged calls with the auditor's session and CSRF token: the API refuses them.
    forged = {"X-CSRF-Token": csrf}
    assert (
        client.post(f"/api/v1/alerts/{alert}/state", json={"state": "acknowledged"}, headers=forged)
    ).status_code == 403
    assert (
        client.post(f"/api/v1/incidents/{number}/notes", json={"text": "x"}, headers=forged)
    ).status_code == 403
    assert (
        client.post(
            f"/api/v1/incidents/{number}/blast-radius",
            json={"playbook": "revoke-batch", "params": {"batch": 1}}, headers=forged,
        )
    ).status_code == 403  # fmt: skip
    with ctx.db.read() as s:
        assert detection.get_alert(s, tenant_id=1, alert_id=alert).state == "open"


class _Fleet:
    """A simulated fleet that mirrors the server: a revoked device is cut off
    (as the broker disconnects it), seen when the drill looks."""

    def __init__(self, ctx: AppContext, ids: list[str]) -> None:
        self.ctx, self.ids = ctx, ids
        self.cut: dict[str, float] = {}

    def snapshot(self) -> list[dict[str, Any]]:
        with self.ctx.db.read() as s:
            states = dict(
                s.execute(
                    select(Device.device_id, Device.state).where(Device.device_id.in_(self.ids))
                ).all()
            )
        for d, state in states.items():
            if state == "revoked":
                self.cut.setdefault(d, time.monotonic())
        return [
            {"device_id": d, "online": True, "connected": d not in self.cut,
             "cut_off": d in self.cut, "cut_off_at": self.cut.get(d)}
            for d in self.ids
        ]  # fmt: skip

    def tamper(self, ids: object) -> None:
        raise AssertionError("no fault is injected")

    attest = bring_online = tamper


class _Effects:
    def command(self, tenant: str, device_id: str, name: str) -> None:
        pass

    def webhook(self, url: str, payload: dict[str, Any]) -> int:
        return 204


def _drill(ctx: AppContext) -> int:
    ids = ["drill-0", "drill-1"]
    enroll(ctx, ids, env="drill")
    with ctx.db.session() as s:
        response.install_standard(s, SEC)
    done = drills.run_drill(
        ctx, _Fleet(ctx, ids), starter=SEC, approvers=[SEC2],  # type: ignore[arg-type]
        playbook="mass-credential-revocation", params={"devices": ["drill-0"]},
        effects=_Effects(), timeout=20,
    )  # fmt: skip
    return done.id


def test_drill_pages_show_the_report_and_its_timings(
    client: TestClient, ctx: AppContext, admin_token: str
) -> None:
    number = _drill(ctx)
    _as(client, admin_token)
    listing = client.get("/console/drills")
    _is_page(listing, 200)
    assert f'href="/console/drills/{number}"' in listing.text
    assert "mass-credential-revocation v1" in listing.text and "passed" in listing.text
    page = client.get(f"/console/drills/{number}")
    _is_page(page, 200)
    for measure in ("time to contain", "run executed", "server saw it contained"):
        assert measure in page.text, measure
    assert "<svg" in page.text  # the timings chart
    assert "Devices</dt><dd>2 simulated, 1 affected" in page.text
    incident = re.search(r'href="/console/incidents/(\d+)"', page.text)
    assert incident
    drill_incident = client.get(f"/console/incidents/{incident.group(1)}")
    _is_page(drill_incident, 200)
    assert "drill: its runs act on the drill environment only" in drill_incident.text


# --------------------------------------------------------------------------- tenants and input


def test_another_tenants_incident_and_drill_are_404_pages(
    client: TestClient, ctx: AppContext, admin_token: str
) -> None:
    number = _incident(client, admin_token)
    drill = _drill(ctx)
    with ctx.db.session() as s:
        acme = tenancy.create_tenant(s, name="acme", actor="test")
        ca_service.create_tenant_pki(s, ctx.pki, tenant=acme, actor="test")
        _, theirs = tenancy.create_token(s, tenant=acme, name="acme", role="admin", actor="t")
    _as(client, theirs)
    for path in (
        f"/console/incidents/{number}",
        f"/console/incidents/{number}?playbook=revoke-batch&params=%7B%7D",
        f"/console/drills/{drill}",
        "/console/incidents/999999",
        "/console/drills/999999",
    ):
        r = client.get(path)
        _is_page(r, 404)
        assert "keys leaked" not in r.text
    assert "keys leaked" not in client.get("/console/incidents").text
    assert f'href="/console/drills/{drill}"' not in client.get("/console/drills").text


@pytest.mark.sqlite_run_only
def test_hostile_query_strings_are_4xx_pages(
    client: TestClient, ctx: AppContext, admin_token: str
) -> None:
    number = _incident(client, admin_token)
    _as(client, admin_token)
    inc = f"/console/incidents/{number}"
    hostile = [
        "/console/alerts?state=%3Cscript%3E",
        "/console/alerts?severity=urgent",
        "/console/alerts?state=open%00",
        "/console/alerts?before=-1",
        "/console/alerts?before=0",
        "/console/alerts?before=1e3",
        "/console/alerts?before=99999999999999999999999",
        "/console/alerts?before=%EF%BC%91",  # a full-width digit
        "/console/incidents?state=bogus",
        "/console/incidents?before=abc",
        "/console/incidents/abc",
        "/console/incidents/0",
        "/console/incidents/-5",
        "/console/incidents/99999999999999999999",
        "/console/incidents/%F0%9F%98%80",
        "/console/drills?before=x",
        "/console/drills/1.5",
        f"{inc}?playbook=revoke-batch&params=%7Bbad",
        f"{inc}?playbook=revoke-batch&params=%5B1%5D",
        f"{inc}?playbook=revoke-batch&environment=mars",
        f"{inc}?playbook=revoke-batch&confirm=-1",
        f"{inc}?playbook=revoke-batch&version=x",
        f"{inc}?playbook=" + "p" * 10_000,
        f"{inc}?playbook=revoke-batch&params=" + quote(json.dumps({"k": "v" * 5000})),
        f"{inc}?playbook=no-such-playbook",
    ]
    for path in hostile:
        r = client.get(path)
        assert 400 <= r.status_code < 500, (path, r.status_code, r.text[:200])
        assert r.headers["content-type"].startswith("text/html"), path


@pytest.mark.sqlite_run_only
def test_pages_need_a_session(client: TestClient) -> None:
    for path in (
        "/console/alerts",
        "/console/incidents",
        "/console/incidents/1?playbook=revoke-batch",
        "/console/drills",
        "/console/drills/1",
        "/console/audit?verify=1",
        "/console/audit/1",
    ):
        r = client.get(path, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/login"), path
