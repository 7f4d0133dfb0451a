"""The console attacked again (issue 18, second pass): stored markup in every
text a hostile party can store, cross-site sign-out, fetch-metadata
variants on cookie API calls, odd and doubled cookies, other tenants' ids
on every page with a path parameter, the weakest roles on every page, and
huge query strings. Each answer is escaped text, a 4xx page or a refusal,
never a 500."""

from __future__ import annotations

import re
from typing import Any

import pytest
from fastapi.testclient import TestClient

from fleetward.runtime.context import AppContext
from fleetward.tenancy import service as tenancy
from fleetward.web import COOKIE
from tests.helpers import csr_pem, new_key
from tests.web.helpers import BASE, sign_in

pytestmark = pytest.mark.sqlite_run_only

XSS = "\"'><script>alert(1)</script><img src=x onerror=alert(2)>"
PAGES = (
    "/",
    "/console/devices",
    "/console/campaigns",
    "/console/alerts",
    "/console/incidents",
    "/console/drills",
    "/console/vulns",
    "/console/trustmap",
    "/console/audit",
)


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def token_of(client: TestClient, admin: str, role: str, **extra: Any) -> str:
    r = client.post(
        "/api/v1/tokens", json={"name": f"{role} token", "role": role, **extra}, headers=auth(admin)
    )
    assert r.status_code == 201, r.text
    token: str = r.json()["token"]
    return token


def _no_raw_markup(page: str) -> None:
    assert (
        "<script>" not in page
        and "<img" not in page
        and "onerror=alert" not in page.replace("onerror=alert(2)&gt;", "")
    ), page


def test_stored_markup_is_text_everywhere(client: TestClient, admin_token: str) -> None:
    r = client.post(
        "/api/v1/devices/d-1/certificates",
        json={"csr": csr_pem(new_key(), "d-1").decode(), "labels": {XSS: XSS}},
        headers=auth(admin_token),
    )
    assert r.status_code in (201, 422), r.text
    r = client.post("/api/v1/incidents", json={"title": XSS}, headers=auth(admin_token))
    assert r.status_code == 201, r.text
    incident = r.json()["id"]
    r = client.post(
        f"/api/v1/incidents/{incident}/notes", json={"text": XSS}, headers=auth(admin_token)
    )
    assert r.status_code == 201, r.text
    sign_in(client, admin_token)
    for path in (*PAGES, "/console/devices/d-1", f"/console/incidents/{incident}"):
        page = client.get(path)
        assert page.status_code == 200, (path, page.status_code)
        _no_raw_markup(page.text)
    seqs = re.findall(r'href="/console/audit/(\d+)"', client.get("/console/audit").text)
    for seq in seqs[:10]:
        page = client.get(f"/console/audit/{seq}")
        assert page.status_code == 200, seq
        _no_raw_markup(page.text)


def test_a_cross_site_sign_out_does_not_clear_the_session_cookie(
    client: TestClient, admin_token: str
) -> None:
    """A form on another site posting to /logout (no CSRF token) neither ends
    the session nor drops the browser's cookie: signing an operator out is
    an action like any other."""
    sign_in(client, admin_token)
    r = client.post(
        "/logout",
        data={},
        headers={"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
        follow_redirects=False,
    )
    assert r.status_code in (303, 403)
    assert COOKIE not in r.headers.get("set-cookie", ""), r.headers.get("set-cookie")
    assert client.get("/", follow_redirects=False).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {"Sec-Fetch-Site": "same-site"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Origin": "null"},
        {"Origin": "null", "Sec-Fetch-Site": "cross-site"},
        {"Origin": "http://testserver.evil"},
        {"Origin": "http://testserver:80"},
        {"Origin": BASE + "/"},
        {"Origin": "HTTP://TESTSERVER"},
    ],
)
def test_cookie_api_calls_refuse_every_other_origin(
    client: TestClient, admin_token: str, headers: dict[str, str]
) -> None:
    csrf = sign_in(client, admin_token)
    r = client.post(
        "/api/v1/incidents", json={"title": "x"}, headers={"X-CSRF-Token": csrf, **headers}
    )
    assert r.status_code == 403, (headers, r.status_code, r.text)


