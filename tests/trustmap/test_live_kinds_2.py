"""One live test per drift kind, continued: detection, the cloud and the factories.

The conventions are ``test_live_kinds.py``'s (its module docstring): a map
that holds, the live change that makes the drift, the drift with its subject,
objects and severity, the fix and the drift gone; ``facts`` tests for the
kinds no live change can make, saying why.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from fastapi.testclient import TestClient

from fleetward import comms, detection, identity
from fleetward.errors import InvalidInputError
from fleetward.runtime.context import AppContext
from fleetward.trustmap import check, load
from fleetward.trustmap.schema import DETECTORS, ENVIRONMENTS
from tests.trustmap.test_live import DEVICE_ROLE, PRODUCT
from tests.trustmap.test_live_kinds import (
    auth,
    base_map,
    checked,
    facts,
    holds,
    new_issuing_ca,
    seen,
    token,
)


def test_detector_off(ctx: AppContext) -> None:
    m = base_map()
    result = checked(ctx, m)
    holds(result, "detector-off")
    assert {"authz-detection", "vulnerability-alerts"} <= result.confirmed
    # Cannot be made live: fleetward runs every detector of detection.KINDS
    # in every installation (the detection worker has no switch, no setting
    # names a detector), and a map can declare only those.
    live = facts(ctx)
    assert live.detectors_enabled == frozenset(DETECTORS) == frozenset(detection.KINDS)
    bad = base_map()
    bad["detection"]["detectors"] = [*bad["detection"]["detectors"], "made-up"]
    with pytest.raises(InvalidInputError, match="detectors"):
        load(json.dumps(bad))
    # What an installation without the cohort and flood detectors would show.
    stopped = dataclasses.replace(
        live, detectors_enabled=live.detectors_enabled - {"boot-integrity-cohort", "message-flood"}
    )
    found = {d.subject: d for d in check(load(json.dumps(m)), stopped).drifts
             if d.kind == "detector-off"}  # fmt: skip
    cohort, flood = found["detector:boot-integrity-cohort"], found["detector:message-flood"]
    assert set(found) == {"detector:boot-integrity-cohort", "detector:message-flood"}
    assert (cohort.severity, cohort.objects, cohort.control) == (
        "high", ("boot-integrity-cohort",), "boot-detection",
    )  # fmt: skip
    assert (flood.severity, flood.objects, flood.control) == ("medium", ("message-flood",), None)
    holds(check(load(json.dumps(m)), live), "detector-off")


def test_response_differs(client: TestClient, ctx: AppContext, admin_token: str) -> None:
    m = base_map()  # only vulnerability-exploited answered, with none
    holds(checked(ctx, m), "response-differs")
    for kind, action in (("authz-failures", "quarantine-device"),
                         ("message-flood", "quarantine-device")):  # fmt: skip
        resp = client.put(f"/api/v1/alerts/responses/{kind}", json={"action": action},
                          headers=auth(admin_token))  # fmt: skip
        assert resp.status_code == 200, resp.text
    result = checked(ctx, m)
    found = {d.subject: d for d in result.drifts if d.kind == "response-differs"}
    authz, flood = found["detector:authz-failures"], found["detector:message-flood"]
    assert set(found) == {"detector:authz-failures", "detector:message-flood"}
    assert (authz.severity, authz.objects, authz.control) == (
        "high", ("authz-failures",), "authz-detection",
    )  # fmt: skip
    assert "quarantine-device" in authz.message
    assert (flood.severity, flood.control) == ("medium", None)
    assert "authz-detection" not in result.confirmed
    for kind in ("authz-failures", "message-flood"):
        resp = client.put(f"/api/v1/alerts/responses/{kind}", json={"action": "none"},
                          headers=auth(admin_token))  # fmt: skip
        assert resp.status_code == 200, resp.text
    result = checked(ctx, m)
    holds(result, "response-differs")
    assert "authz-detection" in result.confirmed


def _policy(client: TestClient, sec: str, roles: dict[str, object]) -> None:
    resp = client.put(
        "/api/v1/comms/policy", json={"document": {"roles": roles}}, headers=auth(sec)
    )
    assert resp.status_code == 201, resp.text


def test_policy_role_undeclared(client: TestClient, ctx: AppContext) -> None:
    m, sec = base_map(), token(ctx, "security")
    # A role selecting another product never reaches this product's devices.
    other = {"devices": {"product": "other"}, "publish": ["fw/{tenant}/{device}/x/#"]}
    _policy(client, sec, {"device": DEVICE_ROLE, "other-product": other})
    holds(checked(ctx, m), "policy-role-undeclared")
    sensor = {"devices": {"product": PRODUCT}, "publish": ["fw/{tenant}/{device}/sensor/#"]}
    _policy(client, sec, {"device": DEVICE_ROLE, "other-product": other, "sensor": sensor})
    result = checked(ctx, m)
    drift = seen(result, "policy-role-undeclared")
    assert (drift.severity, drift.subject, drift.objects, drift.control) == (
        "high", "role:sensor", ("sensor",), "least-privilege-topics",
    )  # fmt: skip
    assert not {"least-privilege-topics", "command-allow-list"} & result.confirmed
    _policy(client, sec, {"device": DEVICE_ROLE})
    result = checked(ctx, m)
    holds(result, "policy-role-undeclared")
    assert {"least-privilege-topics", "command-allow-list"} <= result.confirmed


def test_policy_role_broader(client: TestClient, ctx: AppContext) -> None:
    m, sec = base_map(), token(ctx, "security")
    # Narrower than the map: holds.
    _policy(client, sec, {"device": {**DEVICE_ROLE, "commands": ["ping"]}})
    holds(checked(ctx, m), "policy-role-broader")
    # Another device's OTA topics (a literal device id) and an extra command.
    wide = {**DEVICE_ROLE, "subscribe": ["fw/{tenant}/gw-test-1/ota/#"],
            "commands": ["ping", "reboot"]}  # fmt: skip
    _policy(client, sec, {"device": wide})
    drift = seen(checked(ctx, m), "policy-role-broader")
    assert (drift.severity, drift.subject, drift.control) == (
        "high", "role:device", "least-privilege-topics",
    )  # fmt: skip
    assert drift.objects == ("subscribe fw/{tenant}/gw-test-1/ota/#", "command reboot")
    _policy(client, sec, {"device": DEVICE_ROLE})
    holds(checked(ctx, m), "policy-role-broader")


def _anchor_environments(ctx: AppContext, environment: str) -> list[str]:
    """The environment of each issuing CA in a listener's rendered anchors
    (``identity.trust_anchors``: what the broker sync writes to its CA file)."""
    with ctx.db.session() as s:
        pem = identity.trust_anchors(s, environment=environment)
    found = []
    for body in re.findall(rb"-----BEGIN TRUSTED CERTIFICATE-----(.*?)-----END", pem, re.S):
        der = base64.b64decode(b"".join(body.split()))
        # A TRUSTED CERTIFICATE is the certificate's DER followed by its trust
        # settings: cut at the end of the certificate's outer SEQUENCE.
        n = der[1] & 0x7F
        size = 2 + n + int.from_bytes(der[2 : 2 + n]) if der[1] & 0x80 else 2 + der[1]
        cert = x509.load_der_x509_certificate(der[:size])
        [cn] = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        found += [e for e in ENVIRONMENTS if f" {e} issuing CA" in str(cn.value)]
    return sorted(found)


def test_listener_trusts_other_environment(
    client: TestClient, ctx: AppContext, tmp_path: Path
) -> None:
    m = base_map()
    result = checked(ctx, m)
    holds(result, "listener-trusts-other-environment")
    assert "listener-per-environment" in result.confirmed
    # Cannot be made live: the broker sync writes each environment's
    # listener CA file from that environment's issuing CAs only (active, and
    # retired ones in their dual-trust window). The closest live change, a
    # rotation of the test CA (two test CAs trusted for an hour), stays in
    # the test listener.
    new_issuing_ca(ctx, tmp_path, "file", environment="test")
    live = facts(ctx)
    assert live.listener_trust == {e: frozenset({e}) for e in ENVIRONMENTS}
    assert {e: _anchor_environments(ctx, e) for e in ENVIRONMENTS} == {
        "test": ["test", "test"], "production": ["production"], "drill": ["drill"],
    }  # fmt: skip
    holds(check(load(json.dumps(m)), live), "listener-trusts-other-environment")
    # A map cannot declare it either.
    bad = base_map()
    bad["cloud"]["listeners"]["production"]["trusts"] = ["production", "test"]
    with pytest.raises(InvalidInputError, match="own environment only"):
        load(json.dumps(bad))
    # What a production CA file holding the test CAs (stale or edited) would show.
    stale = dataclasses.replace(
        live, listener_trust={**live.listener_trust, "production": frozenset(ENVIRONMENTS[:2])}
    )
    drift = seen(check(load(json.dumps(m)), stale), "listener-trusts-other-environment")
    assert (drift.severity, drift.subject, drift.objects, drift.control) == (
        "critical", "listener:production", ("test",), "listener-per-environment",
    )  # fmt: skip
    holds(check(load(json.dumps(m)), live), "listener-trusts-other-environment")


def test_service_identity_undeclared(ctx: AppContext) -> None:
    m = base_map()  # ingest, commands, ota
    holds(checked(ctx, m), "service-identity-undeclared")
    # fleetward's own broker identities are fixed in code (comms.SERVICE_JOBS,
    # one per job): no live change adds one, so the map leaves one out.
    assert facts(ctx).service_identities == frozenset(comms.SERVICE_JOBS)
    m["cloud"]["service_identities"] = ["ingest", "ota"]
    drift = seen(checked(ctx, m), "service-identity-undeclared")
    assert (drift.severity, drift.subject, drift.objects, drift.control) == (
        "high", "service-identity:commands", ("commands",), None,
    )  # fmt: skip
    m["cloud"]["service_identities"] = sorted(comms.SERVICE_JOBS)
    holds(checked(ctx, m), "service-identity-undeclared")


def _factory(client: TestClient, admin: str, name: str, environment: str) -> int:
    resp = client.post(
        "/api/v1/provisioning/factories",
        json={"name": name, "environment": environment},
        headers=auth(admin),
    )
    assert resp.status_code == 201, resp.text
    return int(resp.json()["id"])


def test_factory_undeclared(client: TestClient, ctx: AppContext, admin_token: str) -> None:
    m = base_map()  # line-1, production
    holds(checked(ctx, m), "factory-undeclared")
    line9 = _factory(client, admin_token, "line-9", "test")
    resp = client.post(
        "/api/v1/provisioning/batches",
        json={"factory_id": line9, "product": PRODUCT, "expires_in_hours": 1,
              "device_ids": ["gw-9-1", "gw-9-2"]},
        headers=auth(admin_token),
    )  # fmt: skip
    assert resp.status_code == 201, resp.text
    drift = seen(checked(ctx, m), "factory-undeclared")
    assert (drift.severity, drift.subject, drift.objects, drift.control) == (
        "critical", "factory:line-9", ("line-9",), "factory-batches",
    )  # fmt: skip
    assert "1 open batch" in drift.message
    # The batch closed: still undeclared, no longer able to enroll.
    resp = client.post(f"/api/v1/provisioning/batches/{resp.json()['id']}/status",
                       json={"status": "closed"}, headers=auth(admin_token))  # fmt: skip
    assert resp.status_code == 200, resp.text
    assert seen(checked(ctx, m), "factory-undeclared").severity == "high"
    # No route deletes a factory: the map declares it.
    m["factories"].append({"name": "line-9", "environments": ["test"]})
    result = checked(ctx, m)
    holds(result, "factory-undeclared")
    assert "factory-batches" in result.confirmed


def test_factory_environment(client: TestClient, ctx: AppContext, admin_token: str) -> None:
    m = base_map()  # line-1 provisions production; no line-1 exists yet
    holds(checked(ctx, m), "factory-environment")
    _factory(client, admin_token, "line-1", "test")
    drift = seen(checked(ctx, m), "factory-environment")
    assert (drift.severity, drift.subject, drift.objects, drift.control) == (
        "high", "factory:line-1", ("test",), "factory-batches",
    )  # fmt: skip
    # A factory works in the environment it was made in (no route moves or
    # deletes one): the map is adjusted.
    m["factories"][0]["environments"] = ["test"]
    holds(checked(ctx, m), "factory-environment")


def _token(client: TestClient, admin: str, environment: str) -> str:
    resp = client.post(
        "/api/v1/tokens",
        json={"name": f"line-{environment}", "role": "factory-operator",
              "environment": environment},
        headers=auth(admin),
    )  # fmt: skip
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


def test_factory_token_unbound(client: TestClient, ctx: AppContext, admin_token: str) -> None:
    m = base_map()  # line-1, production, batches only
    line1 = _factory(client, admin_token, "line-1", "production")
    resp = client.post(f"/api/v1/provisioning/factories/{line1}/tokens",
                       json={"name": "line-1 station"}, headers=auth(admin_token))  # fmt: skip
    assert resp.status_code == 201, resp.text
    _token(client, admin_token, "test")  # unbound, but it cannot enroll in production
    holds(checked(ctx, m), "factory-token-unbound")
    loose = _token(client, admin_token, "production")
    result = checked(ctx, m)
    drift = seen(result, "factory-token-unbound")
    assert (drift.severity, drift.subject, drift.objects, drift.control) == (
        "critical", "factory:line-1", (loose,), "factory-batches",
    )  # fmt: skip
    assert "factory-batches" not in result.confirmed
    resp = client.delete(f"/api/v1/tokens/{loose}", headers=auth(admin_token))
    assert resp.status_code == 204, resp.text
    result = checked(ctx, m)
    holds(result, "factory-token-unbound")
    assert "factory-batches" in result.confirmed
