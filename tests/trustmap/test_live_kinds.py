"""One live test per drift kind: make the drift, see the finding, fix it, see it clear.

Each test runs against a fresh test installation (the ``client`` fixture:
``fleetward init`` with file keys, the root CA key on the server, unattested
keys allowed in production; about a second to set up, so no installation is
shared and no test depends on another's leftovers). It starts from a map the
installation holds (the check of the kind ran and found nothing), makes the
drift with a live change through the API, the CLI or a domain's service
face, checks that the drift names the right subject, objects and severity,
undoes the change (or, where the live state cannot be undone, adjusts the
map and says so) and checks that the drift is gone.

Three kinds cannot be made on a live installation at all, and their tests
say why and show it: ``detector-off`` (no switch turns a detector off),
``listener-trusts-other-environment`` (each broker listener's CA file is
written from its own environment's CAs only) and ``boot-stage-unmeasured``
(the release gate makes no release deployable without all three reference
measurements). For those the live facts are gathered from the installation
and the one fact changed, as a stopped detector, a stale CA file or a
release made before the gate would show it.

:data:`HOW` lists every kind with how its test makes it; a test checks that
it names every kind of :data:`fleetward.trustmap.checks.DRIFT_KINDS` and that
each has its ``test_<kind>`` (here or in ``test_live_kinds_2.py``), so a new
kind without a live test fails.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from fleetward import identity
from fleetward.cli.main import app
from fleetward.runtime.context import AppContext
from fleetward.tenancy import service as tenancy
from fleetward.trustmap import CheckResult, Drift, LiveFacts, check, load, service
from fleetward.trustmap.checks import DRIFT_KINDS
from tests.helpers import csr_pem, new_key
from tests.hsm import SoftHsm
from tests.ota.helpers import measurements
from tests.trustmap.test_live import PRODUCT, SBOM, adapted_map

ROOT_PASSPHRASE = "offline root keys of the test"

# How each kind's test makes it: "live" through the API, CLI or a service
# face; "map" by the map (the live side cannot change: the live state is
# fixed at init or built in); "facts" when no live change can make it (the
# module docstring says why).
HOW = {
    "software-keys-in-production": "live",
    "ca-key-storage": "live",
    "root-ca-online": "map",
    "tuf-root-storage": "live",
    "tuf-root-threshold": "live",
    "release-threshold": "live",
    "boot-stage-unmeasured": "facts",
    "first-wave-too-large": "live",
    "attestation-not-required": "live",
    "detector-off": "facts",
    "response-differs": "live",
    "policy-role-undeclared": "live",
    "policy-role-broader": "live",
    "listener-trusts-other-environment": "facts",
    "service-identity-undeclared": "map",
    "factory-undeclared": "live",
    "factory-environment": "live",
    "factory-token-unbound": "live",
}
# The check (checks.CHECKS) that finds each kind.
CHECK_OF = {
    "software-keys-in-production": "device-keys",
    "ca-key-storage": "ca-key-storage",
    "root-ca-online": "root-ca",
    "tuf-root-storage": "tuf-root",
    "tuf-root-threshold": "tuf-root",
    "release-threshold": "release-threshold",
    "boot-stage-unmeasured": "boot-measurements",
    "first-wave-too-large": "first-wave",
    "attestation-not-required": "update-attestation",
    "detector-off": "detectors",
    "response-differs": "detectors",
    "policy-role-undeclared": "policy-roles",
    "policy-role-broader": "policy-roles",
    "listener-trusts-other-environment": "listeners",
    "service-identity-undeclared": "service-identities",
    "factory-undeclared": "factories",
    "factory-environment": "factories",
    "factory-token-unbound": "factories",
}


# --- helpers shared with test_live_kinds_2.py --------------------------------


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def token(ctx: AppContext, role: str) -> str:
    """A new token of ``role`` in tenant ``default``."""
    with ctx.db.session() as s:
        t = tenancy.get_tenant_by_name(s, "default")
        _, secret = tenancy.create_token(s, tenant=t, name=role, role=role, actor="t")
    return secret


def tenant_id(ctx: AppContext, name: str = "default") -> int:
    with ctx.db.session() as s:
        return tenancy.get_tenant_by_name(s, name).id


def base_map() -> dict[str, Any]:
    """The example map, declaring what a fresh installation holds."""
    return adapted_map()


def facts(ctx: AppContext, product: str = PRODUCT, tenant: str = "default") -> LiveFacts:
    tid = tenant_id(ctx, tenant)  # before the session: SQLite sessions take the write lock
    with ctx.db.session() as s:
        return service.live_facts(s, tenant_id=tid, product=product, now=dt.datetime.now(dt.UTC))


def checked(ctx: AppContext, m: dict[str, Any], tenant: str = "default") -> CheckResult:
    """The map checked by the service against the live installation."""
    tid = tenant_id(ctx, tenant)
    with ctx.db.session() as s:
        return service.check_map(
            s, tenant_id=tid, map_text=json.dumps(m), now=dt.datetime.now(dt.UTC)
        )


def of_kind(result: CheckResult, kind: str) -> list[Drift]:
    assert CHECK_OF[kind] in result.checked, f"check {CHECK_OF[kind]} did not run"
    return [d for d in result.drifts if d.kind == kind]


def holds(result: CheckResult, kind: str) -> None:
    """The check of ``kind`` ran and found no drift of it."""
    assert of_kind(result, kind) == [], result.drifts


def seen(result: CheckResult, kind: str) -> Drift:
    """The one drift of ``kind``."""
    [drift] = of_kind(result, kind)
    return drift


def cli(ctx: AppContext, *args: str, input: str | None = None) -> str:
    out = CliRunner().invoke(app, ["--home", str(ctx.settings.home), *args], input=input)
    assert out.exit_code == 0, out.output
    return out.output


def release(client: TestClient, rm: str, version: str, stages: dict[str, str] | None = None) -> Any:
    """Upload a release of ``gw`` and approve it (threshold 1); the final response."""
    image = f"image {version}".encode()
    resp = client.post(
        "/api/v1/releases",
        data={"product": PRODUCT, "version": version, "hardware": "board-a",
              "measurements": json.dumps(measurements(image) if stages is None else stages)},
        files={"artifact": ("fw.bin", image, "application/octet-stream"),
               "sbom": ("sbom.json", SBOM, "application/json")},
        headers=auth(rm),
    )  # fmt: skip
    assert resp.status_code == 201, resp.text
    return client.post(f"/api/v1/releases/{resp.json()['id']}/approvals", headers=auth(rm))


def enroll(client: TestClient, admin: str, device: str, environment: str) -> None:
    resp = client.post(
        f"/api/v1/devices/{device}/certificates",
        json={"csr": csr_pem(new_key(), device).decode(), "environment": environment,
              "product": PRODUCT},
        headers=auth(admin),
    )  # fmt: skip
    assert resp.status_code == 201, resp.text


@pytest.fixture
def gw(client: TestClient, ctx: AppContext, admin_token: str) -> int:
    """Product ``gw`` (threshold 1), a deployable measured release and a test device."""
    rm = token(ctx, "release-manager")
    resp = client.post(f"/api/v1/ota/products/{PRODUCT}", json={"threshold": 1}, headers=auth(rm))
    assert resp.status_code == 201, resp.text
    approved = release(client, rm, "1.0.0")
    assert approved.status_code == 200 and approved.json()["state"] == "deployable", approved.text
    enroll(client, admin_token, "gw-test-1", "test")
    return int(approved.json()["id"])


# --- the kinds -----------------------------------------------------------------


def test_every_drift_kind_has_a_live_test() -> None:
    from tests.trustmap import test_live_kinds_2 as second

    assert set(HOW) == set(DRIFT_KINDS) == set(CHECK_OF)
    for kind in DRIFT_KINDS:
        name = "test_" + kind.replace("-", "_")
        assert callable(globals().get(name) or getattr(second, name, None)), f"no {name}"


def test_software_keys_in_production(client: TestClient, ctx: AppContext, admin_token: str) -> None:
    m = base_map()  # production certifies hardware-attested keys only
    holds(checked(ctx, m), "software-keys-in-production")
    enroll(client, admin_token, "gw-prod-1", "production")  # a software key, allowed by the tenant
    drift = seen(checked(ctx, m), "software-keys-in-production")
    assert (drift.severity, drift.subject, drift.objects, drift.control) == (
        "critical", "environment:production", ("gw-prod-1",), "hardware-device-keys",
    )  # fmt: skip
    sec = token(ctx, "security")
    resp = client.post("/api/v1/devices/gw-prod-1/revocation", json={}, headers=auth(sec))
    assert resp.status_code == 200, resp.text
    result = checked(ctx, m)
    holds(result, "software-keys-in-production")
    assert "hardware-device-keys" in result.confirmed


def _ca_of(ctx: AppContext, environment: str | None, status: str) -> tuple[int, str, str]:
    """Id, key URI and certificate (PEM, or "") of the tenant's one CA of that state."""
    tid = tenant_id(ctx)
    with ctx.db.session() as s:
        cas = identity.list_cas(s, tenant_id=tid)
        [ca] = [c for c in cas if c.environment == environment and c.status == status]
        return ca.id, ca.key_uri, ca.certificate_pem or ""


