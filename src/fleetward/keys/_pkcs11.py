"""PKCS#11 keys: EC private keys generated on a token that never lets them out.

Design, and the PKCS#11 facts that shaped it:

* **One library object per module path.** A PKCS#11 module can be
  ``C_Initialize``-d once per process, so :func:`load_module` caches it. The
  module reads its configuration (for SoftHSM2, ``SOFTHSM2_CONF``) only then:
  tokens initialised later by another process stay invisible until restart.
* **Login is per application, not per session.** ``C_Login`` on a second
  session fails with "already logged in", and ``C_Logout`` (which python-pkcs11
  calls when a logged-in session closes) logs out *every* session of the
  token. So each token gets one logged-in *anchor* session, reference-counted
  by the signers that use it, and every signer opens its own plain session
  that rides on that login. The anchor closes with the last signer.
  Because a second ``C_Login`` cannot check a PIN, the PIN that logged in is
  remembered as an HMAC under a per-process random key, and a later open
  with a different PIN is refused, as the token would have.
* **Sessions are not thread safe**; each signer guards its session with a lock.
* **Signing:** SoftHSM2 has ``CKM_ECDSA`` but not ``CKM_ECDSA_SHA256``, so
  the host hashes (SHA-256 for P-256, SHA-384 for P-384) and the token signs
  the digest. The token returns raw ``r || s``; :meth:`Pkcs11Signer.sign`
  re-encodes it as the DER ``ECDSA-Sig-Value`` the rest of the world expects.
* **Generation** asks for ``CKA_TOKEN``, ``CKA_SENSITIVE``, no
  ``CKA_EXTRACTABLE``, and sign/verify only (no derive), under a random
  shared ``CKA_ID``. Opening a key signs and verifies a random challenge, so a
  public object that does not belong to the private one is caught at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import threading
import weakref
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

import pkcs11
from asn1crypto.core import OctetString
from asn1crypto.keys import ECDomainParameters
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11 import exceptions as p11
from pkcs11.util.ec import encode_named_curve_parameters

from fleetward.errors import (
    ConflictError,
    FleetwardError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
)
from fleetward.keys._signer import ALGORITHMS, Algorithm, Signer, lookup_algorithm, verify_signature

__all__ = [
    "DEFAULT_MODULE",
    "MODULE_ENV",
    "PIN_ENV",
    "Pkcs11Signer",
    "generate_pkcs11_signer",
    "load_module",
    "open_pkcs11_signer",
    "parse_pkcs11_uri",
    "pkcs11_uri",
]

DEFAULT_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
MODULE_ENV = "FLEETWARD_PKCS11_MODULE"
PIN_ENV = "FLEETWARD_PKCS11_PIN"

# CK_TOKEN_INFO.label is a fixed 32-byte field.
MAX_TOKEN_LABEL_LENGTH = 32
# Key labels have no PKCS#11 limit; this bounds what a URI can make us search for.
MAX_KEY_LABEL_LENGTH = 128

_CURVES_BY_NAME: dict[str, Algorithm] = {
    a.curve().name: a for a in ALGORITHMS.values() if a.curve is not None
}

_libs: dict[str, Any] = {}
_libs_lock = threading.Lock()


def load_module(module: str | None = None) -> Any:
    """Return the cached python-pkcs11 ``lib`` for a module, loading it once.

    Args:
        module: Path of the PKCS#11 module. Defaults to ``$FLEETWARD_PKCS11_MODULE``
            or :data:`DEFAULT_MODULE` (SoftHSM2).

    Raises:
        InvalidInputError: The module cannot be loaded.
    """
    path = module or os.environ.get(MODULE_ENV) or DEFAULT_MODULE
    with _libs_lock:
        lib = _libs.get(path)
        if lib is None:
            try:
                lib = pkcs11.lib(path)
            except p11.PKCS11Error as exc:
                raise InvalidInputError(f"cannot load PKCS#11 module {path}: {exc}") from exc
            _libs[path] = lib
        return lib


def pkcs11_uri(*, token_label: str, key_label: str) -> str:
    """Return the RFC 7512 URI ``pkcs11:token=<label>;object=<label>``."""
    return f"pkcs11:token={quote(token_label, safe='')};object={quote(key_label, safe='')}"


def _check_labels(token_label: str, key_label: str) -> None:
    if not token_label or len(token_label.encode()) > MAX_TOKEN_LABEL_LENGTH:
        raise InvalidInputError(f"token label must be 1 to {MAX_TOKEN_LABEL_LENGTH} bytes")
    if not key_label or len(key_label.encode()) > MAX_KEY_LABEL_LENGTH:
        raise InvalidInputError(f"key label must be 1 to {MAX_KEY_LABEL_LENGTH} bytes")


def parse_pkcs11_uri(uri: str) -> tuple[str, str]:
    """Parse a ``pkcs11:`` URI into ``(token_label, key_label)``.

    Only the ``token``, ``object`` and ``type=private`` path attributes are
    understood. Query attributes are refused: ``pin-value`` would put a secret
    into a string that is logged and stored, and ``module-path`` would let a
    stored URI choose which shared library this process loads.

    Raises:
        InvalidInputError: Malformed URI, a missing or unknown attribute.
    """
    if not uri.startswith("pkcs11:"):
        raise InvalidInputError("a PKCS#11 URI starts with 'pkcs11:'")
    body = uri[len("pkcs11:") :]
    if "?" in body:
        raise InvalidInputError("PKCS#11 URI query attributes (pin-value, module-path) are refused")
    attrs: dict[str, str] = {}
    for part in filter(None, body.split(";")):
        name, sep, value = part.partition("=")
        if not sep or name in attrs:
            raise InvalidInputError(f"malformed or repeated PKCS#11 URI attribute {part!r}")
        try:
            attrs[name] = unquote(value, errors="strict")
        except UnicodeDecodeError:
            raise InvalidInputError(f"PKCS#11 URI attribute {name!r} is not UTF-8") from None
    if attrs.pop("type", "private") != "private":
        raise InvalidInputError("a signer URI names a private key (type=private)")
    token_label, key_label = attrs.pop("token", ""), attrs.pop("object", "")
    if attrs:
        raise InvalidInputError(f"unsupported PKCS#11 URI attributes: {', '.join(sorted(attrs))}")
    _check_labels(token_label, key_label)
    return token_label, key_label


def _resolve_pin(pin: str | None) -> str:
    value = pin if pin is not None else os.environ.get(PIN_ENV)
    if not value:
        raise InvalidInputError(f"a PKCS#11 user PIN is required (argument or ${PIN_ENV})")
    return value


# --- Login bookkeeping -------------------------------------------------------


@dataclass
class _Login:
    anchor: Any  # the logged-in pkcs11 Session; python-pkcs11 types are loose here
    pin_mac: bytes
    users: int


# Keyed by (module path, slot id). RLock: a signer's finaliser may run from
# the garbage collector while this thread already holds the lock.
_logins: dict[tuple[str, int], _Login] = {}
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


def _release(key: tuple[str, int], session: Any) -> None:
    """Close a signer's session and drop its share of the token login."""
    with _logins_lock:
        # A session that is already gone needs no closing.
        with contextlib.suppress(p11.PKCS11Error):
            session.close()
        login = _logins.get(key)
        if login is None:
            return
        login.users -= 1
        if login.users <= 0:
            del _logins[key]
            with contextlib.suppress(p11.PKCS11Error):
                login.anchor.close()


