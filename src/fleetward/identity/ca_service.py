"""CA use cases: tenant PKI creation, offline-root issuing CAs, CRL publication, OCSP.

A tenant gets a root CA and one issuing CA per environment. The root key may
be written outside the installation (``offline_root_dir``); then new issuing
CAs are created as CSRs and their certificates, signed offline, imported.

CRLs are built by :func:`publish_crls`, called by the server's publisher
thread and by ``fleetward crl publish``, never by a revocation request.
"""

from __future__ import annotations

import datetime as dt
import secrets
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import select
from sqlalchemy.orm import Session

from fleetward import audit, tenancy
from fleetward.errors import ConflictError, InvalidInputError, NotFoundError
from fleetward.identity import ca as ca_profile
from fleetward.identity import publication, rotation
from fleetward.identity.models import CertificateAuthority
from fleetward.identity.pki import Pki
from fleetward.keys import (
    Signer,
    generate_file_signer,
    sign_certificate,
    sign_csr,
)
from fleetward.store import utcnow
from fleetward.tenancy import Tenant
from fleetward.tenancy.roles import ENVIRONMENTS

__all__ = [
    "Pki",
    "active_issuing_ca",
    "create_issuing_csr",
    "create_tenant_pki",
    "get_ca",
    "import_issuing_certificate",
    "list_cas",
    "published_issuing_ca",
    "sign_issuing_csr_offline",
]

OFFLINE = "offline:"


def _key_prefix(tenant: str, now: dt.datetime) -> str:
    """A unique, readable name for new CA keys (time plus randomness)."""
    return f"{tenant}-{now.strftime('%Y%m%d%H%M%S')}-{secrets.token_hex(3)}"


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(Encoding.PEM).decode()


def _add_ca(
    session: Session,
    *,
    tenant_id: int,
    environment: str | None,
    cert: x509.Certificate,
    key_uri: str,
    parent_id: int | None,
    actor: str,
    now: dt.datetime,
) -> CertificateAuthority:
    """Store an active CA (root when ``environment`` is None) and audit it."""
    kind = "root" if environment is None else "issuing"
    ca = CertificateAuthority(
        tenant_id=tenant_id,
        kind=kind,
        environment=environment,
        status="active",
        subject=cert.subject.rfc4514_string(),
        key_uri=key_uri,
        certificate_pem=_pem(cert),
        parent_id=parent_id,
        created_at=now,
    )
    session.add(ca)
    session.flush()
    audit.append(
        session,
        actor=actor,
        action="ca.create",
        subject=f"ca:{ca.id}",
        tenant_id=tenant_id,
        details={"kind": kind, "environment": environment, "key": key_uri, "subject": ca.subject},
        now=now,
    )
    return ca


def create_tenant_pki(
    session: Session,
    pki: Pki,
    *,
    tenant: Tenant,
    actor: str,
    backend: str = "file",
    offline_root_dir: Path | None = None,
    now: dt.datetime | None = None,
) -> list[CertificateAuthority]:
    """Create the root CA and an issuing CA per environment (``test``,
    ``production`` and ``drill``).

    Args:
        backend: ``file`` or ``pkcs11`` for the issuing CA keys (and the root,
            unless it goes offline).
        offline_root_dir: write the root key there (encrypted) instead of
            keeping it; it signs the two issuing CAs now and is not used again
            by fleetward.
    """
    now = now or utcnow()
    prefix = _key_prefix(tenant.name, now)
    if offline_root_dir is not None:
        offline_root_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        root_signer = generate_file_signer(
            offline_root_dir / f"{prefix}-root.pem", passphrase=pki.keyring.passphrase
        )
        root_uri = OFFLINE + root_signer.uri
    else:
        root_signer = pki.keyring.generate(f"{prefix}-root", backend=backend)
        root_uri = root_signer.uri
    root_cert = sign_certificate(
        ca_profile.root_ca_certificate(
            public_key=root_signer.public_key(),
            tenant=tenant.name,
            serial=x509.random_serial_number(),
            now=now,
        ),
        root_signer,
    )
    root = _add_ca(
        session,
        tenant_id=tenant.id,
        environment=None,
        cert=root_cert,
        key_uri=root_uri,
        parent_id=None,
        actor=actor,
        now=now,
    )
    created = [root]
    for env in ENVIRONMENTS:
        signer = pki.keyring.generate(f"{prefix}-{env}", backend=backend)
        csr = sign_csr(ca_profile.issuing_ca_csr(tenant=tenant.name, environment=env), signer)
        cert = sign_certificate(
            ca_profile.issuing_ca_certificate(
                csr=csr,
                root=root_cert,
                environment=env,
                serial=x509.random_serial_number(),
                now=now,
            ),
            root_signer,
        )
        ca = _add_ca(
            session,
            tenant_id=tenant.id,
            environment=env,
            cert=cert,
            key_uri=signer.uri,
            parent_id=root.id,
            actor=actor,
            now=now,
        )
        created.append(ca)
    for ca in created[1:]:
        publication.publish_now(session, pki, ca, now)
    return created


