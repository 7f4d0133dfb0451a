"""Each tenant's TUF repository: keys, roles, publication, root rotation.

Every signed metadata version is stored as served (``tuf_metadata``); the
HTTP routes only read (:func:`metadata_bytes`, :func:`trusted_root`,
:func:`release_for_target`). Writes follow TUF's order inside the caller's
transaction: the changed targets role(s), then a new snapshot, then a new
timestamp. The signing itself is pure (:mod:`fleetward.ota._tuf_repo`); this
module holds the keys' records and the stored versions.

Roles: ``root`` (threshold of several keys, which may be kept offline and
brought in only to rotate), ``targets`` (delegates one role per product),
``product-<name>`` (signed by its release signers' threshold when a release
becomes deployable), and the online ``snapshot`` and ``timestamp``, re-signed
by :func:`refresh_online_roles` before half their validity is gone.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import ScalarSelect, func, select, update
from sqlalchemy.orm import Session

from fleetward import audit, tenancy
from fleetward.errors import InvalidInputError, NotFoundError
from fleetward.keys import Signer, generate_file_signer, open_signer
from fleetward.keys.ring import KeyRing
from fleetward.ota import _tuf_repo as tuf_repo
from fleetward.ota.models import Release, TufKey, TufMetadata, TufRole
from fleetward.store.db import utcnow
from fleetward.tenancy import Tenant, scope
from fleetward.tenancy.roles import Principal

__all__ = [
    "OfflineKeys",
    "ensure_product",
    "ensure_repository",
    "metadata_bytes",
    "publish_product",
    "refresh_online_roles",
    "release_for_target",
    "role_keys",
    "role_threshold",
    "rotate_root",
    "trusted_root",
]

_NO_METADATA = "no such metadata"  # one answer for a missing file and an unknown tenant
_NO_TARGET = "no such target"
_META_NAME = re.compile(r"^(?:(\d{1,9})\.)?([A-Za-z0-9][A-Za-z0-9._-]{0,79})\.json$")
_PRODUCT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def _keys(session: Session, tenant_id: int, role: str) -> list[TufKey]:
    return list(
        session.execute(
            select(TufKey)
            .where(TufKey.tenant_id == tenant_id, TufKey.role == role)
            .order_by(TufKey.id)
        ).scalars()
    )


def _signers(session: Session, keyring: KeyRing, tenant_id: int, role: str) -> list[Signer]:
    return [keyring.open(k.key_uri) for k in _keys(session, tenant_id, role)]


def role_threshold(session: Session, tenant_id: int, role: str) -> int:
    """How many of ``role``'s keys must sign it.

    Raises:
        NotFoundError: the tenant has no such role (a product not created yet).
    """
    row = session.execute(
        select(TufRole.threshold).where(TufRole.tenant_id == tenant_id, TufRole.name == role)
    ).scalar_one_or_none()
    if row is None:
        raise NotFoundError(f"no TUF role {role!r}")
    return int(row)


def role_keys(session: Session, *, tenant_id: int, role: str) -> tuple[int, tuple[str, ...]] | None:
    """A role's threshold and the URIs of its keys (where their private halves
    are: ``file:`` or ``pkcs11:``), or None when the tenant has no such role."""
    threshold = session.execute(
        select(TufRole.threshold).where(TufRole.tenant_id == tenant_id, TufRole.name == role)
    ).scalar_one_or_none()
    if threshold is None:
        return None
    return int(threshold), tuple(k.key_uri for k in _keys(session, tenant_id, role))


@dataclass(frozen=True)
class OfflineKeys:
    """Where root keys go (and come from) when they are kept offline: an
    encrypted key file per key in ``directory``, under its own passphrase.
    fleetward records the public keys; the directory then leaves the server."""

    directory: Path
    passphrase: bytes

    def generate(self, name: str) -> Signer:
        """A new root key file."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        return generate_file_signer(self.directory / f"{name}.pem", passphrase=self.passphrase)

    def open_all(self) -> list[Signer]:
        """Every key file in the directory."""
        return [
            open_signer(f"file:{p}", passphrase=self.passphrase)
            for p in sorted(self.directory.glob("*.pem"))
        ]


