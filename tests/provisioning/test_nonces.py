"""Enrollment nonces: capped per token, and expired ones deleted.

A station (factory-operator) token once created 20,000 nonces in 2.3 s and
none was ever deleted. Now one token holds at most
``MAX_OPEN_NONCES_PER_TOKEN`` unused, unexpired nonces (409 problem past
it), other tokens are not affected, and issuing deletes the tenant's
expired nonces.
"""

from __future__ import annotations

import datetime as dt

from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from fleetward.detection import runner
from fleetward.provisioning import MAX_OPEN_NONCES_PER_TOKEN
from fleetward.provisioning.models import EnrollmentNonce
from fleetward.runtime.context import AppContext
from fleetward.store import utcnow

API = "/api/v1"
NONCES = f"{API}/provisioning/nonces"
PAGE = 1000  # the route's largest count


def _h(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _station(client: TestClient, admin: str, name: str) -> str:
    factory = client.post(
        f"{API}/provisioning/factories",
        json={"name": name, "environment": "test"},
        headers=_h(admin),
    ).json()["id"]
    token: str = client.post(
        f"{API}/provisioning/factories/{factory}/tokens", json={"name": name}, headers=_h(admin)
    ).json()["token"]
    return token


def _rows(ctx: AppContext) -> int:
    with ctx.db.read() as s:
        return int(s.execute(select(func.count()).select_from(EnrollmentNonce)).scalar_one())


def _expire_all(ctx: AppContext) -> None:
    """Move every nonce past its expiry (what five minutes of waiting does)."""
    with ctx.db.session() as s:
        s.execute(update(EnrollmentNonce).values(expires_at=utcnow() - dt.timedelta(seconds=1)))


def test_a_station_token_cannot_flood_nonces(
    client: TestClient, ctx: AppContext, admin_token: str
) -> None:
    station = _station(client, admin_token, "line-a")
    issued = refused = 0
    for _ in range(2 * MAX_OPEN_NONCES_PER_TOKEN // PAGE + 2):
        resp = client.post(NONCES, params={"count": PAGE}, headers=_h(station))
        if resp.status_code == 201:
            issued += len(resp.json()["nonces"])
            continue
        refused += 1
        assert resp.status_code == 409
        assert resp.headers["content-type"].startswith("application/problem+json")
        assert f"at most {MAX_OPEN_NONCES_PER_TOKEN}" in resp.json()["detail"]
    assert issued == MAX_OPEN_NONCES_PER_TOKEN
    assert refused > 0
    assert client.post(NONCES, headers=_h(station)).status_code == 409
    assert _rows(ctx) == MAX_OPEN_NONCES_PER_TOKEN
    # Another station's token has its own allowance.
    other = _station(client, admin_token, "line-b")
    assert client.post(NONCES, params={"count": PAGE}, headers=_h(other)).status_code == 201


def test_expired_nonces_are_deleted_and_free_the_allowance(
    client: TestClient, ctx: AppContext, admin_token: str
) -> None:
    station = _station(client, admin_token, "line-c")
    for _ in range(MAX_OPEN_NONCES_PER_TOKEN // PAGE):
        assert client.post(NONCES, params={"count": PAGE}, headers=_h(station)).status_code == 201
    assert client.post(NONCES, headers=_h(station)).status_code == 409
    _expire_all(ctx)
    resp = client.post(NONCES, params={"count": 3}, headers=_h(station))
    assert resp.status_code == 201
    assert _rows(ctx) == 3  # the expired ones are gone, not merely skipped
    with ctx.db.read() as s:
        left = s.execute(select(EnrollmentNonce.nonce)).scalars().all()
    assert sorted(left) == sorted(resp.json()["nonces"])


def test_the_periodic_prune_deletes_expired_enrollment_nonces(
    client: TestClient, ctx: AppContext, admin_token: str
) -> None:
    station = _station(client, admin_token, "line-d")
    assert client.post(NONCES, params={"count": 5}, headers=_h(station)).status_code == 201
    assert runner.prune(ctx.db) == 0  # nothing has expired yet
    _expire_all(ctx)
    assert runner.prune(ctx.db) >= 5
    assert _rows(ctx) == 0