def ensure_issuing_cas(
    session: Session, pki: Pki, *, tenant: Tenant, actor: str, now: dt.datetime | None = None
) -> list[CertificateAuthority]:
    """Create the ``drill`` issuing CA if the tenant lacks one (an
    installation made before the drill environment existed), when the root
    key is online; returns the CAs created. Other environments are left as
    the operator keeps them (one may be empty on purpose).
    """
    now = now or utcnow()
    root = root_ca(session, tenant_id=tenant.id)
    if root.key_uri.startswith(OFFLINE) or root.certificate_pem is None:
        return []
    have = set(
        session.execute(
            select(CertificateAuthority.environment).where(
                CertificateAuthority.tenant_id == tenant.id,
                CertificateAuthority.kind == "issuing",
                CertificateAuthority.status == "active",
            )
        ).scalars()
    )
    created = []
    root_signer = pki.keyring.open(root.key_uri)
    for env in ("drill",):
        if env in have:
            continue
        ca, csr = create_issuing_csr(
            session, pki, tenant=tenant, environment=env, actor=actor, now=now,
            backend="pkcs11" if root.key_uri.startswith("pkcs11:") else "file",
        )  # fmt: skip
        cert = sign_issuing_csr_offline(
            root_cert_pem=root.certificate_pem.encode(), root_signer=root_signer,
            csr_pem=csr, environment=env,
        )  # fmt: skip
        created.append(
            import_issuing_certificate(
                session,
                pki,
                tenant_id=tenant.id,
                ca_id=ca.id,
                certificate_pem=cert,
                actor=actor,
                now=now,
            )
        )
    return created


def list_cas(session: Session, *, tenant_id: int) -> list[CertificateAuthority]:
    """Every CA of a tenant."""
    stmt = select(CertificateAuthority).where(CertificateAuthority.tenant_id == tenant_id)
    return list(session.execute(stmt.order_by(CertificateAuthority.id)).scalars())


def get_ca(session: Session, *, tenant_id: int | None, ca_id: int) -> CertificateAuthority:
    """A CA by id, within a tenant (``tenant_id=None``: any, for public endpoints)."""
    ca = session.get(CertificateAuthority, ca_id)
    if ca is None or (tenant_id is not None and ca.tenant_id != tenant_id):
        raise NotFoundError(f"CA {ca_id} not found")
    return ca


def root_ca(session: Session, *, tenant_id: int) -> CertificateAuthority:
    """The tenant's active root CA."""
    stmt = select(CertificateAuthority).where(
        CertificateAuthority.tenant_id == tenant_id,
        CertificateAuthority.kind == "root",
        CertificateAuthority.status == "active",
    )
    ca = session.execute(stmt).scalar()
    if ca is None:
        raise NotFoundError("tenant has no root CA")
    return ca


def active_issuing_ca(
    session: Session, *, tenant_id: int, environment: str
) -> CertificateAuthority:
    """The issuing CA that signs new certificates for an environment."""
    if environment not in ENVIRONMENTS:
        raise InvalidInputError(f"unknown environment {environment!r}; one of {ENVIRONMENTS}")
    stmt = select(CertificateAuthority).where(
        CertificateAuthority.tenant_id == tenant_id,
        CertificateAuthority.kind == "issuing",
        CertificateAuthority.environment == environment,
        CertificateAuthority.status == "active",
    )
    ca = session.execute(stmt).scalar()
    if ca is None:
        raise ConflictError(f"no active {environment} issuing CA for this tenant")
    return ca


def published_issuing_ca(
    session: Session, *, tenant_name: str, environment: str
) -> CertificateAuthority:
    """The active issuing CA of a tenant named in a public URL (EST ``cacerts``).

    One query for tenant and CA together, and one answer whether the tenant
    is unknown or lacks the CA: a public lookup must not tell which tenant
    names exist. (A tenant's CA certificates themselves are public by
    design: devices fetch them.)

    Raises:
        NotFoundError: no such tenant, or it has no active CA there.
    """
    ca = session.execute(
        select(CertificateAuthority).where(
            CertificateAuthority.tenant_id == tenancy.tenant_id_named(tenant_name),
            CertificateAuthority.kind == "issuing",
            CertificateAuthority.environment == environment,
            CertificateAuthority.status == "active",
            CertificateAuthority.certificate_pem.is_not(None),
        )
    ).scalar()
    if ca is None:
        raise NotFoundError("no CA certificates for this label")
    return ca


