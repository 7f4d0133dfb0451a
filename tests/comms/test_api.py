"""The comms API and CLI: policy versions, explain, events, commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

from fleetward.audit.models import AuditEntry
from fleetward.cli.main import app as cli
from fleetward.runtime.broker import BrokerRuntime
from fleetward.runtime.context import AppContext
from fleetward.tenancy import service as tenancy
from tests.broker import connect, make_device, synced, wait_for

POLICY = {
    "roles": {
        "sensor": {
            "devices": {"product": "thermo"},
            "publish": ["fw/{tenant}/{device}/telemetry/#"],
            "subscribe": ["fw/{tenant}/{device}/ota/#"],
            "commands": ["reboot"],
        }
    }
}


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_policy_versions_are_stored_audited_and_explained(
    client: TestClient, ctx: AppContext, admin_token: str, tmp_path: Path
) -> None:
    h = auth(admin_token)
    current = client.get("/api/v1/comms/policy", headers=h).json()
    assert current["version"] == 0 and "device" in current["document"]["roles"]
    resp = client.put("/api/v1/comms/policy", headers=h, json={"document": POLICY})
    assert resp.status_code == 201, resp.text
    assert resp.json()["version"] == 1
    text = "roles:\n  sensor:\n    publish: ['fw/{tenant}/{device}/x']\n"
    assert client.put("/api/v1/comms/policy", headers=h, json={"text": text}).json()["version"] == 2
    versions = client.get("/api/v1/comms/policy/versions", headers=h).json()["items"]
    assert [v["version"] for v in versions] == [2, 1]
    assert client.get("/api/v1/comms/policy?version=1", headers=h).json()["document"] == POLICY
    with ctx.db.read() as s:
        actions = [e.action for e in s.execute(select(AuditEntry)).scalars()]
    assert actions.count("comms.policy.set") == 2
    # Explain under the current version (2).
    make_device(ctx, tmp_path, "d1")
    check = {"device": "d1", "action": "publish", "topic": "fw/default/d1/x"}
    out = client.post("/api/v1/comms/policy/decisions", headers=h, json=check).json()
    assert out["decision"] == "allow" and out["policy_version"] == 2
    assert out["rule"] == "role sensor: allow publish fw/{tenant}/{device}/x"
    check["topic"] = "fw/default/d1/telemetry/t"
    out = client.post("/api/v1/comms/policy/decisions", headers=h, json=check).json()
    assert out["decision"] == "deny" and out["rule"] is None


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"document": {"roles": {"r": {"publish": ["fw/other/x"]}}}}, 400, "fw/{tenant}/"),
        ({"document": {"roles": {"r": {"commands": ["*"]}}}}, 400, "wildcards"),
        ({"text": "roles: ["}, 400, "YAML"),
        ({"text": "x" * (64 * 1024 + 1)}, 422, ""),
        ({}, 400, "exactly one"),
    ],
)
def test_bad_policies_are_refused_and_nothing_changes(
    client: TestClient, admin_token: str, body: dict[str, object], status: int, fragment: str
) -> None:
    h = auth(admin_token)
    resp = client.put("/api/v1/comms/policy", headers=h, json=body)
    assert resp.status_code == status, resp.text
    assert fragment in resp.text
    assert client.get("/api/v1/comms/policy", headers=h).json()["version"] == 0


def test_policy_permissions_and_tenants(
    client: TestClient, ctx: AppContext, admin_token: str, tmp_path: Path
) -> None:
    with ctx.db.session() as s:
        t = tenancy.get_tenant_by_name(s, "default")
        _, auditor = tenancy.create_token(s, tenant=t, name="a", role="auditor", actor="test")
        other = tenancy.create_tenant(s, name="other", actor="test")
        _, other_admin = tenancy.create_token(s, tenant=other, name="o", role="admin", actor="t")
    resp = client.put("/api/v1/comms/policy", headers=auth(auditor), json={"document": POLICY})
    assert resp.status_code == 403
    make_device(ctx, tmp_path, "d1")
    check = {"device": "d1", "action": "publish", "topic": "fw/default/d1/telemetry/x"}
    assert (
        client.post(
            "/api/v1/comms/policy/decisions", headers=auth(other_admin), json=check
        ).status_code
        == 404
    )
    assert (
        client.get("/api/v1/comms/events?device=d1", headers=auth(other_admin)).status_code == 404
    )
    # The other tenant's own policy is its own.
    client.put("/api/v1/comms/policy", headers=auth(other_admin), json={"document": POLICY})
    assert client.get("/api/v1/comms/policy", headers=auth(admin_token)).json()["version"] == 0


def test_explain_on_a_revoked_device(
    client: TestClient, ctx: AppContext, admin_token: str, tmp_path: Path
) -> None:
    make_device(ctx, tmp_path, "d1")
    h = auth(admin_token)
    client.post("/api/v1/devices/d1/revocation", headers=h, json={"reason": "keyCompromise"})
    check = {"device": "d1", "action": "publish", "topic": "fw/default/d1/telemetry/x"}
    out = client.post("/api/v1/comms/policy/decisions", headers=h, json=check).json()
    assert out["decision"] == "deny" and "revoked" in out["reason"]


def test_commands_without_a_broker_answer_503(
    client: TestClient, ctx: AppContext, admin_token: str, tmp_path: Path
) -> None:
    make_device(ctx, tmp_path, "d1")
    resp = client.post("/api/v1/devices/d1/commands/ping", headers=auth(admin_token), json={})
    assert resp.status_code == 503


@pytest.mark.broker
def test_commands_through_the_broker(
    client: TestClient, ctx: AppContext, admin_token: str, broker: BrokerRuntime, tmp_path: Path
) -> None:
    d1 = make_device(ctx, tmp_path, "d1")
    synced(broker)
    c = connect(broker.port, broker.files.broker_ca, d1.cert, d1.key)
    assert c.subscribe("fw/default/d1/cmd/+") == 1
    h = auth(admin_token)
    resp = client.post("/api/v1/devices/d1/commands/ping", headers=h, json={"args": {"n": 1}})
    assert resp.status_code == 202, resp.text
    wait_for(lambda: c.messages != [], what="the command")
    assert c.messages == [("fw/default/d1/cmd/ping", b'{"n": 1}')]
    refused = client.post("/api/v1/devices/d1/commands/wipe", headers=h, json={})
    assert refused.status_code == 403 and "wipe" in refused.json()["detail"]
    # Defence in depth: even fleetward's own identity cannot get it delivered.
    f = broker.files
    svc = connect(broker.service_port, f.broker_ca, f.service_cert, f.service_key)
    svc.publish("fw/default/d1/cmd/wipe", b"{}")
    wait_for(
        lambda: (
            client.get("/api/v1/devices/d1/denials", headers=h)
            .json()["counts"]
            .get("authz.denied", 0)
            >= 1
        ),
        what="the refused delivery to be counted",
    )
    events = client.get("/api/v1/comms/events?device=d1", headers=h).json()["items"]
    assert events[0]["fields"]["topic"] == "fw/default/d1/cmd/wipe"
    assert c.messages == [("fw/default/d1/cmd/ping", b'{"n": 1}')]
    svc.close()
    info = client.get("/api/v1/comms/broker").json()
    assert info["port"] == broker.port and "BEGIN CERTIFICATE" in info["ca_pem"]
    c.close()


def test_cli_policy(ctx: AppContext, tmp_path: Path) -> None:
    runner = CliRunner()
    home = ["--home", str(ctx.settings.home)]
    path = tmp_path / "policy.yaml"
    path.write_text(json.dumps(POLICY))
    result = runner.invoke(cli, [*home, "policy", "set", str(path)])
    assert result.exit_code == 0, result.output
    make_device(ctx, tmp_path, "d1")
    ok = runner.invoke(
        cli, [*home, "policy", "check", "--device", "d1", "--publish", "fw/default/d1/telemetry/x"]
    )
    assert ok.exit_code == 0 and "allow" in ok.output and "role sensor" in ok.output
    no = runner.invoke(
        cli, [*home, "policy", "check", "--device", "d1", "--receive", "fw/default/d1/cmd/wipe"]
    )
    assert no.exit_code == 1 and "deny" in no.output
    shown = runner.invoke(cli, [*home, "policy", "show"])
    assert json.loads(shown.output)["version"] == 1
