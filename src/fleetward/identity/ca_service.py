"""CA use cases: tenant PKI creation, offline-root issuing CAs, CRL publication, OCSP.

A tenant gets a root CA and one issuing CA per environment. The root key may
be written outside the installation (``offline_root_dir``); then new issuing
CAs are created as CSRs and their certificates, signed offline, imported.

CRLs are built by :func:`publish_crls`, called by the server's publisher
thread and by ``fleetward crl publish``, never by a revocation request.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp
from sqlalchemy import Connection, String, bindparam, or_, select, type_coerce
from sqlalchemy.orm import Session

from fleetward.audit import service as audit
from fleetward.errors import ConflictError, FleetwardError, InvalidInputError, NotFoundError
from fleetward.identity import ca as ca_profile
from fleetward.identity import crl_der, revocation
from fleetward.identity.models import CertificateAuthority, CertificateRecord, PublishedCrl
from fleetward.keys import (
    Signer,
    generate_file_signer,
    sign_certificate,
    sign_crl,
    sign_csr,
    sign_ocsp_response,
)
from fleetward.keys.ring import KeyRing
from fleetward.store import Database, utcnow
from fleetward.tenancy.models import Tenant
from fleetward.tenancy.roles import ENVIRONMENTS

__all__ = [
    "Pki",
    "active_issuing_ca",
    "create_issuing_csr",
    "create_tenant_pki",
    "get_ca",
    "get_crl",
    "import_issuing_certificate",
    "list_cas",
    "ocsp_answer",
    "publish_crls",
    "sign_issuing_csr_offline",
]

OFFLINE = "offline:"


@dataclass
class Pki:
    """What issuing, CRL and OCSP need beyond the database."""

    keyring: KeyRing
    public_url: str
    crl_validity: dt.timedelta = dt.timedelta(hours=24)
    ocsp_validity: dt.timedelta = dt.timedelta(hours=1)
    _certs: dict[int, x509.Certificate] = field(default_factory=dict)
    _by_key_hash: dict[bytes, _Responder] = field(default_factory=dict)
    crl_dir: Path | None = None  # set on SQLite: CRL DER goes to files, see PublishedCrl
    crl_entries: dict[int, _EncodedEntries] = field(default_factory=dict)
    # (tenant, environment) -> (expiry, issuer) for issuance; a CA rotation in
    # this process clears it, other processes pick the new CA up on expiry.
    issuers: dict[tuple[int, str], tuple[float, object]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def crl_url(self, ca_id: int) -> str:
        """Where a CA's CRL is published."""
        return f"{self.public_url}/crl/{ca_id}.crl"

    @property
    def ocsp_url(self) -> str:
        """The OCSP responder."""
        return f"{self.public_url}/ocsp"

    def certificate(self, ca: CertificateAuthority) -> x509.Certificate:
        """The parsed certificate of an active or retired CA (cached)."""
        if ca.certificate_pem is None:
            raise ConflictError(f"CA {ca.id} has no certificate yet (pending import)")
        return self.certificate_from_pem(ca.id, ca.certificate_pem)

    def certificate_from_pem(self, ca_id: int, pem: str) -> x509.Certificate:
        """Parse (once) the certificate of CA ``ca_id``."""
        cert = self._certs.get(ca_id)
        if cert is None:
            cert = x509.load_pem_x509_certificate(pem.encode())
            with self._lock:
                self._certs[ca_id] = cert
        return cert

    def responder(self, conn: Connection, key_hash: bytes, name_hash: bytes) -> _Responder | None:
        """The issuing CA an OCSP CertID names, by SHA-1 or SHA-256 key and name hash.

        The index is built from the database on a miss (a new CA), so
        answering never queries CAs on the hot path.
        """
        found = self._by_key_hash.get(key_hash)
        if found is None:
            stmt = select(
                CertificateAuthority.id,
                CertificateAuthority.key_uri,
                CertificateAuthority.certificate_pem,
            ).where(
                CertificateAuthority.kind == "issuing",
                CertificateAuthority.certificate_pem.is_not(None),
            )
            index: dict[bytes, _Responder] = {}
            for ca_id, key_uri, pem in conn.execute(stmt):
                assert pem is not None  # filtered above
                cert = x509.load_pem_x509_certificate(pem.encode())
                bits = _public_key_bits(cert)
                name = cert.subject.public_bytes()
                names = frozenset(
                    {hashlib.sha1(name).digest(), hashlib.sha256(name).digest()}  # noqa: S324 - OCSP CertID
                )
                entry = _Responder(ca_id=ca_id, key_uri=key_uri, cert=cert, name_hashes=names)
                index[hashlib.sha1(bits).digest()] = entry  # noqa: S324 - OCSP CertID default
                index[hashlib.sha256(bits).digest()] = entry
            with self._lock:
                self._by_key_hash = index
            found = index.get(key_hash)
        if found is None or name_hash not in found.name_hashes:
            return None
        return found


