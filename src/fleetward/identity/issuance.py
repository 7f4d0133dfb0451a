"""Certificate issuance pipeline: check, sign, record.

Issuance is split so the expensive part never holds the write lock:

1. **check** (pure): device id, CSR parse, key type, proof of possession,
   profile;
2. **sign** (crypto, no transaction): the issuing CA and tenant policy come
   from a short read, one indexed query on every request, never a cache: a
   policy change or a CA rotation made through any worker process applies to
   the next request in all of them (only the parsed CA certificate is
   cached, keyed by CA id and PEM hash);
3. **record** (one short write transaction): device states are checked
   again there, authoritatively; accepted certificates, new devices and one
   audit entry per item (issued or refused) go in with multi-row inserts.

A certificate signed for an item that the record step refuses is dropped:
it was never stored nor returned, so it never existed for anyone.

:func:`enroll_many` runs the three steps in their own transactions (the API
uses it for single and batch requests); :func:`enroll` runs them in the
caller's session (CLI, tests).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import Connection, bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from fleetward import audit, tenancy
from fleetward.errors import (
    ConflictError,
    DuplicateEnrollmentError,
    FleetwardError,
    InvalidInputError,
    OutOfScopeError,
    PayloadTooLargeError,
    UnattestedKeyError,
)
from fleetward.identity import _residence as residence
from fleetward.identity import profile
from fleetward.identity.models import CertificateAuthority, CertificateRecord, Device
from fleetward.identity.pki import Pki
from fleetward.keys import sign_certificate
from fleetward.store import Database, utcnow
from fleetward.tenancy import scope
from fleetward.tenancy.roles import ENVIRONMENTS, Permission, Principal, require

__all__ = [
    "HARDWARE",
    "MAX_BATCH",
    "SOFTWARE",
    "BatchItem",
    "BatchResult",
    "DuplicateEnrollmentError",
    "Issued",
    "UnattestedKeyError",
    "check_and_sign",
    "enroll",
    "enroll_many",
    "environment_for",
    "issuer_for",
    "labels_json",
    "product_name",
    "record",
    "sign_accepted",
]

MAX_BATCH = 1000  # items per batch enrollment request
MAX_LABELS = 32  # labels per device; keys and values are short strings
DEFAULT_PRODUCT = "default"


# Key origins: where a certificate's key was made, as far as fleetward knows.
HARDWARE = "hardware-attested"  # a secure element attested it (provisioning checks)
SOFTWARE = "software"  # nobody attested it


@dataclass(frozen=True)
class BatchItem:
    """One device to enroll."""

    device_id: str
    csr: bytes
    product: str | None = None
    labels: dict[str, str] | None = None
    key_origin: str = SOFTWARE  # or HARDWARE, once provisioning verified it
    batch_id: int | None = None
    factory_id: int | None = None


@dataclass(frozen=True)
class Issued:
    """A signed certificate, recorded or about to be."""

    device_id: str
    serial: str
    der: bytes
    fingerprint: str
    not_before: dt.datetime
    not_after: dt.datetime
    ca_id: int
    environment: str
    key_type: str
    key_origin: str = SOFTWARE

    @property
    def certificate(self) -> x509.Certificate:
        """The certificate object."""
        return x509.load_der_x509_certificate(self.der)


@dataclass(frozen=True)
class BatchResult:
    """Outcome of one item: a certificate, or the error that refused it."""

    device_id: str
    issued: Issued | None = None
    error: FleetwardError | None = None


def labels_json(labels: dict[str, str] | None) -> str:
    """Validated, canonical JSON for device labels."""
    labels = labels or {}
    if len(labels) > MAX_LABELS:
        raise InvalidInputError(f"at most {MAX_LABELS} labels per device")
    for k, v in labels.items():
        if not isinstance(k, str) or not isinstance(v, str) or len(k) > 64 or len(v) > 128:
            raise InvalidInputError("labels are string keys (<= 64) to string values (<= 128)")
        if any(ord(c) < 32 or ord(c) == 127 for c in k + v):
            raise InvalidInputError("labels may not contain control characters")
    return json.dumps(labels, sort_keys=True)


def product_name(product: str | None) -> str:
    """Validated product name (defaults to ``default``)."""
    product = product or DEFAULT_PRODUCT
    if not profile.DEVICE_ID.fullmatch(product):
        raise InvalidInputError("product must be 1-64 characters of letters, digits, '.', '_', '-'")
    return product


def environment_for(principal: Principal, requested: str | None) -> str:
    """The environment a request issues in; a scoped token may not leave its own."""
    env = requested or principal.environment or "production"
    if env not in ENVIRONMENTS:
        raise InvalidInputError(f"unknown environment {env!r}; one of {', '.join(ENVIRONMENTS)}")
    scope.authorize(principal, scope.DEVICE_ENROLL, environments=[env])
    return env


@dataclass(frozen=True)
class _Issuer:
    ca_id: int
    key_uri: str
    certificate: x509.Certificate
    tenant_name: str
    lifetime_days: int
    allow_unattested_in_production: bool


_ISSUER = select(
    CertificateAuthority.id,
    CertificateAuthority.key_uri,
    CertificateAuthority.certificate_pem,
).where(
    CertificateAuthority.tenant_id == bindparam("tenant_id"),
    CertificateAuthority.kind == "issuing",
    CertificateAuthority.environment == bindparam("env"),
    CertificateAuthority.status == "active",
)


def issuer_for(conn: Connection, pki: Pki, *, tenant_id: int, environment: str) -> _Issuer:
    """The active issuing CA and the tenant's issuance policy, as committed now.

    Read on every call (two primary-key or indexed reads: the CA here, the
    policy from :func:`fleetward.tenancy.issuance_policy`): the policy
    (``allow_unattested_keys_in_production``, the certificate lifetime) and
    the active CA are security settings, and a change must hold for the
    next request in every worker process, not after a cache expires. Only
    the parsing of the CA certificate is cached (by CA id and PEM hash).

    Raises:
        ConflictError: the tenant has no active issuing CA in ``environment``.
    """
    row = conn.execute(_ISSUER, {"tenant_id": tenant_id, "env": environment}).first()
    if row is None or row[2] is None:
        raise ConflictError(f"no active {environment} issuing CA for this tenant")
    policy = tenancy.issuance_policy(conn, tenant_id)
    return _Issuer(
        ca_id=row[0],
        key_uri=row[1],
        certificate=pki.certificate_from_pem(row[0], row[2]),
        tenant_name=policy.tenant_name,
        lifetime_days=policy.cert_lifetime_days,
        allow_unattested_in_production=policy.allow_unattested_keys_in_production,
    )


def sign_accepted(
    pki: Pki,
    issuer: _Issuer,
    *,
    device_id: str,
    accepted: profile.AcceptedCsr,
    environment: str,
    now: dt.datetime,
    key_origin: str = SOFTWARE,
) -> Issued:
    builder = profile.device_certificate(
        public_key=accepted.public_key,
        device_id=device_id,
        tenant=issuer.tenant_name,
        environment=environment,
        issuer=issuer.certificate,
        serial=x509.random_serial_number(),
        lifetime=dt.timedelta(days=issuer.lifetime_days),
        now=now,
        crl_url=pki.crl_url(issuer.ca_id),
        ocsp_url=pki.ocsp_url,
    )
    cert = sign_certificate(builder, pki.keyring.open(issuer.key_uri))
    der = cert.public_bytes(Encoding.DER)
    return Issued(
        device_id=device_id,
        serial=format(cert.serial_number, "x"),
        der=der,
        fingerprint=hashlib.sha256(der).hexdigest(),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        ca_id=issuer.ca_id,
        environment=environment,
        key_type=accepted.key_type,
        key_origin=key_origin,
    )


def check_and_sign(
    pki: Pki, issuer: _Issuer, item: BatchItem, *, environment: str, now: dt.datetime
) -> Issued:
    """Check one item against the profile and policy, and sign its certificate.

    Raises:
        AttestationError: a software key in production, unless the tenant
            set ``allow_unattested_keys_in_production``.
        (and what :func:`fleetward.identity.profile.check_csr` raises)
    """
    profile.check_device_id(item.device_id)
    if (
        environment == "production"
        and item.key_origin != HARDWARE
        and not issuer.allow_unattested_in_production
    ):
        raise UnattestedKeyError(
            "production refuses keys without a key attestation; the tenant option "
            "allow_unattested_keys_in_production (dangerous) would accept them"
        )
    product_name(item.product)
    labels_json(item.labels)
    accepted = profile.check_csr(
        profile.load_csr(item.csr), device_id=item.device_id, tenant=issuer.tenant_name
    )
    return sign_accepted(
        pki,
        issuer,
        device_id=item.device_id,
        accepted=accepted,
        environment=environment,
        now=now,
        key_origin=item.key_origin,
    )


_EXISTING = select(Device.id, Device.device_id, Device.state).where(
    Device.tenant_id == bindparam("tenant_id"),
    Device.device_id.in_(bindparam("ids", expanding=True)),
)
_HOLDING = select(CertificateRecord.device_pk).where(
    CertificateRecord.device_pk.in_(bindparam("pks", expanding=True)),
    CertificateRecord.status == "good",
    CertificateRecord.not_after > bindparam("now"),
)
_INSERT_DEVICE = insert(Device).returning(Device.id, Device.device_id)
_ACTIVATE = (
    update(Device)
    .where(Device.id == bindparam("pk"))
    .values(
        state="active",
        updated_at=bindparam("now"),
        key_origin=bindparam("origin"),
        batch_id=func.coalesce(bindparam("batch"), Device.batch_id),
    )
)
_INSERT_CERT = insert(CertificateRecord)


def _outside_scope(
    session: Session,
    principal: Principal,
    existing: dict[str, tuple[int, str]],
    *,
    now: dt.datetime,
) -> dict[str, str]:
    """Known devices a scoped token may not enroll, because they live in an
    environment outside its scope (a revoked or expired production
    certificate does not make a device the test environment's)."""
    if principal.environment is None or not existing:
        return {}
    lives = residence.environments_by_device(session, [pk for pk, _ in existing.values()], now=now)
    refused: dict[str, str] = {}
    for device_id, (pk, _) in existing.items():
        decision = scope.decide(
            principal, scope.DEVICE_ENROLL, scope.Target.of(lives.get(pk, set()))
        )
        if not decision.allowed:
            refused[device_id] = decision.reason
    return refused


def record(
    session: Session,
    principal: Principal,
    *,
    items: list[BatchItem],
    signed: list[Issued | FleetwardError],
    now: dt.datetime,
    once: bool = False,
    reprovision: frozenset[str] = frozenset(),
) -> list[BatchResult]:
    """Check device states and store what is accepted, in the caller's transaction.

    Args:
        once: factory provisioning: a device the registry knows is refused
            unless its id is in ``reprovision`` (an explicit grant).
        reprovision: device ids allowed to be provisioned again.
    """
    tenant_id = principal.tenant_id
    # Core statements on the session's connection: the ORM execution layer
    # costs more than the SQL here, and this runs under the write lock.
    conn = session.connection()
    ids = [i.device_id for i, s in zip(items, signed, strict=True) if isinstance(s, Issued)]
    existing = {
        r[1]: (r[0], r[2]) for r in conn.execute(_EXISTING, {"tenant_id": tenant_id, "ids": ids})
    }
    holding: set[int] = set()
    if existing:
        pks_in = [pk for pk, _ in existing.values()]
        holding = set(conn.execute(_HOLDING, {"pks": pks_in, "now": now}).scalars())
    elsewhere = _outside_scope(session, principal, existing, now=now)
    results: list[BatchResult] = []
    seen: set[str] = set()
    for item, outcome in zip(items, signed, strict=True):
        if isinstance(outcome, Issued):
            found = existing.get(item.device_id)
            if item.device_id in seen:
                outcome = ConflictError(f"device {item.device_id!r} appears twice in the batch")
            elif item.device_id in elsewhere:
                outcome = OutOfScopeError(f"device {item.device_id!r}: {elsewhere[item.device_id]}")
            elif once and found is not None and item.device_id not in reprovision:
                outcome = DuplicateEnrollmentError(
                    f"device {item.device_id!r} was already provisioned; re-provisioning "
                    "needs an explicit grant"
                )
            elif found is not None and found[1] in ("quarantined", "revoked", "retired"):
                outcome = ConflictError(
                    f"device {item.device_id!r} is {found[1]} and cannot enroll"
                )
            elif found is not None and found[0] in holding and item.device_id not in reprovision:
                outcome = ConflictError(
                    f"device {item.device_id!r} is already enrolled; renew its certificate"
                )
            seen.add(item.device_id)
        if isinstance(outcome, Issued):
            results.append(BatchResult(device_id=item.device_id, issued=outcome))
        else:
            results.append(BatchResult(device_id=item.device_id, error=outcome))
    accepted = [(i, r.issued) for i, r in zip(items, results, strict=True) if r.issued is not None]
    new_rows = [
        {
            "tenant_id": tenant_id,
            "device_id": i.device_id,
            "product": product_name(i.product),
            "labels": labels_json(i.labels),
            "state": "active",
            "key_origin": i.key_origin,
            "factory_id": i.factory_id,
            "batch_id": i.batch_id,
            "created_at": now,
            "updated_at": now,
        }
        for i, _ in accepted
        if i.device_id not in existing
    ]
    pks = {d: pk for d, (pk, _) in existing.items()}
    if new_rows:
        try:
            created = conn.execute(_INSERT_DEVICE, new_rows).all()
        except IntegrityError as exc:  # a concurrent request created one of them
            raise ConflictError("a device in this request was enrolled concurrently") from exc
        pks.update({d: pk for pk, d in created})
    old = [
        {"pk": pks[i.device_id], "now": now, "origin": i.key_origin, "batch": i.batch_id}
        for i, _ in accepted
        if i.device_id in existing
    ]
    if old:
        conn.execute(_ACTIVATE, old)
    if accepted:
        conn.execute(
            _INSERT_CERT,
            [
                {
                    "serial": c.serial,
                    "tenant_id": tenant_id,
                    "device_pk": pks[c.device_id],
                    "ca_id": c.ca_id,
                    "environment": c.environment,
                    "key_origin": c.key_origin,
                    "fingerprint": c.fingerprint,
                    "not_before": c.not_before,
                    "not_after": c.not_after,
                    "status": "good",
                    "der": c.der,
                }
                for _, c in accepted
            ],
        )
    events = []
    for r in results:
        if r.issued is not None:
            c = r.issued
            details = {
                "serial": c.serial,
                "ca": c.ca_id,
                "environment": c.environment,
                "key": c.key_type,
                "key_origin": c.key_origin,
                "fingerprint": c.fingerprint,
                "not_after": c.not_after.isoformat(),
            }
            result_outcome = "ok"
        else:
            if r.error is None:
                raise RuntimeError("broken invariant, expected: r.error is not None")
            details, result_outcome = {"reason": r.error.detail}, "refused"
        events.append(
            audit.Event(
                actor=principal.actor,
                action="certificate.issue",
                subject=f"device:{r.device_id[:64]}",
                tenant_id=tenant_id,
                outcome=result_outcome,
                details=details,
            )
        )
    audit.append_many(session, events, now=now)
    return results


def _sign_all(
    pki: Pki, issuer: _Issuer, items: list[BatchItem], *, environment: str, now: dt.datetime
) -> list[Issued | FleetwardError]:
    signed: list[Issued | FleetwardError] = []
    for item in items:
        try:
            signed.append(check_and_sign(pki, issuer, item, environment=environment, now=now))
        except FleetwardError as exc:
            signed.append(exc)
    return signed


def enroll_many(
    db: Database,
    pki: Pki,
    principal: Principal,
    *,
    items: list[BatchItem],
    environment: str | None = None,
    now: dt.datetime | None = None,
    on_record: Callable[[Session, str, list[BatchResult]], None] | None = None,
) -> list[BatchResult]:
    """Enroll devices: each item is issued or refused on its own.

    Checks and signing run outside any transaction; one short write
    transaction records the certificates, the new devices and an audit entry
    per item (refusals included).

    Args:
        on_record: called inside that write transaction with the environment
            and the results, so a caller's own records of the attempts (the
            provisioning domain's enrollment records) commit with them.

    Raises:
        PermissionDeniedError: the role may not enroll, or the environment is
            outside the token's scope.
        PayloadTooLargeError: more than ``MAX_BATCH`` items.
    """
    require(principal, Permission.DEVICE_ENROLL)
    if len(items) > MAX_BATCH:
        raise PayloadTooLargeError(f"batch of {len(items)} items; the limit is {MAX_BATCH}")
    env = environment_for(principal, environment)
    now = now or utcnow()
    with db.read_engine.connect() as conn:
        issuer = issuer_for(conn, pki, tenant_id=principal.tenant_id, environment=env)
    signed = _sign_all(pki, issuer, items, environment=env, now=now)
    with db.session() as session:
        results = record(session, principal, items=items, signed=signed, now=now)
        if on_record is not None:
            on_record(session, env, results)
        return results


def enroll(
    session: Session,
    pki: Pki,
    principal: Principal,
    *,
    device_id: str,
    csr: bytes,
    environment: str | None = None,
    product: str | None = None,
    labels: dict[str, str] | None = None,
    now: dt.datetime | None = None,
) -> Issued:
    """Issue one device's first certificate, all in the caller's session.

    The device is created if the registry does not know it yet.

    Raises:
        PermissionDeniedError: the role may not enroll devices.
        InvalidInputError / PayloadTooLargeError: malformed id or CSR.
        CertificateError / SignatureError: the CSR breaks the profile.
        ConflictError: the device is already enrolled, or not enrollable.
    """
    require(principal, Permission.DEVICE_ENROLL)
    env = environment_for(principal, environment)
    now = now or utcnow()
    item = BatchItem(device_id=device_id, csr=csr, product=product, labels=labels)
    issuer = issuer_for(session.connection(), pki, tenant_id=principal.tenant_id, environment=env)
    signed = check_and_sign(pki, issuer, item, environment=env, now=now)
    result = record(session, principal, items=[item], signed=[signed], now=now)[0]
    if result.error is not None:
        raise result.error
    if result.issued is None:
        raise RuntimeError("broken invariant, expected: result.issued is not None")
    return result.issued
