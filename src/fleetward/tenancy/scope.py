"""Who may do what, where: the one decision every operator action passes.

A token carries four things: its tenant, its role, an optional environment
and an optional factory. A scope is a ceiling on every action, never a hint.
Every operator route names the :class:`Action` it performs (the API checks
that no route goes without one); :func:`decide` answers for an action and
the target it touches, and :func:`authorize` raises on a refusal.

Pure: principals, actions and targets in, a :class:`Decision` out; services
look up what a target is (a device's environments, a batch's factory) and
pass it in.

The rules, in the order they are applied (the first that refuses decides):

1. **Role.** The role must grant the action's permission.
2. **Factory actions.** A token bound to a factory may only perform actions
   marked ``factory`` (enroll through its batches, take attestation
   nonces, read its own batches and the tenant's CAs).
3. **Factory target.** A factory-bound token acts only on its own factory's
   objects.
4. **Tenant-wide changes.** An action whose reach is :attr:`Reach.TENANT`
   changes what applies in every environment (tenant settings, the
   communication policy, releases and campaigns, playbooks, automatic
   responses, attestation roots, alert triage, vulnerability operations); a token scoped to one
   environment may not perform it.
5. **Environment target.** A token scoped to an environment acts only on
   objects that live in that environment: every environment the target
   touches must be the token's.

Reads (:attr:`Reach.READ`) stay inside the tenant and pass rules 4 and 5:
an environment scope limits what a token changes, not what it sees.

Tokens granting tokens follow :func:`decide_grant` (rule 6): a token may
create or revoke only tokens whose role grants no more than its own and whose
environment and factory are inside its own scope; :func:`decide_lifetime`
keeps what it creates from outliving it.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Iterable
from dataclasses import dataclass, field

from fleetward.errors import OutOfScopeError, PermissionDeniedError
from fleetward.tenancy.roles import ROLES, Permission, Principal

__all__ = [
    "ACTIONS",
    "Action",
    "Decision",
    "Reach",
    "Target",
    "authorize",
    "authorize_grant",
    "decide",
    "decide_grant",
    "decide_lifetime",
    "grant_expiry",
]


class Reach(enum.Enum):
    """How far an action's effect goes."""

    READ = "read"  # changes nothing
    OBJECTS = "objects"  # changes objects that each live in one environment (or none yet)
    TENANT = "tenant"  # changes what applies in every environment of the tenant


@dataclass(frozen=True)
class Action:
    """Something an operator does through the API (or the CLI)."""

    name: str
    permission: Permission | None  # None: any authenticated operator of the tenant
    reach: Reach
    factory: bool = False  # a factory-bound token may do it (within its factory)


@dataclass(frozen=True)
class Target:
    """What an action touches: the environments its objects live in, the factory."""

    environments: frozenset[str] = field(default_factory=frozenset)
    factory_id: int | None = None

    @classmethod
    def of(cls, environments: Iterable[str | None] = (), factory_id: int | None = None) -> Target:
        """A target from possibly repeated, possibly unknown (``None``) environments."""
        return cls(frozenset(e for e in environments if e is not None), factory_id)


@dataclass(frozen=True)
class Decision:
    """An answer and the rule that gave it."""

    allowed: bool
    rule: int  # 0 when allowed
    reason: str

    def raise_if_refused(self) -> None:
        """Raise the matching 403 error unless allowed."""
        if self.allowed:
            return
        if self.rule == 1:
            raise PermissionDeniedError(self.reason)
        raise OutOfScopeError(self.reason)


ACTIONS: dict[str, Action] = {}


def _action(
    name: str, permission: Permission | None, reach: Reach, *, factory: bool = False
) -> Action:
    action = Action(name=name, permission=permission, reach=reach, factory=factory)
    if name in ACTIONS:
        raise RuntimeError(f"broken invariant, expected: name not in ACTIONS ({name!r})")
    ACTIONS[name] = action
    return action


P = Permission
R = Reach

