"""The comms domain's service: policy versions, explanations, the broker's view.

Policies are versioned per tenant and never edited in place; every new
version is audited with its hash. :func:`broker_snapshot` is the one query
the broker table is built from (all tenants: it is a system task, not an
operator's), and :func:`record_acl_events` turns what the plugin reports
into telemetry events.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fleetward import audit, identity, telemetry, tenancy
from fleetward.comms.compile import BrokerDevice, mqtt_username
from fleetward.comms.identities import SERVICE_IDENTITIES, decide_service
from fleetward.comms.models import CommsPolicy
from fleetward.comms.policy import DEFAULT_POLICY, Action, Decision, Policy, Subject, decide
from fleetward.comms.policy import parse_policy as _parse
from fleetward.errors import InvalidInputError, NotFoundError, PermissionDeniedError
from fleetward.store.db import utcnow
from fleetward.tenancy import scope
from fleetward.tenancy.roles import Permission, Principal, require

__all__ = [
    "PolicyVersion",
    "authorize_command",
    "broker_snapshot",
    "explain",
    "explain_service",
    "get_policy",
    "list_events",
    "list_versions",
    "record_acl_events",
    "set_policy",
    "subject_of",
]

# States in which a device may hold a broker connection at all.
CONNECTABLE = ("active", "quarantined")
_COMMAND_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,47}$")
_USERNAME = re.compile(r"^O=([a-z0-9-]+),OU=([a-z]+),CN=([A-Za-z0-9._-]+)$")


@dataclass(frozen=True)
class PolicyVersion:
    """A tenant's policy at one version (0: the built-in default, never stored)."""

    version: int
    policy: Policy
    sha256: str
    created_by: str | None
    created_at: dt.datetime | None


def _version_of(row: CommsPolicy) -> PolicyVersion:
    return PolicyVersion(
        version=row.version,
        policy=_parse(json.loads(row.document)),
        sha256=row.sha256,
        created_by=row.created_by,
        created_at=row.created_at,
    )


def _default() -> PolicyVersion:
    digest = hashlib.sha256(DEFAULT_POLICY.canonical_json().encode()).hexdigest()
    return PolicyVersion(0, DEFAULT_POLICY, digest, None, None)


def current_policy(session: Session, tenant_id: int) -> PolicyVersion:
    """The tenant's newest policy, or the default when it never set one."""
    row = session.execute(
        select(CommsPolicy)
        .where(CommsPolicy.tenant_id == tenant_id)
        .order_by(CommsPolicy.version.desc())
        .limit(1)
    ).scalar_one_or_none()
    return _version_of(row) if row else _default()


def get_policy(session: Session, principal: Principal, version: int | None = None) -> PolicyVersion:
    """The current policy, or one version of it.

    Raises:
        NotFoundError: no such version in this tenant.
    """
    require(principal, Permission.DEVICE_READ)
    if version is None:
        return current_policy(session, principal.tenant_id)
    if version == 0:
        return _default()
    row = session.execute(
        select(CommsPolicy).where(
            CommsPolicy.tenant_id == principal.tenant_id, CommsPolicy.version == version
        )
    ).scalar_one_or_none()
    if row is None:
        raise NotFoundError(f"policy version {version} not found")
    return _version_of(row)


def list_versions(session: Session, principal: Principal) -> list[PolicyVersion]:
    """Every stored version, newest first."""
    require(principal, Permission.DEVICE_READ)
    rows = session.execute(
        select(CommsPolicy)
        .where(CommsPolicy.tenant_id == principal.tenant_id)
        .order_by(CommsPolicy.version.desc())
    ).scalars()
    return [_version_of(r) for r in rows]


def set_policy(
    session: Session, principal: Principal, policy: Policy, *, now: dt.datetime | None = None
) -> PolicyVersion:
    """Store ``policy`` as the tenant's next version and audit it (it applies
    in every environment: only a token with no environment scope)."""
    scope.authorize(principal, scope.POLICY_SET)
    now = now or utcnow()
    document = policy.canonical_json()
    digest = hashlib.sha256(document.encode()).hexdigest()
    latest = session.execute(
        select(func.max(CommsPolicy.version)).where(CommsPolicy.tenant_id == principal.tenant_id)
    ).scalar_one()
    row = CommsPolicy(
        tenant_id=principal.tenant_id,
        version=(latest or 0) + 1,
        document=document,
        sha256=digest,
        created_by=principal.actor,
        created_at=now,
    )
    session.add(row)
    session.flush()
    audit.append(
        session,
        actor=principal.actor,
        action="comms.policy.set",
        subject=f"policy:{row.version}",
        tenant_id=principal.tenant_id,
        details={
            "version": row.version,
            "sha256": digest,
            "previous": latest or 0,
            "roles": [r.name for r in policy.roles],
        },
        now=now,
    )
    return _version_of(row)


