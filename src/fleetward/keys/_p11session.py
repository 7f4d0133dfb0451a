"""PKCS#11 plumbing: one library per module, one login per token, many sessions.

* **One library object per module path.** A PKCS#11 module can be
  ``C_Initialize``-d once per process, so :func:`load_module` caches it. The
  module reads its configuration (for SoftHSM2, ``SOFTHSM2_CONF``) only then:
  tokens initialised later by another process stay invisible until restart.
* **Login is per application, not per session.** ``C_Login`` on a second
  session fails with "already logged in", and ``C_Logout`` (which python-pkcs11
  calls when a logged-in session closes) logs out *every* session of the
  token. So each token gets one logged-in *anchor* session, reference-counted
  by the signers that use it, and every signer opens its own plain session
  that rides on that login (:func:`open_session`). The anchor closes with the
  last :func:`release`.
* **Values come from the caller.** The module path and the PIN are
  arguments; this package reads no environment (the installation's settings,
  ``fleetward.config``, hold ``FLEETWARD_PKCS11_MODULE`` and ``_PIN``).
* **A remembered PIN.** Because a second ``C_Login`` cannot check a PIN, the
  PIN that logged in is kept as an HMAC under a per-process random key, and a
  later open with a different PIN is refused, as the token would have.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import secrets
import threading
from dataclasses import dataclass
from typing import Any

import pkcs11
from pkcs11 import exceptions as p11

from fleetward.errors import (
    ConflictError,
    FleetwardError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
)

__all__ = [
    "DEFAULT_MODULE",
    "LoginKey",
    "load_module",
    "open_session",
    "release",
    "resolve_pin",
]

DEFAULT_MODULE = "/usr/lib/softhsm/libsofthsm2.so"

LoginKey = tuple[str, int]  # (module path, slot id)

_libs: dict[str, Any] = {}
_libs_lock = threading.Lock()


def load_module(module: str | None = None) -> Any:
    """Return the cached python-pkcs11 ``lib`` for a module, loading it once.

    Args:
        module: Path of the PKCS#11 module. Defaults to :data:`DEFAULT_MODULE`
            (SoftHSM2).

    Raises:
        InvalidInputError: The module cannot be loaded.
    """
    path = module or DEFAULT_MODULE
    with _libs_lock:
        lib = _libs.get(path)
        if lib is None:
            try:
                lib = pkcs11.lib(path)
            except p11.PKCS11Error as exc:
                raise InvalidInputError(f"cannot load PKCS#11 module {path}: {exc}") from exc
            _libs[path] = lib
        return lib


def resolve_pin(pin: str | None) -> str:
    """Return ``pin`` if it is a non-empty PIN.

    Raises:
        InvalidInputError: No PIN was given (for the server, ``FLEETWARD_PKCS11_PIN``).
    """
    if not pin:
        raise InvalidInputError("a PKCS#11 user PIN is required (FLEETWARD_PKCS11_PIN)")
    return pin


@dataclass
class _Login:
    anchor: Any  # the logged-in pkcs11 Session; python-pkcs11 types are loose here
    pin_mac: bytes
    users: int


# Keyed by (module path, slot id). RLock: a signer's finaliser may run from
# the garbage collector while this thread already holds the lock.
_logins: dict[LoginKey, _Login] = {}
_logins_lock = threading.RLock()
_PIN_MAC_KEY = secrets.token_bytes(32)


def _pin_mac(pin: str) -> bytes:
    return hmac.new(_PIN_MAC_KEY, pin.encode(), hashlib.sha256).digest()


def _find_token(lib: Any, token_label: str) -> Any:
    try:
        return lib.get_token(token_label=token_label)
    except p11.NoSuchToken:
        raise NotFoundError(f"no PKCS#11 token labelled {token_label!r}") from None
    except p11.MultipleTokensReturned:
        raise ConflictError(f"more than one PKCS#11 token labelled {token_label!r}") from None


def _login(token: Any, pin: str) -> Any:
    try:
        return token.open(user_pin=pin)
    except p11.PinIncorrect:
        raise InvalidInputError(f"wrong PIN for PKCS#11 token {token.label!r}") from None
    except (p11.PinLocked, p11.PinExpired):
        raise PermissionDeniedError(f"the PIN of PKCS#11 token {token.label!r} is locked") from None
    except (p11.UserAlreadyLoggedIn, p11.AnotherUserAlreadyLoggedIn):
        raise ConflictError(
            f"PKCS#11 token {token.label!r} was logged in outside fleetward.keys"
        ) from None
    except p11.PKCS11Error as exc:
        raise FleetwardError(f"PKCS#11 login failed: {type(exc).__name__}") from exc


def _drop_share(key: LoginKey) -> None:
    with _logins_lock:
        login = _logins.get(key)
        if login is None:
            return
        login.users -= 1
        if login.users <= 0:
            del _logins[key]
            # Closing the logged-in anchor is what logs the token out.
            with contextlib.suppress(p11.PKCS11Error):
                login.anchor.close()


def release(key: LoginKey, session: Any) -> None:
    """Close a signer's session and drop its share of the token login.

    The last share closes the anchor session, which logs the token out.
    """
    with _logins_lock:
        # A session that is already gone needs no closing.
        with contextlib.suppress(p11.PKCS11Error):
            session.close()
        _drop_share(key)


def open_session(lib: Any, module_key: str, token_label: str, pin: str) -> tuple[Any, LoginKey]:
    """Open a new session on a token, logging the token in first if needed.

    Args:
        lib: The python-pkcs11 library from :func:`load_module`.
        module_key: The module path, to tell equal slot ids of two modules apart.
        token_label: Label of the token.
        pin: User PIN; checked by the token on first login, against the
            remembered PIN afterwards.

    Returns:
        ``(session, login_key)``; hand both to :func:`release` when done.

    Raises:
        NotFoundError: No token with that label.
        ConflictError: Several tokens with that label, or a login made
            outside this module.
        InvalidInputError: Wrong PIN.
        PermissionDeniedError: The PIN is locked.
        FleetwardError: The token failed.
    """
    token = _find_token(lib, token_label)
    key = (module_key, token.slot.slot_id)
    mac = _pin_mac(pin)
    with _logins_lock:
        login = _logins.get(key)
        if login is None:
            login = _Login(anchor=_login(token, pin), pin_mac=mac, users=0)
            _logins[key] = login
        elif not hmac.compare_digest(login.pin_mac, mac):
            raise InvalidInputError(f"wrong PIN for PKCS#11 token {token_label!r}")
        # Take the share before opening the session, so no concurrent release
        # can drop the login to zero and log us out in between.
        login.users += 1
    try:
        session = token.open(rw=True)
    except p11.PKCS11Error as exc:
        _drop_share(key)
        raise FleetwardError(f"cannot open a PKCS#11 session: {type(exc).__name__}") from exc
    return session, key
