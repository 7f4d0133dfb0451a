"""Revocation publication: CRLs built off the request path, and OCSP answers.

CRLs are built by :func:`publish_crls` (the server's publisher, or
``fleetward crl publish``), never by a revocation request: each build reads
in a read transaction, encodes and signs with no transaction open, and
stores in one short write. OCSP answers come from one indexed read on a read
connection and one signature.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp
from sqlalchemy import Connection, String, bindparam, case, func, or_, select, type_coerce
from sqlalchemy.orm import Session

from fleetward._files import private_dir, write_private
from fleetward.errors import FleetwardError, NotFoundError
from fleetward.identity import crl_der, revocation
from fleetward.identity.models import CertificateAuthority, CertificateRecord, PublishedCrl
from fleetward.identity.pki import EncodedEntries, Pki
from fleetward.keys import sign_crl, sign_ocsp_response
from fleetward.store import Database, utcnow

__all__ = [
    "CrlBuild",
    "build_crl",
    "crl_bundle",
    "crls_due",
    "get_crl",
    "ocsp_answer",
    "publish_crls",
    "publish_now",
    "published_der",
    "trust_anchors",
    "trust_state",
]


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
        cached = EncodedEntries(upto=upto, count=count, der=bytearray(der))
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
    private_dir(pki.crl_dir)
    name = f"ca{build.ca_id}-{build.number}.der"
    write_private(pki.crl_dir / name, build.der)
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


def publish_now(session: Session, pki: Pki, ca: CertificateAuthority, now: dt.datetime) -> None:
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
        if pem is None:  # not pending
            raise RuntimeError("broken invariant, expected: pem is not None")
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


def crl_bundle(session: Session, pki: Pki) -> bytes:
    """The published CRL of every issuing CA, distrusted ones included, as one
    PEM bundle: what a device-facing TLS endpoint checks certificates against
    (its anchors are :func:`trust_anchors`)."""
    ids = session.execute(
        select(CertificateAuthority.id)
        .where(
            CertificateAuthority.kind == "issuing",
            CertificateAuthority.certificate_pem.is_not(None),
            CertificateAuthority.status != "pending",
        )
        .order_by(CertificateAuthority.id)
    ).scalars()
    crls: list[bytes] = []
    for ca_id in ids:
        published = session.get(PublishedCrl, ca_id)
        if published is None:
            continue
        crl = x509.load_der_x509_crl(published_der(pki, published))
        crls.append(crl.public_bytes(Encoding.PEM))
    return b"".join(crls)


# X509_CERT_AUX { trust: SEQUENCE OF OID { id-kp-clientAuth } }: what
# ``openssl x509 -addtrust clientAuth`` appends to the certificate's DER.
_CLIENT_AUTH_AUX = bytes.fromhex("300c300a06082b06010505070302")


def _trusted_pem(der: bytes) -> bytes:
    body = base64.encodebytes(der + _CLIENT_AUTH_AUX).replace(b"\n", b"")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return (
        b"-----BEGIN TRUSTED CERTIFICATE-----\n"
        + b"\n".join(lines)
        + (b"\n-----END TRUSTED CERTIFICATE-----\n")
    )


def trusted_issuing_cas(
    session: Session, *, environment: str | None = None
) -> list[CertificateAuthority]:
    """The issuing CAs a TLS endpoint accepts device certificates of: every
    active issuing CA, and every retired one whose dual-trust window is
    still open (not ``distrusted``; see :mod:`.rotation`), of all tenants,
    of ``environment`` (``None``: every environment).

    A window closes by a change of the CA's row (the compliance tracker's
    round or an operator), never by the clock alone, so :func:`trust_state`
    moves with it and every endpoint reloads its trust files."""
    query = (
        select(CertificateAuthority)
        .where(
            CertificateAuthority.kind == "issuing",
            CertificateAuthority.certificate_pem.is_not(None),
            CertificateAuthority.status.in_(("active", "retired")),
        )
        .order_by(CertificateAuthority.id)
    )
    if environment is not None:
        query = query.where(CertificateAuthority.environment == environment)
    return list(session.execute(query).scalars())


def trust_anchors(session: Session, *, environment: str | None = None) -> bytes:
    """The trust anchors of a device-facing TLS endpoint, PEM: the issuing
    CAs of :func:`trusted_issuing_cas` as ``TRUSTED CERTIFICATE`` entries
    (explicitly trusted for clientAuth), and no root.

    OpenSSL ends a chain at a certificate of its store that carries explicit
    trust, so an issuing CA here is an anchor on its own; with the tenant's
    root left out, a certificate of another environment's issuing CA (same
    root) finds no anchor and fails the handshake, even when the client
    sends its issuing CA and the root along. Mosquitto's ``cafile`` and
    Python's ``load_verify_locations(cafile=...)`` both read this form.
    """
    out: list[bytes] = []
    for ca in trusted_issuing_cas(session, environment=environment):
        pem = ca.certificate_pem or ""  # never empty: filtered above
        der = x509.load_pem_x509_certificate(pem.encode()).public_bytes(Encoding.DER)
        out.append(_trusted_pem(der))
    return b"".join(out)


def trust_state(session: Session) -> tuple[int, int, int]:
    """A cheap fingerprint of :func:`trust_anchors` and :func:`crl_bundle`:
    (CRLs published, sum of their numbers, CAs plus distrusted CAs). It
    changes when a CRL is republished, a CA added or a CA distrusted (both
    only ever grow, so their sum does too)."""
    distrusted = case((CertificateAuthority.status == "distrusted", 1), else_=0)
    row = session.execute(
        select(
            func.count(PublishedCrl.ca_id),
            func.coalesce(func.sum(PublishedCrl.number), 0),
            func.count(CertificateAuthority.id) + func.coalesce(func.sum(distrusted), 0),
        )
        .select_from(CertificateAuthority)
        .outerjoin(PublishedCrl, PublishedCrl.ca_id == CertificateAuthority.id)
    ).one()
    return int(row[0]), int(row[1]), int(row[2])


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