def test_a_form_encoded_cookie_call_is_refused(client: TestClient, admin_token: str) -> None:
    csrf = sign_in(client, admin_token)
    r = client.post("/api/v1/incidents", data={"title": "x"}, headers={"X-CSRF-Token": csrf})
    assert r.status_code in (400, 415, 422), r.text
    r = client.post("/api/v1/incidents", data={"title": "x"})
    assert r.status_code == 403, r.text


@pytest.mark.parametrize(
    "cookie",
    [
        "{good}; fleetward_session=fws_AAAA",
        "fleetward_session=fws_AAAA; {good}",
        'fleetward_session="{secret}"',
        "fleetward_session={secret}\x00",
        "fleetward_session=" + "x" * 9000,
        "fleetward_session=fws_%2e%2e",
    ],
)
def test_odd_and_doubled_cookies_never_error(
    client: TestClient, admin_token: str, cookie: str
) -> None:
    sign_in(client, admin_token)
    secret = client.cookies.get(COOKIE)
    assert secret
    client.cookies.clear()
    value = cookie.replace("{good}", f"{COOKIE}={secret}").replace("{secret}", secret)
    r = client.get("/", headers={"Cookie": value}, follow_redirects=False)
    assert r.status_code in (200, 303, 400), (cookie, r.status_code)


def test_an_attacker_chosen_session_value_never_becomes_valid(
    client: TestClient, admin_token: str
) -> None:
    fixed = "fws_" + "A" * 43
    client.cookies.set(COOKIE, fixed)
    sign_in(client, admin_token)
    assert fixed not in [c.value for c in client.cookies.jar if c.name == COOKIE][-1:]
    client.cookies.clear()
    r = client.get("/", headers={"Cookie": f"{COOKIE}={fixed}"}, follow_redirects=False)
    assert r.status_code == 303


@pytest.mark.parametrize(
    "path",
    [
        "/console/devices/%0d%0aSet-Cookie:%20x=1",
        "/console/audit/%0d%0aLocation:%20http://evil",
        "/console/incidents/1%0d%0a",
    ],
)
def test_crlf_in_paths_is_never_a_header(client: TestClient, path: str) -> None:
    r = client.get(path, follow_redirects=False)
    assert r.status_code in (303, 404)
    assert "\r" not in r.headers.get("location", "") and "\n" not in r.headers.get("location", "")
    assert "x" not in {k.lower() for k in r.cookies}


@pytest.mark.parametrize(
    "value",
    [
        "//evil.example",
        "/\\evil.example",
        "/%2F%2Fevil.example",
        "/%5Cevil.example",
        "https://evil.example",
        "/.//evil",
        "/\t/evil.example",
        "/login?next=//evil",
        "javascript:alert(1)",
    ],
)
def test_next_never_leaves_the_server(client: TestClient, admin_token: str, value: str) -> None:
    form = client.get("/login", params={"next": value})
    assert form.status_code == 200
    found = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert found
    r = client.post(
        "/login",
        data={"token": admin_token, "csrf": found.group(1), "next": value},
        headers={"Origin": BASE},
        follow_redirects=False,
    )
    assert r.status_code == 303
    location = r.headers["location"]
    assert location.startswith("/") and not location.startswith(("//", "/\\")), location
    # A percent-escaped slash or backslash is a path segment to a browser, not a host.
    assert "evil" not in location or location.startswith(("/%2F", "/%5C")), location


def test_huge_query_strings_are_4xx_or_ignored(client: TestClient, admin_token: str) -> None:
    sign_in(client, admin_token)
    big = "a" * 30_000
    for path in PAGES:
        for q in (
            f"q={big}",
            f"before={big}",
            f"{big}=1",
            "&".join(f"k{i}=1" for i in range(3000)),
        ):
            r = client.get(f"{path}?{q}")
            assert r.status_code < 500, (path, q[:20], r.status_code)