def subject_of(
    device: identity.Device, tenant_name: str, *, environment: str | None = None
) -> Subject:
    """The policy subject for a registry device connecting in ``environment``."""
    labels = json.loads(device.labels or "{}")
    return Subject(
        tenant=tenant_name,
        device_id=device.device_id,
        product=device.product,
        labels={str(k): str(v) for k, v in labels.items()},
        quarantined=device.state == "quarantined",
        environment=environment,
    )


def explain(
    session: Session,
    principal: Principal,
    device_id: str,
    *,
    action: Action,
    topic: str,
    environment: str | None = None,
) -> tuple[Decision, PolicyVersion, identity.Device]:
    """Decide ``action`` on ``topic`` for a device under the current policy.

    A device that is not active or quarantined cannot connect at all; the
    decision says so rather than evaluating rules it will never reach.
    ``environment`` is the listener it connects to (its broker identity);
    by default the one environment it lives in (with several or none, roles
    that select an environment do not apply: name one).

    Raises:
        NotFoundError: no such device in this tenant.
        InvalidInputError: the action or topic is malformed.
    """
    device = identity.get_device(session, principal, device_id)
    current = current_policy(session, principal.tenant_id)
    if environment is None:
        lives = identity.device_environments(session, [device.id])
        environment = next(iter(lives)) if len(lives) == 1 else None
    subject = subject_of(device, principal.tenant_name, environment=environment)
    decision = decide(current.policy, subject, action, topic)
    if device.state not in CONNECTABLE:
        decision = Decision(False, None, f"device is {device.state}: the broker refuses it")
    return decision, current, device


def explain_service(job: str, *, action: Action, topic: str) -> Decision:
    """Decide ``action`` on ``topic`` for fleetward's own identity ``job``
    (``ingest``, ``commands``, ``ota``; see :mod:`.identities`).

    Raises:
        NotFoundError: no such identity.
        InvalidInputError: the action or topic is malformed.
    """
    found = SERVICE_IDENTITIES.get(job)
    if found is None:
        raise NotFoundError(f"no service identity {job!r} (one of {', '.join(SERVICE_IDENTITIES)})")
    return decide_service(found, action, topic)


def broker_snapshot(
    session: Session, *, now: dt.datetime | None = None
) -> tuple[dict[str, Policy], list[BrokerDevice]]:
    """Every tenant's policy and every identity the broker should accept now.

    An identity is a device that is active or quarantined with at least one
    good, unexpired certificate; one entry per environment it holds
    certificates in.
    """
    now = now or utcnow()
    tenants = tenancy.tenant_names(session)
    policies = {name: current_policy(session, tid).policy for tid, name in tenants.items()}
    rows = identity.connectable_certificates(session, states=CONNECTABLE, now=now)
    grouped: dict[tuple[str, str], tuple[Subject, list[str]]] = {}
    for tenant_id, device_id, product, labels, state, env, der in rows:
        tenant = tenants[tenant_id]
        key = (mqtt_username(tenant=tenant, environment=env, device_id=device_id), tenant)
        if key not in grouped:
            decoded = json.loads(labels or "{}")
            subject = Subject(
                tenant=tenant,
                device_id=device_id,
                product=product,
                labels={str(k): str(v) for k, v in decoded.items()},
                quarantined=state == "quarantined",
                environment=env,
            )
            grouped[key] = (subject, [])
        # The plugin matches certificates by SHA-1 fingerprint (see compile.py).
        grouped[key][1].append(hashlib.sha1(der, usedforsecurity=False).hexdigest())
    devices = [
        BrokerDevice(subject=subject, username=username, serials=tuple(serials))
        for (username, _), (subject, serials) in grouped.items()
    ]
    return policies, devices


