"""Renewal: a device proves it holds its current certificate and gets a new one.

Possession is proven by the CSR signature when the key is unchanged, and by
a proof signed with the current key (:func:`renewal_proof_message`) when the
device moves to a new key. Renewal needs no operator token.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import insert
from sqlalchemy.orm import Session

from fleetward.audit import service as audit
from fleetward.errors import (
    CertificateError,
    InvalidInputError,
    PayloadTooLargeError,
    SignatureError,
)
from fleetward.identity import issuance, profile
from fleetward.identity.issuance import Issued
from fleetward.identity.models import CertificateRecord, Device
from fleetward.identity.pki import Pki
from fleetward.keys import verify_signature
from fleetward.store import utcnow
from fleetward.tenancy.models import Tenant

__all__ = ["MAX_CERT_BYTES", "load_presented_certificate", "renew", "renewal_proof_message"]

MAX_CERT_BYTES = 16 * 1024  # a certificate a device presents to renew


def renewal_proof_message(csr_der: bytes) -> bytes:
    """What the current key signs to authorise a renewal with a new key."""
    return b"fleetward-renew/v1\n" + hashlib.sha256(csr_der).digest()


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


def renew(
    session: Session,
    pki: Pki,
    *,
    current: bytes,
    csr: bytes,
    proof: bytes | None = None,
    now: dt.datetime | None = None,
) -> Issued:
    """Issue a new certificate to a device that proves it holds its current one.

    Possession is proven by the CSR signature when the key is unchanged, and
    by ``proof`` (the current key's signature over
    :func:`renewal_proof_message`) when the device moves to a new key.

    Raises:
        CertificateError: the presented certificate is not ours, is revoked or
            expired, or the device may not renew.
        SignatureError: the proof of possession fails.
    """
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
    assert device is not None
    if device.state not in ("active", "quarantined"):
        raise CertificateError(f"device {device.device_id!r} is {device.state} and cannot renew")
    tenant = session.get(Tenant, record.tenant_id)
    assert tenant is not None
    accepted = profile.check_csr(
        profile.load_csr(csr), device_id=device.device_id, tenant=tenant.name
    )
    if accepted.public_key != cert.public_key():
        if proof is None:
            raise SignatureError("a new key needs a proof signed by the current certificate's key")
        _verify_with(cert.public_key(), proof, renewal_proof_message(accepted.der))
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
    )
    session.execute(
        insert(CertificateRecord).values(
            serial=issued.serial,
            tenant_id=tenant.id,
            device_pk=device.id,
            ca_id=issued.ca_id,
            environment=issued.environment,
            fingerprint=issued.fingerprint,
            not_before=issued.not_before,
            not_after=issued.not_after,
            status="good",
            der=issued.der,
        )
    )
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
            "fingerprint": issued.fingerprint,
            "not_after": issued.not_after.isoformat(),
        },
        now=now,
    )
    return issued
