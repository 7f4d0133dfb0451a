"""Floods of bad credentials cost little: rate limited (429 with
Retry-After), audited as counts, and refused before the body is read
(``fleetward.api.gate``, ``fleetward.api.ratelimit``,
``fleetward.runtime.refusals``)."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from fleetward import audit
from fleetward.api.app import create_app
from fleetward.api.ratelimit import FailureLimiter, Key
from fleetward.audit.models import AuditEntry
from fleetward.errors import TooManyRequestsError
from fleetward.runtime.context import AppContext
from fleetward.runtime.refusals import RefusalKey, RefusalTally
from fleetward.runtime.stack import Stack
from tests.conftest import DeviceTestClient

UNKNOWN_TOKEN = "fw_0123456789abcdef_" + "x" * 43
# The flood: 10,000 requests on SQLite; a quarter on the PostgreSQL run (the
# limiter and the refusal windows are the same code; 20 s of CI there).
FLOOD = 2_500 if os.environ.get("FLEETWARD_TEST_PG_URL") else 10_000
LIMIT = 20  # the default auth_failures_per_source and auth_failures_per_identity


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def _entries(ctx: AppContext) -> int:
    with ctx.db.read() as s:
        return int(s.scalar(select(func.count()).select_from(AuditEntry)) or 0)


def _refused(ctx: AppContext, *actions: str) -> list[dict[str, Any]]:
    with ctx.db.read() as s:
        rows = s.execute(
            select(AuditEntry.action, AuditEntry.subject, AuditEntry.details)
            .where(AuditEntry.outcome == "refused", AuditEntry.action.in_(actions))
            .order_by(AuditEntry.seq)
        ).all()
    return [{"action": a, "subject": sub, **json.loads(d or "{}")} for a, sub, d in rows]


def _chain_verifies(ctx: AppContext) -> int:
    with ctx.db.read() as s:
        return audit.verify(s, public_key=ctx.checkpoint_public_key()).entries


def _assert_429(resp: Any) -> None:
    assert resp.status_code == 429, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    assert resp.json()["type"] == "urn:fleetward:problem:too-many-requests"
    assert 1 <= int(resp.headers["Retry-After"]) <= 60


# ------------------------------------------------------------------ floods


@pytest.mark.slow
def test_ten_thousand_unauthenticated_requests_leave_a_handful_of_audit_entries(
    client: TestClient, device_client: DeviceTestClient, ctx: AppContext
) -> None:
    before = _entries(ctx)
    est = "/.well-known/est/simpleenroll"
    requests = [
        lambda: client.get("/api/v1/devices"),
        lambda: client.get("/api/v1/devices", headers=_bearer(UNKNOWN_TOKEN)),
        lambda: client.post("/api/v1/tokens", json={}, headers=_bearer("garbage")),
        lambda: device_client.post(est, content=b"AAAA", headers=_basic("x", UNKNOWN_TOKEN)),
        lambda: device_client.post("/api/v1/renew", json={"csr": "x"}),
    ]
    statuses: dict[int, int] = {}
    audited = 0  # refusals of operator credentials (device certificates are not audited)
    for i in range(FLOOD):
        kind = i % len(requests)
        status = requests[kind]().status_code
        statuses[status] = statuses.get(status, 0) + 1
        audited += kind != 4
    assert set(statuses) == {401, 429}, statuses
    assert statuses[429] > FLOOD - 100, statuses  # 20 failures per source and plane, then 429
    assert _entries(ctx) - before <= 6
    # The counts come out when the windows end (here: shutdown's flush).
    ctx.flush_refusals(everything=True)
    assert _entries(ctx) - before <= 12
    rows = _refused(ctx, "auth.token", "auth.limited")
    assert sum(r["count"] for r in rows) == audited
    assert {r["subject"] for r in rows} == {"source:testclient"}
    assert _chain_verifies(ctx) == _entries(ctx)


def test_a_limited_source_gets_429_and_another_source_with_a_good_token_does_not(
    client: TestClient, ctx: AppContext, admin_token: str
) -> None:
    for _ in range(LIMIT):
        assert client.get("/api/v1/devices", headers=_bearer("bad")).status_code == 401
    _assert_429(client.get("/api/v1/devices", headers=_bearer("bad")))
    # Limited: refused before the token is looked at, a good one too.
    _assert_429(client.get("/api/v1/devices", headers=_bearer(admin_token)))
    elsewhere = TestClient(client.app, client=("192.0.2.7", 40000))
    assert elsewhere.get("/api/v1/devices", headers=_bearer(admin_token)).status_code == 200
    assert elsewhere.get("/api/v1/devices").status_code == 401  # its own count starts at 1


def test_successful_authentication_does_not_count(client: TestClient, admin_token: str) -> None:
    for _ in range(3 * LIMIT):
        assert client.get("/api/v1/devices", headers=_bearer(admin_token)).status_code == 200
    for _ in range(LIMIT):
        assert client.get("/api/v1/devices").status_code == 401
    _assert_429(client.get("/api/v1/devices"))


def test_a_token_id_guessed_from_many_sources_is_limited(client: TestClient) -> None:
    for n in range(LIMIT):
        c = TestClient(client.app, client=(f"192.0.2.{n + 1}", 40000))
        assert c.get("/api/v1/devices", headers=_bearer(UNKNOWN_TOKEN)).status_code == 401
    fresh = TestClient(client.app, client=("198.51.100.1", 40000))
    _assert_429(fresh.get("/api/v1/devices", headers=_bearer(UNKNOWN_TOKEN)))
    assert fresh.get("/api/v1/devices").status_code == 401  # other identities are not


def test_a_limited_token_id_does_not_lock_its_holder_out(
    client: TestClient, admin_token: str
) -> None:
    """Token ids are not secret (audit entries name them): failures against
    one from many sources turn into 429s, but the real token still works."""
    token_id = admin_token.split("_", 2)[1]
    forged = f"fw_{token_id}_" + "x" * 43
    for n in range(LIMIT):
        c = TestClient(client.app, client=(f"192.0.2.{n + 1}", 40000))
        assert c.get("/api/v1/devices", headers=_bearer(forged)).status_code == 401
    fresh = TestClient(client.app, client=("198.51.100.2", 40000))
    _assert_429(fresh.get("/api/v1/devices", headers=_bearer(forged)))
    assert fresh.get("/api/v1/devices", headers=_bearer(admin_token)).status_code == 200


def test_est_basic_brute_force_meets_429(device_client: DeviceTestClient, ctx: AppContext) -> None:
    before = _entries(ctx)
    path = "/.well-known/est/simpleenroll"
    for n in range(LIMIT):
        resp = device_client.post(path, content=b"AAAA", headers=_basic("op", f"guess-{n}"))
        assert resp.status_code == 401, resp.text
    _assert_429(device_client.post(path, content=b"AAAA", headers=_basic("op", "guess-x")))
    assert _entries(ctx) - before == 1  # the first refusal; the rest are counted


def test_the_device_plane_limits_certificate_failures(device_client: DeviceTestClient) -> None:
    for _ in range(LIMIT):
        assert device_client.post("/api/v1/renew", json={"csr": "x"}).status_code == 401
    _assert_429(device_client.post("/api/v1/renew", json={"csr": "x"}))
    _assert_429(device_client.post("/api/v1/attestation/default/d/nonce"))
    # Public routes of the plane are not limited.
    assert device_client.get("/healthz").status_code == 200


# ------------------------------------------------------- before the body


@pytest.mark.parametrize(
    ("path", "method"),
    [("/api/v1/devices", "POST"), ("/api/v1/tokens", "POST"), ("/api/v1/telemetry/events", "POST")],
)
def test_an_anonymous_body_is_not_parsed_on_the_operator_plane(
    client: TestClient, path: str, method: str
) -> None:
    json_type = {"content-type": "application/json"}
    resp = client.request(method, path, content=b"{not json", headers=json_type)
    assert resp.status_code == 401, resp.text  # not 422: the body was never parsed
    bad = client.request(method, path, content=b"{not json", headers={**json_type, **_bearer("x")})
    assert bad.status_code == 401, bad.text


@pytest.mark.parametrize(
    "path",
    ["/api/v1/renew", "/api/v1/device/telemetry", "/api/v1/attestation/default/d-1/evidence"],
)
def test_an_anonymous_body_is_not_parsed_on_the_device_plane(
    device_client: DeviceTestClient, path: str
) -> None:
    resp = device_client.post(path, content=b"{", headers={"content-type": "application/json"})
    assert resp.status_code == 401, resp.text
    assert resp.json()["type"].endswith("client-certificate-required")


def test_public_routes_pass_the_gate(client: TestClient) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.get("/api/v1/openapi.json").status_code == 200
    assert client.get("/api/v1/nowhere").status_code == 404  # unknown: no token asked for
    assert client.put("/api/v1/devices").status_code in (401, 405)


# ------------------------------------------------------------ the records


def test_refusals_are_audited_as_counts_per_source_and_reason(
    client: TestClient, ctx: AppContext
) -> None:
    before = _entries(ctx)
    for _ in range(7):
        assert client.get("/api/v1/devices").status_code == 401
    [first] = _refused(ctx, "auth.token")
    assert first["count"] == 1 and first["source"] == "testclient"
    assert first["path"] == "/api/v1/devices" and "required" in first["reason"]
    assert ctx.flush_refusals() == 0  # the window is still open
    assert ctx.flush_refusals(everything=True) == 1
    rows = _refused(ctx, "auth.token")
    assert [r["count"] for r in rows] == [1, 6]
    assert rows[1]["window_start"] and rows[1]["window_end"]
    assert _entries(ctx) - before == 2
    assert _chain_verifies(ctx) == _entries(ctx)


def test_the_counts_are_written_at_shutdown(ctx: AppContext) -> None:
    app = create_app(ctx, runtime=Stack())
    with TestClient(app) as c:
        for _ in range(5):
            c.get("/api/v1/devices")
    assert sum(r["count"] for r in _refused(ctx, "auth.token")) == 5


def test_a_window_that_ended_is_written_by_the_next_refusal(ctx: AppContext) -> None:
    key = RefusalKey(kind="audit", action="auth.token", actor="anonymous", subject="s", reason="r")
    t0 = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC)
    for i in range(4):
        ctx.record_refusal(key, reason="r", now=t0 + dt.timedelta(seconds=i))
    assert [r["count"] for r in _refused(ctx, "auth.token")] == [1]
    ctx.record_refusal(key, reason="r", now=t0 + dt.timedelta(seconds=61))
    rows = _refused(ctx, "auth.token")
    assert [r["count"] for r in rows] == [1, 3, 1]  # the next window's first, at once
    assert rows[1]["window_start"] == t0.isoformat()


# ------------------------------------------------------------- pure parts


def test_tally_writes_the_first_counts_the_rest_and_flushes_once() -> None:
    tally = RefusalTally(window=60)
    key = RefusalKey(kind="audit", action="a", actor="x", subject="s", reason="r")
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    assert tally.note(key, now=t0) is True
    assert not any(tally.note(key, now=t0 + dt.timedelta(seconds=i)) for i in range(1, 50))
    assert tally.due(t0 + dt.timedelta(seconds=59)) == []
    [flush] = tally.due(t0 + dt.timedelta(seconds=60))
    assert (flush.count, flush.window_start) == (49, t0)
    assert tally.due(t0 + dt.timedelta(seconds=200)) == [] and len(tally) == 0
    # Count-only refusals (429s) are never written one by one.
    assert tally.note(key, now=t0, count_only=True) is False
    assert [f.count for f in tally.drain(t0)] == [1]


def test_tally_memory_is_bounded_and_nothing_goes_uncounted() -> None:
    tally = RefusalTally(window=60, max_keys=10)
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    written = sum(
        tally.note(RefusalKey("audit", "a", f"src-{i}", "s", "r"), now=t0) for i in range(1000)
    )
    assert len(tally) <= 11 and written == 11
    flushes = tally.drain(t0)
    assert [(f.key.actor, f.count) for f in flushes] == [("overflow", 989)]


def test_limiter_windows_limits_and_bounded_memory() -> None:
    limiter = FailureLimiter(per_source=3, per_identity=5, window=10, max_keys=100)
    src, tok = Key.source("10.0.0.1"), Key.identity("token", "abc")
    for _ in range(3):
        limiter.check([src, tok], now=0)
        limiter.failed([src, tok], now=0)
    with pytest.raises(TooManyRequestsError) as info:
        limiter.check([src], now=4)
    assert info.value.retry_after == 6
    limiter.check([tok], now=4)  # the identity's limit is higher
    limiter.check([src], now=10)  # a new window
    for i in range(1000):
        limiter.failed([Key.source(f"10.1.{i // 250}.{i % 250}")], now=20)
    assert len(limiter) == 100
