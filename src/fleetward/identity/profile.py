"""Device certificate profile: CSR checks and the certificate it yields.

Pure. :func:`check_csr` parses and verifies an untrusted PKCS#10 request and
either raises or returns the accepted public key; :func:`device_certificate`
builds the certificate from the profile alone. Requested extensions are never
copied: the profile decides every extension, so a CSR cannot ask its way to
a CA flag, a server EKU or a foreign name. :func:`renewal_proof_message` and
:func:`renewal_attestation_nonce` are the messages a renewing device signs
or binds its key attestation to (the agent computes them too).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleetward.errors import (
    CertificateError,
    InvalidInputError,
    PayloadTooLargeError,
    SignatureError,
)

__all__ = [
    "DEVICE_ID",
    "ENV_POLICY_OIDS",
    "MAX_CSR_BYTES",
    "AcceptedCsr",
    "check_csr",
    "check_device_id",
    "device_certificate",
    "device_uri",
    "load_csr",
    "renewal_attestation_nonce",
    "renewal_proof_message",
]

MAX_CSR_BYTES = 16 * 1024  # a P-384/RSA-4096 CSR is < 2 KiB; more is abuse
MIN_RSA_BITS = 2048
MAX_RSA_BITS = 8192  # bounds the verification cost an attacker can impose
# Device ids become MQTT usernames and topic levels: no '/', '+', '#', spaces.
DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# Certificate policy per environment (UUID-based OIDs, X.667 arc 2.25). A
# relying party that requires the production OID with explicit policy never
# accepts a test certificate, even though both chain to the same root.
_ARC = "2.25.222380451164620214373125373432453425869"
ENV_POLICY_OIDS = {
    "test": x509.ObjectIdentifier(f"{_ARC}.1"),
    "production": x509.ObjectIdentifier(f"{_ARC}.2"),
    "drill": x509.ObjectIdentifier(f"{_ARC}.3"),
}


def check_device_id(device_id: str) -> str:
    """Return ``device_id`` if it is well formed.

    Raises:
        InvalidInputError: it is not 1-64 characters of ``[A-Za-z0-9._-]``.
    """
    if not DEVICE_ID.fullmatch(device_id):
        raise InvalidInputError(
            "device id must be 1-64 characters of letters, digits, '.', '_' or '-' "
            "and start with a letter or digit"
        )
    return device_id


def renewal_proof_message(csr_der: bytes) -> bytes:
    """What the current key signs to authorise a renewal with a new key."""
    return b"fleetward-renew/v1\n" + hashlib.sha256(csr_der).digest()


def renewal_attestation_nonce(csr_der: bytes) -> bytes:
    """The nonce a key attestation statement sent with a renewal must carry.

    It binds the statement to this renewal request (the CSR of the new key)
    instead of a server-issued nonce.
    """
    return hashlib.sha256(b"fleetward-renewal-attestation/v1\n" + csr_der).digest()


def device_uri(tenant: str, device_id: str) -> str:
    """The SAN URI that names a device."""
    return f"urn:fleetward:{tenant}:device:{device_id}"


def load_csr(data: bytes) -> x509.CertificateSigningRequest:
    """Parse a PEM or DER CSR within the size limit.

    Raises:
        PayloadTooLargeError: over ``MAX_CSR_BYTES``.
        InvalidInputError: not a parseable PKCS#10 request.
    """
    if len(data) > MAX_CSR_BYTES:
        raise PayloadTooLargeError(f"CSR is {len(data)} bytes; the limit is {MAX_CSR_BYTES}")
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_csr(data)
        return x509.load_der_x509_csr(data)
    except ValueError as exc:
        raise InvalidInputError(f"malformed CSR: {exc}") from exc


@dataclass(frozen=True)
class AcceptedCsr:
    """A CSR that passed every check."""

    public_key: CertificatePublicKeyTypes
    key_type: str
    der: bytes


def _key_type(key: CertificatePublicKeyTypes) -> str:
    if isinstance(key, ec.EllipticCurvePublicKey):
        if isinstance(key.curve, ec.SECP256R1):
            return "ec-p256"
        if isinstance(key.curve, ec.SECP384R1):
            return "ec-p384"
        raise CertificateError(f"EC curve {key.curve.name} is not accepted (P-256 or P-384)")
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "ed25519"
    if isinstance(key, rsa.RSAPublicKey):
        if not MIN_RSA_BITS <= key.key_size <= MAX_RSA_BITS:
            raise CertificateError(
                f"RSA key of {key.key_size} bits is not accepted ({MIN_RSA_BITS}-{MAX_RSA_BITS})"
            )
        return f"rsa-{key.key_size}"
    raise CertificateError(
        f"key type {type(key).__name__} is not accepted (EC P-256/P-384, Ed25519, RSA >= 2048)"
    )


def check_csr(csr: x509.CertificateSigningRequest, *, device_id: str, tenant: str) -> AcceptedCsr:
    """Verify a CSR for ``device_id`` against the profile.

    Checks, in order: key type, signature (proof of possession), no CA flag
    requested, the subject names this device (or nothing), and any requested
    URI SAN names this device.

    Raises:
        CertificateError: key type, CA flag or foreign identity.
        SignatureError: the CSR signature does not verify.
    """
    try:
        key = csr.public_key()
    except (ValueError, TypeError) as exc:  # unsupported algorithms fail to load
        raise CertificateError(f"CSR public key is not supported: {exc}") from exc
    key_type = _key_type(key)
    if not csr.is_signature_valid:
        raise SignatureError("CSR signature does not verify: no proof of key possession")
    try:
        extensions = csr.extensions
    except ValueError as exc:
        raise InvalidInputError(f"CSR extensions do not parse: {exc}") from exc
    try:
        bc = extensions.get_extension_for_class(x509.BasicConstraints).value
        if bc.ca:
            raise CertificateError(
                "CSR requests a CA certificate; device certificates are end-entity"
            )
    except x509.ExtensionNotFound:
        pass
    cns = [a.value for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if cns and cns != [device_id]:
        raise CertificateError(f"CSR subject names {cns[0]!r}, not device {device_id!r}")
    try:
        san = extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        expected = device_uri(tenant, device_id)
        for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
            if uri != expected:
                raise CertificateError(f"CSR requests a foreign identity {uri!r}")
    except x509.ExtensionNotFound:
        pass
    return AcceptedCsr(public_key=key, key_type=key_type, der=csr.public_bytes(Encoding.DER))


def device_certificate(
    *,
    public_key: CertificatePublicKeyTypes,
    device_id: str,
    tenant: str,
    environment: str,
    issuer: x509.Certificate,
    serial: int,
    lifetime: dt.timedelta,
    now: dt.datetime,
    crl_url: str,
    ocsp_url: str,
) -> x509.CertificateBuilder:
    """The builder for a device certificate under the fleetward profile."""
    not_before = now - dt.timedelta(minutes=5)  # tolerate device clock skew
    not_after = min(now + lifetime, issuer.not_valid_after_utc)
    key_usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    issuer_ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.COMMON_NAME, device_id),
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, environment),
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, tenant),
                ]
            )
        )
        .issuer_name(issuer.subject)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage, critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(device_uri(tenant, device_id))]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski),
            critical=False,
        )
        .add_extension(
            x509.CertificatePolicies([x509.PolicyInformation(ENV_POLICY_OIDS[environment], None)]),
            critical=False,
        )
        .add_extension(
            x509.CRLDistributionPoints(
                [
                    x509.DistributionPoint(
                        full_name=[x509.UniformResourceIdentifier(crl_url)],
                        relative_name=None,
                        reasons=None,
                        crl_issuer=None,
                    )
                ]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityInformationAccess(
                [
                    x509.AccessDescription(
                        x509.oid.AuthorityInformationAccessOID.OCSP,
                        x509.UniformResourceIdentifier(ocsp_url),
                    )
                ]
            ),
            critical=False,
        )
    )
