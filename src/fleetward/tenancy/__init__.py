"""Tenancy: tenants (the isolation boundary), operators' API tokens, roles and scope.

The public face. :mod:`.roles` (who a caller is, what a role may do) and
:mod:`.scope` (the one authority decision over environments and factories)
are pure and are imported directly by every domain that checks a caller;
tenants and tokens are reached through the functions below, never their
tables.
"""

from fleetward.tenancy.models import ApiToken, Tenant
from fleetward.tenancy.roles import ENVIRONMENTS, ROLES, Permission, Principal, require
from fleetward.tenancy.service import (
    IssuancePolicy,
    authenticate,
    create_tenant,
    create_token,
    get_tenant,
    get_tenant_by_name,
    issuance_policy,
    list_tenants,
    list_tokens,
    revoke_token,
    set_allow_unattested,
    set_cert_lifetime,
    tenant_id_named,
    tenant_names,
)
from fleetward.tenancy.sessions import (
    SESSION_LIFETIME,
    csrf_token,
    end_session,
    open_session,
    session_principal,
)

__all__ = [
    "ENVIRONMENTS",
    "ROLES",
    "SESSION_LIFETIME",
    "ApiToken",
    "IssuancePolicy",
    "Permission",
    "Principal",
    "Tenant",
    "authenticate",
    "create_tenant",
    "create_token",
    "csrf_token",
    "end_session",
    "get_tenant",
    "get_tenant_by_name",
    "issuance_policy",
    "list_tenants",
    "list_tokens",
    "open_session",
    "require",
    "revoke_token",
    "session_principal",
    "set_allow_unattested",
    "set_cert_lifetime",
    "tenant_id_named",
    "tenant_names",
]