def new_issuing_ca(
    ctx: AppContext, tmp_path: Path, backend: str, environment: str = "production"
) -> str:
    """Rotate an environment's issuing CA to a new key on ``backend``, the way
    an operator does (``fleetward ca issuing-csr / sign-csr / import``), the
    root key signing on this server; returns the new key's URI. The CA it
    replaces stays trusted for an hour (its dual-trust window)."""
    csr, cert, root_pem = tmp_path / "ca.csr", tmp_path / "ca.pem", tmp_path / "root.pem"
    cli(ctx, "ca", "issuing-csr", "--env", environment, "--out", str(csr),
        "--key-backend", backend)  # fmt: skip
    pending, key_uri, _ = _ca_of(ctx, environment, "pending")
    _, root_uri, root_cert = _ca_of(ctx, None, "active")
    root_pem.write_text(root_cert)
    passphrase = ctx.settings.key_passphrase().decode()
    cli(ctx, "ca", "sign-csr", "--root-key", root_uri.removeprefix("file:"),
        "--root-cert", str(root_pem), "--csr", str(csr), "--env", environment,
        "--out", str(cert), input=passphrase + "\n")  # fmt: skip
    cli(ctx, "ca", "import", str(pending), "--cert", str(cert), "--trust-window", "1h")
    return key_uri


