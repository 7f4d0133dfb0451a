"""The one key-custody interface, :class:`Signer`, and the algorithm table.

Every private key fleetward uses (CA keys, the OCSP responder key, the audit
checkpoint key) sits behind :class:`Signer`. Callers see a URI that names where
the key lives, the public key, and a ``sign(data)`` method; they never learn
whether the private half is an encrypted file on disk or an object on a
PKCS#11 token that will not let it out.

The algorithm is a property of the key, not of the call: a P-256 key always
signs with SHA-256, a P-384 key with SHA-384 (matching strength, as RFC 5480
recommends), and an Ed25519 key with pure Ed25519. :data:`ALGORITHMS` is the
single table that ties a name such as ``"ec-p256"`` to its curve and hash, so
the file backend, the PKCS#11 backend and the X.509 helpers cannot disagree.

:class:`Signer` also exposes :meth:`Signer.builder_key`: pyca's X.509
builders can only sign with an in-memory key, so file-backed signers hand it
over (the fast path) while PKCS#11 signers return ``None`` and the X.509
helpers in :mod:`fleetward.keys._x509` reassemble the DER around a signature
made on the token.
"""

from __future__ import annotations

import abc
import types
from dataclasses import dataclass
from typing import Self

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificateIssuerPublicKeyTypes,
)

from fleetward.errors import InvalidInputError, SignatureError

__all__ = [
    "ALGORITHMS",
    "Algorithm",
    "Signer",
    "algorithm_for",
    "lookup_algorithm",
    "verify_signature",
]


@dataclass(frozen=True)
class Algorithm:
    """One supported key algorithm.

    Attributes:
        name: The fleetward name, e.g. ``"ec-p256"``.
        curve: The elliptic curve class, or ``None`` for Ed25519.
        hash: The hash class signatures use, or ``None`` for Ed25519 (which
            hashes internally and must be given ``None`` by pyca builders).
    """

    name: str
    curve: type[ec.EllipticCurve] | None
    hash: type[hashes.SHA256 | hashes.SHA384] | None

    def new_hash(self) -> hashes.SHA256 | hashes.SHA384 | None:
        """Return a fresh hash instance for pyca, or ``None`` for Ed25519."""
        return self.hash() if self.hash is not None else None


ALGORITHMS: dict[str, Algorithm] = {
    "ec-p256": Algorithm("ec-p256", ec.SECP256R1, hashes.SHA256),
    "ec-p384": Algorithm("ec-p384", ec.SECP384R1, hashes.SHA384),
    "ed25519": Algorithm("ed25519", None, None),
}


def lookup_algorithm(name: str) -> Algorithm:
    """Return the :class:`Algorithm` called ``name``.

    Raises:
        InvalidInputError: The name is not in :data:`ALGORITHMS`.
    """
    try:
        return ALGORITHMS[name]
    except KeyError:
        known = ", ".join(sorted(ALGORITHMS))
        raise InvalidInputError(f"unknown key algorithm {name!r} (known: {known})") from None


def algorithm_for(public_key: CertificateIssuerPublicKeyTypes) -> Algorithm:
    """Return the :class:`Algorithm` of a public key.

    Raises:
        InvalidInputError: The key type or curve is not supported.
    """
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return ALGORITHMS["ed25519"]
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        for algorithm in ALGORITHMS.values():
            if algorithm.curve is not None and isinstance(public_key.curve, algorithm.curve):
                return algorithm
        raise InvalidInputError(f"unsupported elliptic curve {public_key.curve.name}")
    raise InvalidInputError(f"unsupported key type {type(public_key).__name__}")


def verify_signature(
    public_key: CertificateIssuerPublicKeyTypes, *, signature: bytes, data: bytes
) -> None:
    """Check ``signature`` over ``data`` with the algorithm the key implies.

    Args:
        public_key: The key that is supposed to have made the signature.
        signature: A DER ECDSA signature, or a raw Ed25519 signature.
        data: The signed bytes.

    Raises:
        SignatureError: The signature does not verify.
        InvalidInputError: The key type is not supported.
    """
    algorithm = algorithm_for(public_key)
    try:
        if isinstance(public_key, ed25519.Ed25519PublicKey):
            public_key.verify(signature, data)
        elif isinstance(public_key, ec.EllipticCurvePublicKey) and algorithm.hash is not None:
            public_key.verify(signature, data, ec.ECDSA(algorithm.hash()))
        else:  # pragma: no cover - algorithm_for() already refused other types
            raise InvalidInputError(f"unsupported key type {type(public_key).__name__}")
    except InvalidSignature:
        raise SignatureError(f"signature does not verify with the {algorithm.name} key") from None


class Signer(abc.ABC):
    """A private key in custody somewhere, able to sign.

    Attributes:
        uri: Where the key lives: ``file:<absolute path>`` for an encrypted
            PEM file, ``pkcs11:token=...;object=...`` (RFC 7512) for a token
            key, ``memory:<id>`` for a throw-away test key. Safe to log and to
            store; it never contains a secret.
    """

    uri: str

    @abc.abstractmethod
    def public_key(self) -> CertificateIssuerPublicKeyTypes:
        """Return the public half as a pyca public key object."""

    @abc.abstractmethod
    def sign(self, data: bytes) -> bytes:
        """Sign ``data``.

        EC keys hash ``data`` with the key's hash (SHA-256 for P-256, SHA-384
        for P-384) and return a DER-encoded ECDSA signature, the form pyca's
        ``verify()`` accepts. Ed25519 keys return the plain 64-byte signature.

        Args:
            data: The message to sign (not a digest).

        Returns:
            The signature bytes.

        Raises:
            FleetwardError: The key store failed to sign.
        """

    @abc.abstractmethod
    def builder_key(self) -> CertificateIssuerPrivateKeyTypes | None:
        """Return the in-memory private key, or ``None`` if there is none.

        File-backed signers return the key so pyca builders can sign
        directly. PKCS#11 signers return ``None``: the key never leaves the
        token.
        """

    @property
    def algorithm(self) -> Algorithm:
        """The :class:`Algorithm` this signer uses, derived from its public key."""
        return algorithm_for(self.public_key())

    def close(self) -> None:
        """Release resources (a PKCS#11 session). Safe to call twice."""
        return None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.uri}>"
