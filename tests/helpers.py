"""Test helpers: device keys and CSRs made the way a device would make them."""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

__all__ = ["csr_pem", "new_key"]


def new_key(kind: str = "ec-p256") -> CertificateIssuerPrivateKeyTypes:
    """A device private key of ``kind``."""
    if kind == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "ec-p384":
        return ec.generate_private_key(ec.SECP384R1())
    if kind == "ec-p521":
        return ec.generate_private_key(ec.SECP521R1())
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if kind == "ed448":
        return ed448.Ed448PrivateKey.generate()
    if kind.startswith("rsa-"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(kind[4:]))
    raise ValueError(kind)


def csr_pem(
    key: CertificateIssuerPrivateKeyTypes,
    cn: str | None,
    *,
    extensions: list[tuple[x509.ExtensionType, bool]] = (),  # type: ignore[assignment]
) -> bytes:
    """A PEM CSR for ``key`` with subject CN ``cn`` (or an empty subject)."""
    names = [x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn is not None else []
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(names))
    for ext, critical in extensions:
        builder = builder.add_extension(ext, critical=critical)
    algorithm = (
        None
        if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey)
        else hashes.SHA256()
    )
    return builder.sign(key, algorithm).public_bytes(Encoding.PEM)