def _new_keys(
    session: Session,
    keyring: KeyRing,
    tenant: Tenant,
    role: str,
    count: int,
    now: dt.datetime,
    *,
    offline: OfflineKeys | None = None,
) -> list[Signer]:
    signers = []
    stamp = now.strftime("%Y%m%dT%H%M%S%f")
    for i in range(count):
        name = f"tuf-{tenant.name}-{role}-{stamp}-{i}"
        signer = offline.generate(name) if offline is not None else keyring.generate(name)
        session.add(
            TufKey(
                tenant_id=tenant.id,
                role=role,
                keyid=tuf_repo.public_key(signer).keyid,
                key_uri=signer.uri,
                created_at=now,
            )
        )
        signers.append(signer)
    return signers


def _latest(session: Session, tenant_id: int, role: str) -> TufMetadata | None:
    return session.execute(
        select(TufMetadata)
        .where(TufMetadata.tenant_id == tenant_id, TufMetadata.role == role)
        .order_by(TufMetadata.version.desc())
        .limit(1)
    ).scalar_one_or_none()


def _store(session: Session, tenant_id: int, role: str, md: Any, now: dt.datetime) -> int:
    session.add(
        TufMetadata(
            tenant_id=tenant_id,
            role=role,
            version=md.signed.version,
            expires=md.signed.expires,
            body=md.to_bytes(),
            created_at=now,
        )
    )
    return int(md.signed.version)


def _next_version(session: Session, tenant_id: int, role: str) -> int:
    latest = _latest(session, tenant_id, role)
    return (latest.version if latest else 0) + 1


def _targets_roles(session: Session, tenant_id: int) -> dict[str, int]:
    rows = session.execute(
        select(TufMetadata.role, func.max(TufMetadata.version))
        .where(
            TufMetadata.tenant_id == tenant_id,
            TufMetadata.role.not_in(("root", "snapshot", "timestamp")),
        )
        .group_by(TufMetadata.role)
    )
    return {role: int(v) for role, v in rows}


def _publish_snapshot_and_timestamp(
    session: Session, keyring: KeyRing, tenant_id: int, now: dt.datetime
) -> None:
    session.flush()
    [snapshot_key] = _signers(session, keyring, tenant_id, "snapshot")
    [timestamp_key] = _signers(session, keyring, tenant_id, "timestamp")
    snap = tuf_repo.build_snapshot(
        version=_next_version(session, tenant_id, "snapshot"),
        roles=_targets_roles(session, tenant_id),
        signer=snapshot_key,
        now=now,
    )
    _store(session, tenant_id, "snapshot", snap, now)
    ts = tuf_repo.build_timestamp(
        version=_next_version(session, tenant_id, "timestamp"),
        snapshot_version=snap.signed.version,
        signer=timestamp_key,
        now=now,
    )
    _store(session, tenant_id, "timestamp", ts, now)


def _products(session: Session, tenant_id: int) -> list[str]:
    names = session.execute(
        select(TufRole.name).where(
            TufRole.tenant_id == tenant_id, TufRole.name.startswith("product-")
        )
    ).scalars()
    return sorted(n[len("product-") :] for n in names)


def _publish_targets(session: Session, keyring: KeyRing, tenant_id: int, now: dt.datetime) -> None:
    products = {
        p: tuf_repo.RoleKeys(
            _signers(session, keyring, tenant_id, tuf_repo.product_role(p)),
            role_threshold(session, tenant_id, tuf_repo.product_role(p)),
        )
        for p in _products(session, tenant_id)
    }
    md = tuf_repo.build_targets(
        version=_next_version(session, tenant_id, "targets"),
        products=products,
        signers=_signers(session, keyring, tenant_id, "targets"),
        now=now,
    )
    _store(session, tenant_id, "targets", md, now)