# The catalogue. Every operator route names one of these.
TENANT_READ = _action("tenant.read", None, R.READ, factory=True)
TENANT_SETTINGS = _action("tenant.settings", P.TENANT_MANAGE, R.TENANT)
TOKEN_LIST = _action("token.list", P.TOKEN_MANAGE, R.READ)
TOKEN_CREATE = _action("token.create", P.TOKEN_MANAGE, R.OBJECTS)
TOKEN_REVOKE = _action("token.revoke", P.TOKEN_MANAGE, R.OBJECTS)
CA_READ = _action("ca.read", P.CA_READ, R.READ, factory=True)
CA_DISTRUST = _action("ca.distrust", P.CA_MANAGE, R.OBJECTS)
DEVICE_READ = _action("device.read", P.DEVICE_READ, R.READ)
DEVICE_REGISTER = _action("device.register", P.DEVICE_MANAGE, R.OBJECTS)
DEVICE_ENROLL = _action("device.enroll", P.DEVICE_ENROLL, R.OBJECTS, factory=True)
DEVICE_STATE = _action("device.state", P.DEVICE_MANAGE, R.OBJECTS)
DEVICE_REVOKE = _action("device.revoke", P.CERT_REVOKE, R.OBJECTS)
DEVICE_COMMAND = _action("device.command", P.DEVICE_MANAGE, R.OBJECTS)
DEVICE_REPROVISION = _action("device.reprovision", P.DEVICE_MANAGE, R.OBJECTS)
CERT_REVOKE = _action("certificate.revoke", P.CERT_REVOKE, R.OBJECTS)
TELEMETRY_POST = _action("telemetry.post", P.DEVICE_MANAGE, R.OBJECTS)
AUDIT_READ = _action("audit.read", P.AUDIT_READ, R.READ)
FACTORY_READ = _action("factory.read", P.DEVICE_READ, R.READ, factory=True)
FACTORY_CREATE = _action("factory.create", P.TENANT_MANAGE, R.OBJECTS)
BATCH_READ = _action("batch.read", P.DEVICE_READ, R.READ, factory=True)
BATCH_MANAGE = _action("batch.manage", P.TENANT_MANAGE, R.OBJECTS)
NONCE_ISSUE = _action("nonce.issue", P.DEVICE_ENROLL, R.OBJECTS, factory=True)
ATTESTATION_ROOT_READ = _action("attestation-root.read", P.DEVICE_READ, R.READ, factory=True)
ATTESTATION_ROOT_MANAGE = _action("attestation-root.manage", P.TENANT_MANAGE, R.TENANT)
ENROLLMENT_RECORDS_READ = _action("enrollment-records.read", P.AUDIT_READ, R.READ)
POLICY_READ = _action("policy.read", P.DEVICE_READ, R.READ)
POLICY_SET = _action("policy.set", P.POLICY_MANAGE, R.TENANT)
OTA_PRODUCT = _action("ota.product", P.RELEASE_MANAGE, R.TENANT)
OTA_ROOT_ROTATE = _action("ota.root.rotate", P.OTA_ROOT_ROTATE, R.TENANT)
RELEASE_READ = _action("release.read", P.DEVICE_READ, R.READ)
RELEASE_MANAGE = _action("release.manage", P.RELEASE_MANAGE, R.TENANT)
RELEASE_APPROVE = _action("release.approve", P.RELEASE_APPROVE, R.TENANT)
CAMPAIGN_READ = _action("campaign.read", P.DEVICE_READ, R.READ)
CAMPAIGN_MANAGE = _action("campaign.manage", P.RELEASE_MANAGE, R.TENANT)
CAMPAIGN_APPROVE = _action("campaign.approve", P.RELEASE_APPROVE, R.TENANT)
# A release's controls review: run by release managers, waived by security
# operators only (the role is checked again by the use case).
RELEASE_REVIEW = _action("release.review", P.RELEASE_MANAGE, R.TENANT)
RELEASE_REVIEW_WAIVE = _action("release.review.waive", P.RELEASE_APPROVE, R.TENANT)
ALERT_READ = _action("alert.read", P.DEVICE_READ, R.READ)
ALERT_TRIAGE = _action("alert.triage", P.DEVICE_MANAGE, R.TENANT)
ALERT_RESPONSE_SET = _action("alert.response", P.DEVICE_MANAGE, R.TENANT)
INCIDENT_READ = _action("incident.read", P.DEVICE_READ, R.READ)
INCIDENT_MANAGE = _action("incident.manage", P.INCIDENT_MANAGE, R.OBJECTS)
PLAYBOOK_MANAGE = _action("playbook.manage", P.INCIDENT_MANAGE, R.TENANT)
RUN_MANAGE = _action("run.manage", P.INCIDENT_MANAGE, R.OBJECTS)
VULN_READ = _action("vuln.read", P.VULN_READ, R.READ)
# Feeds, triage, the priority policy, reviews and CRA cases apply to every
# environment's devices: tenant-wide.
VULN_IMPORT = _action("vuln.import", P.VULN_MANAGE, R.TENANT)
VULN_TRIAGE = _action("vuln.triage", P.VULN_MANAGE, R.TENANT)
VULN_POLICY = _action("vuln.policy", P.VULN_MANAGE, R.TENANT)
VULN_REVIEW = _action("vuln.review", P.VULN_MANAGE, R.TENANT)
VULN_CASE = _action("vuln.case", P.VULN_MANAGE, R.TENANT)
# Trust maps describe the whole tenant's trust: read by every role, set by
# those who set the device policy (security, admin).
TRUSTMAP_READ = _action("trustmap.read", P.DEVICE_READ, R.READ)
TRUSTMAP_MANAGE = _action("trustmap.manage", P.POLICY_MANAGE, R.TENANT)