def _open_session(
    lib: Any, module_key: str, token_label: str, pin: str
) -> tuple[Any, tuple[str, int]]:
    """Return ``(session, release)`` for a new session on a logged-in token."""
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
        _release(key, _NoSession())
        raise FleetwardError(f"cannot open a PKCS#11 session: {type(exc).__name__}") from exc
    return session, key


class _NoSession:
    def close(self) -> None:
        return None


# --- The signer ---------------------------------------------------------------


class Pkcs11Signer(Signer):
    """A signer whose EC private key is an object on a PKCS#11 token."""

    def __init__(
        self,
        *,
        uri: str,
        session: Any,
        login_key: tuple[str, int],
        private: Any,
        public: ec.EllipticCurvePublicKey,
    ) -> None:
        self.uri = uri
        self._lock = threading.Lock()
        self._private = private
        self._public = public
        self._spec = _CURVES_BY_NAME[public.curve.name]
        # Release the session and the login share when closed or collected.
        self._finalizer = weakref.finalize(self, _release, login_key, session)

    def public_key(self) -> ec.EllipticCurvePublicKey:
        """Return the public key read from the token's public object."""
        return self._public

    def builder_key(self) -> None:
        """Return ``None``: the private key never leaves the token."""
        return None

    def sign(self, data: bytes) -> bytes:
        """Hash ``data`` on the host and sign the digest on the token.

        Returns:
            A DER-encoded ECDSA signature.

        Raises:
            FleetwardError: The signer is closed or the token failed to sign.
        """
        assert self._spec.hash is not None
        digest = hashes.Hash(self._spec.hash())
        digest.update(data)
        value = digest.finalize()
        with self._lock:
            if not self._finalizer.alive:
                raise FleetwardError(f"signer {self.uri} is closed")
            try:
                raw = self._private.sign(value, mechanism=Mechanism.ECDSA)
            except p11.PKCS11Error as exc:
                raise FleetwardError(f"PKCS#11 signing failed: {type(exc).__name__}") from exc
        size = (self._public.curve.key_size + 7) // 8
        if not isinstance(raw, bytes) or len(raw) != 2 * size:
            raise FleetwardError("PKCS#11 module returned a malformed ECDSA signature")
        r, s = int.from_bytes(raw[:size], "big"), int.from_bytes(raw[size:], "big")
        return encode_dss_signature(r, s)

    def close(self) -> None:
        """Close this signer's session; the last signer on a token logs out."""
        with self._lock:
            self._finalizer()


