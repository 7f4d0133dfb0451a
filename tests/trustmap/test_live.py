"""The trust map against a live installation: facts gathered, drifts made and cleared.

The installation is the test fixture's (``fleetward init``: file keys, the
root CA key on the server, unattested keys allowed in production). The map
is ``docs/trustmap.example.yaml`` adapted to what it holds, so it starts
clean; each drift is then made through the API, seen with its objects named
(by the service and by ``fleetward trustmap check``), and fixed.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from fleetward import trustmap
from fleetward.cli.common import console
from fleetward.cli.main import app
from fleetward.runtime.context import AppContext
from fleetward.tenancy import service as tenancy
from fleetward.trustmap import service
from tests.helpers import csr_pem, new_key
from tests.ota.helpers import measurements

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "trustmap.example.yaml"
PRODUCT = "gw"
DEVICE_ROLE = {
    "publish": [
        "fw/{tenant}/{device}/telemetry/#",
        "fw/{tenant}/{device}/boot/#",
        "fw/{tenant}/{device}/state/#",
        "fw/{tenant}/{device}/cmd-result/+",
    ],
    "subscribe": ["fw/{tenant}/{device}/ota/#"],
    "commands": ["ping", "renew", "attest"],
}

# A CycloneDX 1.5 SBOM of the image: the release gate wants one.
SBOM = json.dumps(
    {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "version": 1,
        "metadata": {"component": {"type": "firmware", "name": PRODUCT, "version": "1.0.0"}},
        "components": [
            {"type": "library", "bom-ref": "zlib", "name": "zlib", "version": "1.3.1",
             "purl": "pkg:generic/zlib@1.3.1"},
        ],
    }
).encode()  # fmt: skip


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def token(ctx: AppContext, role: str) -> str:
    with ctx.db.session() as s:
        t = tenancy.get_tenant_by_name(s, "default")
        _, secret = tenancy.create_token(s, tenant=t, name=role, role=role, actor="t")
    return secret


def adapted_map() -> dict[str, Any]:
    """The example map, declaring what a fresh installation holds."""
    m: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    m["product"] = PRODUCT
    m["identity"]["root_ca"] = "online"  # `fleetward init` without --offline-root
    m["identity"]["environments"]["production"]["issuing_ca_key"] = "file"
    m["code"]["tuf_root"] = {"threshold": 2, "keys": 3, "storage": "online"}
    m["code"]["targets_threshold"] = 1
    m["cloud"]["policy_roles"] = [{"name": "device", **DEVICE_ROLE}]
    m["detection"]["responses"] = {"vulnerability-exploited": "none"}
    return m


def tenant_id(ctx: AppContext) -> int:
    with ctx.db.session() as s:
        return tenancy.get_tenant_by_name(s, "default").id


def checked(ctx: AppContext, m: dict[str, Any]) -> trustmap.CheckResult:
    tid, now = tenant_id(ctx), dt.datetime.now(dt.UTC)
    with ctx.db.session() as s:
        return service.check_map(s, tenant_id=tid, map_text=json.dumps(m), now=now)


def kinds(result: trustmap.CheckResult) -> dict[str, trustmap.Drift]:
    return {d.kind: d for d in result.drifts}


@pytest.fixture
def product(client: TestClient, ctx: AppContext, admin_token: str) -> int:
    """Product ``gw`` with one approved, measured release and a test device."""
    rm = token(ctx, "release-manager")
    resp = client.post(f"/api/v1/ota/products/{PRODUCT}", json={"threshold": 1}, headers=auth(rm))
    assert resp.status_code == 201, resp.text
    image = b"image 1.0.0"
    resp = client.post(
        "/api/v1/releases",
        data={
            "product": PRODUCT,
            "version": "1.0.0",
            "hardware": "board-a",
            "measurements": json.dumps(measurements(image)),
        },
        files={
            "artifact": ("fw.bin", image, "application/octet-stream"),
            "sbom": ("sbom.json", SBOM, "application/json"),
        },
        headers=auth(rm),
    )
    assert resp.status_code == 201, resp.text
    rid = resp.json()["id"]
    approved = client.post(f"/api/v1/releases/{rid}/approvals", headers=auth(rm))
    assert approved.status_code == 200 and approved.json()["state"] == "deployable", approved.text
    enroll(client, admin_token, "gw-test-1", "test")
    return int(rid)


def enroll(client: TestClient, admin_token: str, device: str, environment: str) -> None:
    resp = client.post(
        f"/api/v1/devices/{device}/certificates",
        json={"csr": csr_pem(new_key(), device).decode(), "environment": environment,
              "product": PRODUCT},
        headers=auth(admin_token),
    )  # fmt: skip
    assert resp.status_code == 201, resp.text


def test_the_facts_of_a_fresh_installation(ctx: AppContext, product: int) -> None:
    tid, now = tenant_id(ctx), dt.datetime.now(dt.UTC)
    with ctx.db.session() as s:
        live = service.live_facts(s, tenant_id=tid, product=PRODUCT, now=now)
    assert live.device_key_origins == {("test", "software"): 1}
    assert live.software_key_devices == {"test": ("gw-test-1",)}
    assert live.ca_key_backends == {"test": "file", "production": "file", "drill": "file"}
    assert live.root_ca == "online"
    assert (live.tuf_root_threshold, live.tuf_root_keys, live.tuf_root_storage) == (2, 3, "online")
    assert live.release_thresholds == {PRODUCT: 1}
    assert live.boot_stages_measured == frozenset({"bootloader", "kernel", "application"})
    assert live.campaign_first_wave_percent == {} and live.campaign_require_attestation == {}
    assert live.detectors_enabled is not None and "authz-failures" in live.detectors_enabled
    assert live.detector_responses == {}
    assert live.policy_roles == {"device": trustmap.LiveRole(
        tuple(DEVICE_ROLE["publish"]), tuple(DEVICE_ROLE["subscribe"]),
        tuple(DEVICE_ROLE["commands"]),
    )}  # fmt: skip
    assert live.listener_trust == {e: frozenset({e}) for e in ("test", "production", "drill")}
    assert live.service_identities == frozenset({"ingest", "commands", "ota"})
    assert live.factory_environments == {}

    result = checked(ctx, adapted_map())
    assert result.drifts == ()
    assert set(result.checked) == set(trustmap.checks.CHECKS)
    assert {"least-privilege-topics", "hardware-device-keys", "measured-boot"} <= result.confirmed
    # The example as published (HSM keys, offline roots) is not what this installation holds.
    example = yaml.safe_load(EXAMPLE.read_text()) | {"product": PRODUCT}
    drifts = kinds(checked(ctx, example))
    assert {"root-ca-online", "tuf-root-storage", "ca-key-storage"} <= set(drifts)


def test_drifts_are_seen_named_and_cleared(
    client: TestClient,
    ctx: AppContext,
    admin_token: str,
    product: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    m = adapted_map()
    sec = token(ctx, "security")

    # 1. A software key enrolled in production, where the map certifies hardware keys only.
    enroll(client, admin_token, "gw-prod-1", "production")
    # 2. The live device role wider than the map's: every device's telemetry, and a command.
    wide = {**DEVICE_ROLE, "publish": ["fw/{tenant}/+/telemetry/#"], "commands": ["ping", "reboot"]}
    resp = client.put(
        "/api/v1/comms/policy", json={"document": {"roles": {"device": wide}}}, headers=auth(sec)
    )
    assert resp.status_code == 201, resp.text
    # 3. An automatic response the map does not declare.
    resp = client.put(
        "/api/v1/alerts/responses/authz-failures",
        json={"action": "quarantine-device"},
        headers=auth(admin_token),
    )
    assert resp.status_code == 200, resp.text
    # 4. A factory the map does not know.
    resp = client.post(
        "/api/v1/provisioning/factories",
        json={"name": "line-9", "environment": "test"},
        headers=auth(admin_token),
    )
    assert resp.status_code == 201, resp.text

    result = checked(ctx, m)
    found = kinds(result)
    assert set(found) == {
        "software-keys-in-production", "policy-role-broader", "response-differs",
        "factory-undeclared",
    }  # fmt: skip
    soft = found["software-keys-in-production"]
    assert (soft.severity, soft.subject, soft.objects) == (
        "critical", "environment:production", ("gw-prod-1",),
    )  # fmt: skip
    role = found["policy-role-broader"]
    assert role.subject == "role:device"
    assert role.objects == ("publish fw/{tenant}/+/telemetry/#", "command reboot")
    response = found["response-differs"]
    assert (response.subject, response.severity) == ("detector:authz-failures", "high")
    assert "quarantine-device" in response.message
    factory = found["factory-undeclared"]
    assert (factory.subject, factory.severity) == ("factory:line-9", "high")
    assert not {"hardware-device-keys", "least-privilege-topics", "command-allow-list",
                "authz-detection", "factory-batches"} & result.confirmed  # fmt: skip

    # The CLI prints the same drifts and fails on them.
    home = str(ctx.settings.home)
    path = tmp_path / "map.yaml"
    path.write_text(yaml.safe_dump(m))
    out = CliRunner().invoke(app, ["--home", home, "trustmap", "check", str(path), "--json"])
    assert out.exit_code == 1, out.output
    doc = json.loads(out.output)
    assert {d["kind"] for d in doc["drifts"]} == set(found)
    assert set(doc["confirmed"]) == set(result.confirmed)
    monkeypatch.setattr(console, "width", 400)  # one line per drift
    table = CliRunner().invoke(app, ["--home", home, "trustmap", "check", str(path)])
    assert table.exit_code == 1 and "gw-prod-1" in table.output and "line-9" in table.output
    live = CliRunner().invoke(
        app, ["--home", home, "trustmap", "threats", str(path), "--live", "--format", "json"]
    )
    assert live.exit_code == 0, live.output
    controls = json.loads(live.output)["controls"]
    assert (
        controls["measured-boot"]["confirmed"] and not controls["hardware-device-keys"]["confirmed"]
    )

    # Fixed: the device revoked, the policy and the response put back, the
    # factory declared (in the wrong environment first: a drift of its own).
    resp = client.post("/api/v1/devices/gw-prod-1/revocation", json={}, headers=auth(sec))
    assert resp.status_code == 200, resp.text
    doc_ok = {"roles": {"device": DEVICE_ROLE}}
    resp = client.put("/api/v1/comms/policy", json={"document": doc_ok}, headers=auth(sec))
    assert resp.status_code == 201, resp.text
    resp = client.put(
        "/api/v1/alerts/responses/authz-failures", json={"action": "none"},
        headers=auth(admin_token),
    )  # fmt: skip
    assert resp.status_code == 200, resp.text
    m["factories"].append({"name": "line-9", "environments": ["production"]})
    [wrong] = checked(ctx, m).drifts
    assert (wrong.kind, wrong.subject, wrong.objects) == (
        "factory-environment", "factory:line-9", ("test",),
    )  # fmt: skip
    m["factories"][-1]["environments"] = ["test"]
    result = checked(ctx, m)
    assert result.drifts == ()
    assert {"hardware-device-keys", "least-privilege-topics", "command-allow-list",
            "authz-detection", "factory-batches"} <= result.confirmed  # fmt: skip
    path.write_text(yaml.safe_dump(m))
    out = CliRunner().invoke(app, ["--home", home, "trustmap", "check", str(path)])
    assert out.exit_code == 0, out.output
    assert "0 drift(s)" in out.output


def test_a_campaign_wider_than_the_map_is_named(
    client: TestClient, ctx: AppContext, product: int
) -> None:
    rm = token(ctx, "release-manager")
    resp = client.post(
        "/api/v1/campaigns", json={"release_id": product, "waves": [50, 100]}, headers=auth(rm)
    )
    assert resp.status_code == 201, resp.text
    campaign = f"campaign-{resp.json()['id']}"
    found = kinds(checked(ctx, adapted_map()))
    assert set(found) == {"first-wave-too-large", "attestation-not-required"}
    wave, attested = found["first-wave-too-large"], found["attestation-not-required"]
    assert (wave.severity, wave.objects) == ("medium", (campaign,))
    assert (attested.severity, attested.objects) == ("high", (campaign,))
    # A map that allows half the fleet first and updates without attestation holds.
    relaxed = adapted_map()
    relaxed["updates"]["first_wave_max_percent"] = 50
    relaxed["code"]["attestation_required_for_updates"] = False
    result = checked(ctx, relaxed)
    assert result.drifts == ()
    assert {"first-wave", "update-attestation"} <= set(result.checked)
