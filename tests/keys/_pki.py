"""Builders for a tiny PKI (root, leaf, CSR, CRL, OCSP) used by the X.509 tests."""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPublicKeyTypes
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
ROOT_NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fleetward test root")])
LEAF_NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "device-0001")])


def root_builder(public_key: CertificateIssuerPublicKeyTypes) -> x509.CertificateBuilder:
    """A self-signed CA certificate for ``public_key``, valid for a century around NOW."""
    ski = x509.SubjectKeyIdentifier.from_public_key(public_key)
    return (
        x509.CertificateBuilder()
        .subject_name(ROOT_NAME)
        .issuer_name(ROOT_NAME)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=36500))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
    )


def leaf_builder(root: x509.Certificate, serial: int = 4242) -> x509.CertificateBuilder:
    """A device certificate issued by ``root`` for a fresh P-256 key."""
    device_key = ec.generate_private_key(ec.SECP256R1()).public_key()
    ski = root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(LEAF_NAME)
        .issuer_name(root.subject)
        .public_key(device_key)
        .serial_number(serial)
        .not_valid_before(NOW - dt.timedelta(hours=1))
        .not_valid_after(NOW + dt.timedelta(days=36500))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
    )


def csr_builder() -> x509.CertificateSigningRequestBuilder:
    """A CSR with a SAN, so the test can check extensions survive."""
    san = x509.SubjectAlternativeName([x509.DNSName("device-0001.fleet.example")])
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(LEAF_NAME)
        .add_extension(san, critical=False)
    )


def crl_builder(
    root: x509.Certificate, revoked_serials: tuple[int, ...] = ()
) -> x509.CertificateRevocationListBuilder:
    """A CRL from ``root`` revoking ``revoked_serials``."""
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(root.subject)
        .last_update(NOW)
        .next_update(NOW + dt.timedelta(days=36500))
        .add_extension(x509.CRLNumber(7), critical=False)
    )
    for serial in revoked_serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(NOW - dt.timedelta(minutes=5))
            .build()
        )
    return builder


def ocsp_builder(
    leaf: x509.Certificate,
    root: x509.Certificate,
    encoding: ocsp.OCSPResponderEncoding = ocsp.OCSPResponderEncoding.HASH,
) -> ocsp.OCSPResponseBuilder:
    """A "good" OCSP response for ``leaf``, answered by ``root`` itself."""
    return (
        ocsp.OCSPResponseBuilder()
        .add_response(
            cert=leaf,
            issuer=root,
            algorithm=hashes.SHA256(),
            cert_status=ocsp.OCSPCertStatus.GOOD,
            this_update=NOW,
            next_update=NOW + dt.timedelta(days=36500),
            revocation_time=None,
            revocation_reason=None,
        )
        .responder_id(encoding, root)
        .certificates([root])
    )
