"""The policy language: validation, meaning and explanations (pure)."""

from __future__ import annotations

import pytest

from fleetward.comms.policy import (
    DEFAULT_POLICY,
    Subject,
    decide,
    load_policy_text,
    parse_policy,
)
from fleetward.errors import InvalidInputError, PayloadTooLargeError

POLICY = parse_policy(
    {
        "roles": {
            "sensor": {
                "devices": {"product": "thermo"},
                "publish": ["fw/{tenant}/{device}/telemetry/#", "fw/{tenant}/{device}/boot"],
                "subscribe": ["fw/{tenant}/{device}/ota/#", "fw/{tenant}/fleet/{label.region}/+"],
                "commands": ["reboot", "ping"],
                "deny": {"publish": ["fw/{tenant}/{device}/telemetry/debug"]},
            },
            "eu": {
                "devices": {"labels": {"region": "eu"}},
                "publish": ["fw/{tenant}/eu/{device}"],
                "deny": {"commands": ["reboot"]},
            },
        }
    }
)
DEV = Subject(tenant="acme", device_id="d1", product="thermo", labels={"region": "us"})
EU = Subject(tenant="acme", device_id="d2", product="thermo", labels={"region": "eu"})


def test_allows_own_topics_and_names_the_rule() -> None:
    d = decide(POLICY, DEV, "publish", "fw/acme/d1/telemetry/temp")
    assert d.allowed
    assert d.rule is not None
    assert d.rule.describe() == "role sensor: allow publish fw/{tenant}/{device}/telemetry/#"


def test_other_device_and_other_tenant_are_denied() -> None:
    assert not decide(POLICY, DEV, "publish", "fw/acme/d2/telemetry/temp").allowed
    assert not decide(POLICY, DEV, "publish", "fw/globex/d1/telemetry/temp").allowed
    assert not decide(POLICY, DEV, "subscribe", "fw/acme/d2/ota/#").allowed
    assert not decide(POLICY, DEV, "receive", "fw/globex/d1/ota/x").allowed


def test_explicit_deny_wins_and_is_named() -> None:
    d = decide(POLICY, DEV, "publish", "fw/acme/d1/telemetry/debug")
    assert not d.allowed
    assert d.rule is not None and d.rule.effect == "deny"


def test_default_deny_names_the_roles() -> None:
    d = decide(POLICY, DEV, "publish", "fw/acme/d1/secrets")
    assert not d.allowed and d.rule is None
    assert "sensor" in d.reason


def test_subscribe_needs_a_covering_template() -> None:
    assert decide(POLICY, DEV, "subscribe", "fw/acme/d1/ota/#").allowed
    assert decide(POLICY, DEV, "subscribe", "fw/acme/d1/ota/+/x").allowed
    assert not decide(POLICY, DEV, "subscribe", "fw/acme/d1/#").allowed
    assert not decide(POLICY, DEV, "subscribe", "fw/acme/+/ota/#").allowed
    assert not decide(POLICY, DEV, "subscribe", "#").allowed


def test_label_variables_bind_per_device() -> None:
    assert decide(POLICY, DEV, "receive", "fw/acme/fleet/us/news").allowed
    assert not decide(POLICY, DEV, "receive", "fw/acme/fleet/eu/news").allowed
    nolabel = Subject(tenant="acme", device_id="d3", product="thermo", labels={})
    assert not decide(POLICY, nolabel, "receive", "fw/acme/fleet/us/news").allowed


def test_commands_are_by_name_only() -> None:
    assert decide(POLICY, DEV, "subscribe", "fw/acme/d1/cmd/+").allowed
    assert decide(POLICY, DEV, "receive", "fw/acme/d1/cmd/ping").allowed
    assert not decide(POLICY, DEV, "receive", "fw/acme/d1/cmd/wipe").allowed
    # The eu role denies reboot: deny wins over the sensor role's allow.
    assert not decide(POLICY, EU, "receive", "fw/acme/d2/cmd/reboot").allowed
    assert decide(POLICY, EU, "receive", "fw/acme/d2/cmd/ping").allowed


