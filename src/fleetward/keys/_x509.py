"""Sign X.509 certificates, CSRs, CRLs and OCSP responses with any :class:`Signer`.

pyca/cryptography's builders sign only with an in-memory private key. Two
paths follow from that:

* **Fast path.** A signer that has one (:meth:`Signer.builder_key`, i.e. file
  and ephemeral keys) is handed straight to ``builder.sign()``.
* **Reassembly path.** For a key that never leaves its token, the builder
  signs with a throw-away key of the *same algorithm*, so the
  ``signatureAlgorithm`` inside the to-be-signed bytes (TBS) is already the
  right one. The TBS bytes are then signed by the real signer, and asn1crypto
  swaps the signature value in the outer structure (for OCSP, inside the
  ``BasicOCSPResponse`` that the response wraps). A CSR also carries the
  public key inside its TBS, so there the throw-away key's
  ``SubjectPublicKeyInfo`` is first replaced by the signer's and the TBS
  re-encoded before it is signed. pyca also refuses to sign an OCSP response
  whose responder certificate is not for the signing key, so the draft names
  a stand-in certificate (same subject, throw-away key) and the real
  ``ResponderID`` is written back into the TBS before signing.

Either way, every result is reloaded with pyca and its signature is checked
against ``signer.public_key()`` over the exact TBS bytes that were signed
(and, for a CSR, its public key compared with the signer's) before it is
returned. A mismatch raises :class:`~fleetward.errors.SignatureError`; a
malformed object never leaves this module.
"""

from __future__ import annotations

from asn1crypto import crl as asn1_crl
from asn1crypto import csr as asn1_csr
from asn1crypto import keys as asn1_keys
from asn1crypto import ocsp as asn1_ocsp
from asn1crypto import x509 as asn1_x509
from asn1crypto.core import OctetBitString, ParsableOctetString
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509 import ocsp

from fleetward.errors import InvalidInputError, SignatureError
from fleetward.keys._signer import Algorithm, Signer, verify_signature

__all__ = ["sign_certificate", "sign_crl", "sign_csr", "sign_ocsp_response"]


def _ephemeral_key(spec: Algorithm) -> CertificateIssuerPrivateKeyTypes:
    """A throw-away key whose only job is to fix the TBS signatureAlgorithm."""
    if spec.curve is None:
        return ed25519.Ed25519PrivateKey.generate()
    return ec.generate_private_key(spec.curve())


def _check(
    signer: Signer,
    spec: Algorithm,
    *,
    signature: bytes,
    tbs: bytes,
    declared: hashes.HashAlgorithm | None,
    what: str,
) -> None:
    """Raise :class:`SignatureError` unless ``signature`` is the signer's over ``tbs``."""
    wanted = spec.new_hash()
    expected = wanted.name if wanted is not None else None
    if (declared.name if declared is not None else None) != expected:
        raise SignatureError(f"{what} declares a different hash than the {spec.name} signer uses")
    try:
        verify_signature(signer.public_key(), signature=signature, data=tbs)
    except SignatureError:
        raise SignatureError(f"{what} signature does not verify with {signer.uri}") from None


def sign_certificate(builder: x509.CertificateBuilder, signer: Signer) -> x509.Certificate:
    """Sign a certificate with any signer.

    Args:
        builder: A complete builder (subject, issuer, public key, serial, validity...).
        signer: The issuer's signer (the subject's own, for a self-signed root).

    Returns:
        The signed certificate, its signature already verified with
        ``signer.public_key()``.

    Raises:
        SignatureError: The produced signature does not verify.
        InvalidInputError: The signer's key type is not supported.
    """
    spec = signer.algorithm
    key = signer.builder_key()
    if key is not None:
        # pyca signs with the in-memory key itself: nothing was reassembled,
        # so there is nothing to re-check (this is the issuance hot path).
        return builder.sign(key, spec.new_hash())
    draft = builder.sign(_ephemeral_key(spec), spec.new_hash())
    tbs = draft.tbs_certificate_bytes
    asn1 = asn1_x509.Certificate.load(draft.public_bytes(serialization.Encoding.DER))
    asn1["signature_value"] = OctetBitString(signer.sign(tbs))
    cert = x509.load_der_x509_certificate(asn1.dump())
    if cert.tbs_certificate_bytes != tbs:
        raise SignatureError("reassembled certificate does not carry the signed TBS")
    _check(
        signer,
        spec,
        signature=cert.signature,
        tbs=tbs,
        declared=cert.signature_hash_algorithm,
        what="certificate",
    )
    return cert


