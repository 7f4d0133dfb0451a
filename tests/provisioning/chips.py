"""Simulated secure elements for tests: a vendor attestation root and chips.

Generated at test time (never pasted): a vendor root CA, optionally an
intermediate, and per-chip attestation keys certified under it, the way a
secure-element vendor provisions chips at its own factory.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from fleetward.provisioning.attestation import FORMAT, attestation_message

NOW = dt.datetime.now(dt.UTC)


def _cert(
    *,
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    ca: bool,
    not_after: dt.datetime | None = None,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(not_after or NOW + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(issuer_key, hashes.SHA256())
    )


@dataclass
class Vendor:
    """A chip vendor's attestation PKI."""

    name: str
    root: x509.Certificate
    root_key: ec.EllipticCurvePrivateKey
    intermediate: x509.Certificate
    intermediate_key: ec.EllipticCurvePrivateKey

    @classmethod
    def create(cls, name: str = "ACME Secure Elements") -> Vendor:
        root_key = ec.generate_private_key(ec.SECP256R1())
        root = _cert(
            subject=f"{name} Root", key=root_key, issuer=None, issuer_key=root_key, ca=True
        )
        mid_key = ec.generate_private_key(ec.SECP256R1())
        mid = _cert(
            subject=f"{name} Batch CA", key=mid_key, issuer=root, issuer_key=root_key, ca=True
        )
        return cls(name, root, root_key, mid, mid_key)

    def root_pem(self) -> str:
        return self.root.public_bytes(Encoding.PEM).decode()

    def chip(self, serial: str, *, expired: bool = False) -> Chip:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _cert(
            subject=f"chip {serial}",
            key=key,
            issuer=self.intermediate,
            issuer_key=self.intermediate_key,
            ca=False,
            not_after=NOW - dt.timedelta(hours=1) if expired else None,
        )
        return Chip(key=key, chain=[cert, self.intermediate])


@dataclass
class Chip:
    """One secure element: its attestation key and certificate chain."""

    key: ec.EllipticCurvePrivateKey
    chain: list[x509.Certificate]

    def statement(self, *, nonce: bytes, identity_spki_der: bytes) -> dict[str, object]:
        message = attestation_message(nonce=nonce, identity_spki_der=identity_spki_der)
        signature = self.key.sign(message, ec.ECDSA(hashes.SHA256()))
        return {
            "format": FORMAT,
            "nonce": base64.urlsafe_b64encode(nonce).decode(),
            "signature": base64.b64encode(signature).decode(),
            "chain": [c.public_bytes(Encoding.PEM).decode() for c in self.chain],
        }

    def statement_json(self, *, nonce: bytes, identity_spki_der: bytes) -> str:
        return json.dumps(self.statement(nonce=nonce, identity_spki_der=identity_spki_der))
