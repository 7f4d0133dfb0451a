"""The device certificate profile decides every extension; CSRs only bring a key and a name."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleetward.errors import (
    CertificateError,
    InvalidInputError,
    PayloadTooLargeError,
    SignatureError,
)
from fleetward.identity import ca as ca_profile
from fleetward.identity import profile
from fleetward.keys import generate_ephemeral_signer, sign_certificate, sign_csr
from tests.helpers import csr_pem, new_key

NOW = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def issuer() -> tuple[x509.Certificate, object]:
    root_signer = generate_ephemeral_signer()
    root = sign_certificate(
        ca_profile.root_ca_certificate(
            public_key=root_signer.public_key(), tenant="acme", serial=1, now=NOW
        ),
        root_signer,
    )
    signer = generate_ephemeral_signer()
    csr = sign_csr(ca_profile.issuing_ca_csr(tenant="acme", environment="production"), signer)
    cert = sign_certificate(
        ca_profile.issuing_ca_certificate(
            csr=csr, root=root, environment="production", serial=2, now=NOW
        ),
        root_signer,
    )
    return cert, signer


@pytest.mark.parametrize("kind", ["ec-p256", "ec-p384", "ed25519", "rsa-2048"])
def test_accepted_key_types(kind: str) -> None:
    csr = profile.load_csr(csr_pem(new_key(kind), "dev-1"))
    accepted = profile.check_csr(csr, device_id="dev-1", tenant="acme")
    assert accepted.key_type == kind


@pytest.mark.parametrize("kind", ["ec-p521", "ed448", "rsa-1024"])
def test_refused_key_types(kind: str) -> None:
    csr = profile.load_csr(csr_pem(new_key(kind), "dev-1"))
    with pytest.raises(CertificateError, match="not accepted"):
        profile.check_csr(csr, device_id="dev-1", tenant="acme")


def test_tampered_csr_signature_is_refused() -> None:
    der = bytearray(x509.load_pem_x509_csr(csr_pem(new_key(), "dev-1")).public_bytes(Encoding.DER))
    der[-5] ^= 0x01  # flip a bit inside the signature value
    csr = profile.load_csr(bytes(der))
    with pytest.raises(SignatureError, match="proof of key possession"):
        profile.check_csr(csr, device_id="dev-1", tenant="acme")


def test_ca_flag_is_refused() -> None:
    pem = csr_pem(
        new_key(), "dev-1", extensions=[(x509.BasicConstraints(ca=True, path_length=None), True)]
    )
    with pytest.raises(CertificateError, match="CA certificate"):
        profile.check_csr(profile.load_csr(pem), device_id="dev-1", tenant="acme")


def test_foreign_device_id_is_refused() -> None:
    with pytest.raises(CertificateError, match="not device"):
        profile.check_csr(
            profile.load_csr(csr_pem(new_key(), "dev-2")), device_id="dev-1", tenant="acme"
        )


def test_foreign_san_is_refused() -> None:
    san = x509.SubjectAlternativeName(
        [x509.UniformResourceIdentifier(profile.device_uri("other", "dev-1"))]
    )
    pem = csr_pem(new_key(), "dev-1", extensions=[(san, False)])
    with pytest.raises(CertificateError, match="foreign identity"):
        profile.check_csr(profile.load_csr(pem), device_id="dev-1", tenant="acme")


def test_oversized_and_malformed_csrs() -> None:
    with pytest.raises(PayloadTooLargeError, match=str(profile.MAX_CSR_BYTES)):
        profile.load_csr(b"A" * (profile.MAX_CSR_BYTES + 1))
    with pytest.raises(InvalidInputError, match="malformed CSR"):
        profile.load_csr(
            b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
        )
    with pytest.raises(InvalidInputError, match="malformed CSR"):
        profile.load_csr(b"\x30\x03\x02\x01\x01")


@pytest.mark.parametrize("bad", ["", "a/b", "dev+1", "dev#", "-lead", "x" * 65, "spa ce"])
def test_device_id_alphabet(bad: str) -> None:
    with pytest.raises(InvalidInputError):
        profile.check_device_id(bad)


def test_certificate_follows_the_profile_not_the_request(
    issuer: tuple[x509.Certificate, object],
) -> None:
    issuer_cert, issuer_signer = issuer
    key = new_key()
    pem = csr_pem(
        key,
        "dev-1",
        extensions=[
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
            (x509.SubjectAlternativeName([x509.DNSName("evil.example")]), False),
        ],
    )
    accepted = profile.check_csr(profile.load_csr(pem), device_id="dev-1", tenant="acme")
    cert = sign_certificate(
        profile.device_certificate(
            public_key=accepted.public_key,
            device_id="dev-1",
            tenant="acme",
            environment="production",
            issuer=issuer_cert,
            serial=1234,
            lifetime=dt.timedelta(days=90),
            now=NOW,
            crl_url="http://fw/crl/3.crl",
            ocsp_url="http://fw/ocsp",
        ),
        issuer_signer,  # type: ignore[arg-type]
    )
    ext = cert.extensions
    assert ext.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert list(ext.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]
    san = ext.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "urn:fleetward:acme:device:dev-1"
    ]
    assert san.get_values_for_type(x509.DNSName) == []
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "dev-1"
    assert cert.not_valid_after_utc - NOW == dt.timedelta(days=90)
    cdp = ext.get_extension_for_class(x509.CRLDistributionPoints).value
    assert cdp[0].full_name == [x509.UniformResourceIdentifier("http://fw/crl/3.crl")]
    aia = ext.get_extension_for_class(x509.AuthorityInformationAccess).value
    assert aia[0].access_location == x509.UniformResourceIdentifier("http://fw/ocsp")
    cert.verify_directly_issued_by(issuer_cert)
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
