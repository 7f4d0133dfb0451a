"""Checks of the example trust map against live facts: one drift per changed fact."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from fleetward.comms.policy import Template
from fleetward.errors import InvalidInputError
from fleetward.trustmap import load, model
from fleetward.trustmap.checks import (
    CHECKS,
    DRIFT_KINDS,
    UNCHECKED_CONTROLS,
    LiveFacts,
    LiveRole,
    check,
    covers,
)
from fleetward.trustmap.threats import declared_controls

EXAMPLE = (Path(__file__).resolve().parents[2] / "docs" / "trustmap.example.yaml").read_text()
MAP = load(EXAMPLE)

# Live facts that hold every answer of docs/trustmap.example.yaml.
GOOD = LiveFacts(
    device_key_origins={("production", "hardware-attested"): 120, ("test", "software"): 7},
    ca_key_backends={"production": "pkcs11", "test": "file"},
    root_ca="offline",
    tuf_root_threshold=2,
    tuf_root_keys=3,
    tuf_root_storage="offline",
    release_thresholds={"gateway": 2, "sensor": 1},
    boot_stages_measured=frozenset({"bootloader", "kernel", "application"}),
    campaign_first_wave_percent={"c-1": 5, "c-2": 2.5},
    campaign_require_attestation={"c-1": True, "c-2": True},
    detectors_enabled=frozenset(MAP.detection.detectors) | {"device-silent"},
    detector_responses={"boot-integrity-cohort": "quarantine-cohort"},
    policy_roles={
        "telemetry": LiveRole(
            publish=("fw/{tenant}/{device}/telemetry/temp", "fw/{tenant}/{device}/state/#"),
            commands=("reboot",),
        )
    },
    listener_trust={"production": frozenset({"production"}), "test": frozenset({"test"})},
    service_identities=frozenset({"ingest", "commands", "ota"}),
    factory_environments={"line-1": frozenset({"production"})},
    factory_open_batches={"line-1": 2},
)


def test_matching_live_facts_have_no_drift_and_confirm_every_checked_control() -> None:
    result = check(MAP, GOOD)
    assert result.drifts == ()
    assert result.checked == tuple(CHECKS)
    declared = {c for c, yes in declared_controls(MAP).items() if yes}
    assert result.confirmed == declared - UNCHECKED_CONTROLS
    assert {"ab-fallback", "encrypted-flows"} == UNCHECKED_CONTROLS


def test_confirmed_controls_lower_the_residuals() -> None:
    before = {t.id: t.residual for t in model(MAP, confirmed=()).threats}
    after = model(MAP, confirmed=check(MAP, GOOD).confirmed)
    assert any(t.mitigations for t in after.threats)
    assert all(t.residual <= before[t.id] for t in after.threats)
    assert sum(t.residual for t in after.threats) < sum(before.values())
    broken = dataclasses.replace(GOOD, root_ca="online")
    worse = {t.id: t for t in model(MAP, confirmed=check(MAP, broken).confirmed).threats}
    hit = [t for t in after.threats if "offline-root-ca" in t.mitigations]
    assert hit
    for t in hit:
        assert "offline-root-ca" in worse[t.id].unconfirmed
        assert worse[t.id].residual_plausibility >= t.residual_plausibility


# kind, the changed facts, subject, objects, the control it breaks.
CASES: list[tuple[str, dict[str, Any], str, tuple[str, ...], str | None]] = [
    ("software-keys-in-production",
     {"device_key_origins": {("production", "hardware-attested"): 9, ("production", "software"): 2},
      "software_key_devices": {"production": ("dev-9", "dev-2")}},
     "environment:production", ("dev-2", "dev-9"), "hardware-device-keys"),
    ("ca-key-storage", {"ca_key_backends": {"production": "file", "test": "file"}},
     "environment:production", ("production",), "hsm-ca-keys"),
    ("ca-key-storage", {"ca_key_backends": {"test": "file"}},
     "environment:production", ("production",), "hsm-ca-keys"),
    ("root-ca-online", {"root_ca": "online"}, "root-ca", ("root-ca",), "offline-root-ca"),
    ("tuf-root-storage", {"tuf_root_storage": "online"}, "tuf:root", ("root",),
     "offline-tuf-root"),
    ("tuf-root-threshold", {"tuf_root_threshold": 1}, "tuf:root", ("root",), "offline-tuf-root"),
    ("release-threshold", {"release_thresholds": {"gateway": 1}}, "product:gateway",
     ("gateway",), "release-threshold"),
    ("release-threshold", {"release_thresholds": {"sensor": 3}}, "product:gateway",
     ("gateway",), "release-threshold"),
    ("boot-stage-unmeasured", {"boot_stages_measured": frozenset({"bootloader"})},
     "product:gateway", ("kernel", "application"), "measured-boot"),
    ("first-wave-too-large", {"campaign_first_wave_percent": {"c-1": 5, "c-2": 50}},
     "product:gateway", ("c-2",), "canary-waves"),
    ("attestation-not-required", {"campaign_require_attestation": {"c-1": False, "c-2": True}},
     "product:gateway", ("c-1",), "attested-updates"),
    ("detector-off", {"detectors_enabled": frozenset(MAP.detection.detectors) - {"authz-failures"}},
     "detector:authz-failures", ("authz-failures",), "authz-detection"),
    ("detector-off", {"detectors_enabled": frozenset(MAP.detection.detectors) - {"message-flood"}},
     "detector:message-flood", ("message-flood",), None),
    ("response-differs", {"detector_responses": {"boot-integrity-cohort": "quarantine-device"}},
     "detector:boot-integrity-cohort", ("boot-integrity-cohort",), "boot-detection"),
    ("response-differs",
     {"detector_responses": {"boot-integrity-cohort": "quarantine-cohort",
                             "firmware-drift": "quarantine-device"}},
     "detector:firmware-drift", ("firmware-drift",), None),
    ("policy-role-undeclared",
     {"policy_roles": {**GOOD.policy_roles, "admin": LiveRole(publish=("fw/{tenant}/#",))}},  # type: ignore[dict-item]
     "role:admin", ("admin",), "least-privilege-topics"),
    ("policy-role-broader",
     {"policy_roles": {"telemetry": LiveRole(publish=("fw/{tenant}/+/telemetry/x",),
                                             subscribe=("fw/{tenant}/{device}/ota/#",),
                                             commands=("reboot", "shell"))}},
     "role:telemetry",
     ("publish fw/{tenant}/+/telemetry/x", "subscribe fw/{tenant}/{device}/ota/#",
      "command shell"),
     "least-privilege-topics"),
    ("policy-role-broader",
     {"policy_roles": {"telemetry": LiveRole(commands=("factory-reset",))}},
     "role:telemetry", ("command factory-reset",), "command-allow-list"),
    ("listener-trusts-other-environment",
     {"listener_trust": {"production": frozenset({"production", "test"}),
                         "test": frozenset({"test"})}},
     "listener:production", ("test",), "listener-per-environment"),
    ("service-identity-undeclared",
     {"service_identities": frozenset({"ingest", "commands", "ota", "debug"})},
     "service-identity:debug", ("debug",), None),
    ("factory-undeclared",
     {"factory_environments": {"line-1": frozenset({"production"}), "line-9": frozenset({"test"})}},
     "factory:line-9", ("line-9",), "factory-batches"),
    ("factory-environment", {"factory_environments": {"line-1": frozenset({"production", "test"})}},
     "factory:line-1", ("test",), "factory-batches"),
    ("factory-token-unbound", {"factory_unbound_tokens": {"line-1": ("tok-b", "tok-a")}},
     "factory:line-1", ("tok-a", "tok-b"), "factory-batches"),
]  # fmt: skip


@pytest.mark.parametrize(("kind", "change", "subject", "objects", "control"), CASES)
def test_each_changed_fact_is_exactly_one_drift_that_clears_when_fixed(
    kind: str, change: dict[str, Any], subject: str, objects: tuple[str, ...], control: str | None
) -> None:
    result = check(MAP, dataclasses.replace(GOOD, **change))
    assert len(result.drifts) == 1, result.drifts
    (d,) = result.drifts
    assert (d.kind, d.subject, d.objects, d.control) == (kind, subject, objects, control)
    assert d.message
    if control is not None:
        assert control not in result.confirmed
    assert check(MAP, GOOD).drifts == ()  # fixed: back to the matching facts


def test_every_drift_kind_is_exercised() -> None:
    assert {c[0] for c in CASES} == set(DRIFT_KINDS)


def test_a_broken_policy_role_unconfirms_both_policy_controls() -> None:
    live = dataclasses.replace(GOOD, policy_roles={"telemetry": LiveRole(commands=("shell",))})
    confirmed = check(MAP, live).confirmed
    assert "command-allow-list" not in confirmed
    assert "least-privilege-topics" not in confirmed
    assert "offline-root-ca" in confirmed


def test_drifts_are_sorted_most_severe_first() -> None:
    live = dataclasses.replace(
        GOOD,
        root_ca="online",
        campaign_first_wave_percent={"c-9": 80},
        service_identities=frozenset({"ingest", "commands", "ota", "zz", "aa"}),
    )
    got = [(d.severity, d.kind, d.subject) for d in check(MAP, live).drifts]
    assert got == [
        ("critical", "root-ca-online", "root-ca"),
        ("high", "service-identity-undeclared", "service-identity:aa"),
        ("high", "service-identity-undeclared", "service-identity:zz"),
        ("medium", "first-wave-too-large", "product:gateway"),
    ]


def test_unknown_facts_skip_their_checks_and_confirm_nothing() -> None:
    result = check(MAP, LiveFacts(root_ca="offline"))
    assert result.checked == ("root-ca",)
    assert result.confirmed == {"offline-root-ca"}
    assert check(MAP, LiveFacts()).confirmed == frozenset()


def test_an_undeclared_factory_with_open_batches_is_critical() -> None:
    live = dataclasses.replace(
        GOOD, factory_environments={"x": frozenset({"test"})}, factory_open_batches={"x": 1}
    )
    assert [d.severity for d in check(MAP, live).drifts] == ["critical"]
    live = dataclasses.replace(live, factory_open_batches={})
    assert [d.severity for d in check(MAP, live).drifts] == ["high"]


@pytest.mark.parametrize(
    ("declared", "live", "expected"),
    [
        ("fw/{tenant}/{device}/telemetry/#", "fw/{tenant}/{device}/telemetry/temp", True),
        ("fw/{tenant}/{device}/telemetry/#", "fw/{tenant}/{device}/telemetry", True),
        ("fw/{tenant}/{device}/telemetry/#", "fw/{tenant}/{device}/telemetry/#", True),
        ("fw/{tenant}/{device}/telemetry/#", "fw/{tenant}/{device}/#", False),
        ("fw/{tenant}/{device}/telemetry/#", "fw/{tenant}/+/telemetry/#", False),
        ("fw/{tenant}/{device}/telemetry/#", "fw/{tenant}/dev-1/telemetry/x", False),
        ("fw/{tenant}/{device}/telemetry/#", "fw/{tenant}/{product}/telemetry/x", False),
        ("fw/{tenant}/+/telemetry/+", "fw/{tenant}/{device}/telemetry/x", True),
        ("fw/{tenant}/+/telemetry/+", "fw/{tenant}/dev-1/telemetry/+", True),
        ("fw/{tenant}/+/telemetry/+", "fw/{tenant}/dev-1/telemetry/#", False),
        ("fw/{tenant}/+/telemetry/+", "fw/{tenant}/dev-1/telemetry", False),
        ("fw/{tenant}/+/telemetry/+", "fw/{tenant}/dev-1/telemetry/a/b", False),
        ("fw/{tenant}/{device}/a", "fw/{tenant}/{device}/a", True),
        ("fw/{tenant}/{device}/a", "fw/{tenant}/{device}/b", False),
        ("fw/{tenant}/{device}/a", "fw/{tenant}/{device}/a/b", False),
        ("fw/{tenant}/{device}/a/b", "fw/{tenant}/{device}/a", False),
        ("fw/{tenant}/#", "fw/{tenant}/x/y/#", True),
        ("fw/{tenant}/#", "fw/{tenant}/+", True),
        ("not a template", "fw/{tenant}/{device}/a", False),
        ("fw/{tenant}/#/x", "fw/{tenant}/{device}/a", False),
    ],
)
def test_template_coverage(declared: str, live: str, expected: bool) -> None:
    assert covers(declared, live) is expected


@pytest.mark.parametrize(
    "text",
    [
        "fw/{tenant}/{device}/telemetry/#",
        "fw/{tenant}/+/{label.site}/x",
        "fw/{tenant}/{product}",
        "fw/{tenant}",
        "fw/other/x",
        "fw/{tenant}/#/x",
        "fw/{tenant}/{nope}/x",
        "fw/{tenant}/a b",
        "fw/{tenant}/" + "/".join(["a"] * 14),
        "fw/{tenant}/" + "/".join(["a"] * 15),
        "fw/{tenant}/" + "x" * 65,
        "fw/{tenant}/",
    ],
)
def test_live_templates_are_read_as_the_comms_policy_reads_them(text: str) -> None:
    try:
        Template.parse(text)
    except InvalidInputError:
        comms_ok = False
    else:
        comms_ok = True
    try:
        LiveRole(publish=(text,))
    except ValueError:
        ours_ok = False
    else:
        ours_ok = True
    assert ours_ok is comms_ok


def test_coverage_refuses_a_bad_live_template() -> None:
    with pytest.raises(InvalidInputError):
        covers("fw/{tenant}/#", "fw/other/#")


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"root_ca": "maybe"}, ValueError),
        ({"tuf_root_threshold": 0}, ValueError),
        ({"tuf_root_threshold": True}, TypeError),
        ({"ca_key_backends": {"staging": "file"}}, ValueError),
        ({"device_key_origins": {"production": 3}}, TypeError),
        ({"device_key_origins": {("production", "software"): -1}}, ValueError),
        ({"software_key_devices": {"production": tuple(f"d{i}" for i in range(21))}}, ValueError),
        ({"campaign_first_wave_percent": {"c": float("nan")}}, ValueError),
        ({"campaign_first_wave_percent": {"c": 0}}, ValueError),
        ({"campaign_require_attestation": {"c": 1}}, TypeError),
        ({"detectors_enabled": frozenset({"telepathy"})}, ValueError),
        ({"detector_responses": {"authz-failures": "shrug"}}, ValueError),
        ({"boot_stages_measured": frozenset({"bios"})}, ValueError),
        ({"listener_trust": {"production": {"production"}}}, TypeError),
        ({"service_identities": frozenset({"x" * 129})}, ValueError),
        ({"service_identities": frozenset(f"s{i}" for i in range(1025))}, ValueError),
        ({"policy_roles": {"r": {"publish": []}}}, TypeError),
        ({"factory_open_batches": {"line-1": -1}}, ValueError),
    ],
)
def test_live_facts_validate_themselves(change: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        dataclasses.replace(GOOD, **change)


def test_live_roles_validate_their_templates() -> None:
    with pytest.raises(ValueError, match="publish"):
        LiveRole(publish=("fw/other-tenant/#",))
    with pytest.raises(ValueError, match="commands"):
        LiveRole(commands=("",))
