"""Open a signer by URI: the one place that maps a URI scheme to a backend.

Key URIs are what fleetward stores (a CA row keeps ``key_uri``, the audit
checkpoint records ``key_id``). :func:`open_signer` turns one back into a
:class:`Signer`, choosing the backend from the scheme alone:

* ``file:<absolute path>`` (also ``file:///<path>``): an encrypted PKCS#8
  PEM written by :func:`generate_file_signer`. The path is taken literally,
  not percent-decoded, because that is how :func:`generate_file_signer`
  writes it.
* ``pkcs11:token=<label>;object=<label>``: a key on a PKCS#11 token (RFC 7512).

Anything else, including ``memory:`` URIs of test signers, is refused.
"""

from __future__ import annotations

from pathlib import Path

from fleetward.errors import InvalidInputError
from fleetward.keys._file import open_file_signer
from fleetward.keys._pkcs11 import open_pkcs11_signer
from fleetward.keys._signer import Signer

__all__ = ["MAX_URI_LENGTH", "open_signer"]

# A key URI is a short path or two labels; bound what we parse.
MAX_URI_LENGTH = 4096


def _file_path(uri: str) -> Path:
    rest = uri[len("file:") :]
    if rest.startswith("//"):
        # file://<host>/<path>: only an empty host (or localhost) is local.
        host, sep, path = rest[2:].partition("/")
        if host not in ("", "localhost"):
            raise InvalidInputError(f"file URI names a remote host {host!r}")
        rest = sep + path
    path_obj = Path(rest)
    if not rest or not path_obj.is_absolute():
        raise InvalidInputError("a file key URI needs an absolute path: file:/path/to/key.pem")
    return path_obj


def open_signer(
    uri: str,
    *,
    passphrase: bytes | None = None,
    pin: str | None = None,
    module: str | None = None,
) -> Signer:
    """Open the signer a key URI names.

    Args:
        uri: ``file:<absolute path>`` or ``pkcs11:token=<label>;object=<label>``.
        passphrase: Passphrase of an encrypted key file (``file:`` only).
        pin: Token user PIN (``pkcs11:`` only; required there).
        module: PKCS#11 module path (``pkcs11:`` only); defaults to SoftHSM2.

    Returns:
        The signer. Close PKCS#11 signers (or use them as context managers)
        when done.

    Raises:
        InvalidInputError: Unknown scheme, malformed URI, missing or wrong
            passphrase or PIN, plaintext or unsupported key.
        NotFoundError: The key file, token or token key does not exist.
        ConflictError: A PKCS#11 label names more than one key or token.
    """
    if len(uri) > MAX_URI_LENGTH:
        raise InvalidInputError(f"key URI is over {MAX_URI_LENGTH} characters")
    scheme, sep, _ = uri.partition(":")
    if not sep:
        raise InvalidInputError("a key URI needs a scheme: file: or pkcs11:")
    if scheme == "file":
        return open_file_signer(_file_path(uri), passphrase=passphrase)
    if scheme == "pkcs11":
        return open_pkcs11_signer(uri, pin=pin, module=module)
    raise InvalidInputError(f"unknown key URI scheme {scheme!r} (known: file, pkcs11)")
