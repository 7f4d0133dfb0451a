"""PKCS#11 keys: EC private keys generated on a token that never lets them out.

Library loading, the shared per-token login and the PIN check live in
:mod:`fleetward.keys._p11session`, URIs in :mod:`fleetward.keys._p11uri`;
this module holds the signer itself. The PKCS#11 facts that shaped it:

* **Sessions are not thread safe**; each signer has its own session (riding
  on the token's shared login) and guards it with a lock. Closing a signer,
  or losing the last reference to it, releases the session exactly once.
* **Signing:** SoftHSM2 has ``CKM_ECDSA`` but not ``CKM_ECDSA_SHA256``, so
  the host hashes (SHA-256 for P-256, SHA-384 for P-384) and the token signs
  the digest. The token returns raw ``r || s``; :meth:`Pkcs11Signer.sign`
  re-encodes it as the DER ``ECDSA-Sig-Value`` the rest of the world expects.
* **Public key:** read from the public object's ``CKA_EC_POINT`` (a DER
  OCTET STRING around the point); the private object's ``CKA_VALUE`` is
  sensitive and cannot be read.
* **Generation** asks for ``CKA_TOKEN``, ``CKA_SENSITIVE``, no
  ``CKA_EXTRACTABLE``, and sign/verify only (no derive), under a random
  shared ``CKA_ID``. Opening a key signs and verifies a random challenge, so a
  public object that does not belong to the private one is caught at once.
"""

from __future__ import annotations

import secrets
import threading
import weakref
from typing import Any

from asn1crypto.core import OctetString
from asn1crypto.keys import ECDomainParameters
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11 import exceptions as p11
from pkcs11.util.ec import encode_named_curve_parameters

from fleetward.errors import ConflictError, FleetwardError, InvalidInputError, NotFoundError
from fleetward.keys._p11session import (
    LoginKey,
    load_module,
    open_session,
    release,
    resolve_pin,
)
from fleetward.keys._p11uri import check_labels, parse_pkcs11_uri, pkcs11_uri
from fleetward.keys._signer import ALGORITHMS, Algorithm, Signer, lookup_algorithm, verify_signature

__all__ = ["Pkcs11Signer", "generate_pkcs11_signer", "open_pkcs11_signer"]

_CURVES_BY_NAME: dict[str, Algorithm] = {
    a.curve().name: a for a in ALGORITHMS.values() if a.curve is not None
}


class Pkcs11Signer(Signer):
    """A signer whose EC private key is an object on a PKCS#11 token."""

    def __init__(
        self,
        *,
        uri: str,
        session: Any,
        login_key: LoginKey,
        private: Any,
        public: ec.EllipticCurvePublicKey,
    ) -> None:
        self.uri = uri
        self._lock = threading.Lock()
        self._private = private
        self._public = public
        spec = _CURVES_BY_NAME.get(public.curve.name)
        if spec is None or spec.hash is None:
            raise InvalidInputError(f"unsupported PKCS#11 key curve {public.curve.name}")
        self._hash = spec.hash
        # Release the session and the login share when closed or collected.
        self._finalizer = weakref.finalize(self, release, login_key, session)

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
        digest = hashes.Hash(self._hash())
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
    session: Any,
    login_key: LoginKey,
    token_label: str,
    key_label: str,
    objects: tuple[Any, Any] | None = None,
) -> Pkcs11Signer:
    """Wrap a token key in a signer; on failure the session is released here.

    ``objects`` (public, private) skips looking the pair up by label.
    """
    try:
        if objects is None:
            private = _one(session, ObjectClass.PRIVATE_KEY, key_label)
            public_obj = _one(session, ObjectClass.PUBLIC_KEY, key_label)
        else:
            public_obj, private = objects
        if private[Attribute.KEY_TYPE] != KeyType.EC:
            raise InvalidInputError(f"key {key_label!r} is not an EC key")
        public = _public_key_from(public_obj)
    except BaseException:
        release(login_key, session)
        raise
    # From here on the signer owns the session: closing it releases once.
    signer = Pkcs11Signer(
        uri=pkcs11_uri(token_label=token_label, key_label=key_label),
        session=session,
        login_key=login_key,
        private=private,
        public=public,
    )
    try:
        challenge = secrets.token_bytes(32)
        verify_signature(signer.public_key(), signature=signer.sign(challenge), data=challenge)
    except BaseException:
        signer.close()
        raise
    return signer


def open_pkcs11_signer(uri: str, *, pin: str | None = None, module: str | None = None) -> Signer:
    """Open the token key a ``pkcs11:`` URI names.

    Args:
        uri: ``pkcs11:token=<label>;object=<label>``.
        pin: User PIN (required).
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
    secret = resolve_pin(pin)
    lib = load_module(module)
    session, login_key = open_session(lib, lib.so, token_label, secret)
    return _signer_for(session, login_key, token_label, key_label)


def _generate(
    session: Any, spec: Algorithm, key_label: str, *, unique_label: bool
) -> tuple[Any, Any]:
    if spec.curve is None:
        raise RuntimeError("broken invariant, expected: spec.curve is not None")
    if not unique_label and _objects(session, {Attribute.LABEL: key_label}):
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
    if not unique_label and len(_objects(session, {Attribute.LABEL: key_label})) > 2:
        private.destroy()
        public.destroy()
        raise ConflictError(f"a key labelled {key_label!r} was created concurrently")
    return public, private


def generate_pkcs11_signer(
    *,
    token_label: str,
    key_label: str,
    pin: str,
    module: str | None = None,
    algorithm: str = "ec-p256",
    unique_label: bool = False,
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
        unique_label: the caller guarantees no other key carries
            ``key_label`` (it holds a random part): skip the label searches
            before and after generation. SoftHSM2 searches in time linear in
            the token's objects, so with thousands of keys on one token (a
            factory station) they dominate.

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
    check_labels(token_label, key_label)
    secret = resolve_pin(pin)
    lib = load_module(module)
    session, login_key = open_session(lib, lib.so, token_label, secret)
    try:
        objects = _generate(session, spec, key_label, unique_label=unique_label)
    except p11.PKCS11Error as exc:
        release(login_key, session)
        raise FleetwardError(f"PKCS#11 key generation failed: {type(exc).__name__}") from exc
    except BaseException:
        release(login_key, session)
        raise
    return _signer_for(session, login_key, token_label, key_label, objects)