def _csr_tbs_with_key(draft: x509.CertificateSigningRequest, signer: Signer) -> bytes:
    """Return a CSR's TBS re-encoded with the signer's SubjectPublicKeyInfo."""
    spki = signer.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    info = asn1_csr.CertificationRequestInfo.load(draft.tbs_certrequest_bytes)
    info["subject_pk_info"] = asn1_keys.PublicKeyInfo.load(spki)
    tbs: bytes = info.dump()
    return tbs


def sign_csr(
    builder: x509.CertificateSigningRequestBuilder, signer: Signer
) -> x509.CertificateSigningRequest:
    """Sign a certificate signing request for the signer's own key.

    Args:
        builder: A complete builder (subject, extensions, attributes).
        signer: The key the CSR asks a certificate for; it also proves possession.

    Returns:
        The CSR, its signature and public key checked against the signer.

    Raises:
        SignatureError: The signature does not verify or the CSR carries
            another public key.
        InvalidInputError: The signer's key type is not supported.
    """
    spec = signer.algorithm
    key = signer.builder_key()
    if key is not None:
        csr = builder.sign(key, spec.new_hash())
        tbs = csr.tbs_certrequest_bytes
    else:
        draft = builder.sign(_ephemeral_key(spec), spec.new_hash())
        tbs = _csr_tbs_with_key(draft, signer)
        asn1 = asn1_csr.CertificationRequest.load(draft.public_bytes(serialization.Encoding.DER))
        asn1["certification_request_info"] = asn1_csr.CertificationRequestInfo.load(tbs)
        asn1["signature"] = OctetBitString(signer.sign(tbs))
        csr = x509.load_der_x509_csr(asn1.dump())
    if csr.tbs_certrequest_bytes != tbs or csr.public_key() != signer.public_key():
        raise SignatureError("CSR does not carry the signer's public key in the signed TBS")
    _check(
        signer,
        spec,
        signature=csr.signature,
        tbs=tbs,
        declared=csr.signature_hash_algorithm,
        what="CSR",
    )
    return csr


def sign_crl(
    builder: x509.CertificateRevocationListBuilder, signer: Signer
) -> x509.CertificateRevocationList:
    """Sign a certificate revocation list with the issuer's signer.

    Args:
        builder: A complete builder (issuer, this/next update, entries, extensions).
        signer: The CRL issuer's signer.

    Returns:
        The CRL, its signature already verified with ``signer.public_key()``.

    Raises:
        SignatureError: The produced signature does not verify.
        InvalidInputError: The signer's key type is not supported.
    """
    spec = signer.algorithm
    key = signer.builder_key()
    if key is not None:
        return builder.sign(key, spec.new_hash())
    draft = builder.sign(_ephemeral_key(spec), spec.new_hash())
    tbs = draft.tbs_certlist_bytes
    asn1 = asn1_crl.CertificateList.load(draft.public_bytes(serialization.Encoding.DER))
    asn1["signature"] = OctetBitString(signer.sign(tbs))
    crl = x509.load_der_x509_crl(asn1.dump())
    if crl.tbs_certlist_bytes != tbs:
        raise SignatureError("reassembled CRL does not carry the signed TBS")
    _check(
        signer,
        spec,
        signature=crl.signature,
        tbs=tbs,
        declared=crl.signature_hash_algorithm,
        what="CRL",
    )
    return crl


def _responder(
    builder: ocsp.OCSPResponseBuilder,
) -> tuple[x509.Certificate, ocsp.OCSPResponderEncoding]:
    """Return the builder's responder certificate and encoding.

    pyca exposes no getter, so this reads the builder's private
    ``_responder_id``; it has had this shape since OCSP building was added.
    """
    responder = getattr(builder, "_responder_id", None)
    if responder is None:
        raise InvalidInputError("the OCSP response builder has no responder_id")
    cert, encoding = responder
    return cert, encoding