@pytest.mark.hsm
def test_ca_key_storage(
    ctx: AppContext, softhsm: SoftHsm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEETWARD_PKCS11_TOKEN", softhsm.token_label)
    monkeypatch.setenv("FLEETWARD_PKCS11_PIN", softhsm.pin)
    m = base_map()
    m["identity"]["environments"]["production"]["issuing_ca_key"] = "pkcs11"
    # `fleetward init` kept every CA key in a file: the map's HSM key is not live.
    drift = seen(checked(ctx, m), "ca-key-storage")
    assert (drift.severity, drift.subject, drift.objects, drift.control) == (
        "high", "environment:production", ("production",), "hsm-ca-keys",
    )  # fmt: skip
    assert "live: file" in drift.message
    # Fixed: the production CA key moved to PKCS#11 (SoftHSM2).
    assert new_issuing_ca(ctx, tmp_path, "pkcs11").startswith("pkcs11:")
    holds(checked(ctx, m), "ca-key-storage")
    # Made again live: a rotation back to a file key; then fixed once more.
    assert new_issuing_ca(ctx, tmp_path, "file").startswith("file:")
    assert seen(checked(ctx, m), "ca-key-storage").objects == ("production",)
    new_issuing_ca(ctx, tmp_path, "pkcs11")
    holds(checked(ctx, m), "ca-key-storage")


def test_root_ca_online(ctx: AppContext, tmp_path: Path) -> None:
    # A second tenant made as `fleetward init --offline-root` makes one: the
    # root key written outside the installation. The map saying offline holds.
    with ctx.db.session() as s:
        t = tenancy.create_tenant(s, name="offline-co", actor="t")
        identity.create_tenant_pki(s, ctx.pki, tenant=t, actor="t", offline_root_dir=tmp_path)
    offline = base_map()
    offline["identity"]["root_ca"] = "offline"
    result = checked(ctx, offline, tenant="offline-co")
    holds(result, "root-ca-online")
    assert "offline-root-ca" in result.confirmed
    # Tenant default's root key was made on the server (`init` without
    # --offline-root); no command takes a root offline afterwards, so the
    # drift is made and cleared by the map.
    drift = seen(checked(ctx, offline), "root-ca-online")
    assert (drift.severity, drift.subject, drift.objects, drift.control) == (
        "critical", "root-ca", ("root-ca",), "offline-root-ca",
    )  # fmt: skip
    result = checked(ctx, base_map())  # the map adjusted: online
    holds(result, "root-ca-online")
    assert "offline-root-ca" not in result.confirmed  # not declared, so not a control


def test_tuf_root_storage(
    ctx: AppContext, gw: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEETWARD_ROOT_PASSPHRASE", ROOT_PASSPHRASE)
    m = base_map()
    m["code"]["tuf_root"]["storage"] = "offline"
    here, away = tmp_path / "root-keys", tmp_path / "carried-off"
    # The root keys moved offline: written to a directory, which leaves the server.
    cli(ctx, "ota", "rotate-root", "--new-root", str(here))
    assert seen(checked(ctx, m), "tuf-root-storage")  # still on this server
    shutil.move(here, away)
    result = checked(ctx, m)
    holds(result, "tuf-root-storage")
    assert "offline-tuf-root" in result.confirmed
    # Made live: the keys brought back to sign a rotation to new online keys.
    shutil.move(away, here)
    cli(ctx, "ota", "rotate-root", "--old-root", str(here))
    shutil.rmtree(here)
    drift = seen(checked(ctx, m), "tuf-root-storage")
    assert (drift.severity, drift.subject, drift.objects, drift.control) == (
        "critical", "tuf:root", ("root",), "offline-tuf-root",
    )  # fmt: skip
    # Fixed: rotated to offline keys again, and the directory carried off.
    cli(ctx, "ota", "rotate-root", "--new-root", str(here))
    shutil.move(here, tmp_path / "carried-off-again")
    holds(checked(ctx, m), "tuf-root-storage")


def rotate(client: TestClient, admin: str, *, keys: int, threshold: int) -> None:
    body = {"keys": keys, "threshold": threshold}
    resp = client.post("/api/v1/ota/root/rotations", json=body, headers=auth(admin))
    assert resp.status_code == 200, resp.text


def test_tuf_root_threshold(client: TestClient, ctx: AppContext, admin_token: str, gw: int) -> None:
    m = base_map()  # 2 of 3, as `ota init` made it
    holds(checked(ctx, m), "tuf-root-threshold")
    rotate(client, admin_token, keys=1, threshold=1)  # one online key signs a new root
    drift = seen(checked(ctx, m), "tuf-root-threshold")
    assert (drift.severity, drift.subject, drift.objects, drift.control) == (
        "high", "tuf:root", ("root",), "offline-tuf-root",
    )  # fmt: skip
    assert "live: 1 (of 1 keys)" in drift.message
    rotate(client, admin_token, keys=3, threshold=2)
    holds(checked(ctx, m), "tuf-root-threshold")


def test_release_threshold(client: TestClient, ctx: AppContext, gw: int) -> None:
    rm = token(ctx, "release-manager")
    m = base_map() | {"product": "gw2"}
    m["code"]["targets_threshold"] = 2
    # Product gw2 has no targets role yet.
    drift = seen(checked(ctx, m), "release-threshold")
    assert (drift.severity, drift.subject, drift.objects, drift.control) == (
        "high", "product:gw2", ("gw2",), "release-threshold",
    )  # fmt: skip
    assert "no targets role" in drift.message
    resp = client.post("/api/v1/ota/products/gw2", json={"threshold": 2}, headers=auth(rm))
    assert resp.status_code == 201, resp.text
    result = checked(ctx, m)
    holds(result, "release-threshold")
    assert "release-threshold" in result.confirmed
    # Made live: gw3 delegated to a single release signer where its map wants two.
    resp = client.post("/api/v1/ota/products/gw3", json={"threshold": 1}, headers=auth(rm))
    assert resp.status_code == 201, resp.text
    m3 = m | {"product": "gw3"}
    drift = seen(checked(ctx, m3), "release-threshold")
    assert (drift.subject, drift.objects) == ("product:gw3", ("gw3",))
    assert "live: 1" in drift.message
    # A product's threshold is fixed when it is delegated (no API changes it):
    # the map is adjusted.
    m3["code"] = {**m3["code"], "targets_threshold": 1}
    holds(checked(ctx, m3), "release-threshold")


def test_boot_stage_unmeasured(client: TestClient, ctx: AppContext, gw: int) -> None:
    m = base_map()
    holds(checked(ctx, m), "boot-stage-unmeasured")
    # Cannot be made live: a release without the kernel's reference value is
    # refused by the release gate (it stays pending, whatever its approvals),
    # and the check reads the newest *deployable* release.
    stages = measurements(b"image 1.1.0")
    del stages["kernel"]
    resp = release(client, token(ctx, "release-manager"), "1.1.0", stages)
    assert resp.status_code == 200 and resp.json()["state"] == "pending", resp.text
    live = facts(ctx)
    assert live.boot_stages_measured == frozenset({"bootloader", "kernel", "application"})
    holds(check(load(json.dumps(m)), live), "boot-stage-unmeasured")
    # What a deployable release without the kernel's value (one made before
    # the gate) would show: the drift, then cleared by a measured release.
    stale = dataclasses.replace(live, boot_stages_measured=frozenset({"bootloader", "application"}))
    drift = seen(check(load(json.dumps(m)), stale), "boot-stage-unmeasured")
    assert (drift.severity, drift.subject, drift.objects, drift.control) == (
        "high", f"product:{PRODUCT}", ("kernel",), "measured-boot",
    )  # fmt: skip
    holds(check(load(json.dumps(m)), live), "boot-stage-unmeasured")


def _campaign(
    client: TestClient, rm: str, release_id: int, waves: list[float], attest: bool
) -> str:
    resp = client.post(
        "/api/v1/campaigns",
        json={"release_id": release_id, "waves": waves, "gate": {"require_attestation": attest}},
        headers=auth(rm),
    )
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


def _abort(client: TestClient, rm: str, campaign: str) -> None:
    resp = client.post(
        f"/api/v1/campaigns/{campaign}/state", json={"state": "aborted"}, headers=auth(rm)
    )
    assert resp.status_code == 200 and resp.json()["state"] == "aborted", resp.text


def test_first_wave_too_large(client: TestClient, ctx: AppContext, gw: int) -> None:
    rm, m = token(ctx, "release-manager"), base_map()  # a first wave of at most 5 %
    _campaign(client, rm, gw, [5, 100], attest=True)
    holds(checked(ctx, m), "first-wave-too-large")
    second = release(client, rm, "1.0.1").json()["id"]
    wide = _campaign(client, rm, second, [50, 100], attest=True)
    drift = seen(checked(ctx, m), "first-wave-too-large")
    assert (drift.severity, drift.subject, drift.objects, drift.control) == (
        "medium", f"product:{PRODUCT}", (f"campaign-{wide}",), "canary-waves",
    )  # fmt: skip
    _abort(client, rm, wide)  # its release withdrawn, its devices sent back
    result = checked(ctx, m)
    holds(result, "first-wave-too-large")
    assert "canary-waves" in result.confirmed


def test_attestation_not_required(client: TestClient, ctx: AppContext, gw: int) -> None:
    rm, m = token(ctx, "release-manager"), base_map()  # updates count once attested
    _campaign(client, rm, gw, [5, 100], attest=True)
    holds(checked(ctx, m), "attestation-not-required")
    second = release(client, rm, "1.0.1").json()["id"]
    lax = _campaign(client, rm, second, [5, 100], attest=False)
    drift = seen(checked(ctx, m), "attestation-not-required")
    assert (drift.severity, drift.subject, drift.objects, drift.control) == (
        "high", f"product:{PRODUCT}", (f"campaign-{lax}",), "attested-updates",
    )  # fmt: skip
    _abort(client, rm, lax)
    result = checked(ctx, m)
    holds(result, "attestation-not-required")
    assert "attested-updates" in result.confirmed
