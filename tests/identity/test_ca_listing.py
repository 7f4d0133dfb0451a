"""``GET /api/v1/cas`` shows where CA keys are kept only to admins."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from fleetward.runtime.context import AppContext
from fleetward.tenancy import service as tenancy
from fleetward.tenancy.roles import ROLES


def token_for(ctx: AppContext, role: str) -> str:
    with ctx.db.session() as s:
        tenant = tenancy.get_tenant_by_name(s, "default")
        _, token = tenancy.create_token(s, tenant=tenant, name=role, role=role, actor="test")
    return token


def cas(client: TestClient, token: str) -> list[dict[str, object]]:
    resp = client.get("/api/v1/cas", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 200, resp.text
    body: list[dict[str, object]] = resp.json()["items"]
    assert body
    return body


def test_admin_sees_key_locations(client: TestClient, admin_token: str) -> None:
    for ca in cas(client, admin_token):
        assert isinstance(ca["key_uri"], str) and ca["key_uri"]


@pytest.mark.parametrize("role", sorted(set(ROLES) - {"admin"}))
def test_other_roles_see_no_key_location(client: TestClient, ctx: AppContext, role: str) -> None:
    listed = cas(client, token_for(ctx, role))
    assert all(ca["key_uri"] is None for ca in listed)
    assert all(ca["certificate"] for ca in listed)  # the rest of the listing is unchanged


def test_openapi_says_key_uri_may_be_null(client: TestClient) -> None:
    schema = client.get("/api/v1/openapi.json").json()["components"]["schemas"]["CaOut"]
    key_uri = schema["properties"]["key_uri"]
    assert {"type": "null"} in key_uri["anyOf"]
    assert "admin" in key_uri["description"]
    assert "key_uri" not in schema.get("required", [])
