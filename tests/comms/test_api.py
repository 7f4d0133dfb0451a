"""The comms API and CLI: policy versions, explain, events, commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner, Result

from fleetward.audit.models import AuditEntry
from fleetward.cli.main import app as cli
from fleetward.errors import InvalidInputError, NotFoundError
from fleetward.runtime.broker import BrokerRuntime
from fleetward.runtime.context import AppContext
from fleetward.tenancy import service as tenancy
from tests.broker import connect, make_device, service_connect, synced, wait_for

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


def test_explain_follows_environment_selectors(
    client: TestClient, ctx: AppContext, admin_token: str, tmp_path: Path
) -> None:
    h = auth(admin_token)
    policy = {
        "roles": {
            "prod": {
                "devices": {"environment": "production"},
                "publish": ["fw/{tenant}/{device}/telemetry/#"],
            }
        }
    }
    assert client.put("/api/v1/comms/policy", headers=h, json={"document": policy}).is_success
    make_device(ctx, tmp_path, "lab-1")  # lives in test
    check = {"device": "lab-1", "action": "publish", "topic": "fw/default/lab-1/telemetry/x"}
    url = "/api/v1/comms/policy/decisions"
    assert client.post(url, headers=h, json=check).json()["decision"] == "deny"
    asked = client.post(url, headers=h, json={**check, "environment": "production"}).json()
    assert asked["decision"] == "allow" and asked["rule"].startswith("role prod")
    for bad in ("staging", "", 7, "production\n"):
        resp = client.post(url, headers=h, json={**check, "environment": bad})
        assert resp.status_code == 422, resp.text
        assert resp.headers["content-type"].startswith("application/problem+json")
    bad_doc = {"roles": {"r": {"devices": {"environment": ["production"]}}}}
    resp = client.put("/api/v1/comms/policy", headers=h, json={"document": bad_doc})
    assert resp.status_code in (400, 422) and "environment" in resp.text
    assert client.post(url, json=check).status_code == 401


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
    svc = service_connect(broker, "commands")
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
    assert info["listeners"] == {
        env: {"host": "127.0.0.1", "port": port} for env, port in broker.ports.items()
    }
    assert info["port"] == broker.ports["production"] and info["host"] == "127.0.0.1"
    # The CA of the broker's certificate: fleetward's service CA.
    assert info["ca_pem"] == ctx.service_pki.ca_pem.decode()
    c.close()


def test_discovery_without_a_broker_here_names_the_settings(
    client: TestClient, ctx: AppContext
) -> None:
    """``serve`` on a host without the broker still tells devices where to go."""
    info = client.get("/api/v1/comms/broker")
    assert info.status_code == 200, info.text
    body = info.json()
    s = ctx.settings
    assert body["listeners"]["production"] == {"host": s.mqtt_host, "port": s.mqtt_production_port}
    assert body["listeners"]["test"]["port"] == s.mqtt_test_port
    assert body["listeners"]["drill"]["port"] == s.mqtt_drill_port
    assert "BEGIN CERTIFICATE" in body["ca_pem"]
    # Nothing to send: no body, no parameters; other methods are refused.
    assert client.post("/api/v1/comms/broker", json={}).status_code == 405
    hostile = client.get("/api/v1/comms/broker?listeners=%00" + "x" * 5000)
    assert hostile.status_code == 200 and hostile.json() == body


def test_cli_policy_explains_service_identities(ctx: AppContext) -> None:
    runner = CliRunner()
    home = ["--home", str(ctx.settings.home)]

    def check(*args: str) -> Result:
        return runner.invoke(cli, [*home, "policy", "check", *args])

    ok = check("--service", "commands", "--publish", "fw/default/d1/cmd/ping")
    assert ok.exit_code == 0, ok.output
    assert "allow" in ok.output and "fleetward-commands" in ok.output
    assert "service:commands: allow publish fw/+/+/cmd/+" in ok.output
    no = check("--service", "commands", "--subscribe", "fw/#")
    assert no.exit_code == 1 and "deny" in no.output and "not the job" in no.output
    assert check("--service", "ingest", "--subscribe", "$share/g/fw/+/+/telemetry/#").exit_code == 0
    assert check("--service", "ingest", "--publish", "fw/default/d1/telemetry/x").exit_code == 1
    assert check("--service", "ota", "--receive", "fw/default/d1/state/ota").exit_code == 0
    assert check("--service", "ota", "--publish", "fw/default/d1/cmd/wipe").exit_code == 1
    # Bad input is a domain error (the CLI's entry point prints one line of it).
    unknown = check("--service", "root", "--publish", "fw/x")
    assert isinstance(unknown.exception, NotFoundError)
    assert "no service identity" in str(unknown.exception)
    both = check("--service", "ota", "--device", "d1", "--publish", "fw/x")
    assert isinstance(both.exception, InvalidInputError)
    assert "exactly one of --device or --service" in str(both.exception)
    bad = check("--service", "ota", "--publish", "fw/+/x")
    assert isinstance(bad.exception, InvalidInputError) and "wildcards" in str(bad.exception)


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
