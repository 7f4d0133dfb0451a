"""File-backed keys: encrypted PKCS#8 PEM on disk, the key in memory while open.

A file key is written once, by :func:`generate_file_signer`, as an encrypted
PKCS#8 PEM (pyca's ``BestAvailableEncryption``, a passphrase-derived key
wrapping the private key). The file is created with ``O_CREAT | O_EXCL`` so
an existing file, or a symlink planted where the key should go, is never
overwritten or followed, and its mode is forced to 0600 whatever the umask.

Opening (:func:`open_file_signer`) refuses plaintext keys: a fleetward key
file is always encrypted, so a plaintext one means someone replaced it. Every
failure (missing file, wrong passphrase, foreign key type) becomes one
fleetward error with a one-line message; pyca's exceptions never escape.

While a file signer is open the private key lives in process memory, which
is what lets :meth:`Signer.builder_key` hand it to pyca's X.509 builders.
That is the trade-off against PKCS#11, where the key never leaves the token.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificateIssuerPublicKeyTypes,
)

from fleetward.errors import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
    PayloadTooLargeError,
)
from fleetward.keys._signer import Algorithm, Signer, algorithm_for, lookup_algorithm

__all__ = [
    "MAX_KEY_FILE_BYTES",
    "KeySigner",
    "generate_ephemeral_signer",
    "generate_file_signer",
    "open_file_signer",
]

# An encrypted P-384 PKCS#8 PEM is under 1 KiB; anything much larger is not a
# key file we wrote, and reading it whole would only waste memory.
MAX_KEY_FILE_BYTES = 64 * 1024

_KEY_FILE_MODE = 0o600


class KeySigner(Signer):
    """A signer holding an in-memory pyca private key (file or ephemeral)."""

    def __init__(self, key: CertificateIssuerPrivateKeyTypes, *, uri: str) -> None:
        self.uri = uri
        self._key = key
        self._public = key.public_key()
        self._algorithm = algorithm_for(self._public)

    def public_key(self) -> CertificateIssuerPublicKeyTypes:
        """Return the public half of the key."""
        return self._public

    def sign(self, data: bytes) -> bytes:
        """Sign ``data`` (see :meth:`Signer.sign`)."""
        key = self._key
        if isinstance(key, ed25519.Ed25519PrivateKey):
            return key.sign(data)
        if isinstance(key, ec.EllipticCurvePrivateKey) and self._algorithm.hash is not None:
            return key.sign(data, ec.ECDSA(self._algorithm.hash()))
        raise InvalidInputError(f"unsupported key type {type(key).__name__}")  # pragma: no cover

    def builder_key(self) -> CertificateIssuerPrivateKeyTypes:
        """Return the in-memory private key for pyca builders."""
        return self._key


def _new_private_key(algorithm: Algorithm) -> CertificateIssuerPrivateKeyTypes:
    if algorithm.curve is None:
        return ed25519.Ed25519PrivateKey.generate()
    return ec.generate_private_key(algorithm.curve())


def _check_passphrase(passphrase: object) -> bytes:
    if not isinstance(passphrase, bytes):
        raise TypeError("passphrase must be bytes")
    if not passphrase:
        raise InvalidInputError("a key file passphrase must not be empty")
    return passphrase


def generate_file_signer(path: Path, *, passphrase: bytes, algorithm: str = "ec-p256") -> Signer:
    """Create a new key and store it as an encrypted PKCS#8 PEM file.

    Args:
        path: Where to write the key. The parent directory must exist.
        passphrase: Non-empty passphrase that encrypts the file.
        algorithm: ``"ec-p256"`` (default), ``"ec-p384"`` or ``"ed25519"``.

    Returns:
        A signer whose ``uri`` is ``file:<absolute path>``.

    Raises:
        ConflictError: Something already exists at ``path``.
        InvalidInputError: Unknown algorithm, empty passphrase, or the file
            cannot be created (missing directory, no permission).
    """
    spec = lookup_algorithm(algorithm)
    secret = _check_passphrase(passphrase)
    target = Path(os.path.abspath(path))
    key = _new_private_key(spec)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(secret),
    )
    # O_EXCL makes "refuse to overwrite" atomic, and with O_CREAT it also
    # refuses to follow a symlink that sits at the target path.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(target, flags, _KEY_FILE_MODE)
    except FileExistsError:
        raise ConflictError(f"refusing to overwrite existing key file {target}") from None
    except OSError as exc:
        raise InvalidInputError(f"cannot create key file {target}: {exc.strerror}") from exc
    try:
        # The umask can only remove bits, but force the exact mode anyway so
        # the file never ends up e.g. 0400 or, on odd filesystems, wider.
        os.fchmod(fd, _KEY_FILE_MODE)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    # Sync the directory too, or a crash can lose the new file's entry.
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return KeySigner(key, uri=f"file:{target}")


def _read_key_file(path: Path) -> bytes:
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_KEY_FILE_BYTES + 1)
    except FileNotFoundError:
        raise NotFoundError(f"key file {path} does not exist") from None
    except OSError as exc:
        raise InvalidInputError(f"cannot read key file {path}: {exc.strerror}") from exc
    if len(data) > MAX_KEY_FILE_BYTES:
        raise PayloadTooLargeError(f"key file {path} is over {MAX_KEY_FILE_BYTES} bytes")
    return data


def open_file_signer(path: Path, *, passphrase: bytes | None) -> Signer:
    """Open an encrypted PKCS#8 PEM key file written by :func:`generate_file_signer`.

    Args:
        path: Absolute path of the key file.
        passphrase: The passphrase the file was encrypted with.

    Returns:
        A signer whose ``uri`` is ``file:<path>``.

    Raises:
        NotFoundError: The file does not exist.
        InvalidInputError: No or wrong passphrase, a plaintext or corrupt
            file, or an unsupported key type.
        PayloadTooLargeError: The file is over :data:`MAX_KEY_FILE_BYTES`.
    """
    if not path.is_absolute():
        raise InvalidInputError(f"key file path must be absolute, got {str(path)!r}")
    if passphrase is None:
        raise InvalidInputError(f"key file {path} is encrypted; a passphrase is required")
    secret = _check_passphrase(passphrase)
    data = _read_key_file(path)
    if b"-----BEGIN ENCRYPTED PRIVATE KEY-----" not in data:
        raise InvalidInputError(f"key file {path} is not an encrypted PKCS#8 PEM; refusing it")
    try:
        key = serialization.load_pem_private_key(data, password=secret)
    except ValueError:
        # pyca raises the same ValueError for a wrong passphrase and for a
        # damaged file; neither can be told apart without the passphrase.
        raise InvalidInputError(
            f"cannot decrypt key file {path}: wrong passphrase or corrupt file"
        ) from None
    except (TypeError, UnsupportedAlgorithm) as exc:
        raise InvalidInputError(f"cannot load key file {path}: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        raise InvalidInputError(f"key file {path} holds an unsupported {type(key).__name__}")
    algorithm_for(key.public_key())  # refuses curves outside the table
    return KeySigner(key, uri=f"file:{path}")


def generate_ephemeral_signer(algorithm: str = "ec-p256") -> Signer:
    """Create a throw-away in-memory signer, for unit tests.

    The key is never written anywhere and is lost when the object is; its
    ``uri`` (``memory:<random id>``) cannot be opened again. Production code
    uses :func:`generate_file_signer` or :func:`generate_pkcs11_signer`.

    Args:
        algorithm: ``"ec-p256"`` (default), ``"ec-p384"`` or ``"ed25519"``.

    Returns:
        An in-memory signer.

    Raises:
        InvalidInputError: Unknown algorithm.
    """
    spec = lookup_algorithm(algorithm)
    return KeySigner(_new_private_key(spec), uri=f"memory:{secrets.token_hex(8)}")
