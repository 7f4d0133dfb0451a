"""Console sessions: sign-in, the cookie, CSRF on API calls, and the ways a
session ends (sign-out, its token revoked or expired)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.web.helpers import BASE, sign_in


def test_a_page_without_a_session_goes_to_sign_in(client: TestClient) -> None:
    r = client.get("/console/events", follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"].startswith("/login")
    assert client.get("/", follow_redirects=False).headers["location"] == "/login"


def test_sign_in_sets_a_strict_httponly_cookie(client: TestClient, admin_token: str) -> None:
    form = client.get("/login")
    assert "Content-Security-Policy" in form.headers
    csrf = form.text.split('name="csrf" value="')[1].split('"')[0]
    r = client.post(
        "/login",
        data={"token": admin_token, "csrf": csrf, "next": "/"},
        headers={"Origin": BASE},
        follow_redirects=False,
    )
    assert r.status_code == 303
    cookie = [
        v for k, v in r.headers.multi_items() if k == "set-cookie" and "fleetward_session" in v
    ]
    assert cookie and "HttpOnly" in cookie[0] and "SameSite=strict" in cookie[0]
    assert admin_token not in cookie[0]
    page = client.get("/")
    assert page.status_code == 200 and "Fleet posture" in page.text
    assert page.headers["cache-control"] == "no-store"


def test_cookie_api_calls_need_the_csrf_token(client: TestClient, admin_token: str) -> None:
    csrf = sign_in(client, admin_token)
    assert client.get("/api/v1/tenant").status_code == 403
    assert client.get("/api/v1/tenant", headers={"X-CSRF-Token": "0" * 64}).status_code == 403
    ok = client.get("/api/v1/tenant", headers={"X-CSRF-Token": csrf})
    assert ok.status_code == 200, ok.text
    other = client.get("/api/v1/tenant", headers={"X-CSRF-Token": csrf, "Origin": "http://evil"})
    assert other.status_code == 403
    site = client.get(
        "/api/v1/tenant", headers={"X-CSRF-Token": csrf, "Sec-Fetch-Site": "cross-site"}
    )
    assert site.status_code == 403


def test_sign_in_refuses_a_forged_form_and_a_bad_token(
    client: TestClient, admin_token: str
) -> None:
    client.get("/login")
    forged = client.post("/login", data={"token": admin_token, "csrf": "x"}, follow_redirects=False)
    assert forged.status_code == 403
    form = client.get("/login")
    csrf = form.text.split('name="csrf" value="')[1].split('"')[0]
    bad = client.post("/login", data={"token": "fwt_0123456789abcdef_nope", "csrf": csrf})
    assert bad.status_code == 401 and "invalid API token" in bad.text


def test_next_is_only_a_local_path(client: TestClient, admin_token: str) -> None:
    for hostile in ("//evil.example/x", "https://evil.example/", "/\\evil", "javascript:alert(1)"):
        form = client.get("/login")
        csrf = form.text.split('name="csrf" value="')[1].split('"')[0]
        r = client.post(
            "/login",
            data={"token": admin_token, "csrf": csrf, "next": hostile},
            follow_redirects=False,
        )
        assert r.headers["location"] == "/", hostile


def test_sign_out_ends_the_session(client: TestClient, admin_token: str) -> None:
    csrf = sign_in(client, admin_token)
    cookie = client.cookies.get("fleetward_session")
    r = client.post("/logout", data={"csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303
    client.cookies.set("fleetward_session", cookie or "")
    assert client.get("/", follow_redirects=False).status_code == 303
    assert client.get("/api/v1/tenant", headers={"X-CSRF-Token": csrf}).status_code == 401


def test_a_revoked_token_ends_its_sessions(client: TestClient, admin_token: str) -> None:
    made = client.post(
        "/api/v1/tokens",
        json={"name": "console", "role": "auditor"},
        headers={"Authorization": f"Bearer {admin_token}"},
    )
    assert made.status_code == 201, made.text
    other = TestClient(client.app)
    sign_in(other, made.json()["token"])
    assert other.get("/", follow_redirects=False).status_code == 200
    gone = client.delete(
        f"/api/v1/tokens/{made.json()['id']}", headers={"Authorization": f"Bearer {admin_token}"}
    )
    assert gone.status_code in (200, 204), gone.text
    assert other.get("/", follow_redirects=False).status_code == 303


def test_origin_null_counts_only_with_same_origin_fetch_metadata(
    client: TestClient, admin_token: str
) -> None:
    csrf = sign_in(client, admin_token)
    null = {"X-CSRF-Token": csrf, "Origin": "null"}
    assert client.get("/api/v1/tenant", headers=null).status_code == 403
    assert (
        client.get("/api/v1/tenant", headers={**null, "Sec-Fetch-Site": "same-origin"}).status_code
        == 200
    )
    assert (
        client.get("/api/v1/tenant", headers={**null, "Sec-Fetch-Site": "same-site"}).status_code
        == 403
    )