def _asn1_responder_id(
    cert: x509.Certificate, encoding: ocsp.OCSPResponderEncoding
) -> asn1_ocsp.ResponderId:
    """The ResponderID a real responder certificate yields (RFC 6960, 4.2.1)."""
    asn1_cert = asn1_x509.Certificate.load(cert.public_bytes(serialization.Encoding.DER))
    if encoding is ocsp.OCSPResponderEncoding.HASH:
        # SHA-1 of the subjectPublicKey BIT STRING value, as RFC 6960 defines.
        return asn1_ocsp.ResponderId(name="by_key", value=asn1_cert.public_key.sha1)
    return asn1_ocsp.ResponderId(name="by_name", value=asn1_cert.subject)


def _ocsp_draft(
    builder: ocsp.OCSPResponseBuilder, spec: Algorithm
) -> tuple[ocsp.OCSPResponse, x509.Certificate, ocsp.OCSPResponderEncoding]:
    """Build an OCSP response with a throw-away key and a stand-in responder cert.

    pyca refuses to sign when the key does not match the responder
    certificate, so the draft names a stand-in certificate (same subject,
    throw-away key); the caller puts the real ResponderID back into the TBS.
    """
    real, encoding = _responder(builder)
    key = _ephemeral_key(spec)
    stand_in = (
        x509.CertificateBuilder()
        .subject_name(real.subject)
        .issuer_name(real.subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(real.not_valid_before_utc)
        .not_valid_after(real.not_valid_after_utc)
        .sign(key, spec.new_hash())
    )
    draft_builder = ocsp.OCSPResponseBuilder(
        builder._response,
        (stand_in, encoding),
        builder._certs,
        builder._extensions,
    )
    return draft_builder.sign(key, spec.new_hash()), real, encoding


def sign_ocsp_response(builder: ocsp.OCSPResponseBuilder, signer: Signer) -> ocsp.OCSPResponse:
    """Sign a successful OCSP response with the responder's signer.

    Args:
        builder: A builder with the single response and the responder id set;
            the responder certificate must carry ``signer.public_key()``.
        signer: The OCSP responder's (or the CA's) signer.

    Returns:
        The response, its signature already verified with ``signer.public_key()``.

    Raises:
        InvalidInputError: No responder id, a responder certificate for
            another key, or an unsupported key type.
        SignatureError: The produced signature does not verify.
    """
    spec = signer.algorithm
    key = signer.builder_key()
    if key is not None:
        # pyca itself refuses a key that does not match the responder
        # certificate, and nothing is reassembled: the OCSP hot path.
        try:
            return builder.sign(key, spec.new_hash())
        except ValueError as exc:
            raise InvalidInputError(f"cannot sign the OCSP response: {exc}") from exc
    real, encoding = _responder(builder)
    if real.public_key() != signer.public_key():
        raise InvalidInputError("the OCSP responder certificate is not for the signer's key")
    draft, real, encoding = _ocsp_draft(builder, spec)
    outer = asn1_ocsp.OCSPResponse.load(draft.public_bytes(serialization.Encoding.DER))
    response_bytes = outer["response_bytes"]
    basic = response_bytes["response"].parsed
    data = basic["tbs_response_data"]
    data["responder_id"] = _asn1_responder_id(real, encoding)
    tbs = data.dump()
    basic["tbs_response_data"] = asn1_ocsp.ResponseData.load(tbs)
    basic["signature"] = OctetBitString(signer.sign(tbs))
    response_bytes["response"] = ParsableOctetString(basic.dump())
    # Re-assign so the outer structure knows its child changed.
    outer["response_bytes"] = response_bytes
    response = ocsp.load_der_ocsp_response(outer.dump())
    if response.tbs_response_bytes != tbs:
        raise SignatureError("reassembled OCSP response does not carry the signed TBS")
    expected_id = _asn1_responder_id(real, encoding)
    if expected_id.name == "by_key":
        matches = response.responder_key_hash == expected_id.chosen.native
    else:
        matches = response.responder_name == real.subject
    if not matches:
        raise SignatureError("OCSP response does not name the signer's responder certificate")
    _check(
        signer,
        spec,
        signature=response.signature,
        tbs=tbs,
        declared=response.signature_hash_algorithm,
        what="OCSP response",
    )
    return response
