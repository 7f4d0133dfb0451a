"""TLS client authentication with a key that stays on a PKCS#11 token.

Python's ``ssl`` loads private keys only from files. OpenSSL itself can use a
token key through the pkcs11 engine (libp11): ``ENGINE_load_private_key``
returns an ``EVP_PKEY`` whose signatures are made by the token. This module
hands such a key to the ``SSL_CTX`` inside a Python ``ssl.SSLContext``
through ctypes. Python's ``_ssl`` links the system ``libssl.so.3``, so the
pointer and the engine live in the same OpenSSL.

The one layout assumption: in CPython's ``PySSLContext`` the ``SSL_CTX *``
is the first field after the object header. :func:`use_token_key` checks the
result with ``SSL_CTX_check_private_key`` (the certificate must match the
token key) and refuses anything but CPython with OpenSSL 3.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import platform
import ssl
import threading
from pathlib import Path
from urllib.parse import quote

from fleetward.errors import InvalidInputError
from fleetward.keys import DEFAULT_PKCS11_MODULE, Signer, open_signer, parse_pkcs11_uri

__all__ = ["release_token_keys", "use_token_key"]

_ENGINE_GLOBS = (
    "/usr/lib/*/engines-3/pkcs11.so",
    "/usr/lib/engines-3/pkcs11.so",
    "/usr/lib64/engines-3/pkcs11.so",
)
_lock = threading.Lock()
_engines: dict[str, int] = {}
# fleetward.keys owns the token login (it refuses to share a login someone
# else made, and logs out when its last signer closes). Holding one signer
# per key for the life of the process makes the engine's login a no-op on an
# already logged-in token, and keeps the login alive under the TLS key.
_held: dict[str, Signer] = {}


class _Libs:
    def __init__(self) -> None:
        self.crypto = ctypes.CDLL("libcrypto.so.3")
        self.ssl = ctypes.CDLL("libssl.so.3")
        vp, cp, ci = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
        self.crypto.ENGINE_by_id.restype = vp
        self.crypto.ENGINE_by_id.argtypes = [cp]
        self.crypto.ENGINE_ctrl_cmd_string.restype = ci
        self.crypto.ENGINE_ctrl_cmd_string.argtypes = [vp, cp, cp, ci]
        self.crypto.ENGINE_init.restype = ci
        self.crypto.ENGINE_init.argtypes = [vp]
        self.crypto.ENGINE_load_private_key.restype = vp
        self.crypto.ENGINE_load_private_key.argtypes = [vp, cp, vp, vp]
        self.crypto.EVP_PKEY_free.argtypes = [vp]
        self.crypto.ERR_get_error.restype = ctypes.c_ulong
        self.crypto.ERR_error_string_n.argtypes = [ctypes.c_ulong, cp, ctypes.c_size_t]
        self.ssl.SSL_CTX_use_certificate_chain_file.restype = ci
        self.ssl.SSL_CTX_use_certificate_chain_file.argtypes = [vp, cp]
        self.ssl.SSL_CTX_use_PrivateKey.restype = ci
        self.ssl.SSL_CTX_use_PrivateKey.argtypes = [vp, vp]
        self.ssl.SSL_CTX_check_private_key.restype = ci
        self.ssl.SSL_CTX_check_private_key.argtypes = [vp]

    def error(self) -> str:
        code = self.crypto.ERR_get_error()
        if not code:
            return "no OpenSSL error reported"
        buf = ctypes.create_string_buffer(256)
        self.crypto.ERR_error_string_n(code, buf, 256)
        return buf.value.decode(errors="replace")


_libs: _Libs | None = None


def _engine(libs: _Libs, module: str) -> int:
    """The pkcs11 engine bound to ``module``, loaded and initialised once."""
    if module in _engines:
        return _engines[module]
    paths = [p for pattern in _ENGINE_GLOBS for p in glob.glob(pattern)]
    if not paths:
        raise InvalidInputError(
            "TLS with a PKCS#11 key needs OpenSSL's pkcs11 engine "
            "(Debian package libengine-pkcs11-openssl)"
        )
    engine = libs.crypto.ENGINE_by_id(b"dynamic")
    if not engine:
        raise InvalidInputError(f"OpenSSL has no dynamic engine loader: {libs.error()}")
    for cmd, arg in (
        (b"SO_PATH", paths[0].encode()),
        (b"ID", b"pkcs11"),
        (b"LIST_ADD", b"1"),
        (b"LOAD", None),
        (b"MODULE_PATH", module.encode()),
    ):
        if libs.crypto.ENGINE_ctrl_cmd_string(engine, cmd, arg, 0) != 1:
            raise InvalidInputError(f"pkcs11 engine: {cmd.decode()} failed: {libs.error()}")
    if libs.crypto.ENGINE_init(engine) != 1:
        raise InvalidInputError(f"pkcs11 engine did not initialise: {libs.error()}")
    _engines[module] = int(engine)
    return int(engine)


def use_token_key(
    context: ssl.SSLContext,
    *,
    certificate: Path,
    key_uri: str,
    pin: str,
    module: str | None = None,
) -> None:
    """Make ``context`` present ``certificate`` with the token key ``key_uri``.

    Raises:
        InvalidInputError: not CPython/OpenSSL 3, no pkcs11 engine, the key
            cannot be loaded, or it does not match the certificate.
    """
    global _libs
    if platform.python_implementation() != "CPython" or ssl.OPENSSL_VERSION_INFO[0] != 3:
        raise InvalidInputError("TLS with a PKCS#11 key needs CPython linked with OpenSSL 3")
    token_label, key_label = parse_pkcs11_uri(key_uri)
    uri = f"pkcs11:token={quote(token_label)};object={quote(key_label)};type=private"
    with _lock:
        if _libs is None:
            _libs = _Libs()
        libs = _libs
        if key_uri not in _held:
            _held[key_uri] = open_signer(key_uri, pin=pin, module=module)
        engine = _engine(libs, module or DEFAULT_PKCS11_MODULE)
        if libs.crypto.ENGINE_ctrl_cmd_string(engine, b"PIN", pin.encode(), 0) != 1:
            raise InvalidInputError(f"pkcs11 engine refused the PIN: {libs.error()}")
        pkey = libs.crypto.ENGINE_load_private_key(engine, uri.encode(), None, None)
        if not pkey:
            raise InvalidInputError(f"token key {key_uri!r} not loaded: {libs.error()}")
        try:
            ctx_ptr = ctypes.c_void_p.from_address(id(context) + object.__basicsize__).value
            if not ctx_ptr:
                raise InvalidInputError("this Python's SSLContext has no SSL_CTX where expected")
            if libs.ssl.SSL_CTX_use_certificate_chain_file(ctx_ptr, str(certificate).encode()) != 1:
                raise InvalidInputError(f"certificate not loaded: {libs.error()}")
            if libs.ssl.SSL_CTX_use_PrivateKey(ctx_ptr, pkey) != 1:
                raise InvalidInputError(f"token key not usable for TLS: {libs.error()}")
            if libs.ssl.SSL_CTX_check_private_key(ctx_ptr) != 1:
                raise InvalidInputError("the token key does not match the device certificate")
        finally:
            libs.crypto.EVP_PKEY_free(pkey)  # the SSL_CTX holds its own reference


def release_token_keys() -> None:
    """Close the signers held for TLS keys (the token logs out when the last
    fleetward signer closes). Contexts made earlier stop working."""
    with _lock:
        for signer in _held.values():
            close = getattr(signer, "close", None)
            if close is not None:
                close()
        _held.clear()