del P, R


def decide(principal: Principal, action: Action, target: Target | None = None) -> Decision:
    """Whether ``principal`` may perform ``action`` on ``target`` (rules 1-5)."""
    target = target or Target()
    if action.permission is not None and action.permission not in ROLES[principal.role]:
        return Decision(
            False, 1, f"role {principal.role!r} may not {action.permission.value.replace('.', ' ')}"
        )
    if principal.factory_id is not None:
        if not action.factory:
            return Decision(
                False,
                2,
                f"this token is bound to factory {principal.factory_id}: it may only enroll "
                f"through that factory's batches, not {action.name}",
            )
        if target.factory_id is not None and target.factory_id != principal.factory_id:
            return Decision(
                False,
                3,
                f"this token is bound to factory {principal.factory_id}, "
                f"not factory {target.factory_id}",
            )
    env = principal.environment
    if env is not None:
        if action.reach is Reach.TENANT:
            return Decision(
                False,
                4,
                f"{action.name} changes every environment; this token is scoped to {env}",
            )
        outside = sorted(target.environments - {env})
        if outside:
            return Decision(
                False,
                5,
                f"this token is scoped to the {env} environment; the target is in "
                + ", ".join(outside),
            )
    return Decision(True, 0, "allowed")


def authorize(
    principal: Principal,
    action: Action,
    *,
    environments: Iterable[str | None] = (),
    factory_id: int | None = None,
) -> None:
    """Raise unless :func:`decide` allows the action on this target.

    Raises:
        PermissionDeniedError: the role does not grant the action.
        OutOfScopeError: the token's factory or environment scope does not reach.
    """
    decide(principal, action, Target.of(environments, factory_id)).raise_if_refused()


def decide_grant(
    principal: Principal, *, role: str, environment: str | None, factory_id: int | None
) -> Decision:
    """Whether ``principal`` may create (or revoke) a token with this role and scope."""
    first = decide(
        principal,
        TOKEN_CREATE,
        Target.of([environment] if environment else [], factory_id),
    )
    if not first.allowed:
        return first
    wider = ROLES.get(role, frozenset(Permission)) - ROLES[principal.role]
    if wider:
        names = ", ".join(sorted(p.value for p in wider))
        return Decision(
            False,
            6,
            f"a {principal.role} token may not grant role {role!r}: it carries {names}",
        )
    if principal.environment is not None and environment != principal.environment:
        return Decision(
            False,
            5,
            f"this token is scoped to the {principal.environment} environment; "
            f"so must be every token it grants",
        )
    if principal.factory_id is not None and factory_id != principal.factory_id:
        return Decision(
            False,
            3,
            f"this token is bound to factory {principal.factory_id}; so must be its grants",
        )
    return Decision(True, 0, "allowed")


def decide_lifetime(principal: Principal, *, expires_at: dt.datetime | None) -> Decision:
    """A token may not grant a token that outlives it (rule 6): a short-lived
    or leaked token cannot make itself permanent."""
    limit = principal.expires_at
    if limit is not None and (expires_at is None or expires_at > limit):
        return Decision(
            False,
            6,
            f"this token expires at {limit.isoformat()}; a token it grants must expire "
            "no later (set expires_in_days)",
        )
    return Decision(True, 0, "allowed")


def grant_expiry(principal: Principal, requested: dt.datetime | None) -> dt.datetime | None:
    """The expiry a granted token gets: the one asked for, but never past the
    granting token's own (a day asked of a token with hours left gets hours).
    Asking for no expiry is left to :func:`decide_lifetime` to refuse."""
    limit = principal.expires_at
    if requested is not None and limit is not None and requested > limit:
        return limit
    return requested


def authorize_grant(
    principal: Principal, *, role: str, environment: str | None, factory_id: int | None = None
) -> None:
    """Raise unless :func:`decide_grant` allows it.

    Raises:
        PermissionDeniedError / OutOfScopeError: as :func:`authorize`.
    """
    decide_grant(
        principal, role=role, environment=environment, factory_id=factory_id
    ).raise_if_refused()
