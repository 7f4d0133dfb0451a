"""CA certificate profiles: root and per-environment issuing CAs.

Pure builders. The root may be kept offline: an issuing CA is created as a
CSR (:func:`issuing_ca_csr`) that the root signs wherever it lives
(:func:`issuing_ca_certificate`), and the certificate is imported back.
"""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import NameOID

from fleetward.errors import CertificateError, SignatureError
from fleetward.identity.profile import ENV_POLICY_OIDS

__all__ = [
    "ISSUING_LIFETIME",
    "ROOT_LIFETIME",
    "check_issuing_certificate",
    "issuing_ca_certificate",
    "issuing_ca_csr",
    "issuing_name",
    "root_ca_certificate",
]

ROOT_LIFETIME = dt.timedelta(days=365 * 20)
ISSUING_LIFETIME = dt.timedelta(days=365 * 5)


def _name(tenant: str, common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, tenant),
        ]
    )


def issuing_name(tenant: str, environment: str) -> x509.Name:
    """Subject of a tenant's issuing CA for one environment."""
    return _name(tenant, f"fleetward {tenant} {environment} issuing CA")


def _ca_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def root_ca_certificate(
    *, public_key: CertificatePublicKeyTypes, tenant: str, serial: int, now: dt.datetime
) -> x509.CertificateBuilder:
    """Self-signed root CA builder (path length 1: root → issuing → device)."""
    name = _name(tenant, f"fleetward {tenant} root CA")
    ski = x509.SubjectKeyIdentifier.from_public_key(public_key)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + ROOT_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(_ca_usage(), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
    )


def issuing_ca_csr(*, tenant: str, environment: str) -> x509.CertificateSigningRequestBuilder:
    """CSR builder for an issuing CA (sign it with the issuing CA's own key)."""
    return x509.CertificateSigningRequestBuilder().subject_name(issuing_name(tenant, environment))


def issuing_ca_certificate(
    *,
    csr: x509.CertificateSigningRequest,
    root: x509.Certificate,
    environment: str,
    serial: int,
    now: dt.datetime,
) -> x509.CertificateBuilder:
    """Builder of an issuing CA certificate for ``csr``, to be signed by ``root``.

    The subject and public key come from the CSR; every extension comes from
    the profile: CA with path length 0, the environment's policy OID.

    Raises:
        SignatureError: the CSR signature does not verify.
    """
    if not csr.is_signature_valid:
        raise SignatureError("issuing CA CSR signature does not verify")
    public_key = csr.public_key()
    root_ski = root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(root.subject)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(min(now + ISSUING_LIFETIME, root.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_ca_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(root_ski),
            critical=False,
        )
        .add_extension(
            x509.CertificatePolicies([x509.PolicyInformation(ENV_POLICY_OIDS[environment], None)]),
            critical=False,
        )
    )


def check_issuing_certificate(
    cert: x509.Certificate,
    *,
    root: x509.Certificate,
    public_key: CertificatePublicKeyTypes,
    environment: str,
) -> None:
    """Check an imported issuing CA certificate before it is used.

    Raises:
        CertificateError: wrong key, not issued by the root, not a CA, or
            without the environment's policy.
    """
    if cert.public_key() != public_key:
        raise CertificateError("certificate is not for this issuing CA's key")
    try:
        cert.verify_directly_issued_by(root)
    except (ValueError, TypeError) as exc:
        raise CertificateError(f"certificate is not issued by the tenant root: {exc}") from exc
    except InvalidSignature as exc:
        raise CertificateError("certificate signature does not verify under the root") from exc
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        policies = cert.extensions.get_extension_for_class(x509.CertificatePolicies).value
    except x509.ExtensionNotFound as exc:
        raise CertificateError(f"issuing CA certificate lacks {exc.oid.dotted_string}") from exc
    if not bc.ca:
        raise CertificateError("certificate is not a CA certificate")
    if ENV_POLICY_OIDS[environment] not in [p.policy_identifier for p in policies]:
        raise CertificateError(f"certificate does not carry the {environment} policy")
