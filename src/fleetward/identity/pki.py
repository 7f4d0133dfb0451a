"""Per-process PKI context: key ring, URLs, parsed CA certificates and caches.

One :class:`Pki` lives in each API or publisher process. Its caches hold
only what cannot change under it: parsed CA certificates (keyed by the CA id
and a hash of the PEM they were parsed from, so a different PEM is parsed
anew), the OCSP responder index and encoded CRL entries. Nothing that an
operator can change — which CA is active, a tenant's issuance policy — is
cached: issuance reads it from the database on every request (one indexed
query, see :func:`fleetward.identity.issuance.issuer_for`), so a change made
through one worker process applies to the next request in every other.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import threading
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import Connection, select

from fleetward.errors import ConflictError, InvalidInputError
from fleetward.identity.models import CertificateAuthority
from fleetward.keys.ring import KeyRing

__all__ = ["EncodedEntries", "Pki"]


@dataclass
class EncodedEntries:
    """A publisher's encoded entries of one CA, up to a revocation sequence."""

    upto: int
    count: int
    der: bytearray


@dataclass
class Pki:
    """What issuing, CRL and OCSP need beyond the database."""

    keyring: KeyRing
    public_url: str
    crl_validity: dt.timedelta = dt.timedelta(hours=24)
    ocsp_validity: dt.timedelta = dt.timedelta(hours=1)
    _certs: dict[tuple[int, bytes], x509.Certificate] = field(default_factory=dict)
    _by_key_hash: dict[bytes, Responder] = field(default_factory=dict)
    crl_dir: Path | None = None  # set on SQLite: CRL DER goes to files, see PublishedCrl
    crl_entries: dict[int, EncodedEntries] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def crl_url(self, ca_id: int) -> str:
        """Where a CA's CRL is published."""
        return f"{self.public_url}/crl/{ca_id}.crl"

    @property
    def ocsp_url(self) -> str:
        """The OCSP responder."""
        return f"{self.public_url}/ocsp"

    def certificate(self, ca: CertificateAuthority) -> x509.Certificate:
        """The parsed certificate of an active or retired CA (cached)."""
        if ca.certificate_pem is None:
            raise ConflictError(f"CA {ca.id} has no certificate yet (pending import)")
        return self.certificate_from_pem(ca.id, ca.certificate_pem)

    def certificate_from_pem(self, ca_id: int, pem: str) -> x509.Certificate:
        """Parse (once per distinct PEM) the certificate of CA ``ca_id``.

        The cache key includes a hash of ``pem``: a CA row whose certificate
        changed is parsed again instead of answered from the cache.
        """
        key = (ca_id, hashlib.sha256(pem.encode()).digest())
        cert = self._certs.get(key)
        if cert is None:
            cert = x509.load_pem_x509_certificate(pem.encode())
            with self._lock:
                self._certs[key] = cert
        return cert

    def responder(self, conn: Connection, key_hash: bytes, name_hash: bytes) -> Responder | None:
        """The issuing CA an OCSP CertID names, by SHA-1 or SHA-256 key and name hash.

        The index is built from the database on a miss (a new CA), so
        answering never queries CAs on the hot path.
        """
        found = self._by_key_hash.get(key_hash)
        if found is None:
            stmt = select(
                CertificateAuthority.id,
                CertificateAuthority.key_uri,
                CertificateAuthority.certificate_pem,
            ).where(
                CertificateAuthority.kind == "issuing",
                CertificateAuthority.certificate_pem.is_not(None),
            )
            index: dict[bytes, Responder] = {}
            for ca_id, key_uri, pem in conn.execute(stmt):
                if pem is None:  # filtered above
                    raise RuntimeError("broken invariant, expected: pem is not None")
                cert = x509.load_pem_x509_certificate(pem.encode())
                bits = _public_key_bits(cert)
                name = cert.subject.public_bytes()
                names = frozenset(
                    {hashlib.sha1(name).digest(), hashlib.sha256(name).digest()}  # noqa: S324 - OCSP CertID
                )
                entry = Responder(ca_id=ca_id, key_uri=key_uri, cert=cert, name_hashes=names)
                index[hashlib.sha1(bits).digest()] = entry  # noqa: S324 - OCSP CertID default
                index[hashlib.sha256(bits).digest()] = entry
            with self._lock:
                self._by_key_hash = index
            found = index.get(key_hash)
        if found is None or name_hash not in found.name_hashes:
            return None
        return found


@dataclass(frozen=True)
class Responder:
    """What answering OCSP for one issuing CA needs, cached per process."""

    ca_id: int
    key_uri: str
    cert: x509.Certificate
    name_hashes: frozenset[bytes]


def _public_key_bits(cert: x509.Certificate) -> bytes:
    """The subjectPublicKey BIT STRING contents (what OCSP's issuerKeyHash hashes)."""
    key = cert.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        return key.public_bytes(Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key.public_bytes(Encoding.Raw, serialization.PublicFormat.Raw)
    if isinstance(key, rsa.RSAPublicKey):
        return key.public_bytes(Encoding.DER, serialization.PublicFormat.PKCS1)
    raise InvalidInputError("unsupported CA key type")
