"""Key attestation for renewals onto a new key: provisioning's side of the renewal.

:func:`fleetward.identity.renewal.renew` decides the key origin of a renewed
certificate, but the statement format and the vendor roots are
provisioning's, and provisioning imports identity, not the other way round.
So identity declares what it needs (:class:`~fleetward.identity.renewal.KeyAttester`)
and the API wires in :func:`verify_renewal_attestation`.

The statement is the one factory enrollment takes
(:mod:`fleetward.provisioning.attestation`), verified against the tenant's
registered roots. Its nonce is not a server-issued one: identity computes it
from the renewal request
(:func:`~fleetward.identity.renewal.renewal_attestation_nonce`), so there is
no nonce to spend here.
"""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from sqlalchemy import select
from sqlalchemy.orm import Session

from fleetward.identity import HARDWARE
from fleetward.provisioning import attestation
from fleetward.provisioning.models import AttestationRoot

__all__ = ["verify_renewal_attestation"]


def verify_renewal_attestation(
    session: Session,
    *,
    tenant_id: int,
    statement: bytes,
    identity_spki_der: bytes,
    nonce: bytes,
    now: dt.datetime,
) -> str:
    """Verify a renewal's key attestation statement for the new key.

    Args:
        statement: the statement, JSON.
        identity_spki_der: the new key (SubjectPublicKeyInfo, DER).
        nonce: the nonce the statement must carry (bound to the renewal request).

    Returns:
        ``hardware-attested``.

    Raises:
        AttestationError: malformed, a nonce not bound to this request, a
            chain that does not lead to one of the tenant's registered roots,
            or a signature that does not cover this key.
        PayloadTooLargeError: over ``attestation.MAX_STATEMENT_BYTES``.
    """
    parsed = attestation.parse_statement(statement)
    roots = [
        x509.load_pem_x509_certificate(pem.encode())
        for pem in session.execute(
            select(AttestationRoot.certificate_pem).where(AttestationRoot.tenant_id == tenant_id)
        ).scalars()
    ]
    attestation.verify_statement(
        parsed, identity_spki_der=identity_spki_der, expected_nonce=nonce, roots=roots, now=now
    )
    return HARDWARE
