"""Where a device keeps its identity key.

- ``software``: an encrypted PKCS#8 file in the agent's directory (the
  passphrase is a random secret beside it, standing in for sealed storage).
- ``pkcs11``: a key generated on a PKCS#11 token (SoftHSM2 standing in for
  a secure element): ``CKA_SENSITIVE`` true, ``CKA_EXTRACTABLE`` false, it
  never leaves the token.

Both give a :class:`fleetward.keys.Signer`, so the CSR and the renewal proof
are made the same way.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from fleetward.errors import InvalidInputError
from fleetward.keys import (
    Signer,
    generate_file_signer,
    generate_pkcs11_signer,
    open_signer,
    sign_csr,
)

__all__ = ["KEYSTORES", "Keystore", "make_csr"]

KEYSTORES = ("software", "pkcs11")


class Keystore:
    """Creates and reopens device identity keys of one kind."""

    def __init__(
        self,
        kind: str,
        *,
        directory: Path,
        token_label: str | None = None,
        pin: str | None = None,
        module: str | None = None,
    ) -> None:
        if kind not in KEYSTORES:
            raise InvalidInputError(f"unknown keystore {kind!r}; one of {KEYSTORES}")
        if kind == "pkcs11" and (not token_label or not pin):
            raise InvalidInputError("the pkcs11 keystore needs a token label and a PIN")
        self.kind = kind
        self.directory = directory
        self.token_label = token_label
        self._pin = pin
        self._module = module

    def _passphrase(self) -> bytes:
        path = self.directory / ".key-passphrase"
        if not path.exists():
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(24))
        return path.read_text().strip().encode()

    def generate(self, name: str) -> Signer:
        """A new identity key called ``name`` (the device id)."""
        if self.kind == "software":
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            return generate_file_signer(
                self.directory / f"{name}.key.pem", passphrase=self._passphrase()
            )
        if self.token_label is None or self._pin is None:
            raise RuntimeError(
                "broken invariant, expected: self.token_label is not None and self._pin is not None"
            )
        # A random suffix makes the label unique by construction, so the
        # token-wide label searches (linear in the token's keys) are skipped.
        return generate_pkcs11_signer(
            token_label=self.token_label,
            key_label=f"{name}.{secrets.token_hex(6)}",
            pin=self._pin,
            module=self._module,
            unique_label=True,
        )

    def key_file(self, uri: str) -> tuple[Path, bytes]:
        """The encrypted key file of a software key and its passphrase (for TLS).

        Raises:
            InvalidInputError: not a software key of this keystore.
        """
        if self.kind != "software" or not uri.startswith("file:"):
            raise InvalidInputError(f"{uri!r} is not a software key file")
        return Path(uri[len("file:") :]), self._passphrase()

    @property
    def pin(self) -> str | None:
        """The token PIN (PKCS#11 keystores)."""
        return self._pin

    @property
    def module(self) -> str | None:
        """The PKCS#11 module path, if not the default."""
        return self._module

    def open(self, uri: str) -> Signer:
        """Reopen a key this keystore created."""
        if self.kind == "software":
            return open_signer(uri, passphrase=self._passphrase())
        return open_signer(uri, pin=self._pin, module=self._module)


def make_csr(signer: Signer, device_id: str) -> bytes:
    """A PKCS#10 request (PEM) for ``device_id``, signed by the identity key itself."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)])
    )
    return sign_csr(builder, signer).public_bytes(Encoding.PEM)
