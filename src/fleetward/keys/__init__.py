"""Key custody: every private key fleetward uses sits behind one :class:`Signer`.

A signer is named by a URI that is safe to store and log:

* ``file:<absolute path>``: an encrypted PKCS#8 PEM file (mode 0600). Simple,
  and the key is in process memory while open.
* ``pkcs11:token=<label>;object=<label>``: an EC key generated on a PKCS#11
  token (SoftHSM2 in development, a real HSM in production), marked sensitive
  and non-extractable; it never leaves the token.

Create keys with :func:`generate_file_signer` or :func:`generate_pkcs11_signer`,
reopen them with :func:`open_signer`, and sign X.509 objects with
:func:`sign_certificate`, :func:`sign_csr`, :func:`sign_crl` and
:func:`sign_ocsp_response`, which work the same for both backends and verify
what they produce before returning it. Unit tests of other domains can use
:func:`generate_ephemeral_signer` for an in-memory key.

Supported algorithms (:data:`ALGORITHMS`): ``ec-p256`` (ECDSA with SHA-256,
the default), ``ec-p384`` (ECDSA with SHA-384) and, for file keys only,
``ed25519``.
"""

from __future__ import annotations

from fleetward.keys._file import generate_ephemeral_signer, generate_file_signer
from fleetward.keys._open import open_signer
from fleetward.keys._p11session import DEFAULT_MODULE as DEFAULT_PKCS11_MODULE
from fleetward.keys._p11uri import parse_pkcs11_uri, pkcs11_uri
from fleetward.keys._pkcs11 import generate_pkcs11_signer
from fleetward.keys._signer import ALGORITHMS, Algorithm, Signer, verify_signature
from fleetward.keys._x509 import sign_certificate, sign_crl, sign_csr, sign_ocsp_response

__all__ = [
    "ALGORITHMS",
    "DEFAULT_PKCS11_MODULE",
    "Algorithm",
    "Signer",
    "generate_ephemeral_signer",
    "generate_file_signer",
    "generate_pkcs11_signer",
    "open_signer",
    "parse_pkcs11_uri",
    "pkcs11_uri",
    "sign_certificate",
    "sign_crl",
    "sign_csr",
    "sign_ocsp_response",
    "verify_signature",
]