def ensure_repository(
    session: Session,
    keyring: KeyRing,
    tenant: Tenant,
    *,
    root_threshold: int = 2,
    root_keys: int = 3,
    offline_root: OfflineKeys | None = None,
    now: dt.datetime | None = None,
) -> bool:
    """Create the tenant's repository (keys, root, targets, snapshot,
    timestamp) unless it exists; returns whether it was created. With
    ``offline_root`` the root keys are written there, not to the key ring."""
    if _latest(session, tenant.id, "root") is not None:
        return False
    if not 1 <= root_threshold <= root_keys:
        raise InvalidInputError("root threshold must be between 1 and the number of root keys")
    now = now or utcnow()
    root = _new_keys(session, keyring, tenant, "root", root_keys, now, offline=offline_root)
    targets = _new_keys(session, keyring, tenant, "targets", 1, now)
    [snapshot] = _new_keys(session, keyring, tenant, "snapshot", 1, now)
    [timestamp] = _new_keys(session, keyring, tenant, "timestamp", 1, now)
    for name, threshold in (
        ("root", root_threshold),
        ("targets", 1),
        ("snapshot", 1),
        ("timestamp", 1),
    ):
        session.add(TufRole(tenant_id=tenant.id, name=name, threshold=threshold))
    md = tuf_repo.build_root(
        version=1,
        root=tuf_repo.RoleKeys(root, root_threshold),
        targets=tuf_repo.RoleKeys(targets, 1),
        snapshot=snapshot,
        timestamp=timestamp,
        now=now,
    )
    _store(session, tenant.id, "root", md, now)
    _publish_targets(session, keyring, tenant.id, now)
    _publish_snapshot_and_timestamp(session, keyring, tenant.id, now)
    audit.append(
        session,
        actor="system",
        action="ota.repository.create",
        subject=f"tenant:{tenant.name}",
        tenant_id=tenant.id,
        details={"root_threshold": root_threshold, "root_keys": root_keys},
        now=now,
    )
    return True


def _tenant(session: Session, principal: Principal) -> Tenant:
    return tenancy.get_tenant(session, principal.tenant_id)


def ensure_product(
    session: Session,
    keyring: KeyRing,
    principal: Principal,
    product: str,
    *,
    threshold: int = 1,
    now: dt.datetime | None = None,
) -> bool:
    """Delegate ``product`` to its own role with ``threshold`` release signers."""
    scope.authorize(principal, scope.OTA_PRODUCT)
    if not _PRODUCT.fullmatch(product or ""):
        raise InvalidInputError("product names are 1-64 characters of [A-Za-z0-9._-]")
    if not 1 <= threshold <= 5:
        raise InvalidInputError("a product's release threshold is between 1 and 5")
    now = now or utcnow()
    tenant = _tenant(session, principal)
    ensure_repository(session, keyring, tenant, now=now)
    role = tuf_repo.product_role(product)
    exists = session.execute(
        select(TufRole).where(TufRole.tenant_id == tenant.id, TufRole.name == role)
    ).scalar_one_or_none()
    if exists is not None:
        return False
    signers = _new_keys(session, keyring, tenant, role, threshold, now)
    session.add(TufRole(tenant_id=tenant.id, name=role, threshold=threshold))
    session.flush()
    _publish_targets(session, keyring, tenant.id, now)
    md = tuf_repo.build_product(version=1, releases=[], signers=signers, now=now)
    _store(session, tenant.id, role, md, now)
    _publish_snapshot_and_timestamp(session, keyring, tenant.id, now)
    audit.append(
        session,
        actor=principal.actor,
        action="ota.product.create",
        subject=f"product:{product}",
        tenant_id=tenant.id,
        details={"threshold": threshold},
        now=now,
    )
    return True


def _release_target(r: Release) -> tuf_repo.ReleaseTarget:
    return tuf_repo.ReleaseTarget(
        path=f"{r.product}/{r.version}/{r.filename}",
        length=r.length,
        sha256=r.sha256,
        custom={
            "release_id": r.id,
            "product": r.product,
            "version": r.version,
            "hardware": json.loads(r.hardware),
        },
    )


