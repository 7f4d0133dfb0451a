"""Renewal: a device proves it holds its current certificate and gets a new one.

Possession is proven by the CSR signature when the key is unchanged, and by
a proof signed with the current key (:func:`renewal_proof_message`) when the
device moves to a new key. Renewal needs no operator token.

Key origin (``hardware-attested`` or ``software``) is kept across renewals;
:func:`renewal_key_origin` decides it, by these rules in this order:

1. A key attestation statement sent with the renewal must verify, or the
   renewal is refused; a verified one makes the key ``hardware-attested``.
2. Without one, an unchanged key keeps the origin of the certificate it
   renews (a key does not change origin by being certified again).
3. Without one, a new key in an environment that requires attested keys
   (production, unless the tenant set ``allow_unattested_keys_in_production``,
   read fresh from its row) is refused with
   :class:`~fleetward.identity.issuance.UnattestedKeyError`.
4. Otherwise a new key is ``software``.

The new certificate records the origin and the device's ``key_origin``
follows it.

Statements are verified by provisioning (it owns the format and the vendor
roots, and it imports identity, so identity must not import it): the caller
passes a :class:`KeyAttester`. There is no server nonce round trip for a
renewal; the statement's nonce is bound to the request instead:
``nonce = SHA-256(b"fleetward-renewal-attestation/v1\\n" || CSR DER)``
(:func:`renewal_attestation_nonce`). A statement thus covers this CSR only,
and the CSR is signed by the new key and authorised by the current key's
proof, so replaying it can only certify the same key again.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any, Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from fleetward import audit, tenancy
from fleetward.errors import (
    AttestationError,
    CertificateError,
    InvalidInputError,
    PayloadTooLargeError,
    SignatureError,
)
from fleetward.identity import issuance, profile
from fleetward.identity.issuance import Issued
from fleetward.identity.models import CertificateRecord, Device
from fleetward.identity.pki import Pki
from fleetward.identity.profile import renewal_attestation_nonce, renewal_proof_message
from fleetward.keys import verify_signature
from fleetward.store import utcnow

__all__ = [
    "HARDWARE",
    "MAX_ATTESTATION_BYTES",
    "MAX_CERT_BYTES",
    "SOFTWARE",
    "KeyAttester",
    "load_presented_certificate",
    "renew",
    "renewal_attestation_nonce",
    "renewal_key_origin",
    "renewal_proof_message",
]

MAX_CERT_BYTES = 16 * 1024  # a certificate a device presents to renew
# A key attestation statement sent with a renewal, as JSON; the same limit as
# provisioning's ``attestation.MAX_STATEMENT_BYTES`` (a test holds them equal).
MAX_ATTESTATION_BYTES = 16 * 1024
# Certificates of one device searched for the origin of a key whose current
# certificate predates key-origin records on renewal.
MAX_HISTORY = 100

HARDWARE = issuance.HARDWARE
SOFTWARE = issuance.SOFTWARE


class KeyAttester(Protocol):
    """Verifies a key attestation statement for a renewal (provisioning supplies it)."""

    def __call__(
        self,
        session: Session,
        *,
        tenant_id: int,
        statement: bytes,
        identity_spki_der: bytes,
        nonce: bytes,
        now: dt.datetime,
    ) -> str:
        """Verify ``statement`` (JSON) for the key ``identity_spki_der`` and ``nonce``
        against the tenant's vendor roots.

        Returns:
            The key origin it proves (``hardware-attested``).

        Raises:
            AttestationError: the statement does not verify.
            PayloadTooLargeError: the statement is over its limit.
        """
        ...


def renewal_key_origin(
    *,
    same_key: bool,
    previous: str,
    attested: str | None,
    requires_attestation: bool,
) -> str:
    """The key origin of a renewed certificate (the rules of the module docstring).

    Args:
        same_key: the CSR's key is the presented certificate's key.
        previous: the presented certificate's key origin.
        attested: the origin a verified statement proved, or ``None`` without one.
        requires_attestation: the environment refuses unattested new keys.

    Raises:
        UnattestedKeyError: a new key without attestation where one is required.
    """
    if attested is not None:
        return attested
    if same_key:
        return previous
    if requires_attestation:
        raise issuance.UnattestedKeyError(
            "this environment refuses a new key without a key attestation; renew with the "
            "same key, or send a statement from the secure element for the new key"
        )
    return SOFTWARE


def _verify_with(key: Any, signature: bytes, message: bytes) -> None:
    if isinstance(key, rsa.RSAPublicKey):
        try:
            key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature as exc:
            raise SignatureError("renewal proof does not verify with the current key") from exc
    elif isinstance(key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
        verify_signature(key, signature=signature, data=message)
    else:
        raise SignatureError("unsupported key type for the renewal proof")


def load_presented_certificate(data: bytes) -> x509.Certificate:
    """Parse a certificate a device presents (PEM or DER), within the limit."""
    if len(data) > MAX_CERT_BYTES:
        raise PayloadTooLargeError(f"certificate over {MAX_CERT_BYTES} bytes")
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise InvalidInputError(f"malformed certificate: {exc}") from exc


def _statement_bytes(attestation: bytes | str | dict[str, Any] | None) -> bytes | None:
    """The statement as JSON bytes, within ``MAX_ATTESTATION_BYTES``."""
    if attestation is None:
        return None
    if isinstance(attestation, dict):
        try:
            data = json.dumps(attestation, separators=(",", ":")).encode()
        except (TypeError, ValueError) as exc:  # not JSON-serialisable
            raise InvalidInputError("the key attestation statement is not JSON") from exc
    elif isinstance(attestation, str):
        data = attestation.encode()
    else:
        data = attestation
    if len(data) > MAX_ATTESTATION_BYTES:
        raise PayloadTooLargeError(f"key attestation statement over {MAX_ATTESTATION_BYTES} bytes")
    return data


def _origin_of(session: Session, record: CertificateRecord, cert: x509.Certificate) -> str:
    """The key origin of the presented certificate's key.

    Certificates renewed before renewals recorded key origins have none: the
    origin is then the newest recorded one of an earlier certificate of the
    same device for the same key, and ``software`` if there is none (a key
    nobody recorded as attested is not claimed to be).
    """
    if record.key_origin is not None:
        return record.key_origin
    key = cert.public_key()
    rows = session.execute(
        select(CertificateRecord.der, CertificateRecord.key_origin)
        .where(
            CertificateRecord.device_pk == record.device_pk,
            CertificateRecord.key_origin.is_not(None),
            CertificateRecord.not_before <= record.not_before,
        )
        .order_by(CertificateRecord.not_before.desc())
        .limit(MAX_HISTORY)
    )
    for der, origin in rows:
        if x509.load_der_x509_certificate(der).public_key() == key:
            return str(origin)
    return SOFTWARE


def renew(
    session: Session,
    pki: Pki,
    *,
    current: bytes,
    csr: bytes,
    proof: bytes | None = None,
    attestation: bytes | str | dict[str, Any] | None = None,
    attest: KeyAttester | None = None,
    now: dt.datetime | None = None,
) -> Issued:
    """Issue a new certificate to a device that proves it holds its current one.

    Possession is proven by the CSR signature when the key is unchanged, and
    by ``proof`` (the current key's signature over
    :func:`renewal_proof_message`) when the device moves to a new key. The
    key origin follows the rules of the module docstring.

    Args:
        attestation: a key attestation statement (JSON text or object) whose
            nonce is :func:`renewal_attestation_nonce` of this CSR.
        attest: verifies ``attestation`` (provisioning's); without it a
            statement cannot be verified and is refused.

    Raises:
        CertificateError: the presented certificate is not ours, is revoked or
            expired, or the device may not renew.
        SignatureError: the proof of possession fails.
        UnattestedKeyError: a new key without attestation where one is required.
        AttestationError: the statement does not verify.
        PayloadTooLargeError: the certificate or statement is over its limit.
    """
    statement = _statement_bytes(attestation)
    now = now or utcnow()
    cert = load_presented_certificate(current)
    der = cert.public_bytes(Encoding.DER)
    record = session.get(CertificateRecord, format(cert.serial_number, "x"))
    if record is None or record.der != der:
        raise CertificateError("the presented certificate was not issued by fleetward")
    if record.status == "revoked":
        raise CertificateError("the presented certificate is revoked")
    if record.not_after <= now:
        raise CertificateError("the presented certificate has expired; enroll again")
    device = session.get(Device, record.device_pk)
    if device is None:
        raise RuntimeError("broken invariant, expected: device is not None")
    if device.state not in ("active", "quarantined"):
        raise CertificateError(f"device {device.device_id!r} is {device.state} and cannot renew")
    tenant = tenancy.get_tenant(session, record.tenant_id)
    accepted = profile.check_csr(
        profile.load_csr(csr), device_id=device.device_id, tenant=tenant.name
    )
    same_key = accepted.public_key == cert.public_key()
    if not same_key:
        if proof is None:
            raise SignatureError("a new key needs a proof signed by the current certificate's key")
        _verify_with(cert.public_key(), proof, renewal_proof_message(accepted.der))
    attested: str | None = None
    if statement is not None:
        if attest is None:
            raise AttestationError("key attestation statements cannot be verified here")
        attested = attest(
            session,
            tenant_id=tenant.id,
            statement=statement,
            identity_spki_der=accepted.public_key.public_bytes(
                Encoding.DER, PublicFormat.SubjectPublicKeyInfo
            ),
            nonce=renewal_attestation_nonce(accepted.der),
            now=now,
        )
    # The tenant's option, read from its row in this transaction and never
    # from a cache: turning it off must hold for the very next renewal.
    allow_unattested = tenancy.issuance_policy(
        session, tenant.id
    ).allow_unattested_keys_in_production
    origin = renewal_key_origin(
        same_key=same_key,
        previous=_origin_of(session, record, cert) if same_key else SOFTWARE,
        attested=attested,
        requires_attestation=record.environment == "production" and not allow_unattested,
    )
    issuer = issuance.issuer_for(
        session.connection(), pki, tenant_id=tenant.id, environment=record.environment
    )
    issued = issuance.sign_accepted(
        pki,
        issuer,
        device_id=device.device_id,
        accepted=accepted,
        environment=record.environment,
        now=now,
        key_origin=origin,
    )
    session.execute(
        insert(CertificateRecord).values(
            serial=issued.serial,
            tenant_id=tenant.id,
            device_pk=device.id,
            ca_id=issued.ca_id,
            environment=issued.environment,
            key_origin=issued.key_origin,
            fingerprint=issued.fingerprint,
            not_before=issued.not_before,
            not_after=issued.not_after,
            status="good",
            der=issued.der,
        )
    )
    device.key_origin = issued.key_origin  # the device's origin is its current key's
    device.updated_at = now
    audit.append(
        session,
        actor=f"device:{device.device_id}",
        action="certificate.renew",
        subject=f"device:{device.device_id}",
        tenant_id=tenant.id,
        details={
            "serial": issued.serial,
            "previous": record.serial,
            "ca": issued.ca_id,
            "key": issued.key_type,
            "key_origin": issued.key_origin,
            "new_key": not same_key,
            "fingerprint": issued.fingerprint,
            "not_after": issued.not_after.isoformat(),
        },
        now=now,
    )
    return issued