def record_acl_events(
    session: Session, lines: Iterable[str], *, now: dt.datetime | None = None
) -> int:
    """Store what the plugin reported (one line per identity, kind, action and topic).

    Lines that do not parse are skipped: the file is the plugin's, and one
    torn line must not stop the rest. Returns how many events were stored.
    """
    now = now or utcnow()
    tenants = {name: tid for tid, name in tenancy.tenant_names(session).items()}
    parsed: list[tuple[dt.datetime, str, str, str, str, int, tuple[int, str] | None]] = []
    for line in lines:
        parts = line.rstrip("\n").split("\t")
        if len(parts) != 6:
            continue
        ts, username, kind, action, topic, count = parts
        try:
            at = dt.datetime.fromtimestamp(int(ts), tz=dt.UTC)
            n = int(count)
        except ValueError:
            continue
        match = _USERNAME.fullmatch(username)
        key = None
        if match and match.group(1) in tenants:
            key = (tenants[match.group(1)], match.group(3))
        parsed.append((at, username, kind, action, topic, n, key))
    # One set-based lookup for every identity the lines name, not one per line.
    devices = identity.find_devices(session, {key for *_, key in parsed if key is not None})
    rows = [
        {
            "tenant_id": key[0] if key else None,
            "device_pk": devices.get(key) if key else None,
            "type": f"authz.{kind}",
            "at": at,
            "count": n,
            "fields": json.dumps({"identity": username, "action": action, "topic": topic}),
        }
        for at, username, kind, action, topic, n, key in parsed
    ]
    return telemetry.record_events(session, rows)


def record_handshake_refusals(
    session: Session, peers: Iterable[tuple[str, str]], *, now: dt.datetime | None = None
) -> int:
    """Store refused TLS handshakes: ``(peer address, reason)`` pairs.

    Mosquitto reports no certificate identity for a handshake it refused, so
    these carry the peer address and are not attributed to a tenant.
    """
    now = now or utcnow()
    rows = [
        {
            "tenant_id": None,
            "device_pk": None,
            "type": "authz.handshake-refused",
            "at": now,
            "count": 1,
            "fields": json.dumps({"peer": peer, "reason": reason}),
        }
        for peer, reason in peers
    ]
    return telemetry.record_events(session, rows)


def list_events(
    session: Session,
    principal: Principal,
    *,
    device_id: str | None = None,
    type_prefix: str = "authz.",
    before: int | None = None,
    limit: int = 100,
) -> list[tuple[telemetry.Event, str | None]]:
    """The tenant's newest events (with the device id each names), newest first
    (``before``: only events older than event ``before``, the next page)."""
    require(principal, Permission.DEVICE_READ)
    return telemetry.query(
        session,
        principal,
        device_id=device_id,
        type_prefix=type_prefix,
        before=before,
        limit=limit,
    )


def denial_counts(session: Session, principal: Principal, device_id: str) -> dict[str, int]:
    """How many denials of each kind the broker counted for one device."""
    require(principal, Permission.DEVICE_READ)
    device = identity.get_device(session, principal, device_id)
    return telemetry.event_counts(session, device_pk=device.id, type_prefix="authz.")


def authorize_command(
    session: Session,
    principal: Principal,
    device_id: str,
    name: str,
    *,
    now: dt.datetime | None = None,
) -> str:
    """Check that ``device_id`` may receive command ``name``, audit the
    sending, and return the topic to publish it on.

    Raises:
        PermissionDeniedError: the operator may not command devices, or the
            device's roles do not list the command.
        NotFoundError: no such device in this tenant.
        InvalidInputError: malformed command name.
    """
    require(principal, Permission.DEVICE_MANAGE)
    if not _COMMAND_NAME.fullmatch(name):
        raise InvalidInputError("command names are 1-48 characters of [a-z0-9._-]")
    topic = f"fw/{principal.tenant_name}/{device_id}/cmd/{name}"
    decision, version, device = explain(
        session, principal, device_id, action="receive", topic=topic
    )
    identity.authorize_on_devices(session, principal, scope.DEVICE_COMMAND, [device.id])
    if not decision.allowed:
        raise PermissionDeniedError(
            f"device {device_id!r} may not receive command {name!r} under policy "
            f"version {version.version}: {decision.reason}"
        )
    audit.append(
        session,
        actor=principal.actor,
        action="device.command",
        subject=f"device:{device_id}",
        tenant_id=principal.tenant_id,
        details={"command": name, "policy_version": version.version},
        now=now or utcnow(),
    )
    return topic