def _other_tenant_ids(ctx: AppContext, client: TestClient) -> dict[str, Any]:
    with ctx.db.session() as s:
        other = tenancy.create_tenant(s, name="other", actor="test")
        _, token = tenancy.create_token(
            s, tenant=other, name="other admin", role="admin", actor="test"
        )
    r = client.post("/api/v1/devices", json={"device_id": "o-1"}, headers=auth(token))
    assert r.status_code == 201, r.text
    r = client.post("/api/v1/incidents", json={"title": "theirs"}, headers=auth(token))
    assert r.status_code == 201, r.text
    return {"token": token, "incident": r.json()["id"]}


def test_another_tenants_ids_are_404_pages(
    client: TestClient, admin_token: str, ctx: AppContext
) -> None:
    theirs = _other_tenant_ids(ctx, client)
    with ctx.db.read() as s:
        from sqlalchemy import select

        from fleetward.audit import AuditEntry

        their_seq = (
            s.execute(
                select(AuditEntry.seq)
                .where(AuditEntry.tenant_id != 1)
                .order_by(AuditEntry.seq.desc())
            )
            .scalars()
            .first()
        )
    sign_in(client, admin_token)
    for path in (
        "/console/devices/o-1",
        f"/console/incidents/{theirs['incident']}",
        f"/console/audit/{their_seq}",
    ):
        r = client.get(path)
        assert r.status_code == 404, (path, r.status_code)
        assert "theirs" not in r.text and "o-1</" not in r.text


@pytest.mark.parametrize("role", ["auditor", "factory-operator", "release-manager", "security"])
def test_weak_roles_get_no_500_on_any_page(client: TestClient, admin_token: str, role: str) -> None:
    try:
        token = token_of(client, admin_token, role)
    except AssertionError:
        pytest.skip(f"role {role} needs more than a name")
    sign_in(client, token)
    for path in (
        *PAGES,
        "/console/devices/d-1",
        "/console/incidents/1",
        "/console/campaigns/1",
        "/console/releases/1",
        "/console/drills/1",
        "/console/audit/1",
    ):
        r = client.get(path)
        assert r.status_code in (200, 403, 404), (role, path, r.status_code)


def _raw_get(live: str, path: str, cookie: str, *, method: str = "GET", read: bool) -> bytes:
    import socket
    from urllib.parse import urlsplit

    url = urlsplit(live)
    with socket.create_connection((url.hostname or "", url.port or 80), timeout=5) as sock:
        sock.sendall(
            f"{method} {path} HTTP/1.1\r\nHost: {url.netloc}\r\n"
            f"Cookie: {COOKIE}={cookie}\r\n\r\n".encode()
        )
        return sock.recv(4096) if read else b""


def test_dropped_event_streams_give_their_slot_back(live: str, admin_token: str) -> None:
    """Browsers that connect to the event stream and go away at once (a
    reload, a closed tab, or a hostile client doing it in a loop) must not
    use up the process's MAX_STREAMS for good."""
    import time

    import httpx

    from fleetward.web import events
    from tests.web.helpers import sign_in_http

    with httpx.Client(base_url=live, timeout=10) as http:
        sign_in_http(http, admin_token)
        secret = http.cookies.get(COOKIE)
    assert secret
    for i in range(events.MAX_STREAMS + 8):
        _raw_get(live, events.PATH, secret, method="HEAD" if i % 3 == 1 else "GET", read=i % 3 == 2)
    deadline = time.monotonic() + 3 * events.POLL + 5
    while events.open_streams() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert events.open_streams() == 0, events.open_streams()
    answer = _raw_get(live, events.PATH, secret, read=True)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]


