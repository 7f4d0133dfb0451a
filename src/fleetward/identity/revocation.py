"""Revocation formats: RFC 5280 reasons, CRL building, OCSP (RFC 6960) answers.

Pure. The service layer feeds rows in and stores or serves the bytes out.
CRLs are built in one pass (entries passed to the builder's constructor, which
is linear; ``add_revoked_certificate`` copies the list on every call).
"""

from __future__ import annotations

import contextlib
import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509 import ocsp

from fleetward.errors import InvalidInputError, PayloadTooLargeError

__all__ = [
    "MAX_OCSP_REQUEST_BYTES",
    "REASONS",
    "OcspQuery",
    "crl_builder",
    "ocsp_response_builder",
    "parse_ocsp_request",
    "parse_reason",
]

MAX_OCSP_REQUEST_BYTES = 4096  # one CertID plus a nonce is ~120 bytes
# RFC 5280 section 5.3.1 reasons a device certificate may be revoked for.
# certificateHold / removeFromCRL are not offered: revocation here is final.
REASONS: dict[str, x509.ReasonFlags] = {
    flag.value: flag
    for flag in x509.ReasonFlags
    if flag not in (x509.ReasonFlags.certificate_hold, x509.ReasonFlags.remove_from_crl)
}


def parse_reason(reason: str) -> x509.ReasonFlags:
    """The RFC 5280 reason named ``reason`` (e.g. ``keyCompromise``).

    Raises:
        InvalidInputError: not a supported reason name.
    """
    try:
        return REASONS[reason]
    except KeyError:
        raise InvalidInputError(
            f"unknown revocation reason {reason!r}; one of: {', '.join(REASONS)}"
        ) from None


def crl_builder(
    *,
    issuer: x509.Certificate,
    number: int,
    this_update: dt.datetime,
    next_update: dt.datetime,
) -> x509.CertificateRevocationListBuilder:
    """A CRL builder with the issuer, dates, CRL number and AKI, and no entries.

    Entries are encoded and spliced in by :mod:`fleetward.identity.crl_der`,
    which is linear and about ten times faster than pyca's per-entry objects.
    """
    ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return x509.CertificateRevocationListBuilder(
        issuer_name=issuer.subject,
        last_update=this_update,
        next_update=next_update,
        extensions=[
            x509.Extension(x509.CRLNumber.oid, False, x509.CRLNumber(number)),
            x509.Extension(
                x509.AuthorityKeyIdentifier.oid,
                False,
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
            ),
        ],
    )


@dataclass(frozen=True)
class OcspQuery:
    """The one certificate an OCSP request asks about."""

    issuer_key_hash: bytes
    issuer_name_hash: bytes
    serial: int
    hash_algorithm: hashes.HashAlgorithm
    nonce: bytes | None


def parse_ocsp_request(data: bytes) -> OcspQuery:
    """Parse a DER OCSP request.

    Raises:
        PayloadTooLargeError: over ``MAX_OCSP_REQUEST_BYTES``.
        InvalidInputError: malformed, or more than one certificate asked.
    """
    if len(data) > MAX_OCSP_REQUEST_BYTES:
        raise PayloadTooLargeError(f"OCSP request over {MAX_OCSP_REQUEST_BYTES} bytes")
    try:
        req = ocsp.load_der_ocsp_request(data)
        nonce: bytes | None = None
        with contextlib.suppress(x509.ExtensionNotFound):
            nonce = req.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
        return OcspQuery(
            issuer_key_hash=req.issuer_key_hash,
            issuer_name_hash=req.issuer_name_hash,
            serial=req.serial_number,
            hash_algorithm=req.hash_algorithm,
            nonce=nonce,
        )
    except (ValueError, x509.UnsupportedGeneralNameType) as exc:
        raise InvalidInputError(f"malformed OCSP request: {exc}") from exc


def ocsp_response_builder(
    *,
    query: OcspQuery,
    issuer: x509.Certificate,
    status: str,
    revoked_at: dt.datetime | None,
    reason: str | None,
    now: dt.datetime,
    validity: dt.timedelta,
) -> ocsp.OCSPResponseBuilder:
    """A signed-response builder (the issuing CA is its own responder).

    Args:
        status: ``good``, ``revoked`` or ``unknown``.
    """
    cert_status = {
        "good": ocsp.OCSPCertStatus.GOOD,
        "revoked": ocsp.OCSPCertStatus.REVOKED,
        "unknown": ocsp.OCSPCertStatus.UNKNOWN,
    }[status]
    flag = REASONS.get(reason or "") if status == "revoked" else None
    builder = (
        ocsp.OCSPResponseBuilder()
        .add_response_by_hash(
            issuer_name_hash=query.issuer_name_hash,
            issuer_key_hash=query.issuer_key_hash,
            serial_number=query.serial,
            algorithm=query.hash_algorithm,
            cert_status=cert_status,
            this_update=now,
            next_update=now + validity,
            revocation_time=revoked_at if status == "revoked" else None,
            revocation_reason=flag,
        )
        .responder_id(ocsp.OCSPResponderEncoding.HASH, issuer)
    )
    if query.nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(query.nonce), critical=False)
    return builder
