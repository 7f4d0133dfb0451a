"""Closing a retired CA's window early: ``POST /api/v1/cas/{id}/distrust``
and ``fleetward ca distrust``, tried by every caller who should not."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from fleetward.cli.main import app
from fleetward.errors import ConflictError
from fleetward.identity import ca_service
from fleetward.runtime.context import AppContext
from fleetward.tenancy import service as tenancy
from tests.identity.test_api import assert_problem, auth
from tests.identity.test_ca_rotation import HOUR, rotate, trusted
from tests.response.helpers import enroll, renew


def token(ctx: AppContext, role: str, env: str | None = None, tenant: str = "default") -> str:
    with ctx.db.session() as s:
        t = tenancy.get_tenant_by_name(s, tenant)
        _, secret = tenancy.create_token(
            s, tenant=t, name=f"{role}-{env}", role=role, environment=env, actor="test"
        )
    return secret


def test_the_distrust_route_refuses_every_caller_that_may_not(
    client: TestClient, ctx: AppContext, admin_token: str
) -> None:
    key = enroll(ctx, ["d-0", "d-1"], env="production")
    old, new = rotate(ctx, "production", window=HOUR)
    with ctx.db.session() as s:
        other = tenancy.create_tenant(s, name="other", actor="test")
        ca_service.create_tenant_pki(s, ctx.pki, tenant=other, actor="test")
        other_old = ca_service.active_issuing_ca(s, tenant_id=other.id, environment="test").id
    other_admin = token(ctx, "admin", tenant="other")

    def post(ca: object, who: str | None, body: object = None) -> object:
        headers = auth(who) if who else {}
        return client.post(f"/api/v1/cas/{ca}/distrust", json=body or {}, headers=headers)

    resp = post(old, None)
    assert resp.status_code == 401  # type: ignore[attr-defined]
    assert_problem(post(old, "fwt_not-a-token"), 401, "")
    for role in ("security", "auditor", "release-manager", "factory-operator"):
        assert_problem(post(old, token(ctx, role)), 403, "role")
    assert_problem(post(old, token(ctx, "admin", "test")), 403, "scoped to the test")
    assert_problem(post(other_old, admin_token), 404, "not found")
    assert_problem(post(old, other_admin), 404, "not found")
    assert_problem(post(new, admin_token), 409, "active production issuing CA")
    assert_problem(post(1, admin_token), 409, "root")
    assert_problem(post(999_999, admin_token), 404, "not found")
    for hostile in (0, -1, 2**31, 2**63, 10**40, "abc", "1e3", "%00"):
        resp = post(hostile, admin_token)
        assert 400 <= resp.status_code < 500, (hostile, resp.text)  # type: ignore[attr-defined]
    hostile_bodies: list[object] = [{"force": "maybe"}, {"force": [1]}, []]
    for body in hostile_bodies:
        resp = client.post(f"/api/v1/cas/{old}/distrust", json=body, headers=auth(admin_token))
        assert resp.status_code == 422, (body, resp.text)
    assert_problem(post(old, admin_token), 409, "2 device(s) still depend")
    assert trusted(ctx, "production", old)

    renew(ctx, key, "d-0")
    resp = post(old, admin_token, {"force": True})
    assert resp.status_code == 200, resp.text  # type: ignore[attr-defined]
    body = resp.json()  # type: ignore[attr-defined]
    assert body["ca_id"] == old and body["revoked"] == 2 and "forced" in body["why"]
    assert not trusted(ctx, "production", old)
    assert_problem(post(old, admin_token, {"force": True}), 409, "already distrusted")
    listed = {
        c["id"]: c for c in client.get("/api/v1/cas", headers=auth(admin_token)).json()["items"]
    }
    assert listed[old]["status"] == "distrusted" and listed[old]["distrusted_at"]
    assert listed[old]["trusted_until"] and listed[old]["retirement_reason"] == "superseded"
    assert listed[new]["status"] == "active" and listed[new]["trusted_until"] is None


def cli(ctx: AppContext, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(
        app, ["--home", str(ctx.settings.home), *args], catch_exceptions=True
    )
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def test_fleetward_ca_list_and_distrust(ctx: AppContext, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETWARD_DATABASE_URL", ctx.settings.database_url)
    key = enroll(ctx, ["c-0", "c-1"])
    old, _ = rotate(ctx, window=HOUR, when_migrated=True)
    code, out = cli(ctx, "ca", "list")
    assert code == 0 and "retired" in out and "migrated" in out, out
    code, out = cli(ctx, "ca", "list", "--json")
    [row] = [c for c in json.loads(out) if c["id"] == old]
    assert row["status"] == "retired" and row["trusted_until"], row
    code, out = cli(ctx, "ca", "dependents", str(old))
    assert code == 0 and "2 device(s) depend" in out and "c-1" in out, out
    with pytest.raises(ConflictError, match="2 device"):
        cli(ctx, "ca", "distrust", str(old))
    renew(ctx, key, "c-0")
    code, out = cli(ctx, "ca", "distrust", str(old), "--force")
    assert code == 0 and "distrusted" in out and "re-provision" in out, out
    code, out = cli(ctx, "ca", "list", "--json")
    [row] = [c for c in json.loads(out) if c["id"] == old]
    assert row["status"] == "distrusted" and row["distrusted_at"], row
    code, out = cli(ctx, "ca", "import", "99", "--cert", "/dev/null", "--trust-window", "7 weeks")
    assert code != 0 and "not a duration" in out, out
