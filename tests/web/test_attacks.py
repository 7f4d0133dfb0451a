"""The console attacked: every console route anonymous and with made-up
sessions, floods of bad cookies and sign-ins, a cookie next to a bearer
token, the session cookie on the device plane, and the event stream's cap.

Every console page is found from the app's own routes (the ones that declare
:func:`fleetward.web.viewer`), so a page nobody remembered is covered too.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from fleetward.api.gate import _leaves, needs_of
from fleetward.audit import AuditEntry
from fleetward.runtime.context import AppContext
from fleetward.web import COOKIE, events
from tests.web.helpers import BASE, sign_in

pytestmark = pytest.mark.sqlite_run_only


def _console_paths(app: Any) -> list[str]:
    paths = []
    for route in _leaves(list(app.routes)):
        if needs_of(route) == "console":
            # Any value for a path parameter: the gate refuses before the route runs.
            paths.append(re.sub(r"\{[^}]+\}", "x1", route.path))
    return paths


def _audit_count(ctx: AppContext) -> int:
    with ctx.db.read() as s:
        return int(s.execute(select(func.count()).select_from(AuditEntry)).scalar_one())


def test_every_console_page_sends_the_anonymous_to_sign_in(
    client: TestClient, ctx: AppContext
) -> None:
    paths = _console_paths(client.app)
    assert "/" in paths and events.PATH in paths, paths
    before = _audit_count(ctx)
    for path in paths:
        for cookie in (None, "", "fws_" + "A" * 43, "garbage", "fws_" + "x" * 5000):
            jar = {"Cookie": f"{COOKIE}={cookie}"} if cookie is not None else {}
            r = client.get(path, headers=jar, follow_redirects=False)
            assert r.status_code == 303, (path, cookie, r.status_code)
            assert r.headers["location"].startswith("/login"), path
            assert "fleetward_session" not in r.headers.get("set-cookie", "")
    # Refused sessions are counted by the limiter, never written one by one.
    assert _audit_count(ctx) == before


def test_a_flood_of_made_up_sessions_is_limited(client: TestClient) -> None:
    limited = None
    for i in range(400):
        r = client.get("/", headers={"Cookie": f"{COOKIE}=fws_{i:043d}"}, follow_redirects=False)
        assert r.status_code == 303
        if "retry-after" in r.headers:
            limited = i
            break
    assert limited is not None, "made-up session cookies were never limited"


def test_the_authorization_header_wins_over_the_cookie(
    client: TestClient, admin_token: str
) -> None:
    csrf = sign_in(client, admin_token)
    r = client.get(
        "/api/v1/tenant",
        headers={"Authorization": "Bearer fwt_0123456789abcdef_wrong", "X-CSRF-Token": csrf},
    )
    assert r.status_code == 401


def test_a_cookie_session_is_refused_exactly_like_its_token(
    client: TestClient, admin_token: str
) -> None:
    made = client.post(
        "/api/v1/tokens",
        json={"name": "weak", "role": "auditor"},
        headers={"Authorization": f"Bearer {admin_token}"},
    )
    weak = made.json()["token"]
    csrf = sign_in(client, weak)
    calls = [
        ("POST", "/api/v1/devices", {"device_id": "d1", "product": "p"}),
        ("POST", "/api/v1/tokens", {"name": "wider", "role": "admin"}),
        ("PATCH", "/api/v1/tenant", {"cert_lifetime_days": 1}),
        ("POST", "/api/v1/alerts/1/state", {"state": "resolved"}),
        ("GET", "/api/v1/audit/entries", None),
        ("GET", "/api/v1/devices", None),
    ]
    for method, path, body in calls:
        by_cookie = client.request(method, path, json=body, headers={"X-CSRF-Token": csrf})
        by_token = TestClient(client.app).request(
            method, path, json=body, headers={"Authorization": f"Bearer {weak}"}
        )
        assert by_cookie.status_code == by_token.status_code, (method, path, by_cookie.text)
        if by_cookie.status_code >= 400:
            assert by_cookie.headers["content-type"].startswith("application/problem+json")


def test_sign_in_refuses_hostile_forms(client: TestClient, admin_token: str) -> None:
    form = client.get("/login")
    csrf = form.text.split('name="csrf" value="')[1].split('"')[0]
    big = client.post(
        "/login", data={"token": "x" * 10_000, "csrf": csrf}, headers={"Origin": BASE}
    )
    assert big.status_code == 400
    many = client.post("/login", data={f"f{i}": "1" for i in range(50)}, headers={"Origin": BASE})
    assert many.status_code == 400
    elsewhere = client.post(
        "/login",
        data={"token": admin_token, "csrf": csrf},
        headers={"Origin": "http://evil.example"},
        follow_redirects=False,
    )
    assert elsewhere.status_code == 403
    assert "fleetward_session" not in elsewhere.headers.get("set-cookie", "")
    for r in (big, many, elsewhere):
        assert r.headers["content-type"].startswith("text/html"), r.text[:200]
        assert "x" * 300 not in r.text  # the refused token is not echoed


def test_a_flood_of_bad_sign_ins_is_limited_and_counted(
    client: TestClient, ctx: AppContext
) -> None:
    form = client.get("/login")
    csrf = form.text.split('name="csrf" value="')[1].split('"')[0]
    before = _audit_count(ctx)
    statuses = []
    for i in range(60):
        r = client.post(
            "/login",
            data={"token": f"fwt_{i:016x}_wrong", "csrf": csrf},
            headers={"Origin": BASE},
        )
        statuses.append(r.status_code)
        csrf = r.text.split('name="csrf" value="')[1].split('"')[0]  # each form has its own
    assert 429 in statuses, statuses
    assert set(statuses) <= {401, 429}
    # A window of refusals is one entry (or a few), not one per attempt.
    assert _audit_count(ctx) - before < 10


def test_the_event_stream_is_capped(
    client: TestClient, admin_token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    sign_in(client, admin_token)
    monkeypatch.setattr(events, "MAX_STREAMS", 0)
    r = client.get(events.PATH)
    assert r.status_code == 429
    assert r.headers["content-type"].startswith("application/problem+json")


def test_console_pages_are_not_on_the_device_plane(
    device_client: TestClient, admin_token: str
) -> None:
    for path in ("/", "/login", events.PATH, "/console/assets/console.js"):
        assert device_client.get(path).status_code == 404, path


def test_only_the_listed_assets_are_served(client: TestClient) -> None:
    assert client.get("/console/assets/console.js").status_code == 200
    for name in ("../web/__init__.py", "%2e%2e%2fconsole.js", "console.js.map", "x" * 300):
        r = client.get(f"/console/assets/{name}")
        assert r.status_code == 404, name


def test_every_page_answers_in_full_and_in_part(client: TestClient, admin_token: str) -> None:
    sign_in(client, admin_token)
    paths = [p for p in _console_paths(client.app) if "x1" not in p and p != events.PATH]
    assert len(paths) >= 8, paths
    for path in paths:
        full = client.get(path)
        assert full.status_code == 200, (path, full.text[:300])
        assert full.text.lstrip().startswith("<!doctype html>"), path
        assert full.headers["content-security-policy"].startswith("default-src 'none'")
        part = client.get(path, headers={"X-Console-Partial": "1"})
        assert part.status_code == 200, (path, part.text[:300])
        assert "<html" not in part.text and "<h1" in part.text, path
