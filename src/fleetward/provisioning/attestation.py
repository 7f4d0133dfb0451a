"""Key-origin attestation: proof that a device key was generated in a secure element.

Modelled on how secure elements and TPMs attest keys: a chip vendor runs an
attestation root CA (registered per tenant in fleetward); every chip holds
an attestation key certified under it. At enrollment the chip signs

    b"fleetward-key-attestation/v1\\n" || nonce || SHA-256(identity SubjectPublicKeyInfo DER)

with its attestation key, binding the new identity key (the one in the CSR)
to the chip and to a fresh server nonce. The device sends this statement
with the attestation certificate chain (leaf first).

Pure: :func:`verify_statement` checks the chain against the registered
roots, the validity periods, the signature and the nonce, and returns what
it learnt or raises :class:`~fleetward.errors.AttestationError`. The nonce's
freshness and single use are the caller's (it owns the nonce store).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from fleetward.errors import AttestationError, FleetwardError, NonceError, PayloadTooLargeError
from fleetward.keys import verify_signature

__all__ = [
    "FORMAT",
    "MAX_CHAIN",
    "MAX_STATEMENT_BYTES",
    "Attested",
    "NonceError",
    "Statement",
    "attestation_message",
    "parse_statement",
    "verify_statement",
]

FORMAT = "fleetward-key-attestation/v1"
MAX_STATEMENT_BYTES = 16 * 1024  # a statement with a 3-certificate chain is ~3 KiB
MAX_CHAIN = 4  # leaf plus at most three intermediates


def attestation_message(*, nonce: bytes, identity_spki_der: bytes) -> bytes:
    """The exact bytes the attestation key signs."""
    return f"{FORMAT}\n".encode() + nonce + hashlib.sha256(identity_spki_der).digest()


@dataclass(frozen=True)
class Statement:
    """A parsed (not yet verified) attestation statement."""

    nonce: bytes
    signature: bytes
    chain: tuple[x509.Certificate, ...]


@dataclass(frozen=True)
class Attested:
    """What a verified statement proves."""

    root_fingerprint: str
    chip: str  # the attestation certificate's subject
    chip_serial: str


def parse_statement(data: bytes | str | dict[str, Any]) -> Statement:
    """Parse a statement (JSON text or an already-decoded object).

    Raises:
        PayloadTooLargeError: over ``MAX_STATEMENT_BYTES``.
        AttestationError: malformed, unknown format, bad encodings, chain too long.
    """
    if isinstance(data, bytes | str):
        if len(data) > MAX_STATEMENT_BYTES:
            raise PayloadTooLargeError(f"attestation statement over {MAX_STATEMENT_BYTES} bytes")
        try:
            obj = json.loads(data)
        except ValueError as exc:
            raise AttestationError("attestation statement is not JSON") from exc
    else:
        obj = data
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise AttestationError(f"attestation statement format must be {FORMAT!r}")
    chain_pem = obj.get("chain")
    if not isinstance(chain_pem, list) or not 1 <= len(chain_pem) <= MAX_CHAIN:
        raise AttestationError(f"attestation chain must hold 1 to {MAX_CHAIN} certificates")
    try:
        nonce = base64.urlsafe_b64decode(str(obj["nonce"]))
        signature = base64.b64decode(str(obj["signature"]), validate=True)
        chain = tuple(x509.load_pem_x509_certificate(str(p).encode()) for p in chain_pem)
    except (KeyError, binascii.Error, ValueError) as exc:
        raise AttestationError(f"malformed attestation statement: {exc}") from exc
    return Statement(nonce=nonce, signature=signature, chain=chain)


def _valid_at(cert: x509.Certificate, now: dt.datetime, what: str) -> None:
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise AttestationError(f"{what} is outside its validity period")


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def verify_statement(
    statement: Statement,
    *,
    identity_spki_der: bytes,
    expected_nonce: bytes,
    roots: Sequence[x509.Certificate],
    now: dt.datetime,
) -> Attested:
    """Verify an attestation statement for the identity key ``identity_spki_der``.

    Raises:
        AttestationError: wrong nonce, a chain that does not end at a
            registered root, an expired or non-CA link, or a signature that
            does not cover this key and nonce.
    """
    if statement.nonce != expected_nonce:
        raise NonceError("attestation nonce does not match the one issued")
    chain = statement.chain
    _valid_at(chain[0], now, "attestation certificate")
    for child, parent in itertools.pairwise(chain):
        if not _is_ca(parent) or not _issued_by(child, parent):
            raise AttestationError("attestation chain is broken")
        _valid_at(parent, now, "attestation intermediate")
    root = next((r for r in roots if _issued_by(chain[-1], r)), None)
    if root is None:
        raise AttestationError("attestation chain does not lead to a registered vendor root")
    _valid_at(root, now, "vendor attestation root")
    key = chain[0].public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
        raise AttestationError("attestation key type is not supported (EC or Ed25519)")
    message = attestation_message(nonce=expected_nonce, identity_spki_der=identity_spki_der)
    try:
        verify_signature(key, signature=statement.signature, data=message)
    except FleetwardError as exc:
        raise AttestationError("attestation signature does not cover this key and nonce") from exc
    return Attested(
        root_fingerprint=root.fingerprint(hashes.SHA256()).hex(),
        chip=chain[0].subject.rfc4514_string(),
        chip_serial=format(chain[0].serial_number, "x"),
    )