@dataclass(frozen=True)
class _Responder:
    """What answering OCSP for one issuing CA needs, cached per process."""

    ca_id: int
    key_uri: str
    cert: x509.Certificate
    name_hashes: frozenset[bytes]


def _public_key_bits(cert: x509.Certificate) -> bytes:
    """The subjectPublicKey BIT STRING contents (what OCSP's issuerKeyHash hashes)."""
    key = cert.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        return key.public_bytes(Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key.public_bytes(Encoding.Raw, serialization.PublicFormat.Raw)
    if isinstance(key, rsa.RSAPublicKey):
        return key.public_bytes(Encoding.DER, serialization.PublicFormat.PKCS1)
    raise InvalidInputError("unsupported CA key type")


def _key_prefix(tenant: str, now: dt.datetime) -> str:
    """A unique, readable name for new CA keys (time plus randomness)."""
    return f"{tenant}-{now.strftime('%Y%m%d%H%M%S')}-{secrets.token_hex(3)}"


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(Encoding.PEM).decode()


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
    """Create the root CA and the ``test`` and ``production`` issuing CAs.

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
    root = CertificateAuthority(
        tenant_id=tenant.id,
        kind="root",
        environment=None,
        status="active",
        subject=root_cert.subject.rfc4514_string(),
        key_uri=root_uri,
        certificate_pem=_pem(root_cert),
        created_at=now,
    )
    session.add(root)
    session.flush()
    audit.append(
        session,
        actor=actor,
        action="ca.create",
        subject=f"ca:{root.id}",
        tenant_id=tenant.id,
        details={"kind": "root", "key": root_uri, "subject": root.subject},
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
        ca = CertificateAuthority(
            tenant_id=tenant.id,
            kind="issuing",
            environment=env,
            status="active",
            subject=cert.subject.rfc4514_string(),
            key_uri=signer.uri,
            certificate_pem=_pem(cert),
            parent_id=root.id,
            created_at=now,
        )
        session.add(ca)
        session.flush()
        audit.append(
            session,
            actor=actor,
            action="ca.create",
            subject=f"ca:{ca.id}",
            tenant_id=tenant.id,
            details={"kind": "issuing", "environment": env, "key": signer.uri},
            now=now,
        )
        created.append(ca)
    for ca in created[1:]:
        _publish_now(session, pki, ca, now)
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
    now: dt.datetime | None = None,
) -> CertificateAuthority:
    """Activate a pending issuing CA with its signed certificate.

    The previous active issuing CA of the environment is retired: it signs no
    new certificates but keeps answering CRL and OCSP for the ones it issued.
    """
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
    pki.issuers.clear()
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
    _publish_now(session, pki, ca, now)
    return ca


def _crl_rows(
    conn: Connection, ca_id: int, *, after: int | None, upto: int
) -> Iterator[tuple[str, dt.datetime | str, str | None]]:
    """Revoked entries of a CA with ``after < revocation_seq <= upto`` (all up to
    ``upto`` when ``after`` is None, rows without a sequence number included).
    SQLite times stay text: faster to encode than to parse."""
    when: Any = CertificateRecord.revoked_at
    if conn.dialect.name == "sqlite":
        when = type_coerce(CertificateRecord.revoked_at, String)
    stmt = select(CertificateRecord.serial, when, CertificateRecord.revocation_reason).where(
        CertificateRecord.ca_id == ca_id, CertificateRecord.status == "revoked"
    )
    if after is None:
        stmt = stmt.where(
            or_(
                CertificateRecord.revocation_seq.is_(None),
                CertificateRecord.revocation_seq <= upto,
            )
        )
    else:
        stmt = stmt.where(
            CertificateRecord.revocation_seq > after, CertificateRecord.revocation_seq <= upto
        )
    yield from conn.execute(stmt.execution_options(yield_per=50000))


@dataclass
class _EncodedEntries:
    """A publisher's encoded entries of one CA, up to a revocation sequence."""

    upto: int
    count: int
    der: bytearray


@dataclass(frozen=True)
class CrlBuild:
    """A freshly built CRL, not stored yet."""

    ca_id: int
    number: int
    this_update: dt.datetime
    next_update: dt.datetime
    entries: int
    revocations_seen: int
    der: bytes


def build_crl(
    conn: Connection,
    pki: Pki,
    *,
    ca_id: int,
    certificate: x509.Certificate,
    key_uri: str,
    number: int,
    now: dt.datetime,
    full: bool = False,
) -> CrlBuild:
    """Read a CA's revoked entries on ``conn`` and build its signed CRL.

    Reading happens in the caller's (read) transaction; encoding and signing
    need none, so a publisher never holds the write lock while it builds.
    Revocations are final, so a process keeps the entries it encoded and
    reads only the revocations it has not seen (by ``revocation_seq``);
    ``full`` reads everything again.
    """
    upto = conn.execute(
        select(CertificateAuthority.revocations).where(CertificateAuthority.id == ca_id)
    ).scalar_one()
    cached = None if full else pki.crl_entries.get(ca_id)
    if cached is None or cached.upto > upto:
        der, count = crl_der.encode_entries(_crl_rows(conn, ca_id, after=None, upto=upto))
        cached = _EncodedEntries(upto=upto, count=count, der=bytearray(der))
    elif cached.upto < upto:
        der, count = crl_der.encode_entries(_crl_rows(conn, ca_id, after=cached.upto, upto=upto))
        cached.der += der
        cached.count += count
        cached.upto = upto
    pki.crl_entries[ca_id] = cached
    entries, count = crl_der.revoked_certificates(bytes(cached.der)), cached.count
    signer = pki.keyring.open(key_uri)
    next_update = now + pki.crl_validity
    empty = sign_crl(
        revocation.crl_builder(
            issuer=certificate, number=number, this_update=now, next_update=next_update
        ),
        signer,
    )
    der = crl_der.assemble_crl(
        empty=empty, entries=entries, sign=signer.sign, public_key=signer.public_key()
    )
    return CrlBuild(
        ca_id=ca_id,
        number=number,
        this_update=now,
        next_update=next_update,
        entries=count,
        revocations_seen=upto,
        der=der,
    )


def _write_file(pki: Pki, build: CrlBuild) -> str | None:
    """Put the DER in ``pki.crl_dir`` (atomically) and return its name, if files are used."""
    if pki.crl_dir is None:
        return None
    pki.crl_dir.mkdir(parents=True, exist_ok=True)
    name = f"ca{build.ca_id}-{build.number}.der"
    tmp = pki.crl_dir / f".{name}.{os.getpid()}.tmp"
    tmp.write_bytes(build.der)
    os.replace(tmp, pki.crl_dir / name)
    return name


def _prune_files(pki: Pki, ca_id: int, number: int) -> None:
    """Drop CRL files older than the previous one (a reader may still hold that)."""
    if pki.crl_dir is None:
        return
    for path in pki.crl_dir.glob(f"ca{ca_id}-*.der"):
        try:
            old = int(path.stem.rsplit("-", 1)[1])
        except ValueError:
            continue
        if old < number - 1:
            path.unlink(missing_ok=True)


def _store_crl(session: Session, build: CrlBuild, *, der_file: str | None) -> PublishedCrl | None:
    current = session.get(PublishedCrl, build.ca_id)
    if current is not None and current.number >= build.number:
        return None  # another publisher got there first
    if current is None:
        current = PublishedCrl(ca_id=build.ca_id)
        session.add(current)
    current.number, current.this_update = build.number, build.this_update
    current.next_update, current.entries = build.next_update, build.entries
    current.revocations_seen = build.revocations_seen
    current.der, current.der_file = (b"" if der_file else build.der), der_file
    return current


def published_der(pki: Pki, published: PublishedCrl) -> bytes:
    """The DER of a published CRL, wherever it is kept."""
    if published.der_file is None:
        return published.der
    if pki.crl_dir is None:
        raise NotFoundError("this process has no CRL directory for a file-stored CRL")
    try:
        return (pki.crl_dir / published.der_file).read_bytes()
    except FileNotFoundError as exc:
        raise NotFoundError(f"CRL file {published.der_file} is missing") from exc


def _publish_now(session: Session, pki: Pki, ca: CertificateAuthority, now: dt.datetime) -> None:
    """Build and store a CA's CRL inside the caller's transaction (new or rotated CAs)."""
    session.flush()
    current = session.get(PublishedCrl, ca.id)
    build = build_crl(
        session.connection(),
        pki,
        ca_id=ca.id,
        certificate=pki.certificate(ca),
        key_uri=ca.key_uri,
        number=(current.number + 1) if current else 1,
        now=now,
    )
    _store_crl(session, build, der_file=_write_file(pki, build))


def _due(
    pki: Pki,
    now: dt.datetime,
    number: int | None,
    next_update: dt.datetime | None,
    seen: int | None,
    revocations: int,
) -> bool:
    fresh = next_update is not None and next_update - now > pki.crl_validity / 2
    return number is None or seen != revocations or not fresh


_CRL_STATE = (
    select(
        CertificateAuthority.id,
        CertificateAuthority.key_uri,
        CertificateAuthority.certificate_pem,
        CertificateAuthority.revocations,
        PublishedCrl.number,
        PublishedCrl.next_update,
        PublishedCrl.revocations_seen,
    )
    .outerjoin(PublishedCrl, PublishedCrl.ca_id == CertificateAuthority.id)
    .where(CertificateAuthority.kind == "issuing", CertificateAuthority.status != "pending")
)


def crls_due(db: Database, pki: Pki, *, now: dt.datetime | None = None) -> bool:
    """Whether any CRL needs rebuilding (one small read; the publisher polls it)."""
    now = now or utcnow()
    with db.read() as s:
        rows = s.execute(_CRL_STATE).all()
    return any(_due(pki, now, r[4], r[5], r[6], r[3]) for r in rows)


def publish_crls(
    db: Database,
    pki: Pki,
    *,
    now: dt.datetime | None = None,
    tenant_id: int | None = None,
    force: bool = False,
) -> list[CrlBuild]:
    """Rebuild every issuing CA's CRL that missed a revocation or is past half
    its validity (``force``: every CRL, from a full read); returns what was
    published.

    Each CRL is read in a read transaction, built and signed outside any
    transaction, and stored in a short write transaction, so revocations and
    OCSP never wait for a large CRL.
    """
    now = now or utcnow()
    stmt = _CRL_STATE
    if tenant_id is not None:
        stmt = stmt.where(CertificateAuthority.tenant_id == tenant_id)
    with db.read() as s:
        cas = s.execute(stmt).all()
    published = []
    for ca_id, key_uri, pem, revocations, number, next_update, seen in cas:
        if not force and not _due(pki, now, number, next_update, seen, revocations):
            continue
        assert pem is not None  # not pending
        with db.read() as s:
            build = build_crl(
                s.connection(),
                pki,
                ca_id=ca_id,
                certificate=pki.certificate_from_pem(ca_id, pem),
                key_uri=key_uri,
                number=(number or 0) + 1,
                now=now,
                full=force,
            )
        der_file = _write_file(pki, build)  # before the write lock: large and slow
        with db.session() as s:
            stored = _store_crl(s, build, der_file=der_file) is not None
        if stored:
            published.append(build)
            _prune_files(pki, ca_id, build.number)
    return published


def get_crl(session: Session, *, ca_id: int) -> PublishedCrl:
    """The published CRL of a CA."""
    crl = session.get(PublishedCrl, ca_id)
    if crl is None:
        raise NotFoundError(f"no CRL published for CA {ca_id}")
    return crl


_OCSP_STATUS = select(
    CertificateRecord.status, CertificateRecord.revoked_at, CertificateRecord.revocation_reason
).where(
    CertificateRecord.serial == bindparam("serial"), CertificateRecord.ca_id == bindparam("ca_id")
)


def ocsp_answer(
    conn: Connection, pki: Pki, request_der: bytes, *, now: dt.datetime | None = None
) -> bytes:
    """Answer one DER OCSP request with a DER OCSP response (RFC 6960).

    Malformed requests get ``malformedRequest`` and unknown issuers
    ``unauthorized``, as the RFC asks; both are still HTTP 200.
    """
    now = now or utcnow()
    try:
        query = revocation.parse_ocsp_request(request_der)
    except FleetwardError:
        return ocsp.OCSPResponseBuilder.build_unsuccessful(
            ocsp.OCSPResponseStatus.MALFORMED_REQUEST
        ).public_bytes(Encoding.DER)
    responder = pki.responder(conn, query.issuer_key_hash, query.issuer_name_hash)
    if responder is None:
        return ocsp.OCSPResponseBuilder.build_unsuccessful(
            ocsp.OCSPResponseStatus.UNAUTHORIZED
        ).public_bytes(Encoding.DER)
    row = conn.execute(
        _OCSP_STATUS, {"serial": format(query.serial, "x"), "ca_id": responder.ca_id}
    ).first()
    status, revoked_at, reason = (row[0], row[1], row[2]) if row else ("unknown", None, None)
    builder = revocation.ocsp_response_builder(
        query=query,
        issuer=responder.cert,
        status=status,
        revoked_at=revoked_at,
        reason=reason,
        now=now,
        validity=pki.ocsp_validity,
    )
    return sign_ocsp_response(builder, pki.keyring.open(responder.key_uri)).public_bytes(
        Encoding.DER
    )