def _enroll(client: TestClient, token: str, device_id: str, **extra: Any) -> None:
    r = client.post(
        f"/api/v1/devices/{device_id}/certificates",
        json={"csr": csr_pem(new_key(), device_id).decode(), **extra},
        headers=auth(token),
    )
    assert r.status_code == 201, r.text


def test_an_environment_scoped_token_sees_only_its_environment(
    client: TestClient, admin_token: str
) -> None:
    _enroll(client, admin_token, "prod-1")
    _enroll(client, admin_token, "test-1", environment="test")
    scoped = token_of(client, admin_token, "admin", environment="test")
    api = client.get("/api/v1/devices/prod-1", headers=auth(scoped))
    sign_in(client, scoped)
    page = client.get("/console/devices/prod-1")
    assert page.status_code == api.status_code or page.status_code == 404, (
        api.status_code,
        page.status_code,
    )
    if api.status_code != 200:
        assert "prod-1" not in client.get("/console/devices").text
        assert "prod-1" not in client.get("/console/devices?q=prod").text
        posture = client.get("/").text
        assert "production" not in posture or "environment=production" not in posture, posture
    for path in (*PAGES, "/console/devices/test-1"):
        r = client.get(path)
        assert r.status_code in (200, 403, 404), (path, r.status_code)


def test_the_seventeenth_sign_in_ends_the_oldest_session(
    client: TestClient, admin_token: str
) -> None:
    from fleetward.tenancy.sessions import MAX_SESSIONS_PER_TOKEN

    secrets_ = []
    for _ in range(MAX_SESSIONS_PER_TOKEN + 1):
        client.cookies.clear()
        sign_in(client, admin_token)
        secrets_.append(client.cookies.get(COOKIE))
    client.cookies.clear()
    first = client.get("/", headers={"Cookie": f"{COOKIE}={secrets_[0]}"}, follow_redirects=False)
    assert first.status_code == 303
    for secret in secrets_[1:]:
        r = client.get("/", headers={"Cookie": f"{COOKIE}={secret}"}, follow_redirects=False)
        assert r.status_code == 200


def test_a_session_ends_after_its_lifetime(
    client: TestClient, admin_token: str, ctx: AppContext
) -> None:
    import datetime as dt

    from fleetward.errors import AuthenticationError
    from fleetward.tenancy import session_principal

    r = client.post(
        "/api/v1/tokens",
        json={"name": "short", "role": "auditor", "expires_in_days": 1},
        headers=auth(admin_token),
    )
    assert r.status_code == 201, r.text
    sign_in(client, r.json()["token"])
    secret = client.cookies.get(COOKIE)
    with ctx.db.read() as s:
        session_principal(s, secret, now=dt.datetime.now(dt.UTC) + dt.timedelta(hours=7))
        for later in (dt.timedelta(hours=8, seconds=1), dt.timedelta(days=2)):
            with pytest.raises(AuthenticationError):
                session_principal(s, secret, now=dt.datetime.now(dt.UTC) + later)


def test_one_session_cannot_take_every_event_stream(
    live: str, admin_token: str, ctx: AppContext
) -> None:
    import socket
    from urllib.parse import urlsplit

    import httpx

    from fleetward.web import events
    from tests.web.helpers import sign_in_http

    with ctx.db.session() as s:
        other = tenancy.create_tenant(s, name="other", actor="test")
        _, theirs = tenancy.create_token(
            s, tenant=other, name="other admin", role="admin", actor="test"
        )
    auditor = token_of_live(live, admin_token, "auditor")
    with httpx.Client(base_url=live, timeout=10) as http:
        sign_in_http(http, auditor)
        hog = http.cookies.get(COOKIE)
    url = urlsplit(live)
    held = []
    try:
        for _ in range(events.MAX_STREAMS):
            sock = socket.create_connection((url.hostname or "", url.port or 80), timeout=5)
            sock.sendall(
                f"GET {events.PATH} HTTP/1.1\r\nHost: {url.netloc}\r\n"
                f"Cookie: {COOKIE}={hog}\r\n\r\n".encode()
            )
            assert sock.recv(64).startswith(b"HTTP/1.1 "), "no answer"
            held.append(sock)
        with httpx.Client(base_url=live, timeout=10) as http:
            sign_in_http(http, theirs)
            with http.stream("GET", events.PATH) as r:
                assert r.status_code == 200, r.status_code
    finally:
        for sock in held:
            sock.close()


