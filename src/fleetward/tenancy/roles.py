"""Roles, permissions and the principal a request acts as.

Pure: a role maps to a fixed set of permissions; :func:`require` raises when a
principal lacks one. Tenant scoping is not a permission: every service query
filters by ``principal.tenant_id`` so another tenant's objects are simply not
found.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass

from fleetward.errors import PermissionDeniedError

__all__ = ["ENVIRONMENTS", "ROLES", "Permission", "Principal", "require"]

# "drill" holds simulated fleets for incident drills; playbook runs in a drill
# never touch another environment (see fleetward.response).
ENVIRONMENTS = ("test", "production", "drill")


class Permission(enum.StrEnum):
    """What an operator may do."""

    TOKEN_MANAGE = "token.manage"  # noqa: S105 - a permission name, not a secret
    TENANT_MANAGE = "tenant.manage"
    CA_READ = "ca.read"
    CA_MANAGE = "ca.manage"
    DEVICE_READ = "device.read"
    DEVICE_MANAGE = "device.manage"
    DEVICE_ENROLL = "device.enroll"
    CERT_REVOKE = "certificate.revoke"
    AUDIT_READ = "audit.read"
    POLICY_MANAGE = "policy.manage"
    RELEASE_MANAGE = "release.manage"
    RELEASE_APPROVE = "release.approve"
    INCIDENT_MANAGE = "incident.manage"
    OTA_ROOT_ROTATE = "ota.root.rotate"
    VULN_READ = "vuln.read"
    VULN_MANAGE = "vuln.manage"


_READ = {Permission.CA_READ, Permission.DEVICE_READ, Permission.VULN_READ}

ROLES: dict[str, frozenset[Permission]] = {
    "admin": frozenset(Permission),
    "security": frozenset(
        _READ
        | {
            Permission.DEVICE_MANAGE,
            Permission.CERT_REVOKE,
            Permission.AUDIT_READ,
            Permission.POLICY_MANAGE,
            Permission.RELEASE_APPROVE,
            Permission.INCIDENT_MANAGE,
            Permission.OTA_ROOT_ROTATE,
            Permission.VULN_MANAGE,
        }
    ),
    "release-manager": frozenset(_READ | {Permission.RELEASE_MANAGE, Permission.RELEASE_APPROVE}),
    "factory-operator": frozenset(_READ | {Permission.DEVICE_ENROLL}),
    "auditor": frozenset(_READ | {Permission.AUDIT_READ}),
}


@dataclass(frozen=True)
class Principal:
    """An authenticated operator (or the local CLI) acting within one tenant."""

    tenant_id: int
    tenant_name: str
    role: str
    actor: str
    environment: str | None = None
    factory_id: int | None = None  # factory-operator tokens are bound to one factory
    expires_at: dt.datetime | None = None  # a token's grants may not outlive it

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"unknown role {self.role!r}")
        if self.environment is not None and self.environment not in ENVIRONMENTS:
            raise ValueError(f"unknown environment {self.environment!r}")

    def can(self, permission: Permission) -> bool:
        """Whether the role grants ``permission`` (for listings, not for checks)."""
        return permission in ROLES[self.role]


def require(principal: Principal, permission: Permission) -> None:
    """Raise unless ``principal`` holds ``permission``.

    Raises:
        PermissionDeniedError: the role does not allow it.
    """
    if permission not in ROLES[principal.role]:
        raise PermissionDeniedError(
            f"role {principal.role!r} may not {permission.value.replace('.', ' ')}"
        )
