"""The X.509 helpers sign with any Signer and never return a bad signature."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from fleetward.errors import InvalidInputError, SignatureError
from fleetward.keys import (
    Signer,
    generate_ephemeral_signer,
    sign_certificate,
    sign_crl,
    sign_csr,
    sign_ocsp_response,
    verify_signature,
)

from ._pki import LEAF_NAME, crl_builder, csr_builder, leaf_builder, ocsp_builder, root_builder
from .conftest import ExternalSigner


def _expected_hash(signer: Signer) -> str | None:
    digest = signer.algorithm.new_hash()
    return digest.name if digest is not None else None


def _name(digest: hashes.HashAlgorithm | None) -> str | None:
    return digest.name if digest is not None else None


def test_certificates(any_signer: Signer) -> None:
    root = sign_certificate(root_builder(any_signer.public_key()), any_signer)
    root.verify_directly_issued_by(root)
    assert root.public_key() == any_signer.public_key()
    assert _name(root.signature_hash_algorithm) == _expected_hash(any_signer)

    leaf = sign_certificate(leaf_builder(root), any_signer)
    leaf.verify_directly_issued_by(root)
    verify_signature(
        any_signer.public_key(), signature=leaf.signature, data=leaf.tbs_certificate_bytes
    )


def test_csr(any_signer: Signer) -> None:
    csr = sign_csr(csr_builder(), any_signer)
    assert csr.is_signature_valid
    assert csr.public_key() == any_signer.public_key()
    assert csr.subject == LEAF_NAME
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["device-0001.fleet.example"]
    assert _name(csr.signature_hash_algorithm) == _expected_hash(any_signer)


def test_crl(any_signer: Signer) -> None:
    root = sign_certificate(root_builder(any_signer.public_key()), any_signer)
    crl = sign_crl(crl_builder(root, revoked_serials=(4242, 17)), any_signer)
    assert crl.is_signature_valid(any_signer.public_key())
    assert {entry.serial_number for entry in crl} == {4242, 17}
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 7


@pytest.mark.parametrize("encoding", list(ocsp.OCSPResponderEncoding))
def test_ocsp_response(any_signer: Signer, encoding: ocsp.OCSPResponderEncoding) -> None:
    root = sign_certificate(root_builder(any_signer.public_key()), any_signer)
    leaf = sign_certificate(leaf_builder(root), any_signer)
    response = sign_ocsp_response(ocsp_builder(leaf, root, encoding), any_signer)
    verify_signature(
        any_signer.public_key(), signature=response.signature, data=response.tbs_response_bytes
    )
    assert response.serial_number == leaf.serial_number
    assert response.certificate_status is ocsp.OCSPCertStatus.GOOD
    assert response.certificates == [root]
    if encoding is ocsp.OCSPResponderEncoding.HASH:
        expected = x509.SubjectKeyIdentifier.from_public_key(any_signer.public_key()).digest
        assert response.responder_key_hash == expected
    else:
        assert response.responder_name == root.subject


def test_ocsp_responder_must_be_the_signer() -> None:
    signer, other = generate_ephemeral_signer(), generate_ephemeral_signer()
    root = sign_certificate(root_builder(other.public_key()), other)
    leaf = sign_certificate(leaf_builder(root), other)
    with pytest.raises(InvalidInputError, match="responder certificate"):
        sign_ocsp_response(ocsp_builder(leaf, root), ExternalSigner(signer))


@pytest.mark.hsm
def test_tampered_signature_fails(hsm_signer: Signer) -> None:
    root = sign_certificate(root_builder(hsm_signer.public_key()), hsm_signer)
    der = bytearray(root.public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01  # last byte of the DER is inside the signature value
    tampered = x509.load_der_x509_certificate(bytes(der))
    assert tampered.tbs_certificate_bytes == root.tbs_certificate_bytes
    with pytest.raises(InvalidSignature):
        tampered.verify_directly_issued_by(root)
    with pytest.raises(SignatureError):
        verify_signature(
            hsm_signer.public_key(),
            signature=tampered.signature,
            data=tampered.tbs_certificate_bytes,
        )


@pytest.mark.hsm
def test_tampered_tbs_fails(hsm_signer: Signer) -> None:
    crl = sign_crl(
        crl_builder(sign_certificate(root_builder(hsm_signer.public_key()), hsm_signer)),
        hsm_signer,
    )
    tbs = crl.tbs_certlist_bytes.replace(b"fleetward test root", b"fleetward test r00t")
    assert tbs != crl.tbs_certlist_bytes
    with pytest.raises(SignatureError):
        verify_signature(hsm_signer.public_key(), signature=crl.signature, data=tbs)


@pytest.mark.parametrize("algorithm", ["ec-p256", "ed25519"])
def test_lying_signer_is_caught(algorithm: str) -> None:
    """A signer whose signatures are not its public key's never yields an object."""
    honest = generate_ephemeral_signer(algorithm)
    liar = ExternalSigner(honest, sign_with=generate_ephemeral_signer(algorithm))
    root = sign_certificate(root_builder(honest.public_key()), honest)
    leaf = sign_certificate(leaf_builder(root), honest)
    with pytest.raises(SignatureError):
        sign_certificate(root_builder(liar.public_key()), liar)
    with pytest.raises(SignatureError):
        sign_csr(csr_builder(), liar)
    with pytest.raises(SignatureError):
        sign_crl(crl_builder(root), liar)
    with pytest.raises(SignatureError):
        sign_ocsp_response(ocsp_builder(leaf, root), liar)


@pytest.mark.hsm
def test_hsm_csr_carries_the_token_key(hsm_signer: Signer) -> None:
    """The reassembly path must not leak the throw-away key into the CSR."""
    csr = sign_csr(csr_builder(), hsm_signer)
    assert csr.public_key() == hsm_signer.public_key()
    verify_signature(
        hsm_signer.public_key(), signature=csr.signature, data=csr.tbs_certrequest_bytes
    )