def publish_product(
    session: Session, keyring: KeyRing, tenant_id: int, product: str, now: dt.datetime
) -> None:
    """Sign a new version of ``product``'s role listing its deployable
    releases, then a new snapshot and timestamp."""
    session.flush()
    role = tuf_repo.product_role(product)
    deployable = session.execute(
        select(Release)
        .where(
            Release.tenant_id == tenant_id,
            Release.product == product,
            Release.state == "deployable",
        )
        .order_by(Release.id)
    ).scalars()
    md = tuf_repo.build_product(
        version=_next_version(session, tenant_id, role),
        releases=[_release_target(r) for r in deployable],
        signers=_signers(session, keyring, tenant_id, role),
        now=now,
    )
    _store(session, tenant_id, role, md, now)
    _publish_snapshot_and_timestamp(session, keyring, tenant_id, now)


# -- serving and upkeep ---------------------------------------------------------


def _tenant_named(tenant_name: str) -> ScalarSelect[int]:
    """The id of the tenant called ``tenant_name``, as a subquery (NULL for none).

    The public repository routes look the tenant up inside the one query
    that reads the file, so an unknown tenant and a known tenant without
    that file cost the same and answer the same 404: the repository does not
    tell which tenant names exist (a tenant's metadata, once it has a
    repository, is public by design).
    """
    return tenancy.tenant_id_named(tenant_name)


def metadata_bytes(session: Session, tenant_name: str, filename: str) -> bytes:
    """A metadata file as a TUF client asks for it (``timestamp.json`` or
    ``<version>.<role>.json``).

    Raises:
        NotFoundError: no such file (the same answer for an unknown tenant).
    """
    m = _META_NAME.fullmatch(filename)
    if not m:
        raise NotFoundError(_NO_METADATA)
    version, role = m.group(1), m.group(2)
    if version is None and role != "timestamp":
        raise NotFoundError("only timestamp.json is served without a version")
    stmt = select(TufMetadata.body).where(
        TufMetadata.tenant_id == _tenant_named(tenant_name), TufMetadata.role == role
    )
    if version is None:
        stmt = stmt.order_by(TufMetadata.version.desc()).limit(1)
    else:
        stmt = stmt.where(TufMetadata.version == int(version))
    body = session.execute(stmt).scalars().first()
    if body is None:
        raise NotFoundError(_NO_METADATA)
    return body


def trusted_root(session: Session, tenant_name: str) -> bytes:
    """The newest root (what a device is provisioned with, or bootstraps from)."""
    body = session.execute(
        select(TufMetadata.body)
        .where(TufMetadata.tenant_id == _tenant_named(tenant_name), TufMetadata.role == "root")
        .order_by(TufMetadata.version.desc())
        .limit(1)
    ).scalar()
    if body is None:
        raise NotFoundError(_NO_METADATA)
    return body


def release_for_target(session: Session, tenant_name: str, path: str) -> Release:
    """The release behind a consistent-snapshot target URL path
    ``<product>/<version>/<sha256>.<filename>`` (any state: TUF decides
    whether the client trusts it).

    Raises:
        NotFoundError: no release of this tenant has that content there
            (the same answer for an unknown tenant).
    """
    parts = path.split("/")
    if len(parts) != 3 or "." not in parts[2]:
        raise NotFoundError(_NO_TARGET)
    product, version, hashed = parts
    sha, _, filename = hashed.partition(".")
    row = session.execute(
        select(Release).where(
            Release.tenant_id == _tenant_named(tenant_name),
            Release.product == product,
            Release.version == version,
            Release.sha256 == sha,
            Release.filename == filename,
        )
    ).scalar_one_or_none()
    if row is None:
        raise NotFoundError(_NO_TARGET)
    return row