def token_of_live(live: str, admin: str, role: str) -> str:
    import httpx

    r = httpx.post(
        live + "/api/v1/tokens", json={"name": f"{role} t", "role": role}, headers=auth(admin)
    )
    assert r.status_code == 201, r.text
    token: str = r.json()["token"]
    return token


class _Forms:
    """The action forms of a page: (method, path, JSON body as the script builds it)."""

    def __init__(self, page: str) -> None:
        from html.parser import HTMLParser

        self.found: list[tuple[str, str, dict[str, Any]]] = []
        outer = self

        class P(HTMLParser):
            form: tuple[str, str, dict[str, Any]] | None = None
            select: str | None = None

            def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
                a = {k: v or "" for k, v in attrs}
                if tag == "form" and "action" in a.get("class", "").split():
                    self.form = (a.get("data-method", "POST"), a["data-path"], {})
                elif self.form is not None and tag == "input" and a.get("name"):
                    value: Any = a.get("value", "")
                    if value == "" and "required" not in a:
                        return
                    if value == "":
                        value = "1" if a.get("type") == "number" else "probe"
                    kind = a.get("data-type")
                    if kind == "number" or a.get("type") == "number":
                        value = int(value)
                    elif kind == "json":
                        import json

                        value = json.loads(value)
                    elif a.get("type") == "checkbox":
                        return
                    self.form[2][a["name"]] = value
                elif self.form is not None and tag == "select" and "required" in a:
                    self.select = a["name"]
                elif self.select and tag == "option" and self.form is not None:
                    self.form[2].setdefault(self.select, a.get("value", ""))

            def handle_endtag(self, tag: str) -> None:
                if tag == "select":
                    self.select = None
                if tag == "form" and self.form is not None:
                    outer.found.append(self.form)
                    self.form = None

        P().feed(page)


@pytest.mark.parametrize(
    ("role", "environment"),
    [
        ("auditor", None),
        ("factory-operator", None),
        ("release-manager", None),
        ("security", None),
        ("security", "test"),
        ("admin", "test"),
    ],
)
def test_every_offered_action_is_one_the_api_allows(
    client: TestClient, admin_token: str, role: str, environment: str | None
) -> None:
    _enroll(client, admin_token, "prod-1")
    _enroll(client, admin_token, "test-1", environment="test")
    assert client.post("/api/v1/playbooks/standard", headers=auth(admin_token)).status_code == 201
    r = client.post("/api/v1/incidents", json={"title": "probe"}, headers=auth(admin_token))
    incident = r.json()["id"]
    extra = {"environment": environment} if environment else {}
    token = token_of(client, admin_token, role, **extra)
    csrf = sign_in(client, token)
    refused = []
    sent: list[Any] = []
    for path in (
        *PAGES,
        "/console/devices/prod-1",
        "/console/devices/test-1",
        f"/console/incidents/{incident}",
        f"/console/incidents/{incident}?playbook=mass-credential-revocation&environment=production"
        '&params={"devices":["prod-1"]}',
    ):
        page = client.get(path)
        assert page.status_code in (200, 403, 404), (path, page.status_code)
        for method, api, body in _Forms(page.text).found:
            if api.endswith("/revocation") or (
                api.endswith("/state") and body.get("state") == "closed"
            ):
                continue
            r = client.request(
                method, api, json=body or None, headers={"X-CSRF-Token": csrf, "Origin": BASE}
            )
            sent.append((api, r.status_code))
            if r.status_code in (401, 403, 404):
                refused.append((path, method, api, body, r.status_code, r.json().get("detail")))
    assert not refused, refused


