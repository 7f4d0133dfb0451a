"""fleetward's own service CA: the certificates of its servers and of its service identities.

Device certificates come from each tenant's issuing CAs; fleetward's *own*
TLS endpoints and MQTT connections are certified by a separate, local CA
kept in ``<home>/service-ca``:

- the **server** certificate of every listener fleetward runs (the device
  plane, the operator plane when it speaks TLS, the broker's listeners),
  with the DNS names and IP addresses of ``FLEETWARD_SERVICE_NAMES`` as its
  subject alternative names (reissued when that setting changes);
- one **client** certificate per service identity (``CN=fleetward-<job>``):
  the broker knows each by its subject and allows it only its job.

Devices and clients anchor on :attr:`ServicePki.ca_pem` (published by
``GET /api/v1/comms/broker``). The CA key is a P-256 key in a 0600 file: it
certifies fleetward's own endpoints on this host only, never a device.

Everything is created on first use and reused; a certificate is reissued
when it is within :data:`RENEW_BEFORE` of expiry or its names changed.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleetward._files import private_dir, write_private

__all__ = [
    "CA_NAME",
    "SERVER",
    "ServicePki",
    "TlsPair",
    "service_subject",
]

CA_NAME = "fleetward service CA"
SERVER = "server"
CA_VALIDITY = dt.timedelta(days=3650)
LEAF_VALIDITY = dt.timedelta(days=397)
RENEW_BEFORE = dt.timedelta(days=30)
_IDENTITY = re.compile(r"[a-z][a-z0-9-]{0,31}")
_lock = threading.Lock()


def service_subject(identity: str) -> str:
    """The RFC 2253 subject (the broker's username) of a service identity."""
    return f"CN=fleetward-{identity}"


@dataclass(frozen=True)
class TlsPair:
    """A certificate and its key, as files (PEM, the key unencrypted, 0600)."""

    cert: Path
    key: Path


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),  # servers and the broker read them unattended
    )


def _san(names: Sequence[str]) -> x509.SubjectAlternativeName:
    general: list[x509.GeneralName] = []
    for name in names:
        try:
            general.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            general.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(general)


class ServicePki:
    """The service CA under ``root`` and what it certified.

    Args:
        root: Its directory (``<home>/service-ca``).
        names: DNS names and IP addresses of the server certificate.
    """

    def __init__(self, root: Path, names: Sequence[str] = ("localhost", "127.0.0.1")) -> None:
        self.root = root
        self.names = tuple(names)

    @property
    def ca_cert(self) -> Path:
        """The CA certificate (PEM): what clients anchor on."""
        return self.root / "ca.pem"

    @property
    def _ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def ca_pem(self) -> bytes:
        """The CA certificate, created on first use."""
        self._ensure_ca()
        return self.ca_cert.read_bytes()

    def _ensure_ca(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        with _lock:
            if self.ca_cert.exists() and self._ca_key.exists():
                cert = x509.load_pem_x509_certificate(self.ca_cert.read_bytes())
                key = serialization.load_pem_private_key(self._ca_key.read_bytes(), None)
                if isinstance(key, ec.EllipticCurvePrivateKey):
                    return cert, key
            private_dir(self.root)
            now = dt.datetime.now(dt.UTC)
            key = ec.generate_private_key(ec.SECP256R1())
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
            cert = (
                x509.CertificateBuilder()
                .subject_name(name)
                .issuer_name(name)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5))
                .not_valid_after(now + CA_VALIDITY)
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(
                    x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                    critical=True,
                )
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
                .sign(key, hashes.SHA256())
            )
            write_private(self._ca_key, _key_pem(key))
            write_private(self.ca_cert, cert.public_bytes(serialization.Encoding.PEM))
            # Leaves of an earlier CA are worthless now.
            for old in self.root.glob("*.crt"):
                old.unlink(missing_ok=True)
            return cert, key

    def _leaf(
        self, stem: str, cn: str, eku: x509.ObjectIdentifier, names: Sequence[str]
    ) -> TlsPair:
        ca, ca_key = self._ensure_ca()
        pair = TlsPair(self.root / f"{stem}.crt", self.root / f"{stem}.key")
        now = dt.datetime.now(dt.UTC)
        with _lock:
            if pair.cert.exists() and pair.key.exists():
                have = x509.load_pem_x509_certificate(pair.cert.read_bytes())
                try:
                    san = have.extensions.get_extension_for_class(x509.SubjectAlternativeName)
                    have_san: x509.SubjectAlternativeName | None = san.value
                except x509.ExtensionNotFound:
                    have_san = None
                want_san = _san(names) if names else None
                if (
                    have.issuer == ca.subject
                    and have.not_valid_after_utc - now > RENEW_BEFORE
                    and have_san == want_san
                ):
                    return pair
            key = ec.generate_private_key(ec.SECP256R1())
            builder = (
                x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
                .issuer_name(ca.subject)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5))
                .not_valid_after(now + LEAF_VALIDITY)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(
                    x509.KeyUsage(True, False, False, False, False, False, False, False, False),
                    critical=True,
                )
                .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
                .add_extension(
                    x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
                )
            )
            if names:
                builder = builder.add_extension(_san(names), critical=False)
            cert = builder.sign(ca_key, hashes.SHA256())
            write_private(pair.key, _key_pem(key))
            write_private(pair.cert, cert.public_bytes(serialization.Encoding.PEM))
            return pair

    def server(self) -> TlsPair:
        """The server certificate (serverAuth, SANs = the service names)."""
        return self._leaf(SERVER, self.names[0], ExtendedKeyUsageOID.SERVER_AUTH, self.names)

    def client(self, identity: str) -> TlsPair:
        """The client certificate of the service identity ``identity``
        (``CN=fleetward-<identity>``, clientAuth).

        Raises:
            ValueError: ``identity`` is not a short lower-case name.
        """
        if not _IDENTITY.fullmatch(identity) or identity == SERVER:
            raise ValueError(f"bad service identity name {identity!r}")
        return self._leaf(
            f"client-{identity}", f"fleetward-{identity}", ExtendedKeyUsageOID.CLIENT_AUTH, ()
        )