def refresh_online_roles(
    session: Session, keyring: KeyRing, *, now: dt.datetime | None = None
) -> list[str]:
    """Re-sign snapshot and timestamp of every repository past half their
    validity (the publisher calls this); returns the tenants refreshed."""
    now = now or utcnow()
    refreshed = []
    for tenant_id, name in tenancy.tenant_names(session).items():
        ts = _latest(session, tenant_id, "timestamp")
        snap = _latest(session, tenant_id, "snapshot")
        if ts is None or snap is None:
            continue
        if (
            ts.expires - now < tuf_repo.EXPIRY["timestamp"] / 2
            or snap.expires - now < tuf_repo.EXPIRY["snapshot"] / 2
        ):
            _publish_snapshot_and_timestamp(session, keyring, tenant_id, now)
            refreshed.append(name)
    return refreshed


def rotate_root(
    session: Session,
    keyring: KeyRing,
    principal: Principal,
    *,
    keys: int = 3,
    threshold: int = 2,
    rotate_online: bool = True,
    old_root: OfflineKeys | None = None,
    new_root_offline: OfflineKeys | None = None,
    now: dt.datetime | None = None,
) -> int:
    """Replace the root keys (and by default the snapshot and timestamp keys).

    The new root (version N+1) is signed by the old root keys (the threshold
    a client trusts today) and by the new ones (the threshold it will trust
    next), so a device holding any earlier root walks forward to it. Returns
    the new root version.
    """
    scope.authorize(principal, scope.OTA_ROOT_ROTATE)
    if not 1 <= threshold <= keys <= 9:
        raise InvalidInputError("root threshold must be between 1 and the number of keys (<= 9)")
    now = now or utcnow()
    tenant = _tenant(session, principal)
    latest = _latest(session, tenant.id, "root")
    if latest is None:
        raise NotFoundError("no repository yet")
    old_rows = _keys(session, tenant.id, "root")
    if old_root is not None:
        # Offline root keys brought in for this signing only; they must be
        # the keys the current root names.
        wanted = {k.keyid for k in old_rows}
        old_signers = [k for k in old_root.open_all() if tuf_repo.public_key(k).keyid in wanted]
    else:
        old_signers = _signers(session, keyring, tenant.id, "root")
    threshold_now = role_threshold(session, tenant.id, "root")
    if len(old_signers) < threshold_now:
        raise InvalidInputError(
            f"the current root needs {threshold_now} of its keys to sign a rotation; "
            f"{len(old_signers)} available"
        )
    new_root = _new_keys(session, keyring, tenant, "root", keys, now, offline=new_root_offline)
    for row in old_rows:
        row.role = "retired-root"
    if rotate_online:
        for role in ("snapshot", "timestamp"):
            for row in _keys(session, tenant.id, role):
                row.role = f"retired-{role}"
            _new_keys(session, keyring, tenant, role, 1, now)
    session.execute(
        update(TufRole)
        .where(TufRole.tenant_id == tenant.id, TufRole.name == "root")
        .values(threshold=threshold)
    )
    session.flush()
    [snapshot] = _signers(session, keyring, tenant.id, "snapshot")
    [timestamp] = _signers(session, keyring, tenant.id, "timestamp")
    md = tuf_repo.build_root(
        version=latest.version + 1,
        root=tuf_repo.RoleKeys(new_root, threshold),
        targets=tuf_repo.RoleKeys(_signers(session, keyring, tenant.id, "targets"), 1),
        snapshot=snapshot,
        timestamp=timestamp,
        now=now,
        sign_with=[*old_signers, *new_root],
    )
    version = _store(session, tenant.id, "root", md, now)
    if rotate_online:
        _publish_snapshot_and_timestamp(session, keyring, tenant.id, now)
    audit.append(
        session,
        actor=principal.actor,
        action="ota.root.rotate",
        subject=f"tenant:{tenant.name}",
        tenant_id=tenant.id,
        details={"version": version, "keys": keys, "threshold": threshold},
        now=now,
    )
    return version