def test_the_sign_in_and_error_pages_carry_the_security_headers(client: TestClient) -> None:
    for path in ("/login", "/login?next=/x", "/console/nowhere"):
        r = client.get(path)
        if r.headers.get("content-type", "").startswith("text/html"):
            assert "frame-ancestors 'none'" in r.headers.get("content-security-policy", ""), path
            assert r.headers.get("x-frame-options") == "DENY", path
            assert "no-store" in r.headers.get("cache-control", ""), path


HOSTILE_VALUES = (
    "%00",
    "%ff%fe",
    "-1",
    "0",
    "1e309",
    "99999999999999999999999",
    "9223372036854775808",
    "%C0%AF",
    "%ED%A0%80",
    "a%0d%0ab",
    "%E2%80%AE",
    "[]",
    "{}",
)
HOSTILE_NAMES = (
    "q",
    "state",
    "product",
    "environment",
    "after",
    "before",
    "severity",
    "kind",
    "action",
    "actor",
    "subject",
    "verify",
    "overdue",
    "priority",
    "playbook",
    "version",
    "params",
    "confirm",
)


def test_hostile_query_values_are_never_a_500(client: TestClient, admin_token: str) -> None:
    r = client.post("/api/v1/incidents", json={"title": "x"}, headers=auth(admin_token))
    incident = r.json()["id"]
    sign_in(client, admin_token)
    for path in (*PAGES, f"/console/incidents/{incident}", "/console/devices/d-1"):
        for name in HOSTILE_NAMES:
            for value in HOSTILE_VALUES:
                r = client.get(f"{path}?{name}={value}")
                assert r.status_code < 500, (path, name, value, r.status_code)
    for path in (
        "/console/incidents/",
        "/console/drills/",
        "/console/campaigns/",
        "/console/releases/",
        "/console/audit/",
        "/console/devices/",
    ):
        for value in (*HOSTILE_VALUES, "%2e%2e", "..", "1.0", "+1", "%201", "٣"):
            r = client.get(path + value)
            assert r.status_code in (400, 404, 422), (path, value, r.status_code)


def test_a_hostile_last_event_id_neither_errors_nor_leaks_a_slot(
    live: str, admin_token: str
) -> None:
    import socket
    from urllib.parse import urlsplit

    import httpx

    from fleetward.web import events
    from tests.web.helpers import sign_in_http

    with httpx.Client(base_url=live, timeout=10) as http:
        sign_in_http(http, admin_token)
        secret = http.cookies.get(COOKIE)
    url = urlsplit(live)
    before = events.open_streams()
    answers = []
    for _ in range(3):
        with socket.create_connection((url.hostname or "", url.port or 80), timeout=5) as sock:
            sock.sendall(
                f"GET {events.PATH} HTTP/1.1\r\nHost: {url.netloc}\r\n"
                f"Cookie: {COOKIE}={secret}\r\nLast-Event-ID: \u00b2.1\r\n\r\n".encode("latin-1")
            )
            answers.append(sock.recv(64))
    import time

    deadline = time.monotonic() + 3 * events.POLL + 5
    while events.open_streams() > before and time.monotonic() < deadline:
        time.sleep(0.2)
    leaked = events.open_streams() - before
    assert [a[:12] for a in answers] == [b"HTTP/1.1 200"] * 3 and leaked == 0, (answers, leaked)


def test_a_superscript_batch_in_a_dry_run_is_a_4xx(client: TestClient, admin_token: str) -> None:
    assert client.post("/api/v1/playbooks/standard", headers=auth(admin_token)).status_code == 201
    r = client.post("/api/v1/incidents", json={"title": "x"}, headers=auth(admin_token))
    incident = r.json()["id"]
    sign_in(client, admin_token)
    page = client.get(
        f"/console/incidents/{incident}",
        params={
            "playbook": "compromised-factory",
            "environment": "production",
            "params": '{"batch": "\u00b2"}',
        },
    )
    assert 400 <= page.status_code < 500, page.status_code
