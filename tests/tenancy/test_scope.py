"""The scope decision itself: pure, rule by rule."""

from __future__ import annotations

import pytest

from fleetward.errors import OutOfScopeError, PermissionDeniedError
from fleetward.tenancy import roles, scope
from fleetward.tenancy.roles import Permission, Principal

ADMIN = Principal(1, "t", "admin", "token:a")
TEST_ADMIN = Principal(1, "t", "admin", "token:b", environment="test")
STATION = Principal(1, "t", "factory-operator", "token:c", environment="test", factory_id=7)
AUDITOR = Principal(1, "t", "auditor", "token:d")
PROD = scope.Target.of(["production"])


@pytest.mark.parametrize(
    ("who", "action", "target", "rule"),
    [
        (AUDITOR, scope.DEVICE_REVOKE, PROD, 1),
        (STATION, scope.DEVICE_READ, scope.Target(), 2),
        (STATION, scope.DEVICE_ENROLL, scope.Target.of(["test"], 8), 3),
        (TEST_ADMIN, scope.TENANT_SETTINGS, scope.Target(), 4),
        (TEST_ADMIN, scope.POLICY_SET, scope.Target(), 4),
        (TEST_ADMIN, scope.DEVICE_STATE, scope.Target.of(["test", "production"]), 5),
        (STATION, scope.DEVICE_ENROLL, scope.Target.of(["production"], 7), 5),
    ],
)
def test_each_rule_refuses(
    who: Principal, action: scope.Action, target: scope.Target, rule: int
) -> None:
    decision = scope.decide(who, action, target)
    assert not decision.allowed and decision.rule == rule, decision
    error = PermissionDeniedError if rule == 1 else OutOfScopeError
    with pytest.raises(error):
        decision.raise_if_refused()


@pytest.mark.parametrize(
    ("who", "action", "target"),
    [
        (ADMIN, scope.TENANT_SETTINGS, scope.Target()),
        (ADMIN, scope.DEVICE_STATE, scope.Target.of(["test", "production", "drill"])),
        (TEST_ADMIN, scope.DEVICE_STATE, scope.Target.of(["test", None])),
        (TEST_ADMIN, scope.DEVICE_REGISTER, scope.Target()),  # no environment yet
        (TEST_ADMIN, scope.AUDIT_READ, scope.Target()),  # reads stay in the tenant
        (STATION, scope.DEVICE_ENROLL, scope.Target.of(["test"], 7)),
        (STATION, scope.NONCE_ISSUE, scope.Target()),
    ],
)
def test_allowed(who: Principal, action: scope.Action, target: scope.Target) -> None:
    assert scope.decide(who, action, target).allowed


def test_grants_stay_inside_the_grantor() -> None:
    assert scope.decide_grant(ADMIN, role="admin", environment=None, factory_id=None).allowed
    assert scope.decide_grant(TEST_ADMIN, role="admin", environment="test", factory_id=None).allowed
    for env in (None, "production"):
        refused = scope.decide_grant(TEST_ADMIN, role="auditor", environment=env, factory_id=None)
        assert not refused.allowed and refused.rule == 5
    assert scope.decide_grant(AUDITOR, role="auditor", environment=None, factory_id=None).rule == 1


def test_a_role_is_never_granted_upwards(monkeypatch: pytest.MonkeyPatch) -> None:
    # No shipped role below admin manages tokens; a deployment's own could.
    monkeypatch.setitem(
        roles.ROLES, "token-manager", frozenset({Permission.TOKEN_MANAGE, Permission.DEVICE_READ})
    )
    who = Principal(1, "t", "token-manager", "token:e")
    wider = scope.decide_grant(who, role="security", environment=None, factory_id=None)
    assert not wider.allowed and wider.rule == 6 and "device.manage" in wider.reason
    assert scope.decide_grant(who, role="token-manager", environment=None, factory_id=None).allowed


def test_every_action_is_in_the_catalogue_once() -> None:
    names = [a.name for a in scope.ACTIONS.values()]
    assert len(names) == len(set(names))
    assert all(a.permission is None or a.permission in Permission for a in scope.ACTIONS.values())