def create_issuing_csr(
    session: Session,
    pki: Pki,
    *,
    tenant: Tenant,
    environment: str,
    actor: str,
    backend: str = "file",
    now: dt.datetime | None = None,
) -> tuple[CertificateAuthority, bytes]:
    """Generate a new issuing CA key and return a pending CA with its CSR (PEM).

    The CSR goes to wherever the root key is kept; the signed certificate
    comes back through :func:`import_issuing_certificate`.
    """
    if environment not in ENVIRONMENTS:
        raise InvalidInputError(f"unknown environment {environment!r}; one of {ENVIRONMENTS}")
    now = now or utcnow()
    signer = pki.keyring.generate(f"{_key_prefix(tenant.name, now)}-{environment}", backend=backend)
    csr = sign_csr(ca_profile.issuing_ca_csr(tenant=tenant.name, environment=environment), signer)
    csr_pem = csr.public_bytes(Encoding.PEM)
    ca = CertificateAuthority(
        tenant_id=tenant.id,
        kind="issuing",
        environment=environment,
        status="pending",
        subject=csr.subject.rfc4514_string(),
        key_uri=signer.uri,
        csr_pem=csr_pem.decode(),
        parent_id=root_ca(session, tenant_id=tenant.id).id,
        created_at=now,
    )
    session.add(ca)
    session.flush()
    audit.append(
        session,
        actor=actor,
        action="ca.csr",
        subject=f"ca:{ca.id}",
        tenant_id=tenant.id,
        details={"environment": environment, "key": signer.uri},
        now=now,
    )
    return ca, csr_pem


def sign_issuing_csr_offline(
    *, root_cert_pem: bytes, root_signer: Signer, csr_pem: bytes, environment: str
) -> bytes:
    """Sign an issuing CA CSR with the (offline) root; no database involved.

    Returns:
        The issuing CA certificate, PEM.
    """
    if environment not in ENVIRONMENTS:
        raise InvalidInputError(f"unknown environment {environment!r}; one of {ENVIRONMENTS}")
    try:
        root = x509.load_pem_x509_certificate(root_cert_pem)
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as exc:
        raise InvalidInputError(f"cannot parse root certificate or CSR: {exc}") from exc
    if root.public_key() != root_signer.public_key():
        raise InvalidInputError("the root key does not match the root certificate")
    cert = sign_certificate(
        ca_profile.issuing_ca_certificate(
            csr=csr,
            root=root,
            environment=environment,
            serial=x509.random_serial_number(),
            now=utcnow(),
        ),
        root_signer,
    )
    return cert.public_bytes(Encoding.PEM)


def import_issuing_certificate(
    session: Session,
    pki: Pki,
    *,
    tenant_id: int,
    ca_id: int,
    certificate_pem: bytes,
    actor: str,
    trust_window: dt.timedelta = rotation.DEFAULT_TRUST_WINDOW,
    reason: str = "superseded",
    distrust_when_migrated: bool = False,
    now: dt.datetime | None = None,
) -> CertificateAuthority:
    """Activate a pending issuing CA with its signed certificate.

    The previous active issuing CA of the environment is retired: it signs no
    new certificates, keeps answering CRL and OCSP for the ones it issued,
    and stays a trust anchor of its environment's TLS endpoints for
    ``trust_window`` (its dual-trust window; see :mod:`.rotation`).

    Args:
        trust_window: how long devices have to renew under the new CA.
        reason: what the retired CA's certificates are revoked for once
            superseded or when the window closes (``superseded``, or
            ``cACompromise`` when it was compromised).
        distrust_when_migrated: close the window as soon as no device
            depends on the retired CA.

    Raises:
        InvalidInputError: a window or reason :func:`.rotation.check_rotation`
            refuses, or a certificate that does not fit the pending CA.
        ConflictError: the CA is not pending.
    """
    rotation.check_rotation(window=trust_window, reason=reason)
    now = now or utcnow()
    ca = get_ca(session, tenant_id=tenant_id, ca_id=ca_id)
    if ca.status != "pending" or ca.environment is None:
        raise ConflictError(f"CA {ca_id} is not waiting for a certificate")
    try:
        cert = x509.load_pem_x509_certificate(certificate_pem)
    except ValueError as exc:
        raise InvalidInputError(f"cannot parse certificate: {exc}") from exc
    root = pki.certificate(root_ca(session, tenant_id=tenant_id))
    signer = pki.keyring.open(ca.key_uri)
    ca_profile.check_issuing_certificate(
        cert, root=root, public_key=signer.public_key(), environment=ca.environment
    )
    previous = session.execute(
        select(CertificateAuthority).where(
            CertificateAuthority.tenant_id == tenant_id,
            CertificateAuthority.kind == "issuing",
            CertificateAuthority.environment == ca.environment,
            CertificateAuthority.status == "active",
        )
    ).scalar()
    if previous is not None:
        previous.status = "retired"
        previous.trusted_until = now + trust_window
        previous.retirement_reason = reason
        previous.retired_by = actor
        previous.distrust_when_migrated = distrust_when_migrated
        audit.append(
            session,
            actor=actor,
            action="ca.retire",
            subject=f"ca:{previous.id}",
            tenant_id=tenant_id,
            details={
                "environment": ca.environment,
                "successor": ca.id,
                "trusted_until": previous.trusted_until.isoformat(),
                "reason": reason,
                "distrust_when_migrated": distrust_when_migrated,
            },
            now=now,
        )
    ca.status = "active"
    ca.certificate_pem = _pem(cert)
    audit.append(
        session,
        actor=actor,
        action="ca.activate",
        subject=f"ca:{ca.id}",
        tenant_id=tenant_id,
        details={"environment": ca.environment, "retired": previous.id if previous else None},
        now=now,
    )
    publication.publish_now(session, pki, ca, now)
    return ca