def _public_key_from(public_obj: Any) -> ec.EllipticCurvePublicKey:
    """Build a pyca key from a public object's ``CKA_EC_PARAMS`` and ``CKA_EC_POINT``."""
    try:
        params = ECDomainParameters.load(public_obj[Attribute.EC_PARAMS], strict=True)
        curve_name = params.chosen.native if params.name == "named" else None
        spec = _CURVES_BY_NAME.get(curve_name or "")
        if spec is None or spec.curve is None:
            raise InvalidInputError(f"unsupported PKCS#11 key curve {curve_name!r}")
        curve = spec.curve()
        point = public_obj[Attribute.EC_POINT]
        # The standard wraps the point in a DER OCTET STRING; a few modules
        # return it bare. The two lengths never coincide.
        if len(point) != 1 + 2 * ((curve.key_size + 7) // 8):
            point = OctetString.load(point, strict=True).native
        return ec.EllipticCurvePublicKey.from_encoded_point(curve, point)
    except (ValueError, TypeError) as exc:
        raise InvalidInputError(f"cannot decode the token's public key: {exc}") from exc


def _objects(session: Any, attrs: dict[Attribute, Any]) -> list[Any]:
    try:
        return list(session.get_objects(attrs))
    except p11.PKCS11Error as exc:
        raise FleetwardError(f"PKCS#11 object search failed: {type(exc).__name__}") from exc


def _one(session: Any, object_class: ObjectClass, key_label: str) -> Any:
    found = _objects(session, {Attribute.CLASS: object_class, Attribute.LABEL: key_label})
    kind = "private" if object_class == ObjectClass.PRIVATE_KEY else "public"
    if not found:
        raise NotFoundError(f"no {kind} key labelled {key_label!r} on the token")
    if len(found) > 1:
        raise ConflictError(f"more than one {kind} key labelled {key_label!r} on the token")
    return found[0]


def _signer_for(
    session: Any, login_key: tuple[str, int], token_label: str, key_label: str
) -> Pkcs11Signer:
    private = _one(session, ObjectClass.PRIVATE_KEY, key_label)
    public_obj = _one(session, ObjectClass.PUBLIC_KEY, key_label)
    if private[Attribute.KEY_TYPE] != KeyType.EC:
        raise InvalidInputError(f"key {key_label!r} is not an EC key")
    signer = Pkcs11Signer(
        uri=pkcs11_uri(token_label=token_label, key_label=key_label),
        session=session,
        login_key=login_key,
        private=private,
        public=_public_key_from(public_obj),
    )
    challenge = secrets.token_bytes(32)
    verify_signature(signer.public_key(), signature=signer.sign(challenge), data=challenge)
    return signer


def open_pkcs11_signer(uri: str, *, pin: str | None = None, module: str | None = None) -> Signer:
    """Open the token key a ``pkcs11:`` URI names.

    Args:
        uri: ``pkcs11:token=<label>;object=<label>``.
        pin: User PIN; defaults to ``$FLEETWARD_PKCS11_PIN``.
        module: PKCS#11 module path; see :func:`load_module`.

    Returns:
        A signer for the key.

    Raises:
        InvalidInputError: Malformed URI, no or wrong PIN, unsupported key.
        NotFoundError: No such token or key.
        ConflictError: The label is ambiguous.
        SignatureError: The public object does not match the private key.
    """
    token_label, key_label = parse_pkcs11_uri(uri)
    secret = _resolve_pin(pin)
    lib = load_module(module)
    session, login_key = _open_session(lib, lib.so, token_label, secret)
    try:
        return _signer_for(session, login_key, token_label, key_label)
    except BaseException:
        _release(login_key, session)
        raise


def _generate(session: Any, spec: Algorithm, key_label: str) -> None:
    assert spec.curve is not None
    if _objects(session, {Attribute.LABEL: key_label}):
        raise ConflictError(f"a key labelled {key_label!r} already exists on the token")
    params = session.create_domain_parameters(
        KeyType.EC,
        {Attribute.EC_PARAMS: encode_named_curve_parameters(spec.curve().name)},
        local=True,
    )
    public, private = params.generate_keypair(
        id=secrets.token_bytes(16),
        label=key_label,
        store=True,
        capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
        public_template={Attribute.PRIVATE: False},
        private_template={
            Attribute.PRIVATE: True,
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False,
            Attribute.SIGN: True,
            Attribute.DERIVE: False,
        },
    )
    # Two processes may race past the existence check; the loser removes its
    # pair so a label keeps naming exactly one key.
    if len(_objects(session, {Attribute.LABEL: key_label})) > 2:
        private.destroy()
        public.destroy()
        raise ConflictError(f"a key labelled {key_label!r} was created concurrently")


def generate_pkcs11_signer(
    *,
    token_label: str,
    key_label: str,
    pin: str,
    module: str | None = None,
    algorithm: str = "ec-p256",
) -> Signer:
    """Generate an EC key pair on a token and return its signer.

    The private key is a token object with ``CKA_SENSITIVE`` set and
    ``CKA_EXTRACTABLE`` unset, usable only to sign.

    Args:
        token_label: Label of an initialised token.
        key_label: Label for the new key pair; must not exist yet.
        pin: User PIN of the token.
        module: PKCS#11 module path; see :func:`load_module`.
        algorithm: ``"ec-p256"`` (default) or ``"ec-p384"``.

    Returns:
        A signer with ``uri`` ``pkcs11:token=<label>;object=<label>``.

    Raises:
        InvalidInputError: Unknown or unsupported algorithm (Ed25519), bad
            labels, wrong PIN.
        NotFoundError: No token with that label.
        ConflictError: A key with that label already exists.
    """
    spec = lookup_algorithm(algorithm)
    if spec.curve is None:
        raise InvalidInputError(f"{algorithm} keys are not supported on PKCS#11 tokens")
    _check_labels(token_label, key_label)
    secret = _resolve_pin(pin)
    lib = load_module(module)
    session, login_key = _open_session(lib, lib.so, token_label, secret)
    try:
        try:
            _generate(session, spec, key_label)
        except ConflictError:
            raise
        except p11.PKCS11Error as exc:
            raise FleetwardError(f"PKCS#11 key generation failed: {type(exc).__name__}") from exc
        return _signer_for(session, login_key, token_label, key_label)
    except BaseException:
        _release(login_key, session)
        raise
