"""A key ring: opens and caches signers by URI for one installation.

Opening an encrypted key file runs a slow KDF on purpose, so each signer is
opened once per process and reused. New keys are created here too, as files
under the installation's key directory or on a PKCS#11 token. The passphrase,
token, PIN and module are given by the caller (the installation's settings:
``Settings.keyring_options()``); nothing here reads the environment.
"""

from __future__ import annotations

import threading
from pathlib import Path

from fleetward.errors import InvalidInputError
from fleetward.keys import Signer, generate_file_signer, generate_pkcs11_signer, open_signer

__all__ = ["BACKENDS", "KeyRing"]

BACKENDS = ("file", "pkcs11")


class KeyRing:
    """Opens signers by URI (cached) and generates new keys."""

    def __init__(
        self,
        *,
        keys_dir: Path,
        passphrase: bytes,
        pkcs11_token: str | None = None,
        pkcs11_pin: str | None = None,
        pkcs11_module: str | None = None,
    ) -> None:
        self.keys_dir = keys_dir
        self._passphrase = passphrase
        self.pkcs11_token = pkcs11_token
        self._pin = pkcs11_pin
        self._module = pkcs11_module
        self._cache: dict[str, Signer] = {}
        self._lock = threading.Lock()

    @property
    def passphrase(self) -> bytes:
        """The passphrase that encrypts this installation's key files."""
        return self._passphrase

    def open(self, uri: str) -> Signer:
        """The signer at ``uri``, opened once."""
        with self._lock:
            signer = self._cache.get(uri)
            if signer is None:
                signer = open_signer(
                    uri, passphrase=self._passphrase, pin=self._pin, module=self._module
                )
                self._cache[uri] = signer
            return signer

    def generate(self, name: str, *, backend: str = "file", algorithm: str = "ec-p256") -> Signer:
        """Create a new key called ``name`` in ``backend``.

        Raises:
            InvalidInputError: unknown backend, or PKCS#11 without a token.
        """
        if backend == "file":
            self.keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            signer = generate_file_signer(
                self.keys_dir / f"{name}.pem", passphrase=self._passphrase, algorithm=algorithm
            )
        elif backend == "pkcs11":
            if not self.pkcs11_token or not self._pin:
                raise InvalidInputError(
                    "PKCS#11 keys need FLEETWARD_PKCS11_TOKEN and FLEETWARD_PKCS11_PIN"
                )
            signer = generate_pkcs11_signer(
                token_label=self.pkcs11_token,
                key_label=name,
                pin=self._pin,
                module=self._module,
                algorithm=algorithm,
            )
        else:
            raise InvalidInputError(f"unknown key backend {backend!r}; one of {BACKENDS}")
        with self._lock:
            self._cache[signer.uri] = signer
        return signer