def test_wildcard_templates_never_open_the_command_namespace() -> None:
    wide = parse_policy(
        {"roles": {"all": {"subscribe": ["fw/{tenant}/{device}/#"], "commands": ["ping"]}}}
    )
    assert not decide(wide, DEV, "receive", "fw/acme/d1/cmd/wipe").allowed
    assert decide(wide, DEV, "receive", "fw/acme/d1/cmd/ping").allowed


def test_quarantine_keeps_only_boot_telemetry_and_updates() -> None:
    q = Subject(tenant="acme", device_id="d1", product="thermo", labels={}, quarantined=True)
    assert decide(POLICY, q, "publish", "fw/acme/d1/telemetry/x").allowed
    assert decide(POLICY, q, "publish", "fw/acme/d1/boot/evidence").allowed
    assert decide(POLICY, q, "receive", "fw/acme/d1/ota/manifest").allowed
    assert not decide(POLICY, q, "publish", "fw/acme/d1/state").allowed
    assert not decide(POLICY, q, "receive", "fw/acme/d1/cmd/ping").allowed
    d = decide(POLICY, q, "publish", "fw/acme/d1/telemetry/x")
    assert d.rule is not None and d.rule.role == "quarantine"


def test_unselected_device_has_no_rights() -> None:
    other = Subject(tenant="acme", device_id="d9", product="camera", labels={})
    assert not decide(POLICY, other, "publish", "fw/acme/d9/telemetry/x").allowed


def test_default_policy() -> None:
    assert decide(DEFAULT_POLICY, DEV, "publish", "fw/acme/d1/telemetry").allowed
    assert decide(DEFAULT_POLICY, DEV, "receive", "fw/acme/d1/cmd/ping").allowed
    assert not decide(DEFAULT_POLICY, DEV, "receive", "fw/acme/d1/cmd/reboot").allowed


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"roles": {"r": {"publish": ["fw/other/{device}"]}}}, "fw/{tenant}/"),
        ({"roles": {"r": {"publish": ["devices/{device}"]}}}, "fw/{tenant}/"),
        ({"roles": {"r": {"publish": ["fw/{tenant}/#/x"]}}}, "last level"),
        ({"roles": {"r": {"publish": ["fw/{tenant}/a+b"]}}}, "level"),
        ({"roles": {"r": {"publish": ["fw/{tenant}/x{device}"]}}}, "level"),
        ({"roles": {"r": {"publish": ["fw/{tenant}/{secret}"]}}}, "level"),
        ({"roles": {"r": {"commands": ["*"]}}}, "wildcards"),
        ({"roles": {"r": {"commands": ["#"]}}}, "wildcards"),
        ({"roles": {"quarantine": {}}}, "built in"),
        ({"roles": {"Bad Name": {}}}, "role names"),
        ({"roles": {"r": {"publsh": []}}}, "unknown key"),
        ({"roles": {}}, "non-empty"),
        ({"rules": {}}, "unknown key"),
        ([], "mapping"),
        ({"roles": {"r": {"devices": {"labels": {"a": "x/y"}}}}}, "labels"),
    ],
)
def test_bad_documents_are_refused_with_a_reason(document: object, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        parse_policy(document)


def test_text_limits_and_syntax() -> None:
    with pytest.raises(PayloadTooLargeError):
        load_policy_text("#" * (64 * 1024 + 1))
    with pytest.raises(InvalidInputError, match="YAML"):
        load_policy_text("roles: [")
    yaml_policy = load_policy_text("roles:\n  r:\n    publish: ['fw/{tenant}/{device}/x']\n")
    assert yaml_policy.roles[0].name == "r"
    assert load_policy_text(POLICY.canonical_json()) == POLICY


@pytest.mark.parametrize("topic", ["fw/acme/+/x", "fw/acme/#", ""])
def test_wildcards_in_publish_topics_are_refused(topic: str) -> None:
    with pytest.raises(InvalidInputError):
        decide(POLICY, DEV, "publish", topic)


def test_malformed_filters_are_refused() -> None:
    with pytest.raises(InvalidInputError):
        decide(POLICY, DEV, "subscribe", "fw/#/x")
    with pytest.raises(InvalidInputError):
        decide(POLICY, DEV, "subscribe", "fw/a+/x")
